//! Rules of the repository itself, checked like code.

use std::path::{Path, PathBuf};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') && name != "node_modules" {
                files_under(&path, out);
            }
        } else if [".rs", ".py", ".sh", ".toml", ".mjs"].iter().any(|e| name.ends_with(e)) || name == "run" {
            out.push(path);
        }
    }
}

/// A fresh clone outside this workplace has no `../shared`: every file a test, bench or
/// build script reads lives in the repository (the Twilio OpenAPI file, with its MIT
/// licence, is under tests/fixtures/).
#[test]
fn a_clone_reads_nothing_from_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in ["host", "tests", "xtask", "plugins", ".ci"] {
        files_under(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "{} files read", files.len());
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("tidy.rs"))
        .filter(|f| std::fs::read_to_string(f).is_ok_and(|text| text.contains("../shared")))
        .map(|f| f.display().to_string())
        .collect();
    assert!(outside.is_empty(), "files reading ../shared: {outside:?}");
    assert!(root.join("tests/fixtures/twilio/twilio_api_v2010.yaml").is_file());
    assert!(root.join("tests/fixtures/twilio/LICENSE").is_file());
}
