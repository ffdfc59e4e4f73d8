//! `cargo xtask sandbox` and `cargo xtask test`: the README's two commands. Each installs
//! what is missing on a bare machine (the wasm target, the Python test tools), builds, and
//! runs.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// rustup does not install what rust-toolchain.toml names on this machine, so add it here.
fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") => Ok(()),
        Ok(_) => {
            eprintln!("xtask: adding the wasm32-wasip2 target");
            run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).current_dir(root()))
        }
        Err(_) => {
            eprintln!("xtask: rustup not found; assuming the wasm32-wasip2 target is provided otherwise");
            Ok(())
        }
    }
}

/// promtool checks the alert rules under deploy/; it ships in Debian's `prometheus` package
/// (no PyPI or crates.io build of it exists), installed here when missing.
fn ensure_promtool() -> Result<()> {
    if Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("xtask: installing promtool (Debian package prometheus)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "prometheus"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if install() || (Command::new("apt-get").args(["update", "-q"]).status().is_ok_and(|s| s.success()) && install()) {
        return Ok(());
    }
    bail!("promtool is missing and `apt-get install prometheus` failed; install promtool and run again")
}

/// Python test tools (the official `twilio` library, grpcurl) in a venv under target/, so
/// the machine's Python stays untouched. Re-installed only when the list changes.
fn ensure_python_tools() -> Result<PathBuf> {
    let venv = root().join("target/test-tools/venv");
    let requirements = root().join("xtask/test-tools.txt");
    let wanted = std::fs::read_to_string(&requirements).context("reading xtask/test-tools.txt")?;
    let marker = venv.join(".installed");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(venv);
    }
    eprintln!("xtask: installing Python test tools into {}", venv.display());
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    std::fs::write(&marker, wanted)?;
    Ok(venv)
}

/// Node test tools (the official `twilio` library for Node, whose validator differs from the
/// Python one in sort order and URL variants) under target/test-tools/node, from the pinned
/// lock file. Re-installed only when the lock changes.
fn ensure_node_tools() -> Result<()> {
    let dir = root().join("target/test-tools/node");
    let lock = std::fs::read_to_string(root().join("xtask/node-tools/package-lock.json")).context("reading the node tools' lock")?;
    let marker = dir.join(".installed");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(lock.as_str()) {
        return Ok(());
    }
    eprintln!("xtask: installing Node test tools into {}", dir.display());
    std::fs::create_dir_all(&dir)?;
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(root().join("xtask/node-tools").join(f), dir.join(f))?;
    }
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&dir))?;
    std::fs::write(&marker, lock)?;
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    ensure_wasm_target()?;
    ensure_promtool()?;
    let venv = ensure_python_tools()?;
    ensure_node_tools()?;
    // The plugin kit is its own (wasm) workspace; its plain unit tests run natively.
    run(cargo().args(["test", "--quiet", "--manifest-path", "plugins/Cargo.toml", "-p", "plugin-kit"]))?;
    // The end-to-end tests run the real binary: build it first, then everything in one run.
    // `--workspace` so features unify as in the test run below: nothing is built twice.
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    match std::env::var("ML_CONNECTOR_TEST_DATABASE_URL") {
        Ok(url) => eprintln!("xtask: PostgreSQL suite on too ({})", url.split('@').next_back().unwrap_or("")),
        Err(_) => eprintln!("xtask: ML_CONNECTOR_TEST_DATABASE_URL not set: SQLite only"),
    }
    run(cargo().args(["test", "--workspace"]).args(extra).env("PATH", path))
}

fn sandbox(extra: &[String]) -> Result<()> {
    ensure_wasm_target()?;
    run(cargo().args(["build", "-p", "ml-connector", "--bin", "ml-connector"]))?;
    run(Command::new(root().join("target/debug/ml-connector")).arg("sandbox").args(extra))
}

/// The fuzz targets under host/fuzz (their bodies are `ml_connector::fuzzing`).
const FUZZ_TARGETS: [&str; 6] = [
    "webhook_form",
    "qad_rows",
    "config_toml",
    "mapping_profile",
    "plugin_output",
    "twiml",
];

/// cargo-fuzz on the nightly toolchain, installed when missing (`rustup toolchain install
/// nightly` and `cargo install cargo-fuzz` both work here).
fn ensure_cargo_fuzz() -> Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        eprintln!("xtask: installing the nightly toolchain (cargo-fuzz needs it)");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    // The host's build script builds the embedded plugins with the same toolchain.
    run(Command::new("rustup").args(["target", "add", "wasm32-wasip2", "--toolchain", "nightly"]))?;
    if !Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("xtask: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// `cargo xtask fuzz [--seconds N | --runs N] [TARGET…]`: each target (default: all) for N
/// seconds (default 60) or N executions, one after another; the corpus grows under host/fuzz/corpus, and a crash
/// stops the run with its input under host/fuzz/artifacts. Safe Rust throughout, so no
/// sanitizer: what is sought is a panic (debug assertions on, overflow included).
fn fuzz(args: &[String]) -> Result<()> {
    let mut seconds = 60u64;
    let mut runs: Option<u64> = None;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                let n = it.next().context("--seconds takes a number")?;
                seconds = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=86_400).contains(n))
                    .context("--seconds takes 1 to 86400")?;
            }
            "--runs" => {
                let n = it.next().context("--runs takes a number")?;
                runs = Some(n.parse().ok().filter(|n| *n >= 1).context("--runs takes a positive number")?);
            }
            t if FUZZ_TARGETS.contains(&t) => targets.push(t.to_string()),
            other => bail!("unknown fuzz target or flag {other:?}; targets: {}", FUZZ_TARGETS.join(", ")),
        }
    }
    if targets.is_empty() {
        targets = FUZZ_TARGETS.iter().map(|t| t.to_string()).collect();
    }
    ensure_cargo_fuzz()?;
    for t in &targets {
        let budget = match runs {
            Some(n) => format!("-runs={n}"),
            None => format!("-max_total_time={seconds}"),
        };
        eprintln!("xtask: fuzzing {t} ({budget})");
        run(Command::new("cargo")
            .args(["+nightly", "fuzz", "run", "--sanitizer", "none", "--debug-assertions", t, "--"])
            .arg(budget)
            .arg("-print_final_stats=1")
            .current_dir(root().join("host")))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("sandbox") => sandbox(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask test [cargo test args…] | cargo xtask sandbox [--once] | cargo xtask fuzz [--seconds N | --runs N] [TARGET…]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
