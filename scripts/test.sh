#!/usr/bin/env bash
# Runs every test of runscale on a fresh machine: installs what the tests need, then
# `cargo test --workspace`. Safe to run repeatedly; builds are cached outside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build cache outside the checkout, so repeated runs on one machine are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runscale/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Property tests: at least 1,000 cases each (the suite defaults to 2,000).
export PROPTEST_CASES="${PROPTEST_CASES:-2000}"
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "tests"
cargo test --workspace --all-features
