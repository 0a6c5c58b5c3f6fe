"""Thread safety: one pool (and one server) shared by many Python threads calling at once, and
the GIL released while a call blocks."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

import codexpool
from codexpool.testing import FakeOpenAi

from conftest import add_account, child_exit_code, fork


def test_the_gil_is_released_while_a_call_blocks(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    login = pool.accounts.login_start(listen=False)
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    started = time.monotonic()
    try:
        login.wait(timeout=1.0)
    except codexpool.Timeout:
        pass
    stop.set()
    t.join()
    assert time.monotonic() - started >= 0.9
    assert ticks > 20, f"the other thread barely ran ({ticks} ticks): the GIL was held"


def test_many_threads_share_one_pool_and_server(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    accounts = [add_account(pool, fake, f"acct-{i}") for i in range(3)]
    key = pool.keys.create("shared").secret
    workers, rounds = 8, 5
    with codexpool.serve(pool, background_tasks=False) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0, timeout=30)

        def work(n: int) -> int:
            done = 0
            for i in range(rounds):
                k = pool.keys.create(f"w{n}-{i}")
                assert pool.keys.verify(k.secret).id == k.key.id
                pool.accounts.update(accounts[n % 3].id, note=f"thread {n}")
                assert len(pool.accounts.list()) == 3
                pool.usage.list()
                r = client.responses.create(model="gpt-5-codex", input=f"hi from {n}")
                assert r.output_text.startswith("Hello from acct-")
                pool.usage.ledger()
                done += 1
            return done

        with ThreadPoolExecutor(workers) as ex:
            assert sum(ex.map(work, range(workers))) == workers * rounds
    assert len(pool.keys.list()) == 1 + workers * rounds
    assert sum(r.requests for r in pool.usage.ledger()) == workers * rounds
    assert all(pool.accounts.runtime(a.id).inflight == 0 for a in accounts)


def test_ctrl_c_interrupts_a_blocking_call(tmp_path: Path) -> None:
    script = (
        "import codexpool, sys\n"
        f"pool = codexpool.Pool.open({str(tmp_path)!r} + '/p.db')\n"
        "login = pool.accounts.login_start(listen=False)\n"
        "print('waiting', flush=True)\n"
        "try:\n"
        "    login.wait()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(3)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=10) == 3
    assert p.stdout.read().strip() == "interrupted"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_child_forked_after_use_opens_its_own_pool(
    pool: codexpool.Pool, fake: FakeOpenAi, tmp_path: Path
) -> None:
    pool.flush()  # the runtime runs in this process now
    pid = fork()
    if pid == 0:  # the child: report through the exit code only
        code = 3
        try:
            # The parent's pool: its threads are not here, and its memory is a copy nothing
            # updates (a key disabled since would still verify), so even reads refuse.
            calls: list[Callable[[], object]] = [
                pool.flush,
                pool.keys.list,
                lambda: pool.keys.verify("sk-cp-anything"),
                lambda: pool.keys.get("k"),
                lambda: len(pool.keys),
                pool.accounts.list,
                lambda: pool.accounts.get("a"),
                lambda: pool.accounts.runtime("a"),
                lambda: len(pool.accounts),
                pool.accounts.export,
                pool.usage.list,
                lambda: pool.usage.get("a"),
                lambda: pool.usage.headroom("a"),
                lambda: pool.usage.exhausted_until("a"),
            ]
            code = 0
            for call in calls:
                try:
                    call()
                    code = 2
                except codexpool.CodexPoolError as e:
                    if "forked" not in str(e) or "Pool.open" not in str(e):
                        code = 1
            if "forked" not in repr(pool) + repr(pool.keys) + repr(pool.accounts):
                code = 7
            if code == 0:
                # The parent's database file: SQLite's locks do not survive the fork.
                code = 4
                try:
                    codexpool.Pool.open(tmp_path / "pool.db", **fake.settings())
                except codexpool.CodexPoolError as e:
                    code = 0 if "forked" in str(e) else 8
            if code == 0:
                code = 4
                with codexpool.Pool.open(tmp_path / "child.db", **fake.settings()) as own:
                    own.keys.create("from-the-child")
                    code = 0 if [k.name for k in own.keys.list()] == ["from-the-child"] else 5
        finally:
            os._exit(code)
    assert child_exit_code(pid) == 0, "the child got the fork errors, then its own pool"
    with codexpool.Pool.open(tmp_path / "child.db", **fake.settings()) as childs:
        assert [k.name for k in childs.keys.list()] == ["from-the-child"]
    pool.keys.create("parent")  # the parent goes on as before
    pool.flush()
