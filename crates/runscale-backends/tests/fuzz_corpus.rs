//! Replays the `exec_answer` fuzz target's corpus and regression inputs
//! (`fuzz/corpus/exec_answer/`, `fuzz/regressions/exec_answer/`) through the same harness the
//! `cargo fuzz` target runs (see `docs/fuzzing.md`).
#![cfg(feature = "exec")]

use runscale_core::testing::replay_fuzz_inputs;

#[test]
fn exec_answer_corpus() {
    assert!(replay_fuzz_inputs("exec_answer", runscale_backends::fuzz_harness::exec_answer) > 0);
}
