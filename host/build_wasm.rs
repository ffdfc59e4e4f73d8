// Builds a workspace of WebAssembly plugins for wasm32-wasip2 from a build script, with a
// nested cargo in a target directory of its own, and copies each `.wasm` into OUT_DIR.
// Shared by host/build.rs (the shipped plugins) and tests/build.rs (the hostile ones).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Build `workspace` (a directory with a Cargo.toml) in release and return the path of each
/// named artifact copied into OUT_DIR.
pub fn build(workspace: &Path, target_dir: &Path, artifacts: &[&str]) -> Vec<PathBuf> {
    println!("cargo:rerun-if-changed={}", workspace.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // From the workspace's own directory, so its .cargo/config.toml applies.
    cmd.current_dir(workspace);
    cmd.args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's flags, profile and jobserver are not the guest's.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_PROFILE_")
            || k.starts_with("CARGO_BUILD_")
            || k.starts_with("CARGO_TARGET_")
            || [
                "RUSTFLAGS",
                "CARGO_ENCODED_RUSTFLAGS",
                "CARGO_MAKEFLAGS",
                "MAKEFLAGS",
                "MFLAGS",
                "RUSTC_WORKSPACE_WRAPPER",
            ]
            .contains(&k.as_str())
        {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().expect("running cargo for the wasm plugins");
    if !status.success() {
        panic!(
            "building the plugins in {} for wasm32-wasip2 failed. If the target is missing, run \
             `rustup target add wasm32-wasip2` (`cargo xtask test` and `cargo xtask sandbox` do it for you).",
            workspace.display()
        );
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    artifacts
        .iter()
        .map(|name| {
            let from = target_dir.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
            let to = out_dir.join(format!("{name}.wasm"));
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
            to
        })
        .collect()
}
