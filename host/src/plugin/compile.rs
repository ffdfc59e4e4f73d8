//! Compiling a plugin off the async runtime, within a size cap and a time limit.
//!
//! `Component::new` cannot be interrupted, so `serve` compiles in a child process (this
//! binary's hidden `compile-plugin` subcommand: wasm on stdin, the serialised artifact on
//! stdout), killed at the time limit; the child gets no environment, so no secret. Tools and
//! tests may compile on a blocking thread instead: the caller is answered at the limit, the
//! thread runs on to its end.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::Engine;

use super::{FaultKind, PluginFault};
use crate::core::limits::{PLUGIN_COMPILE_SECONDS, PLUGIN_WASM_MAX_BYTES};

/// The hidden subcommand the child runs.
pub const CHILD_COMMAND: &str = "compile-plugin";

/// The child's exit status when the bytes do not compile (its stderr says why).
const EXIT_NOT_A_COMPONENT: i32 = 2;
/// The child's exit status when it could not do its work (its stderr says why).
const EXIT_FAILED: i32 = 1;

/// Where a plugin is compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// On a blocking thread of this process: the caller is answered at the time limit, but
    /// the compilation runs to its end (tools and tests).
    InProcess,
    /// In a child process of this executable (`compile-plugin`), killed at the time limit.
    Child(PathBuf),
}

impl Compiler {
    /// This executable as the compiler, by `/proc/self/exe` where there is one (still the
    /// running binary after an upgrade replaced the file).
    pub fn this_executable() -> std::io::Result<Compiler> {
        let proc = PathBuf::from("/proc/self/exe");
        if proc.exists() {
            return Ok(Compiler::Child(proc));
        }
        std::env::current_exe().map(Compiler::Child)
    }
}

/// The size cap and time limit of one compilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    pub max_wasm_bytes: usize,
    pub time: Duration,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            max_wasm_bytes: PLUGIN_WASM_MAX_BYTES,
            time: Duration::from_secs(PLUGIN_COMPILE_SECONDS),
        }
    }
}

fn limit_fault(message: String) -> PluginFault {
    PluginFault::new(FaultKind::CompileLimit, "load", message)
}

fn not_a_component(why: impl std::fmt::Display) -> PluginFault {
    PluginFault::new(
        FaultKind::WrongWorld,
        "load",
        format!("not a WebAssembly component this host can compile: {why}"),
    )
}

/// The size cap, checked before anything is compiled.
pub fn check_size(wasm: &[u8], limits: &CompileLimits) -> Result<(), PluginFault> {
    if wasm.len() > limits.max_wasm_bytes {
        return Err(limit_fault(format!(
            "is {} bytes; a plugin may be at most {} bytes ({} MiB)",
            wasm.len(),
            limits.max_wasm_bytes,
            limits.max_wasm_bytes >> 20
        )));
    }
    Ok(())
}

/// Compile `wasm` to a serialised artifact `engine` can deserialise.
pub async fn compile(compiler: &Compiler, engine: &Engine, wasm: &[u8], limits: &CompileLimits) -> Result<Vec<u8>, PluginFault> {
    check_size(wasm, limits)?;
    match compiler {
        Compiler::InProcess => {
            let (engine, wasm) = (engine.clone(), wasm.to_vec());
            let job = tokio::task::spawn_blocking(move || engine.precompile_component(&wasm));
            match tokio::time::timeout(limits.time, job).await {
                Err(_) => Err(over_time(limits, "the compilation runs on in the background")),
                Ok(Err(join)) => Err(limit_fault(format!("the compiler failed: {join}"))),
                Ok(Ok(out)) => out.map_err(|e| not_a_component(format!("{e:#}"))),
            }
        }
        Compiler::Child(exe) => in_child(exe, wasm, limits).await,
    }
}

fn over_time(limits: &CompileLimits, what_then: &str) -> PluginFault {
    limit_fault(format!("did not compile within {} s; {what_then}", limits.time.as_secs_f64()))
}

/// How much of the compiler's error output is kept.
const CHILD_STDERR_BYTES: u64 = 16 << 10;

/// Compile in a child process, killed (and reaped) at the time limit; if this future is
/// dropped first (shutdown), the child is killed all the same (`kill_on_drop`).
async fn in_child(exe: &std::path::Path, wasm: &[u8], limits: &CompileLimits) -> Result<Vec<u8>, PluginFault> {
    let failed = |what: &str, e: std::io::Error| limit_fault(format!("the compiler process {what}: {e}"));
    let mut child = tokio::process::Command::new(exe)
        .arg(CHILD_COMMAND)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(&format!("{} did not start", exe.display()), e))?;
    let pid = child.id().unwrap_or(0);
    let (mut stdin, mut stdout, mut stderr) = (
        child.stdin.take().expect("piped"),
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let (mut artifact, mut errors) = (Vec::new(), Vec::new());
    let run = async {
        let feed = async move {
            // A child that ended early closes its end; its status says why.
            let _ = stdin.write_all(wasm).await;
            drop(stdin);
        };
        let read_out = stdout.read_to_end(&mut artifact);
        let mut stderr = (&mut stderr).take(CHILD_STDERR_BYTES);
        let read_err = stderr.read_to_end(&mut errors);
        let (_, out, _) = tokio::join!(feed, read_out, read_err);
        out?;
        child.wait().await
    };
    let status = match tokio::time::timeout(limits.time, run).await {
        Ok(status) => status.map_err(|e| failed("could not be waited for", e))?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(over_time(limits, &format!("its compiler (process {pid}) was killed")));
        }
    };
    let errors = String::from_utf8_lossy(&errors);
    match status.code() {
        Some(0) => Ok(artifact),
        Some(EXIT_NOT_A_COMPONENT) => Err(not_a_component(errors.trim())),
        _ => Err(limit_fault(format!("the compiler process ended with {status}: {}", errors.trim()))),
    }
}

/// The child's side (`ml-connector compile-plugin`): wasm on stdin, at most the size cap;
/// the serialised artifact on stdout. Returns the exit status.
pub fn child_main() -> i32 {
    let mut wasm = Vec::new();
    let cap = PLUGIN_WASM_MAX_BYTES as u64;
    if let Err(e) = std::io::stdin().lock().take(cap + 1).read_to_end(&mut wasm) {
        eprintln!("reading the plugin from stdin: {e}");
        return EXIT_FAILED;
    }
    if wasm.len() as u64 > cap {
        eprintln!("the plugin is over {cap} bytes");
        return EXIT_FAILED;
    }
    let engine = match Engine::new(&super::engine_config()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("the compiler's engine: {e:#}");
            return EXIT_FAILED;
        }
    };
    match engine.precompile_component(&wasm) {
        Ok(artifact) => match std::io::stdout().lock().write_all(&artifact) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("writing the artifact: {e}");
                EXIT_FAILED
            }
        },
        Err(e) => {
            eprintln!("{e:#}");
            EXIT_NOT_A_COMPONENT
        }
    }
}
