//! A fake Buildkite (work in progress).
