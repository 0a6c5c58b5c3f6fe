#!/usr/bin/env bash
# Builds codexpool-ffi (debug profile, `testing` feature, the workspace's target dir), generates
# the Python module `codexpool_ffi` into bindings/uniffi/generated/ (git-ignored), copies the
# library beside it and runs tests/test_ffi.py (with pytest when $PYTHON has it).
#
#   bindings/uniffi/test.sh                 # python3
#   PYTHON=.venv/bin/python bindings/uniffi/test.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-python3}"
out="$here/generated"
# Loopback never goes through a proxy: the fake OpenAI and the gateways under test listen on
# 127.0.0.1, and an HTTP(S)_PROXY from the environment (kept for the registries) would get them.
for v in NO_PROXY no_proxy; do export "$v=${!v:+${!v},}127.0.0.1,localhost,::1"; done

case "$(uname -s)" in
    Darwin) lib=libcodexpool_ffi.dylib ;;
    MINGW* | MSYS* | CYGWIN*) lib=codexpool_ffi.dll ;;
    *) lib=libcodexpool_ffi.so ;;
esac
target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

echo "==> cargo build -p codexpool-ffi --features testing"
cargo build --locked -p codexpool-ffi --features testing

echo "==> uniffi-bindgen generate --language python"
rm -rf "$out"
cargo run --locked -q -p codexpool-uniffi-bindgen --bin uniffi-bindgen -- generate \
    --library "$target_dir/debug/$lib" --language python --out-dir "$out"
cp "$target_dir/debug/$lib" "$out/"

echo "==> tests/test_ffi.py"
export CODEXPOOL_FFI_DIR="$out"
if "$PYTHON" -c 'import pytest' 2>/dev/null; then
    "$PYTHON" -m pytest -q -p no:cacheprovider "$here/tests/test_ffi.py"
else
    "$PYTHON" "$here/tests/test_ffi.py"
fi
