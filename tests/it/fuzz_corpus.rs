//! Every fuzz target's corpus, and every input that ever crashed one, replayed on stable
//! through the same bodies the fuzzer runs (`ml_connector::fuzzing`). `cargo xtask fuzz`
//! grows the corpus; a crash it finds is kept under host/fuzz/artifacts/<target>/ once fixed.

use std::path::Path;

use ml_connector::fuzzing::TARGETS;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_corpus_entry_and_past_crash_runs_clean() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/fuzz");
    for (name, target) in TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(name));
        assert!(!corpus.is_empty(), "target {name} has no corpus");
        let crashes = inputs(&fuzz.join("artifacts").join(name));
        for input in corpus.iter().chain(&crashes) {
            // `cargo xtask fuzz` may be replacing corpus entries while this runs.
            let Ok(data) = std::fs::read(input) else { continue };
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", input.display());
        }
    }
    let on_disk: Vec<String> = inputs(&fuzz.join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every fuzz target is replayed here");
}
