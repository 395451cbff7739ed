//! Replays the `config` fuzz target's corpus and regression inputs (`fuzz/corpus/config/`,
//! `fuzz/regressions/config/`) through the same harness the `cargo fuzz` target runs (see
//! `docs/fuzzing.md`).

use runscale_core::testing::replay_fuzz_inputs;

#[test]
fn config_corpus() {
    assert!(replay_fuzz_inputs("config", runscale::fuzz_harness::config) > 0);
}
