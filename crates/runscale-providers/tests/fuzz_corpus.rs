//! Replays the fuzz targets' corpora and regression inputs (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same harness functions the `cargo fuzz` targets
//! run (see `docs/fuzzing.md`): every committed input must pass as an ordinary test.
#![cfg(all(
    feature = "github",
    feature = "gitlab",
    feature = "buildkite",
    feature = "circleci"
))]

use runscale_core::testing::replay_fuzz_inputs;
use runscale_providers::fuzz_harness;

#[test]
fn github_webhook_corpus() {
    assert!(replay_fuzz_inputs("github_webhook", fuzz_harness::github_webhook) > 0);
}

#[test]
fn gitlab_webhook_corpus() {
    assert!(replay_fuzz_inputs("gitlab_webhook", fuzz_harness::gitlab_webhook) > 0);
}

#[test]
fn buildkite_webhook_corpus() {
    assert!(replay_fuzz_inputs("buildkite_webhook", fuzz_harness::buildkite_webhook) > 0);
}

#[test]
fn circleci_webhook_corpus() {
    assert!(replay_fuzz_inputs("circleci_webhook", fuzz_harness::circleci_webhook) > 0);
}

#[test]
fn github_api_corpus() {
    assert!(replay_fuzz_inputs("github_api", fuzz_harness::github_api) > 0);
}

#[test]
fn gitlab_api_corpus() {
    assert!(replay_fuzz_inputs("gitlab_api", fuzz_harness::gitlab_api) > 0);
}

#[test]
fn buildkite_api_corpus() {
    assert!(replay_fuzz_inputs("buildkite_api", fuzz_harness::buildkite_api) > 0);
}

#[test]
fn circleci_api_corpus() {
    assert!(replay_fuzz_inputs("circleci_api", fuzz_harness::circleci_api) > 0);
}
