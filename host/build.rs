#[path = "build_wasm.rs"]
mod build_wasm;

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    // `sqlx::migrate!` embeds migrations/ at compile time but on stable Rust cannot tell cargo
    // it read them: without this a new migration is missing from an incremental build.
    println!("cargo:rerun-if-changed={}", root.join("migrations").display());
    build_wasm::build(
        &root.join("plugins"),
        &root.join("target/wasm-plugins"),
        &["default_plugin", "lakeshore_plugin"],
    );
    compile_protos(&root.join("proto"));
}

/// The control plane's protos, compiled without a system `protoc` (protox); the descriptor
/// set is kept for server reflection.
fn compile_protos(proto_root: &std::path::Path) {
    let files = ["tenants", "plugins", "alerts", "polls"].map(|f| proto_root.join(format!("mlconnector/v1/{f}.proto")));
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let fds = protox::Compiler::new([proto_root])
        .expect("proto include path")
        .include_imports(true)
        .include_source_info(true)
        .open_files(&files)
        .unwrap_or_else(|e| panic!("proto/ does not compile: {e}"))
        .file_descriptor_set();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("mlconnector_descriptor.bin"), prost::Message::encode_to_vec(&fds)).expect("writing the descriptor set");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generating gRPC code");
}
