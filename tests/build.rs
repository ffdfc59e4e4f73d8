#[path = "../host/build_wasm.rs"]
mod build_wasm;

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let built = build_wasm::build(
        &root.join("tests/plugins"),
        &root.join("target/wasm-test-plugins"),
        &["hostile_plugin", "frozen_plugin", "future_plugin", "patch_plugin"],
    );
    for path in built {
        let name = path.file_stem().unwrap().to_string_lossy().to_uppercase();
        println!("cargo:rustc-env={name}_WASM={}", path.display());
    }
}
