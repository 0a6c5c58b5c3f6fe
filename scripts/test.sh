#!/usr/bin/env bash
# The one test command: formatting, lints, and every test suite — Rust (including the real
# Codex CLI against a running gateway), Python (pyo3) and the uniffi-generated Python — plus the
# runnable examples. CI (.ci/run) runs exactly this on a fresh clone; it installs what it needs
# (the Codex CLI from npm, a Python venv with maturin/pytest/openai) under .cache/ and .venv/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-always}
# A whole-suite run gains little from incremental artifacts, and they were a third of its disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# Loopback never goes through a proxy: the fake OpenAI and the gateways under test listen on
# 127.0.0.1, and an HTTP(S)_PROXY from the environment (kept for the registries) would get them.
for v in NO_PROXY no_proxy; do export "$v=${!v:+${!v},}127.0.0.1,localhost,::1"; done

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The uniffi crate's test-only exports sit behind a feature the workspace build leaves off.
cargo clippy -p codexpool-ffi --all-targets --features testing --locked -- -D warnings

# The real Codex CLI, for the gateway's end-to-end test (pinned; ~10 s from the npm registry).
codex_version=0.171.0
codex_dir="$root/.cache/codex-cli-$codex_version"
if [ ! -x "$codex_dir/node_modules/.bin/codex" ]; then
  step "installing @openai/codex@$codex_version"
  mkdir -p "$codex_dir"
  npm install --prefix "$codex_dir" --no-audit --no-fund --loglevel=error "@openai/codex@$codex_version"
fi
export CODEXPOOL_CODEX_BIN="$codex_dir/node_modules/.bin/codex"

step "cargo test"
cargo test --workspace --locked --no-fail-fast

step "examples"
cargo run --locked -q -p pool-only
cargo run --locked -q -p embed-in-axum

step "Python bindings (pyo3): venv, wheel, pytest with the openai client, stubs, quick start"
bindings/python/test.sh

step "uniffi-generated Python"
PYTHON="${VENV:-$root/.venv}/bin/python" bindings/uniffi/test.sh

step "all tests passed"
