#!/usr/bin/env bash
# The one test command: formatting, lints, and every test suite (Rust now; the Python suites
# join as the bindings land). CI (.ci/run) runs exactly this on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "all tests passed"
