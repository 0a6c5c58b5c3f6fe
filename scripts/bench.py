#!/usr/bin/env python3
"""The overhead benchmark of issue 7 (run it through scripts/bench.sh, which installs oha and
builds the release binaries first).

In ONE run, against one `codexpool-fake --instant` upstream:
  * the same workloads go directly to the fake and through `codexpool serve` (and, with
    `--peer litellm`, through LiteLLM in front of the fake's plain OpenAI API):
      chat          POST /v1/chat/completions, stream=false  (direct: the fake's /v1)
      chat-stream   POST /v1/chat/completions, stream=true   (~1 KB answer in 20 chunks)
      responses     POST /v1/responses, stream=true          (direct: /backend-api/codex/responses)
      chat-long     chat, stream=false, a ~240 KB conversation of 300 messages
      codex-long    /v1/responses as the Codex CLI sends a turn: its headers and a ~250 KB
                    agent history (reasoning, shell calls and their output), passed on as is
      models        GET /v1/models (no upstream call: the floor under every request)
    at each concurrency (default 1 and 32), `--warmup` then `--duration` each, with oha;
  * the control: the targeted workloads also go through `codexpool-bare-relay`, a proxy that
    only forwards (hyper in, hyper out, as the gateway; no key check, parsing, translation or
    log) to the fake's Codex endpoint, so it moves the bytes the gateway moves and shows what
    two loopback HTTP exchanges cost on this machine by themselves; with a peer, a second relay
    forwards the chat workloads to the fake's /v1 as LiteLLM does (`--no-control` skips both);
  * CPU seconds per 10k requests from /proc/<pid>/stat (utime+stime) around each measurement,
    for the gateway, the fake, the relays and the peer; the CPU the rest of the machine used
    meanwhile is recorded as a noise figure;
  * the gateway's RSS at idle (after start, before any load) and with `--streams` concurrent open
    streams held by the fake (`instant-hold-<SECS>` models), opened by an asyncio client.

Before measuring a target it checks one answer of it (a 200 holding a whole answer), and after
each measurement that no process under test has exited. Writes a Markdown report (machine,
commit, command, tables, targets with pass/miss; a figure taken while requests failed misses)
to BENCHMARKS.md, or under .cache/bench/ for `--quick` and runs that measure less than the
issue asks for, and the raw figures as .cache/bench/<report name>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# LiteLLM version for `--peer litellm` (installed with its `proxy` extra into a throwaway venv).
LITELLM_VERSION = "1.108.7"

# The targets of issue 7.
TARGET_ADDED_P50_MS = 0.2
TARGET_ADDED_P99_MS = 1.0
TARGET_RATIO_C32 = 0.30
TARGET_CONCURRENCY = 32
TARGET_IDLE_RSS_MB = 30.0
TARGET_STREAM_KB = 64.0
TARGET_VS_LITELLM = 100.0

MODEL = "gpt-5-codex"
PEER_UPSTREAM_MODEL = "gpt-4o-mini"
HOLD_PREFIX = "instant-hold-"  # codexpool_testkit::INSTANT_HOLD_PREFIX
PROMPT = "Say hello to the benchmark in about a kilobyte of text."
INSTRUCTIONS = "You are a benchmark target. Answer briefly."


def chat_body(stream: bool, model: str = MODEL) -> bytes:
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": PROMPT},
        ],
        "stream": stream,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def long_chat_body() -> bytes:
    """A long conversation as a chat client resends it every turn: a system prompt and 150
    user/assistant exchanges, ~240 KB (with quotes and newlines to escape)."""
    messages = [{"role": "system", "content": INSTRUCTIONS}]
    for i in range(150):
        messages.append({"role": "user", "content": f"Question {i}: "
                         + "explain the \"borrow checker\" in detail, please.\n" * 15})
        messages.append({"role": "assistant", "content": f"Answer {i}: "
                         + "It enforces aliasing XOR mutability; see `&mut T`.\n" * 15})
    messages.append({"role": "user", "content": PROMPT})
    body = {"model": MODEL, "messages": messages, "stream": False}
    return json.dumps(body, separators=(",", ":")).encode()


# The Codex CLI's session id (its `session_id` header and `prompt_cache_key`).
CODEX_SESSION = "5f0c3a51-2d7e-4b7a-9c1e-0b3e4c5d6e7f"


def codex_turn_body() -> bytes:
    """What the Codex CLI sends on every turn of an agent session: the whole history as Responses
    items (reasoning with its encrypted content, shell calls, their output: source text full of
    quotes and newlines, and now and then a message), ~250 KB, with the CLI's top-level fields."""
    def opaque(i: int, n: int) -> str:  # stands in for encrypted reasoning: base64, no escapes
        seed = hashlib.sha256(f"reasoning {i}".encode()).digest()
        return "gAAAAAB" + base64.b64encode((seed * (n // len(seed) + 1))[:n]).decode()
    source = "".join(f'    let line_{n} = format!("{{}} \\ {{:?}}", "value", Some({n}));\n'
                     for n in range(24))
    items = [{"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "Fix the failing test in src/lib.rs."}]}]
    for i in range(72):
        items.append({"type": "reasoning", "summary": [{"type": "summary_text",
                      "text": f"**Reading module {i}**\n\nChecking how it formats values."}],
                      "content": None, "encrypted_content": opaque(i, 900)})
        args = {"command": ["bash", "-lc", f"sed -n '1,80p' src/module_{i}.rs"], "workdir": "/w"}
        items.append({"type": "function_call", "name": "shell", "call_id": f"call_{i:03}",
                      "arguments": json.dumps(args)})
        output = {"output": f"// module {i}\nfn render() {{\n{source}}}\n",
                  "metadata": {"exit_code": 0, "duration_seconds": 0.01}}
        items.append({"type": "function_call_output", "call_id": f"call_{i:03}",
                      "output": json.dumps(output)})
        if i % 6 == 5:
            items.append({"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": f"Modules up to {i} read; the bug is not there."}]})
    items.append({"type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": PROMPT}]})
    shell = {"type": "function", "name": "shell", "description": "Runs a shell command.",
             "strict": False, "parameters": {"type": "object", "properties": {
                 "command": {"type": "array", "items": {"type": "string"}},
                 "workdir": {"type": "string"}}, "required": ["command"]}}
    body = {"model": MODEL, "instructions": INSTRUCTIONS, "input": items, "tools": [shell],
            "tool_choice": "auto", "parallel_tool_calls": False,
            "reasoning": {"effort": "medium", "summary": "auto"}, "store": False, "stream": True,
            "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": CODEX_SESSION}
    return json.dumps(body, separators=(",", ":")).encode()


def responses_body(model: str = MODEL) -> bytes:
    body = {
        "model": model,
        "instructions": INSTRUCTIONS,
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": PROMPT}],
            }
        ],
        "stream": True,
        "store": False,
    }
    return json.dumps(body, separators=(",", ":")).encode()


# The fake's Codex endpoint: what the gateway calls upstream.
CODEX_PATH = "/backend-api/codex/responses"

# name, label, direct path (on the fake), gateway path, body, stream?, peer-capable?
WORKLOADS = [
    ("chat", "chat, non-streaming", "/v1/chat/completions", "/v1/chat/completions",
     chat_body(False), False, True),
    ("chat-stream", "chat, streaming", "/v1/chat/completions", "/v1/chat/completions",
     chat_body(True), True, True),
    ("responses", "/v1/responses, streaming", CODEX_PATH, "/v1/responses",
     responses_body(), True, False),
    # What a chat client with a long history sends every turn: the translation scales with it.
    ("chat-long", "chat, non-streaming, 240 KB conversation", "/v1/chat/completions",
     "/v1/chat/completions", long_chat_body(), False, False),
    # What the Codex CLI sends every turn: its own body, passed on as is (no translation).
    ("codex-long", "/v1/responses from the Codex CLI, streaming, 250 KB history", CODEX_PATH,
     "/v1/responses", codex_turn_body(), True, False),
    # No upstream call: what one authenticated HTTP exchange costs the gateway (the floor under
    # every model request; the rest is the upstream exchange and the translation).
    ("models", "GET /v1/models (no upstream call)", "/v1/models", "/v1/models", None, False,
     False),
]
# The workloads the targets of issue 7 are about.
TARGETED = ("chat", "chat-stream", "responses")

# Headers a workload's client sends besides its key (to the gateway; the fake ignores them).
CLIENT_HEADERS = {
    "codex-long": ["originator: codex_cli_rs", f"session_id: {CODEX_SESSION}",
                   "OpenAI-Beta: responses=experimental"],
}


# ----- small helpers ---------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10s, 500ms, 1m)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


def fmt_secs(s: float) -> str:
    return f"{s * 1000:.0f}ms" if s < 1 else (f"{s:.0f}s" if s == int(s) else f"{s:g}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Everything here is on loopback: an HTTP(S)_PROXY from the environment must not get it.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 2.0) -> int:
    try:
        with LOOPBACK.open(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return 0


def wait_http(url: str, timeout: float, proc: "Proc | None" = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_get(url) == 200:
            return
        if proc is not None and proc.popen.poll() is not None:
            raise SystemExit(f"bench: {proc.name} exited ({proc.popen.returncode}); see {proc.log}")
        time.sleep(0.2)
    raise SystemExit(f"bench: {url} not ready after {timeout:.0f} s")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (for peers that fork workers)."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        parents.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu_secs(pid: int) -> float:
    total = 0
    for p in [pid, *children_of(pid)]:
        try:
            total += cpu_ticks(p)
        except OSError:
            pass
    return total / CLK_TCK


def mem_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    return out


def system_busy_secs() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def sh(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def try_sh(cmd: list[str], **kw) -> str:
    try:
        return sh(cmd, **kw).strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


# ----- processes -------------------------------------------------------------------------------

class Proc:
    """A child we started (its own session, so a Ctrl-C reaches only us); stopped by pid."""

    live: list["Proc"] = []

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env=None, cwd=None,
                 stdout=subprocess.PIPE, stdin=subprocess.PIPE):
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.popen = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdin=stdin, stdout=stdout,
            stderr=open(self.log, "wb"), start_new_session=True,
        )
        self.pid = self.popen.pid
        Proc.live.append(self)

    def readline(self, timeout: float) -> str:
        """One stdout line (the ready line of the fake or the server)."""
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.popen.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise SystemExit(f"bench: {self.name} printed nothing in {timeout:.0f} s; see {self.log}")
        line = self.popen.stdout.readline()
        if not line:
            raise SystemExit(f"bench: {self.name} exited at start; see {self.log}")
        return line.decode(errors="replace")

    def drain(self) -> None:
        """After the ready line: keep reading stdout into the log, so the pipe never fills."""
        import threading

        def pump(src=self.popen.stdout, dst=self.log.with_suffix(".stdout")):
            with open(dst, "ab") as out:
                for chunk in iter(lambda: src.read1(65536), b""):
                    out.write(chunk)

        threading.Thread(target=pump, daemon=True).start()

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                # Our own child's session: the peer (uvicorn) may have forked workers into it.
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        if self in Proc.live:
            Proc.live.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for p in reversed(list(cls.live)):
            p.stop()


# ----- the load tool ---------------------------------------------------------------------------

class Oha:
    def __init__(self, path: str):
        self.path = path
        self.version = try_sh([path, "--version"])
        help_text = try_sh([path, "--help"])
        self.json_flags = (["--output-format", "json"] if "--output-format" in help_text
                           else ["-j"])
        self.wait_flag = ("--wait-ongoing-requests-after-deadline"
                          if "--wait-ongoing-requests-after-deadline" in help_text else None)
        # Latency of the 200s alone: a gateway answering errors fast must not pass.
        self.success_flag = ("--stats-success-breakdown"
                             if "--stats-success-breakdown" in help_text else None)

    def run(self, url: str, body: bytes | None, headers: list[str], conc: int, duration: float,
            timeout: float) -> dict:
        cmd = [self.path, "-z", fmt_secs(duration), "-c", str(conc), "--no-tui", *self.json_flags,
               "-t", fmt_secs(timeout)]
        body_file = None
        if body is not None:
            # A long body goes in a file: one argument may hold at most 128 KiB on Linux.
            body_file = tempfile.NamedTemporaryFile(prefix="bench-body-", suffix=".json")
            body_file.write(body)
            body_file.flush()
            cmd += ["-m", "POST", "-T", "application/json", "-D", body_file.name]
        cmd += [f for f in (self.wait_flag, self.success_flag) if f]
        for h in headers:
            cmd += ["-H", h]
        cmd.append(url)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=duration + timeout + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise SystemExit(f"bench: oha did not finish ({' '.join(cmd[:-1])} {url})")
        if body_file is not None:
            body_file.close()
        if p.returncode != 0:
            raise SystemExit(f"bench: oha failed ({p.returncode}): {err.decode()[-2000:]}")
        return json.loads(out)


def summarize(raw: dict, wall: float) -> dict:
    """The figures we report from oha's JSON (times in ms)."""
    summary = raw.get("summary", {})
    codes = {str(k): int(v) for k, v in (raw.get("statusCodeDistribution") or {}).items()}
    # An oha without -w aborts the requests open at the deadline: those are no failures.
    errors = {str(k): int(v) for k, v in (raw.get("errorDistribution") or {}).items()
              if "aborted due to deadline" not in str(k)}
    ok = codes.get("200", 0)
    secs = float(summary.get("total") or wall)
    pct = raw.get("latencyPercentilesSuccessful") or raw.get("latencyPercentiles") or {}

    def ms(k):
        v = pct.get(k)
        return None if v is None else float(v) * 1000

    return {
        "ok": ok,
        "non_200": sum(v for k, v in codes.items() if k != "200"),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "status_codes": codes,
        "secs": secs,
        "rps": ok / secs if secs else 0.0,
        "p50": ms("p50"),
        "p90": ms("p90"),
        "p99": ms("p99"),
        "success_rate": summary.get("successRate"),
    }


# ----- the stack under test --------------------------------------------------------------------

class Stack:
    """The fake, the gateway (and the peer), with the pids whose CPU is watched."""

    def __init__(self, args, work: Path):
        self.args = args
        self.work = work
        bins = Path(args.bin_dir).resolve()
        self.fake_bin = bins / "codexpool-fake"
        self.cli_bin = bins / "codexpool"
        self.relay_bin = bins / "codexpool-bare-relay"
        for b in (self.fake_bin, self.cli_bin, self.relay_bin):
            if not b.exists():
                raise SystemExit(f"bench: {b} is missing (cargo build --release -p codexpool-cli "
                                 "-p codexpool-testkit)")
        self.fake: Proc | None = None
        self.gateway: Proc | None = None
        self.peer: Proc | None = None
        # The controls: name ("relay", "relay-openai") -> (process, URL).
        self.relays: dict[str, tuple[Proc, str]] = {}
        self.fake_info: dict = {}
        self.gateway_url = ""
        self.peer_url = ""
        self.key = ""
        self.peer_key = ""

    def cli_env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CODEXPOOL_", "GPTTOOLS_", "RUST_LOG"))}
        info = self.fake_info
        env.update({
            "CODEXPOOL_UPSTREAM_BASE_URL": info["codex_base_url"],
            "CODEXPOOL_ISSUER": info["issuer"],
            "CODEXPOOL_USAGE_BASE_URL": info["usage_base_url"],
            "CODEXPOOL_DISABLE_POLLING": "1",
            "CODEXPOOL_RPC_TOKEN": secrets.token_hex(32),
            "NO_COLOR": "1",
        })
        for item in getattr(self.args, "gateway_env", None) or []:
            k, _, v = item.partition("=")
            env[k] = v
        return env

    def cli(self, *argv: str) -> str:
        db = self.work / "codexpool.db"
        cmd = [str(self.cli_bin), "--db", str(db), *argv]
        r = subprocess.run(cmd, env=self.cli_env(), cwd=self.work, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bench: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}{r.stdout}")
        return r.stdout

    def start_fake(self) -> None:
        homes = self.work / "homes"
        cmd = [str(self.fake_bin), "--instant", "--accounts", str(self.args.accounts),
               "--auth-dir", str(homes), "--workers", str(self.args.fake_workers)]
        self.fake = Proc("fake", cmd, self.work)
        self.fake_info = json.loads(self.fake.readline(30))
        self.fake.drain()
        log(f"fake: {self.fake_info['url']} (pid {self.fake.pid}, {self.args.accounts} accounts, "
            f"{self.args.fake_workers} workers)")

    def start_gateway(self) -> None:
        # `account import DIR` reads DIR/*.json: flatten the fake's DIR/<id>/auth.json.
        flat = self.work / "import"
        flat.mkdir()
        for acct in self.fake_info["accounts"]:
            shutil.copy(self.work / "homes" / acct / "auth.json", flat / f"{acct}.json")
        self.cli("account", "import", str(flat))
        created = json.loads(self.cli("--json", "key", "create", "--name", "bench"))
        self.key = created["secret"]
        self.launch_gateway()

    def launch_gateway(self) -> None:
        """Starts `codexpool serve` on the prepared database (again, for a fresh process)."""
        if self.gateway is not None:
            self.gateway.stop()
        cmd = [str(self.cli_bin), "--db", str(self.work / "codexpool.db"), "--json", "serve",
               "--addr", "127.0.0.1:0"]
        # For profiling: e.g. BENCH_GATEWAY_WRAPPER="valgrind --tool=callgrind".
        cmd = os.environ.get("BENCH_GATEWAY_WRAPPER", "").split() + cmd
        self.gateway = Proc("gateway", cmd, self.work, env=self.cli_env(), cwd=self.work)
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = self.gateway.readline(max(1.0, deadline - time.monotonic())).strip()
            try:
                url = json.loads(line)["url"]
            except (ValueError, KeyError, TypeError):
                m = re.search(r"listening on (http://\S+)", re.sub(r"\x1b\[[0-9;]*m", "", line))
                url = m.group(1) if m else None
        if not url:
            raise SystemExit(f"bench: no URL in the gateway's banner; see {self.gateway.log}")
        self.gateway_url = url.rstrip("/")
        self.gateway.drain()
        wait_http(self.gateway_url + "/health", 30, self.gateway)
        log(f"gateway: {self.gateway_url} (pid {self.gateway.pid})")

    def start_relay(self, name: str, path: str | None) -> None:
        """A `codexpool-bare-relay` in front of the fake: every request to `path` (the
        client's own path when None)."""
        cmd = [str(self.relay_bin), "--upstream", self.fake_info["url"]]
        if path:
            cmd += ["--path", path]
        proc = Proc(name, cmd, self.work)
        url = json.loads(proc.readline(30))["url"]
        proc.drain()
        self.relays[name] = (proc, url)
        log(f"{name}: {url} (pid {proc.pid}) -> fake{path or ''}")

    def start_litellm(self) -> None:
        venv = ensure_litellm(self.args.litellm_version)
        port = free_port()
        cfg = self.work / "litellm.yaml"
        # LiteLLM refuses to start without a master key; clients present it like a platform key.
        self.peer_key = "sk-" + secrets.token_hex(24)
        # The upstream model is one LiteLLM drives through plain Chat Completions (for the
        # gpt-5-codex name it would switch to the Responses API); clients still ask for MODEL.
        # Cooldowns off: a timeout must not turn the rest of the run into instant 429s.
        cfg.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{PEER_UPSTREAM_MODEL}\n"
            f"      api_base: {self.fake_info['openai_base_url']}\n"
            f"      api_key: {self.fake_info['openai_api_key']}\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  drop_params: true\n"
            "router_settings:\n"
            "  disable_cooldowns: true\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
        env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                    "LITELLM_MASTER_KEY": self.peer_key,
                    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
        cmd = [str(venv / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1",
               "--port", str(port)]
        self.peer = Proc("litellm", cmd, self.work, env=env, cwd=self.work,
                         stdout=subprocess.DEVNULL)
        self.peer_url = f"http://127.0.0.1:{port}"
        wait_http(self.peer_url + "/health/liveliness", 180, self.peer)
        log(f"litellm {self.args.litellm_version}: {self.peer_url} (pid {self.peer.pid})")

    def check_alive(self) -> None:
        """Ends the run when a process under test has exited (every later figure would be 0)."""
        procs = [self.fake, self.gateway, self.peer, *(p for p, _url in self.relays.values())]
        for p in procs:
            if p is not None and p.popen.poll() is not None:
                raise SystemExit(f"bench: {p.name} exited ({p.popen.returncode}) during the "
                                 f"run; see {p.log}")

    def stop(self) -> None:
        Proc.stop_all()


def ensure_litellm(version: str) -> Path:
    """A throwaway venv under .cache/ with `litellm[proxy]==version` (installed once)."""
    venv = CACHE / "litellm-venv"
    exe = venv / "bin" / "litellm"
    have = list(venv.glob(f"lib/python*/site-packages/litellm-{version}.dist-info"))
    if exe.exists() and have:
        return venv
    log(f"installing litellm[proxy]=={version} into {venv} (once; a minute or two)")
    if not (venv / "bin" / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    f"litellm[proxy]=={version}"], check=True)
    return venv


# ----- measurements ----------------------------------------------------------------------------

# What a whole answer of each workload ends with or holds (a 200 with an error in it, or a
# stream cut short, is no answer).
ANSWER_MARKS = {
    "chat": b'"chat.completion"', "chat-stream": b"data: [DONE]",
    "responses": b"response.completed", "chat-long": b'"chat.completion"',
    "codex-long": b"response.completed", "models": b'"list"',
}


class Runner:
    def __init__(self, args, stack: Stack, oha: Oha):
        self.args = args
        self.stack = stack
        self.oha = oha
        self.checked: set[tuple[str, str]] = set()

    def check_answer(self, where: str, wl) -> None:
        """One request before the first measurement of a target: a 200 holding a whole answer,
        or the run ends (oha counts any 200 as served)."""
        url, headers, _ = self.target(where, wl)
        body = wl[4]
        req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
        for h in headers:
            name, _, value = h.partition(": ")
            req.add_header(name, value)
        if body:
            req.add_header("Content-Type", "application/json")
        # The bare relay passes the Codex events on whatever the client asked.
        mark = b"response.completed" if where == "relay" else ANSWER_MARKS[wl[0]]
        timeout = self.args.peer_timeout if where == "peer" else self.args.timeout
        try:
            with LOOPBACK.open(req, timeout=timeout + 20) as resp:
                status, answer = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, answer = e.code, e.read()
        except OSError as e:
            raise SystemExit(f"bench: {where} {wl[0]}: no answer ({e})")
        if status != 200 or mark not in answer:
            raise SystemExit(f"bench: {where} {wl[0]}: HTTP {status} without {mark.decode()}: "
                             f"{answer[:500]!r}")

    def target(self, where: str, wl) -> tuple[str, list[str], list[int]]:
        """URL, headers and the pids whose CPU counts for one target."""
        name, _label, direct_path, gw_path, _body, _stream, _peer = wl
        s = self.stack
        if where == "direct":
            key = (s.fake_info["openai_api_key"] if direct_path.startswith("/v1/")
                   else "bench-any-token")
            return s.fake_info["url"] + direct_path, [f"Authorization: Bearer {key}"], []
        if where == "relay":
            # Forwards every request to the fake's Codex endpoint (instant mode takes any token).
            return s.relays[where][1] + gw_path, ["Authorization: Bearer bench-any-token"], []
        if where == "relay-openai":
            key = s.fake_info["openai_api_key"]
            return s.relays[where][1] + direct_path, [f"Authorization: Bearer {key}"], []
        if where == "gateway":
            return (s.gateway_url + gw_path,
                    [f"Authorization: Bearer {s.key}", *CLIENT_HEADERS.get(name, [])], [])
        return s.peer_url + gw_path, [f"Authorization: Bearer {s.peer_key}"], []

    def watched(self) -> dict[str, int]:
        s = self.stack
        out = {"fake": s.fake.pid, "gateway": s.gateway.pid}
        out.update({name: proc.pid for name, (proc, _url) in s.relays.items()})
        if s.peer:
            out["peer"] = s.peer.pid
        return out

    def measure(self, where: str, wl, conc: int) -> dict:
        if (where, wl[0]) not in self.checked:
            self.check_answer(where, wl)
            self.checked.add((where, wl[0]))
        url, headers, _ = self.target(where, wl)
        body = wl[4]
        timeout = self.args.peer_timeout if where == "peer" else self.args.timeout
        if self.args.warmup > 0:
            self.oha.run(url, body, headers, conc, self.args.warmup, timeout)
        pids = self.watched()
        cpu0 = {k: tree_cpu_secs(p) for k, p in pids.items()}
        busy0, steal0 = system_busy_secs()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        raw = self.oha.run(url, body, headers, conc, self.args.duration, timeout)
        wall = time.monotonic() - t0
        self.stack.check_alive()
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy1, steal1 = system_busy_secs()
        cpu1 = {k: tree_cpu_secs(p) for k, p in pids.items()}
        res = summarize(raw, wall)
        cpu = {k: cpu1[k] - cpu0[k] for k in pids}
        load_tool = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        ours = sum(cpu.values()) + load_tool
        res.update({
            "where": where, "workload": wl[0], "concurrency": conc, "wall": wall,
            "cpu": cpu, "load_tool_cpu": load_tool,
            "cpu_per_10k": {k: (v / res["ok"] * 10_000 if res["ok"] else None)
                            for k, v in cpu.items()},
            # CPU the rest of the machine used meanwhile, in cores (other engineers' builds).
            "other_cores": max(0.0, (busy1 - busy0) - ours) / wall,
            "steal_cores": (steal1 - steal0) / wall,
        })
        p50 = "-" if res["p50"] is None else f"{res['p50']:.3f}"
        p99 = "-" if res["p99"] is None else f"{res['p99']:.3f}"
        log(f"{where:8} {wl[0]:12} c={conc:<3} {res['rps']:9.0f} req/s  p50 {p50} ms  "
            f"p99 {p99} ms  errors {res['errors'] + res['non_200']}  "
            f"other load {res['other_cores']:.2f} cores")
        return res

    def throughput(self) -> list[dict]:
        results = []
        for rnd in range(self.args.rounds):
            for wl in WORKLOADS:
                for conc in self.args.concurrency:
                    wheres = ["direct", "gateway"]
                    if "relay" in self.stack.relays and wl[0] in TARGETED:
                        wheres.append("relay")
                    if self.stack.peer and wl[6]:
                        wheres.append("peer")
                        if "relay-openai" in self.stack.relays:
                            wheres.append("relay-openai")
                    if rnd % 2 == 1:
                        wheres = wheres[::-1]  # alternate who goes first across rounds
                    for where in wheres:
                        r = self.measure(where, wl, conc)
                        r["round"] = rnd
                        results.append(r)
        return results


async def hold_streams(host: str, port: int, path: str, body: bytes, key: str, n: int,
                       measure_pids: dict[str, int], settle: float) -> dict:
    """Opens `n` streams, waits for the first event of each, reads memory, closes them."""
    req = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
           f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    gate = asyncio.Semaphore(64)  # handshakes in flight
    conns: list[asyncio.StreamWriter] = []

    async def one():
        async with gate:
            reader, writer = await asyncio.open_connection(host, port)
            conns.append(writer)
            writer.write(req)
            await writer.drain()
            buf = b""
            while b"data:" not in buf:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError(f"closed early: {buf[:200]!r}")
                buf += chunk
            status = buf.split(b" ", 2)[1].decode()
            if status != "200":
                raise ConnectionError(f"status {status}: {buf[:300]!r}")
            return reader

    t0 = time.monotonic()
    outcomes = await asyncio.gather(*(asyncio.wait_for(one(), 60) for _ in range(n)),
                                    return_exceptions=True)
    opened = time.monotonic() - t0
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    await asyncio.sleep(settle)
    mem = {k: mem_kb(p) for k, p in measure_pids.items()}
    for w in conns:
        w.close()
    await asyncio.gather(*(w.wait_closed() for w in conns), return_exceptions=True)
    return {
        "open": n - len(failures),
        "failed": len(failures),
        "failure_sample": [repr(f)[:300] for f in failures[:3]],
        "open_secs": opened,
        "mem": mem,
    }


def memory(args, stack: Stack) -> dict:
    """Per stream kind, in a freshly started gateway: idle RSS, RSS with `args.streams` open
    ("cold": everything the first streams cost, allocator growth included), then once more in
    the same process after closing them ("warm": what an open stream costs once the process has
    grown)."""
    out = {}
    hold = f"{HOLD_PREFIX}{args.hold}"
    for name, path, body in (
        ("chat-stream", "/v1/chat/completions", chat_body(True, hold)),
        ("responses", "/v1/responses", responses_body(hold)),
    ):
        stack.launch_gateway()
        host, port = stack.gateway_url.split("://", 1)[1].rsplit(":", 1)
        pids = {"gateway": stack.gateway.pid, "fake": stack.fake.pid}
        time.sleep(1.0)
        idle = mem_kb(stack.gateway.pid)
        entry: dict = {"idle": idle}
        for phase in ("cold", "warm"):
            before = mem_kb(stack.gateway.pid)
            held = asyncio.run(hold_streams(host, int(port), path, body, stack.key, args.streams,
                                            pids, settle=1.0))
            if held["open_secs"] + 1.0 >= args.hold:
                # The first streams ended before memory was read: the figure would flatter.
                raise SystemExit(f"bench: opening {args.streams} streams took "
                                 f"{held['open_secs']:.0f} s, longer than the fake holds them "
                                 f"(--hold {args.hold}); raise --hold")
            time.sleep(1.5)  # upstream cancellations, lease releases
            after = mem_kb(stack.gateway.pid)
            during = held["mem"]["gateway"]
            base = idle if phase == "cold" else before
            per = ((during["VmRSS"] - base["VmRSS"]) / held["open"]) if held["open"] else None
            entry[phase] = {**held, "before": before, "after_close": after, "per_stream_kb": per}
            log(f"{held['open']} open {name} streams ({phase}): gateway RSS "
                f"{base['VmRSS'] / 1024:.1f} → {during['VmRSS'] / 1024:.1f} MB "
                f"({'-' if per is None else round(per, 1)} KB/stream), {held['failed']} failed, "
                f"opened in {held['open_secs']:.1f} s; after closing "
                f"{after['VmRSS'] / 1024:.1f} MB")
        out[name] = entry
    return out


# ----- report ----------------------------------------------------------------------------------

def direct_over_peer(c: dict, name: str, k: int) -> str | None:
    """The fake alone against the peer ("12×"): the most any gateway in front of it could show."""
    d, p = c.get(("direct", name, k)), c.get(("peer", name, k))
    return f"{d['rps'] / p['rps']:,.0f}×" if d and p and p["rps"] else None


def machine() -> dict:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_total = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    commit = try_sh(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"])
    dirty = try_sh(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory": mem_total,
        "rustc": try_sh(["rustc", "--version"]),
        "python": platform.python_version(),
        "commit": commit + (" (with uncommitted changes)" if dirty not in ("", "?") else ""),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def combine(results: list[dict]) -> dict:
    """Per (where, workload, concurrency): the median over rounds. Per ("vs", base, other,
    workload, concurrency): ratios and added latencies computed round by round from the two
    measurements taken back to back, then the median (pairing keeps a load change between
    rounds out of the comparison)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["where"], r["workload"], r["concurrency"]), []).append(r)
    out: dict[tuple, dict] = {}
    for key, rs in groups.items():
        out[key] = {
            "rps": med([r["rps"] for r in rs]),
            "p50": med([r["p50"] for r in rs]),
            "p99": med([r["p99"] for r in rs]),
            "ok": sum(r["ok"] for r in rs),
            "failed": sum(r["errors"] + r["non_200"] for r in rs),
            "error_kinds": dict(sum((Counter(r["error_kinds"]) for r in rs), Counter())),
            "status_codes": dict(sum((Counter(r["status_codes"]) for r in rs), Counter())),
            "cpu_per_10k": {k: med([r["cpu_per_10k"].get(k) for r in rs])
                            for k in rs[0]["cpu_per_10k"]},
            "other_cores": max(r["other_cores"] for r in rs),
        }
    by_round = {(r["where"], r["workload"], r["concurrency"], r.get("round", 0)): r
                for r in results}
    for base, other in (("direct", "gateway"), ("peer", "gateway"), ("direct", "relay"),
                        ("relay", "gateway"), ("peer", "relay-openai")):
        for (where, wl, conc), rs in groups.items():
            if where != base:
                continue
            ratios, a50, a99 = [], [], []
            for r in rs:
                o = by_round.get((other, wl, conc, r.get("round", 0)))
                if o is None:
                    continue
                ratios.append(o["rps"] / r["rps"] if r["rps"] else None)
                if None not in (o["p50"], r["p50"]):
                    a50.append(o["p50"] - r["p50"])
                if None not in (o["p99"], r["p99"]):
                    a99.append(o["p99"] - r["p99"])
            out[("vs", base, other, wl, conc)] = {
                "ratio": med(ratios), "a50": med(a50), "a99": med(a99),
            }
    return out


def f(v, digits=2, unit=""):
    if v is None:
        return "–"
    return f"{v:.{digits}f}{unit}"


def mark(ok) -> str:
    return "–" if ok is None else ("✅ pass" if ok else "❌ miss")


def report(args, mach: dict, oha_version: str, has_peer: bool, idle: dict, results: list[dict],
           mem: dict, total_secs: float) -> str:
    c = combine(results)
    control = any(k[0] == "relay" for k in c)
    conc = args.concurrency
    lines: list[str] = []
    w = lines.append
    w("# Benchmarks")
    w("")
    w("Generated by `scripts/bench.sh` (issue 7); do not edit by hand. One run measures the same "
      "workloads sent directly to the fake upstream (`codexpool-fake --instant`: pre-rendered "
      "answers, a 1 040-byte text in 20 deltas) and through the gateway (`codexpool serve`, "
      "release build), so the ratios compare figures taken back to back on the same machine. "
      "The load tool, the fake and the gateway share the machine's CPUs.")
    w("")
    w("## Setup")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| command | `{args.command}` |")
    w(f"| commit | `{mach['commit']}` |")
    w(f"| date | {mach['date']} |")
    w(f"| machine | {mach['cpus']} CPUs, {mach['cpu_model']}, {mach['memory']} RAM, "
      f"Linux {mach['kernel']} |")
    w(f"| load average at start | {' '.join(mach['loadavg'])} |")
    w(f"| toolchain | {mach['rustc']}, Python {mach['python']}, {oha_version} |")
    w(f"| runs | warm-up {fmt_secs(args.warmup)} then {fmt_secs(args.duration)} per "
      f"measurement, concurrency {', '.join(map(str, conc))}, {args.rounds} round(s) "
      f"(medians), oha timeout {fmt_secs(args.timeout)} |")
    w(f"| stack | fake: `--instant`, {args.fake_workers} worker thread(s), Codex events with "
      f"`type` first as the backend sends them; gateway: defaults "
      f"(HTTP threads = CPUs), {args.accounts} imported accounts, one key, "
      f"`CODEXPOOL_DISABLE_POLLING=1`"
      + "".join(f", `{e}`" for e in args.gateway_env) + "; request log on |")
    if has_peer:
        w(f"| peer | LiteLLM {args.litellm_version} (`litellm[proxy]`, one worker, master key, "
          f"cooldowns off, upstream model `openai/{PEER_UPSTREAM_MODEL}` so it speaks Chat "
          f"Completions to the fake's `/v1`); oha timeout {fmt_secs(args.peer_timeout)} |")
    if control:
        w("| control | `codexpool-bare-relay`: forwards to the fake's Codex endpoint and does "
          "nothing else (see [the control](#the-control-a-bare-relay)); with a peer, a second "
          "one forwards to the fake's `/v1` |")
    if mach.get("wrapper"):
        w(f"| profiled | the gateway ran under `{mach['wrapper']}`: its CPU and memory figures "
          "include the wrapper's (no memory verdicts) |")
    w(f"| total time | {total_secs / 60:.1f} min |")
    w("")

    # Targets.
    # (target, codexpool's figure, pass?, the bare relay's figure for the same target)
    checks: list[tuple[str, str, object, str]] = []

    def relay_vs(base: str, name: str, k: int) -> dict:
        return c.get(("vs", base, "relay" if base == "direct" else "relay-openai", name, k)) or {}

    def failed(name: str, k: int, *wheres: str) -> int:
        return sum((c.get((where, name, k)) or {}).get("failed", 0) for where in wheres)

    # Every target row is shown, measured or not; a figure taken while requests failed misses.
    for name, label, *_ in WORKLOADS:
        if name not in TARGETED:
            continue
        pair = c.get(("vs", "direct", "gateway", name, 1)) or {}
        r = relay_vs("direct", name, 1)
        bad = failed(name, 1, "direct", "gateway")
        for pct, target in (("p50", TARGET_ADDED_P50_MS), ("p99", TARGET_ADDED_P99_MS)):
            what = f"added {pct} at c=1, {label} (≤ {target} ms)"
            added, ctl = pair.get("a" + pct[1:]), r.get("a" + pct[1:])
            ctl = f"{ctl:+.3f} ms" if ctl is not None else "–"
            if added is None:
                checks.append((what, "not measured", None, ctl))
            elif bad:
                checks.append((what, f"{added:+.3f} ms ({bad:,} failed)", False, ctl))
            else:
                checks.append((what, f"{added:+.3f} ms", added <= target, ctl))
    for name, label, *_ in WORKLOADS:
        if name not in TARGETED:
            continue
        k = TARGET_CONCURRENCY
        what = f"throughput at c={k}, {label} (≥ {TARGET_RATIO_C32:.0%} of direct)"
        ratio = (c.get(("vs", "direct", "gateway", name, k)) or {}).get("ratio")
        r = relay_vs("direct", name, k).get("ratio")
        ctl = f"{r:.0%}" if r is not None else "–"
        bad = failed(name, k, "direct", "gateway")
        if ratio is None:
            checks.append((what, "not measured", None, ctl))
        elif bad:
            checks.append((what, f"{ratio:.0%} ({bad:,} failed)", False, ctl))
        else:
            checks.append((what, f"{ratio:.0%}", ratio >= TARGET_RATIO_C32, ctl))
    # Under a wrapper (a profiler) the memory read is the wrapper's: no verdict.
    wrapped = bool(mach.get("wrapper"))
    idle_mb = idle["VmHWM"] / 1024
    checks.append((f"idle RSS, peak (≤ {TARGET_IDLE_RSS_MB:.0f} MB)", f"{idle_mb:.1f} MB",
                   None if wrapped else idle_mb <= TARGET_IDLE_RSS_MB, "–"))
    for name, m in mem.items():
        per = m["cold"]["per_stream_kb"]
        ok = None if per is None or wrapped else per <= TARGET_STREAM_KB
        checks.append((f"memory per open stream, {name}, cold (≤ {TARGET_STREAM_KB:.0f} KB)",
                       f"{f(per, 1)} KB", ok, "–"))
    if has_peer:
        for name, label, *_rest, peer_ok in WORKLOADS:
            if not peer_ok:
                continue
            for k in conc:
                pair, p = c.get(("vs", "peer", "gateway", name, k)), c.get(("peer", name, k))
                if not (pair and p):
                    continue
                r = relay_vs("peer", name, k).get("ratio")
                r = f"{r:,.0f}×" if r is not None else "–"
                what = f"vs LiteLLM, {label}, c={k} (≥ {TARGET_VS_LITELLM:.0f}×)"
                bad = failed(name, k, "gateway")
                if pair["ratio"] is not None:
                    x = pair["ratio"]
                    ceiling = direct_over_peer(c, name, k)
                    ceiling = f" (direct: {ceiling})" if ceiling else ""
                    value = f"{x:,.0f}×{ceiling}" + (f" ({bad:,} failed)" if bad else "")
                    checks.append((what, value, x >= TARGET_VS_LITELLM and not bad, r))
                elif any((c.get(("peer", name, j)) or {}).get("ok") for j in conc):
                    # It served at another concurrency: it collapsed under this one.
                    checks.append((what, "LiteLLM served nothing", not bad, r))
                else:
                    # It served nothing at all: a peer set up wrong proves nothing.
                    codes = ", ".join(f"{n}× {s}" for s, n in p["status_codes"].items()) or "none"
                    checks.append((what, f"LiteLLM served nothing at all (HTTP: {codes})",
                                   None, r))
    w("## Targets")
    w("")
    head, rule = "| target | measured | |", "|---|---:|---|"
    if control:
        w("The last column is the control measured in the same run: `codexpool-bare-relay`, a "
          "proxy that only forwards bytes (see [the control](#the-control-a-bare-relay)). Where "
          "it misses a target too, no proxy in front of this upstream meets it on this machine.")
        w("")
        head, rule = head + " bare relay (control) |", rule + "---:|"
    w(head)
    w(rule)
    for what, value, ok, ctl in checks:
        w(f"| {what} | {value} | {mark(ok)} |" + (f" {ctl} |" if control else ""))
    w("")

    # Throughput and latency.
    w("## Throughput and latency")
    w("")
    w("Requests/s count 200 answers only (streams read to their end). Added latency = gateway − "
      "direct at the same percentile. With several rounds every figure is a median over "
      "rounds, and the ratio and added latencies are computed per round from the two "
      "measurements taken back to back, then the median. CPU = utime + stime of the process (all threads) during "
      "the measurement, per 10 000 answered requests. \"Other load\" is the CPU the rest of "
      "the machine used meanwhile (other jobs), in cores: high values mean a noisy figure.")
    w("")
    w("| workload | c | direct req/s | gateway req/s | gateway ÷ direct | direct p50 / p99 ms | "
      "gateway p50 / p99 ms | added p50 / p99 ms | CPU s/10k gateway | CPU s/10k fake "
      "(direct / via gateway) | failed | other load |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, label, *_ in WORKLOADS:
        for k in conc:
            d, g = c.get(("direct", name, k)), c.get(("gateway", name, k))
            if not (d and g):
                continue
            pair = c[("vs", "direct", "gateway", name, k)]
            ratio, a50, a99 = pair["ratio"], pair["a50"], pair["a99"]
            w(f"| {label} | {k} | {d['rps']:,.0f} | {g['rps']:,.0f} | {f(ratio and ratio * 100, 0)} % "
              f"| {f(d['p50'], 3)} / {f(d['p99'], 3)} | {f(g['p50'], 3)} / {f(g['p99'], 3)} "
              f"| {f(a50, 3)} / {f(a99, 3)} | {f(g['cpu_per_10k']['gateway'])} "
              f"| {f(d['cpu_per_10k']['fake'])} / {f(g['cpu_per_10k']['fake'])} "
              f"| {d['failed']} / {g['failed']} | {d['other_cores']:.2f} / {g['other_cores']:.2f} |")
    w("")
    noisy = max((v["other_cores"] for v in c.values() if "other_cores" in v), default=0.0)
    if noisy > 0.25:
        w(f"⚠ Other jobs used up to {noisy:.2f} cores during this run (\"other load\" column): "
          "figures taken under load are depressed and ratios between two measurements with "
          "different load are skewed. "
          + ("Medians over rounds dampen this; a quiet machine removes it."
             if args.rounds > 1 else
             "Rerun on a quiet machine, or with `--rounds 3` for medians of paired rounds."))
        w("")
    top = max(conc)
    floor = c.get(("gateway", "models", top))
    if floor and floor["cpu_per_10k"].get("gateway") is not None:
        w(f"Where the gateway's CPU goes: `GET /v1/models` (key check, routing, one HTTP exchange "
          f"with the client, no upstream call) costs it "
          f"{floor['cpu_per_10k']['gateway'] * 100:.0f} µs per request at c={top}; a model "
          "request adds the exchange with the upstream (a second connection, its syscalls and "
          "wake-ups) and the translation, and pays for the fake's answer too (the fake's "
          "column: the Codex answer is a 12 KB event stream, the direct chat answer 1.3 KB "
          "of JSON).")
        w("")
    w("The two long workloads are what real clients send on every turn, the whole history "
      "again: a chat client's conversation, translated item by item, and the Codex CLI's own "
      "body, passed on byte for byte. Both cost the gateway mostly what reading a long body "
      "costs: the kernel copies it in and out, and serde_json checks every string of it once "
      "(escapes are dense in code and shell output, and each one is a step); the upstream "
      "answer is the same 12 KB stream as for a short request.")
    w("")
    w("CPU per request depends on load too: with idle cores the serving threads park "
      "and wake around every request (futex wake-ups), so c=1 costs more CPU per request than "
      "c=32, and a busy machine shows less than a quiet one.")
    w("")

    if control:
        w("## The control: a bare relay")
        w("")
        w("`codexpool-bare-relay` (in `codexpool-testkit`) forwards every request to the fake's "
          "Codex endpoint and streams the answer back, and does nothing else: no key check, no "
          "parsing, no translation, no log, no account choice. It is built on what the gateway "
          "uses for its two HTTP exchanges, the way the gateway uses it (hyper's server, hyper-util's "
          "pooled client, one thread per CPU with a single-threaded tokio runtime and its own "
          "upstream pool, `TCP_NODELAY`, mimalloc), and the fake sends it the same "
          "12 KB Codex event stream it sends the gateway, which the relay passes on whole (the "
          "gateway sends a chat client 1.3 KB). So it is the floor under any proxy in front of "
          "this upstream on this machine: what two loopback HTTP exchanges, the extra process "
          "and its wake-ups cost by themselves. Gateway ÷ relay is the share of that floor the "
          "gateway keeps while doing its work.")
        w("")
        w("| workload | c | direct req/s | relay req/s | relay ÷ direct | gateway ÷ direct | "
          "gateway ÷ relay | relay added p50 / p99 ms | CPU s/10k relay / gateway | CPU s/10k "
          "fake via relay / via gateway |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, label, *_ in WORKLOADS:
            for k in conc:
                d, r, g = (c.get((where, name, k)) for where in ("direct", "relay", "gateway"))
                if not (d and r and g):
                    continue
                dr = c[("vs", "direct", "relay", name, k)]
                dg = c[("vs", "direct", "gateway", name, k)]["ratio"]
                rg = c[("vs", "relay", "gateway", name, k)]["ratio"]
                w(f"| {label} | {k} | {d['rps']:,.0f} | {r['rps']:,.0f} "
                  f"| {f(dr['ratio'] and dr['ratio'] * 100, 0)} % | {f(dg and dg * 100, 0)} % "
                  f"| {f(rg and rg * 100, 0)} % | {f(dr['a50'], 3)} / {f(dr['a99'], 3)} "
                  f"| {f(r['cpu_per_10k'].get('relay'))} / {f(g['cpu_per_10k']['gateway'])} "
                  f"| {f(r['cpu_per_10k']['fake'])} / {f(g['cpu_per_10k']['fake'])} |")
        w("")

    if has_peer:
        w("## Side by side with LiteLLM")
        w("")
        w(f"The same chat workloads through LiteLLM {args.litellm_version} in front of the "
          "fake's plain OpenAI API (`/v1`, key `sk-fake`), measured in the same run. Failed = "
          "non-200 answers plus errors and timeouts "
          f"({fmt_secs(args.peer_timeout)}) seen by oha. Direct ÷ LiteLLM is the fake alone "
          "against LiteLLM: the most any gateway in front of the fake could show.")
        w("")
        if control:
            w("Bare relay ÷ LiteLLM is the control (a second `codexpool-bare-relay`, forwarding "
              "to the fake's `/v1` as LiteLLM does): what a proxy that does nothing at all shows "
              "against LiteLLM here.")
            w("")
        w("| workload | c | codexpool req/s | LiteLLM req/s | codexpool ÷ LiteLLM | bare relay ÷ "
          "LiteLLM | direct ÷ LiteLLM | codexpool p50 / p99 ms | LiteLLM p50 / p99 ms | CPU "
          "s/10k codexpool / LiteLLM | LiteLLM failed |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, label, *_rest, peer_ok in WORKLOADS:
            if not peer_ok:
                continue
            for k in conc:
                g, p = c.get(("gateway", name, k)), c.get(("peer", name, k))
                if not (g and p):
                    continue
                ratio = c[("vs", "peer", "gateway", name, k)]["ratio"]
                x = f"{ratio:,.0f}×" if ratio is not None else "∞"
                kinds = ", ".join(f"{v}× {k2}" for k2, v in list(p["error_kinds"].items())[:2])
                codes = ", ".join(f"{v}× {k2}" for k2, v in p["status_codes"].items() if k2 != "200")
                why = "; ".join(x2 for x2 in (codes, kinds) if x2)
                dx = direct_over_peer(c, name, k) or "–"
                rx = (c.get(("vs", "peer", "relay-openai", name, k)) or {}).get("ratio")
                rx = f"{rx:,.0f}×" if rx is not None else "–"
                w(f"| {label} | {k} | {g['rps']:,.0f} | {p['rps']:,.1f} | {x} | {rx} | {dx} "
                  f"| {f(g['p50'], 3)} / {f(g['p99'], 3)} | {f(p['p50'], 1)} / {f(p['p99'], 1)} "
                  f"| {f(g['cpu_per_10k'].get('gateway'))} / {f(p['cpu_per_10k'].get('peer'), 1)} "
                  f"| {p['failed']}{f' ({why})' if why else ''} |")
        w("")

    w("## Memory")
    w("")
    w(f"Gateway RSS (`VmRSS`, peak `VmHWM`, from `/proc/<pid>/status`). Idle: after start, "
      f"before any load. Open streams: {args.streams} concurrent streaming requests held open by "
      f"the fake (`instant-hold-{args.hold}` model: the first half of the answer at once, the "
      "rest later), opened by an asyncio client that waits for each stream's first event, in a "
      "freshly started gateway. Per stream, cold = (RSS with the streams open − idle RSS of that "
      "fresh process) ÷ streams, everything included; warm = the same once more in that process "
      "after the first streams closed (the allocator has grown already).")
    w("")
    w("| state | gateway RSS | gateway peak RSS | threads |")
    w("|---|---:|---:|---:|")
    w(f"| idle, after start (before any load) | {idle['VmRSS'] / 1024:.1f} MB | "
      f"{idle['VmHWM'] / 1024:.1f} MB | {idle.get('Threads', '?')} |")
    for name, m in mem.items():
        for phase in ("cold", "warm"):
            p = m[phase]
            d, a = p["mem"]["gateway"], p["after_close"]
            w(f"| **{p['open']} open {name} streams, {phase}** ({p['failed']} failed) | "
              f"**{d['VmRSS'] / 1024:.1f} MB** | {d['VmHWM'] / 1024:.1f} MB | "
              f"{d.get('Threads', '?')} |")
            w(f"| after closing them | {a['VmRSS'] / 1024:.1f} MB | {a['VmHWM'] / 1024:.1f} MB | "
              f"{a.get('Threads', '?')} |")
    w("")
    w("| streams | fresh gateway idle RSS | per open stream, cold | per open stream, warm "
      "| fake RSS with them open |")
    w("|---|---:|---:|---:|---:|")
    for name, m in mem.items():
        w(f"| {name} | {m['idle']['VmRSS'] / 1024:.1f} MB | {f(m['cold']['per_stream_kb'], 1)} KB "
          f"| {f(m['warm']['per_stream_kb'], 1)} KB "
          f"| {m['cold']['mem']['fake']['VmRSS'] / 1024:.1f} MB |")
    w("")
    w("## Reproduce")
    w("")
    w("```console")
    w(f"$ {args.command}")
    w("")
    w("$ scripts/bench.sh                 # defaults (installs oha under .cache/ if missing)")
    w("$ scripts/bench.sh --peer litellm  # with LiteLLM side by side (venv under .cache/)")
    w("$ scripts/bench.sh --quick         # smoke run, report in .cache/bench/")
    w("$ scripts/bench.sh --help          # durations, concurrency, streams, accounts")
    w("```")
    w("")
    w("Figures move with the machine's other load (the \"other load\" column); compare the "
      "ratios, which are taken in one run, rather than absolute numbers across runs.")
    w("")
    return "\n".join(lines)


# ----- main ------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(
        prog="scripts/bench.sh",
        description="codexpool overhead benchmark (issue 7): direct vs through the gateway, "
                    "one run; writes BENCHMARKS.md")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 s per measurement after 0.5 s, 200 open streams, "
                         "report in .cache/bench/BENCHMARKS.quick.md unless --out")
    ap.add_argument("--duration", type=parse_duration, default=None,
                    help="length of each measurement (default 10s)")
    ap.add_argument("--warmup", type=parse_duration, default=None,
                    help="warm-up before each measurement (default 2s)")
    ap.add_argument("--concurrency", default="1,32", help="comma-separated (default 1,32)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every measurement, alternating direct/gateway order; "
                         "medians are reported (default 1)")
    ap.add_argument("--streams", type=int, default=None,
                    help="concurrent open streams for the memory figure (default 1000)")
    ap.add_argument("--hold", type=int, default=120,
                    help="seconds the fake holds those streams (default 120)")
    ap.add_argument("--accounts", type=int, default=4, help="accounts in the pool (default 4)")
    ap.add_argument("--fake-workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="worker threads of the fake (default: CPUs)")
    ap.add_argument("--timeout", type=parse_duration, default=10.0,
                    help="oha per-request timeout (default 10s)")
    ap.add_argument("--peer", action="append", choices=["litellm"], default=[],
                    help="also measure this peer on the chat workloads")
    ap.add_argument("--peer-timeout", type=parse_duration, default=10.0,
                    help="oha per-request timeout for the peer (default 10s)")
    ap.add_argument("--litellm-version", default=LITELLM_VERSION,
                    help=f"LiteLLM version for --peer litellm (default {LITELLM_VERSION})")
    ap.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra setting for the gateway, e.g. CODEXPOOL_HTTP_WORKER_MIN=1 "
                         "(repeatable; shown in the report)")
    ap.add_argument("--out", default=None, help="report path (default BENCHMARKS.md)")
    ap.add_argument("--from-json", metavar="PATH",
                    help="only re-render the report from an earlier run's raw figures "
                         "(.cache/bench/<report name>.json, e.g. BENCHMARKS.json) into --out "
                         "(default: that run's --out)")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the bare-relay control measurements")
    ap.add_argument("--skip-memory", action="store_true", help="no open-streams measurement")
    ap.add_argument("--skip-throughput", action="store_true", help="only the memory figures")
    ap.add_argument("--oha", default=os.environ.get("OHA") or shutil.which("oha") or "oha",
                    help="the oha binary (bench.sh passes the one it installed)")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"),
                    help="where codexpool and codexpool-fake are (default target/release)")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.from_json:
        # Re-render a report from the raw figures of an earlier run (no measurement).
        raw = json.loads(Path(args.from_json).read_text())
        saved = argparse.Namespace(**raw["args"])
        saved.out = args.out or saved.out
        text = report(saved, raw["machine"], raw.get("oha_version", "oha"),
                      any(r["where"] == "peer" for r in raw["results"]), raw["idle"],
                      raw["results"], raw["memory"], raw.get("total_secs", 0.0))
        Path(saved.out).write_text(text)
        log(f"wrote {saved.out} from {args.from_json}")
        return
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 2.0
    if args.streams is None:
        args.streams = 200 if args.quick else 1000
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    # A run that measures less than the issue asks for does not replace the report.
    partial = (args.skip_memory or args.skip_throughput or args.no_control
               or not {1, TARGET_CONCURRENCY} <= set(args.concurrency) or args.duration < 10
               or bool(os.environ.get("BENCH_GATEWAY_WRAPPER")))
    if args.out is None:
        args.out = str(CACHE / "bench" / "BENCHMARKS.quick.md") if args.quick else (
            str(CACHE / "bench" / "BENCHMARKS.partial.md") if partial else str(
                ROOT / "BENCHMARKS.md"))
    if args.command is None:
        args.command = "scripts/bench.py " + " ".join(sys.argv[1:])

    # Streams need descriptors: ours, and the children inherit the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.streams + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    started = time.monotonic()
    (CACHE / "bench").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE / "bench"))
    oha = Oha(args.oha)
    mach = machine()
    built = (Path(args.bin_dir).resolve() == (ROOT / "target" / "release").resolve()
             and not os.environ.get("BENCH_NO_BUILD"))
    if not built:
        mach["commit"] += f" (binaries from `{args.bin_dir}`, not built by this run)"
    if os.environ.get("BENCH_GATEWAY_WRAPPER"):
        mach["wrapper"] = os.environ["BENCH_GATEWAY_WRAPPER"]
    log(f"{mach['cpus']} CPUs ({mach['cpu_model']}), load {' '.join(mach['loadavg'])}; "
        f"{oha.version}; work dir {work}")
    stack = Stack(args, work)

    def on_signal(signum, _frame):
        Proc.stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    # The children run in sessions of their own: a closed terminal reaches only us.
    signal.signal(signal.SIGHUP, on_signal)
    ok = False
    try:
        stack.start_fake()
        stack.start_gateway()
        time.sleep(1.0)
        idle = mem_kb(stack.gateway.pid)
        log(f"gateway idle: RSS {idle['VmRSS'] / 1024:.1f} MB, peak {idle['VmHWM'] / 1024:.1f} MB")
        if "litellm" in args.peer:
            stack.start_litellm()
        if not args.no_control and not args.skip_throughput:
            stack.start_relay("relay", CODEX_PATH)
            if stack.peer is not None:
                stack.start_relay("relay-openai", None)
        results = [] if args.skip_throughput else Runner(args, stack, oha).throughput()
        mem = {} if args.skip_memory else memory(args, stack)
        total = time.monotonic() - started
        text = report(args, mach, oha.version, stack.peer is not None, idle, results, mem, total)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        raw = {"args": {k: v for k, v in vars(args).items()}, "machine": mach, "idle": idle,
               "results": results, "memory": mem, "oha_version": oha.version,
               "total_secs": total}
        raw_path = CACHE / "bench" / f"{out.stem}.json"
        raw_path.write_text(json.dumps(raw, indent=1, default=str))
        log(f"wrote {out} (raw figures: {raw_path})")
        print(text)
        ok = True
    finally:
        stack.stop()
        if ok and not os.environ.get("BENCH_KEEP_WORK"):
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            log(f"logs kept in {work}")


if __name__ == "__main__":
    main()
