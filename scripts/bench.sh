#!/usr/bin/env bash
# The overhead benchmark (issue 7): the same workloads sent directly to the fake upstream
# (`codexpool-fake --instant`) and through the gateway (`codexpool serve`), in one run, with
# `oha` as the load tool; optionally LiteLLM in front of the same fake. Writes BENCHMARKS.md.
# Not part of the test run.
#
#   scripts/bench.sh                  # full run: 10 s per measurement after a 2 s warm-up
#   scripts/bench.sh --quick          # smoke run (short, fewer open streams), writes .cache/bench/
#   scripts/bench.sh --peer litellm   # LiteLLM side by side (throwaway venv under .cache/)
#   scripts/bench.sh --help           # every option (durations, concurrency, accounts, output)
#
# Environment: OHA=/path/to/oha to use another oha; BENCH_NO_BUILD=1 to skip `cargo build`;
# BENCH_GATEWAY_WRAPPER="valgrind --tool=callgrind" (or any command prefix) to profile the gateway;
# BENCH_KEEP_WORK=1 keeps the run's directory (database, logs) under .cache/bench/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

for a in "$@"; do
  if [[ $a == -h || $a == --help ]]; then
    exec python3 scripts/bench.py --help
  fi
done

tools="$root/.cache/tools"
oha=${OHA:-}
if [[ -z $oha ]]; then
  if [[ -x $tools/bin/oha ]]; then
    oha=$tools/bin/oha
  elif command -v oha >/dev/null 2>&1; then
    oha=$(command -v oha)
  else
    echo "bench: installing oha into $tools (cargo install oha --locked; a few minutes, once)" >&2
    cargo install oha --locked --root "$tools" >&2
    oha=$tools/bin/oha
  fi
fi

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
  echo "bench: cargo build --release -p codexpool-cli -p codexpool-testkit" >&2
  cargo build --release -p codexpool-cli -p codexpool-testkit --bins >&2
fi

exec python3 scripts/bench.py --oha "$oha" --bin-dir "$root/target/release" \
  --command "scripts/bench.sh${*:+ $*}" "$@"
