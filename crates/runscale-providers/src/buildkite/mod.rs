//! Buildkite agents (work in progress: see the crate README).
