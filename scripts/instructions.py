#!/usr/bin/env python3
"""Instructions the gateway executes per request, counted by callgrind: a measure of a change's
cost in the gateway's own work that the machine's load does not move (a shared 2-core machine
moves req/s and CPU time by 10-20 % between runs; these counts repeat to within a fraction of
a percent, what timers do meanwhile included, the request log's writer among them). It counts
user-space instructions only: the kernel's share of a request (the socket calls, about half of
its CPU time) and cache misses are not in it, so it ranks changes to the gateway's code, and
`scripts/bench-ab.py` says what they are worth in time.

Not part of the test run; needs valgrind, oha (scripts/bench.sh installs it) and release builds
(cargo build --release -p codexpool-cli -p codexpool-testkit):

    python3 scripts/instructions.py                          # target/release/codexpool
    python3 scripts/instructions.py /tmp/base/codexpool target/release/codexpool

For each build and workload it starts the fake and the gateway under callgrind, sends WARM
requests at concurrency 1 in one run and WARM + N in another, and prints (second - first) / N:
start-up, warm-up and shutdown cancel out. Every answer must be a 200, or the count means
nothing and the run stops. The fake comes from target/release; oha from $OHA, else
.cache/tools/bin/oha (where scripts/bench.sh installs it), else PATH.
"""

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench
spec.loader.exec_module(bench)

WARM = 200
WORKLOADS = {
    "chat": ("/v1/chat/completions", lambda: bench.chat_body(False)),
    "chat-stream": ("/v1/chat/completions", lambda: bench.chat_body(True)),
    "responses": ("/v1/responses", bench.responses_body),
}


def count(gateway: Path, workload: str, requests: int, oha: str) -> int:
    """Instructions of one gateway process that answered `requests` requests of `workload`."""
    with tempfile.TemporaryDirectory(prefix="instructions-") as tmp:
        work = Path(tmp)
        links = work / "bin"
        links.mkdir()
        support = ROOT / "target" / "release"
        for name, source in (("codexpool", gateway),
                             ("codexpool-fake", support / "codexpool-fake"),
                             ("codexpool-bare-relay", support / "codexpool-bare-relay")):
            os.symlink(source, links / name)
        out = work / "callgrind.out"
        os.environ["BENCH_GATEWAY_WRAPPER"] = f"valgrind --tool=callgrind --callgrind-out-file={out}"
        args = types.SimpleNamespace(bin_dir=str(links), accounts=4, fake_workers=2, gateway_env=[])
        stack = bench.Stack(args, work)
        try:
            stack.start_fake()
            stack.start_gateway()
            path, body = WORKLOADS[workload]
            (work / "body.json").write_bytes(body())
            run = subprocess.run([oha, "-n", str(requests), "-c", "1", "--no-tui",
                                  "--output-format", "json", "-m", "POST",
                                  "-H", f"authorization: Bearer {stack.key}",
                                  "-H", "content-type: application/json",
                                  "-D", str(work / "body.json"), stack.gateway_url + path],
                                 check=True, capture_output=True, text=True)
            codes = json.loads(run.stdout).get("statusCodeDistribution") or {}
            if codes != {"200": requests}:
                raise SystemExit(f"instructions: {gateway} answered {codes} to {requests} "
                                 f"{workload} requests, not {requests} 200s")
            # callgrind writes its counts when the process ends.
            os.kill(stack.gateway.pid, signal.SIGTERM)
            stack.gateway.popen.wait(120)
        finally:
            stack.stop()
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"instructions: no totals in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="*", default=[str(ROOT / "target" / "release" / "codexpool")],
                    help="`codexpool` binaries to measure (default target/release/codexpool)")
    ap.add_argument("--workload", action="append", choices=list(WORKLOADS),
                    help="repeatable (default: all)")
    ap.add_argument("--requests", type=int, default=1000, help="N (default 1000)")
    cached = ROOT / ".cache" / "tools" / "bin" / "oha"
    ap.add_argument("--oha", default=os.environ.get("OHA")
                    or (str(cached) if cached.exists() else shutil.which("oha")) or str(cached))
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions: valgrind is not installed (apt-get install valgrind)")
    if not Path(args.oha).exists():
        raise SystemExit(f"instructions: no oha at {args.oha} (scripts/bench.sh installs it)")
    builds = [Path(b).resolve() for b in args.builds]
    for b in builds:
        if not b.is_file():
            raise SystemExit(f"instructions: {b} is not a file")
    for workload in args.workload or list(WORKLOADS):
        for build in builds:
            first = count(build, workload, WARM, args.oha)
            second = count(build, workload, WARM + args.requests, args.oha)
            per = (second - first) / args.requests
            print(f"{workload:12} {per:10,.0f} instructions per request  {build}", flush=True)


if __name__ == "__main__":
    main()
