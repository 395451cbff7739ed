//! Entry points for fuzzing and corpus replay.
//!
//! Each function takes arbitrary bytes, runs one piece of production code on them and asserts
//! that it returns (an error is a fine answer; a panic is a bug) and that cheap invariants of
//! its answer hold. The `cargo fuzz` targets under `fuzz/` call these, and so does the
//! ordinary test `tests/fuzz_corpus.rs`, which replays every committed corpus and regression
//! input (see `docs/fuzzing.md`). Nothing here touches the network or the file system.

use std::path::Path;

use crate::config::{self, ConfigError};

/// The environment a fuzzed configuration sees: variables whose name starts with `SET` have a
/// value (the name in lower case), every other one is unset. Fixed, so runs are repeatable.
fn fuzz_env(name: &str) -> Option<String> {
    name.starts_with("SET").then(|| name.to_ascii_lowercase())
}

/// A configuration file's text through interpolation, parsing, deserialization and validation:
/// what `runscale check` does before it builds the adapters (which reads secrets and probes
/// the CI systems and backends, so is not fuzzed). Bytes that are not UTF-8 are converted
/// lossily, as no file read by [`config::load`] can be.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match config::load_str(&text, Path::new("fuzz.yaml"), fuzz_env) {
        Ok(valid) => {
            // Every pool refers to a provider and a backend of the file.
            for pool in &valid.pools {
                assert!(
                    pool.provider < valid.providers.len(),
                    "pool's provider exists"
                );
                assert!(pool.backend < valid.backends.len(), "pool's backend exists");
            }
        }
        Err(error) => {
            // Every message renders, and a rejected file says at least one thing about why.
            let _ = error.to_string();
            match &error {
                ConfigError::Invalid { errors, .. } => {
                    assert!(!errors.is_empty(), "an invalid file names a problem");
                    for e in errors {
                        assert!(e.line.is_none_or(|l| l >= 1), "lines are 1-based: {e}");
                        let _ = e.to_string();
                    }
                }
                ConfigError::Interpolation { errors, .. } => {
                    assert!(
                        !errors.is_empty(),
                        "a failed interpolation names a placeholder"
                    );
                    for e in errors {
                        assert!(e.line >= 1, "lines are 1-based: {e}");
                    }
                }
                _ => {}
            }
        }
    }
}
