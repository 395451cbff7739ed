//! Providers: the CI systems runscale reads demand from and registers runners with.

#[cfg(feature = "buildkite")]
pub mod buildkite;
#[cfg(feature = "circleci")]
pub mod circleci;
pub mod exec;
/// Entry points for fuzzing and corpus replay (`fuzz/`, `docs/fuzzing.md`).
#[cfg(all(
    feature = "github",
    feature = "gitlab",
    feature = "buildkite",
    feature = "circleci"
))]
pub mod fuzz_harness;
#[cfg(feature = "github")]
pub mod github;
#[cfg(feature = "gitlab")]
pub mod gitlab;
#[cfg(any(feature = "circleci", feature = "gitlab", feature = "buildkite"))]
mod http;
#[cfg(any(
    feature = "github",
    feature = "circleci",
    feature = "gitlab",
    feature = "buildkite"
))]
mod retry;
