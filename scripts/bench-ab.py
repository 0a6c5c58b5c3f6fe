#!/usr/bin/env python3
"""Paired A/B of two `codexpool` builds: both gateways in front of one fake, the same
workloads sent to each in turn (the order alternating by round), so that a change's cost shows
apart from the machine's own drift, which moves a whole `scripts/bench.sh` run. Not part of the
test run; uses `scripts/bench.py`'s stack and its oha.

    # the build to compare against, in a worktree with a target dir of its own
    git worktree add /tmp/base <rev>
    (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release -p codexpool-cli)
    cargo build --release -p codexpool-cli -p codexpool-testkit
    python3 scripts/bench-ab.py /tmp/base-target/release/codexpool --rounds 4  # even: each build goes first as often

Prints one line per measurement (workload, concurrency, build, req/s, p50 and p99 ms, gateway
CPU µs per answered request, failed requests), then the medians per build.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench
spec.loader.exec_module(bench)


def stack(gateway: Path, support: Path, work: Path) -> "bench.Stack":
    """A `bench.Stack` whose gateway is the `gateway` binary (the fake and the relay come from
    the folder `support`, the build under test)."""
    links = work / "bin"
    links.mkdir(parents=True)
    for name, source in (("codexpool", gateway),
                         ("codexpool-fake", support / "codexpool-fake"),
                         ("codexpool-bare-relay", support / "codexpool-bare-relay")):
        os.symlink(source, links / name)
    args = types.SimpleNamespace(bin_dir=str(links), accounts=4,
                                 fake_workers=len(os.sched_getaffinity(0)), gateway_env=[])
    return bench.Stack(args, work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the `codexpool` binary to compare against")
    ap.add_argument("--new", default=str(ROOT / "target" / "release"),
                    help="folder of the builds under test (default target/release)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--oha", default=str(ROOT / ".cache" / "tools" / "bin" / "oha"))
    args = ap.parse_args()

    new_dir = Path(args.new).resolve()
    base_bin = Path(args.base).resolve()
    if not base_bin.is_file():
        raise SystemExit(f"bench-ab: {base_bin} is not a file")
    oha = bench.Oha(args.oha)
    work = Path(tempfile.mkdtemp(prefix="ab-", dir=tempfile.gettempdir()))
    new = stack(new_dir / "codexpool", new_dir, work / "new")
    new.start_fake()
    old = stack(base_bin, new_dir, work / "base")
    old.fake_info = new.fake_info
    os.symlink(work / "new" / "homes", work / "base" / "homes")
    new.start_gateway()
    old.start_gateway()

    workloads = [("chat-stream", bench.chat_body(True), 1), ("chat", bench.chat_body(False), 1),
                 ("chat", bench.chat_body(False), 32)]
    results: dict[tuple, list] = {}
    try:
        for name, body, conc in workloads:
            for r in range(args.rounds):
                order = [("new", new), ("base", old)]
                for label, st in order if r % 2 == 0 else reversed(order):
                    url = st.gateway_url + "/v1/chat/completions"
                    headers = [f"Authorization: Bearer {st.key}"]
                    oha.run(url, body, headers, conc, 1.0, 10)  # warm-up
                    cpu = bench.tree_cpu_secs(st.gateway.pid)
                    t0 = time.monotonic()
                    s = bench.summarize(oha.run(url, body, headers, conc, args.duration, 10),
                                        time.monotonic() - t0)
                    cpu_us = (bench.tree_cpu_secs(st.gateway.pid) - cpu) / max(1, s["ok"]) * 1e6
                    row = (s["rps"], s["p50"], s["p99"], cpu_us, s["non_200"] + s["errors"])
                    results.setdefault((name, conc, label), []).append(row)
                    print(f"{name:<12} c={conc:<3} {label:<5} {row[0]:>8.0f} req/s  p50 "
                          f"{row[1]:.3f}  p99 {row[2]:.3f} ms  cpu {row[3]:.0f} µs  "
                          f"failed {row[4]}", flush=True)
    finally:
        bench.Proc.stop_all()
    print("\nmedians (req/s, p50 ms, p99 ms, gateway CPU µs per request):")
    for (name, conc, label), rows in results.items():
        med = [statistics.median(col) for col in zip(*rows)]
        print(f"{name:<12} c={conc:<3} {label:<5} {med[0]:>8.0f}  {med[1]:.3f}  {med[2]:.3f}  "
              f"{med[3]:.0f}")


if __name__ == "__main__":
    main()
