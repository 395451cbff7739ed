//! Replay of the committed fuzz inputs as ordinary tests (see `docs/fuzzing.md`).

use std::path::{Path, PathBuf};

/// Every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` of this repository,
/// sorted. The corpus must exist and hold at least one file (a missing one would let a replay
/// pass without checking anything); the regressions directory is optional.
pub fn fuzz_inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for (dir, required) in [("corpus", true), ("regressions", false)] {
        let dir = fuzz.join(dir).join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        let before = files.len();
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
        assert!(
            !required || files.len() > before,
            "{} holds no input",
            dir.display()
        );
    }
    files.sort();
    files
}

/// Runs `harness` (the function the fuzz target runs) on every input of `target`, naming the
/// input that panics. Returns how many inputs were replayed.
pub fn replay_fuzz_inputs(target: &str, harness: fn(&[u8])) -> usize {
    let inputs = fuzz_inputs(target);
    for path in &inputs {
        let data = std::fs::read(path).expect("read input");
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
    }
    inputs.len()
}
