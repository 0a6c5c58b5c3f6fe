#!/usr/bin/env bash
# Builds the codexpool Python package into the repo's venv and tests it: the pytest suite, the
# stubs against the compiled module (mypy.stubtest), the suite and the quick start type-checked
# against the stubs (mypy), and the quick start itself. Works from a fresh clone.
#
#   bindings/python/test.sh            # everything
#   bindings/python/test.sh -k keys    # extra arguments go to pytest
#
# The venv is `.venv` at the repo root (created when missing, reused otherwise; override with
# VENV=...). The extension is built by `maturin develop` in the debug profile into the workspace
# `target/` (or $CARGO_TARGET_DIR), like the rest of scripts/test.sh, so dependencies are not built
# twice (only pyo3 and this crate are rebuilt, as maturin configures pyo3 for the venv's Python).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${VENV:-$root/.venv}"
py="$venv/bin/python"
target="${CARGO_TARGET_DIR:-$root/target}"
# Loopback never goes through a proxy: the fake OpenAI and the gateways under test listen on
# 127.0.0.1, and an HTTP(S)_PROXY from the environment (kept for the registries) would get them.
for v in NO_PROXY no_proxy; do export "$v=${!v:+${!v},}127.0.0.1,localhost,::1"; done

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
timed() {
    local start=$SECONDS
    "$@"
    printf '    (%ss)\n' "$((SECONDS - start))"
}

step "python venv at $venv"
if [ ! -x "$py" ]; then
    # The pinned test tools (pytest, mypy, openai) need 3.10; the wheel itself is abi3-py39.
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        { echo "the tests need Python 3.10+ (python3 is $(python3 -V 2>&1))" >&2; exit 1; }
    timed python3 -m venv "$venv" ||
        { echo "python3 -m venv failed (on Debian/Ubuntu: apt install python3-venv)" >&2; exit 1; }
fi
timed "$py" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-dev.txt"

step "maturin develop (debug, CARGO_TARGET_DIR=$target)"
(
    cd "$here"
    export VIRTUAL_ENV="$venv" CARGO_TARGET_DIR="$target"
    timed "$venv/bin/maturin" develop --quiet --locked
)

step "pytest bindings/python/tests"
(cd "$here" && timed "$py" -m pytest -q "$@")

step "stubs match the module (mypy.stubtest codexpool)"
(cd "$root" && timed "$py" -m mypy.stubtest codexpool)

step "tests and quick start type-check against the stubs (mypy)"
(cd "$here" && timed "$py" -m mypy --warn-unused-ignores tests "$root/examples/python-quickstart.py")

step "examples/python-quickstart.py"
(cd "$root" && timed "$py" examples/python-quickstart.py)

step "python bindings: all checks passed"
