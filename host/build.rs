#[path = "build_wasm.rs"]
mod build_wasm;

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    build_wasm::build(
        &root.join("plugins"),
        &root.join("target/wasm-plugins"),
        &["default_plugin", "lakeshore_plugin"],
    );
}
