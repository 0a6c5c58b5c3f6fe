"""Shared fixtures: a FakeOpenAi per test, a SQLite pool in a temp dir pointed at it, a helper
that imports one of the fake's accounts the way a user would (its auth.json), and a free
loopback address for sign-in listeners."""

import json
import os
import signal
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import codexpool
from codexpool.testing import FakeOpenAi


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CODEXPOOL_* variable or env file from the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("CODEXPOOL_", "GPTTOOLS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake() -> Iterator[FakeOpenAi]:
    with FakeOpenAi() as f:
        yield f


@pytest.fixture
def pool(fake: FakeOpenAi, tmp_path: Path) -> codexpool.Pool:
    return codexpool.Pool.open(tmp_path / "pool.db", **fake.settings())


def db_file(pool: codexpool.Pool) -> Path:
    """The database file of a pool opened on one (`Pool.in_memory()` has none)."""
    assert pool.db_path is not None
    return pool.db_path


def add_account(
    pool: codexpool.Pool, fake: FakeOpenAi, fake_id: str = "acct-1", **fake_opts: str
) -> codexpool.Account:
    """Adds an account to the fake and imports its auth.json into the pool (which warns that
    the sign-in is shared with the Codex CLI)."""
    fake.add_account(fake_id, **fake_opts)
    with pytest.warns(codexpool.CodexPoolWarning, match="Codex CLI"):
        report = pool.accounts.import_text(json.dumps(fake.auth_json(fake_id)), source=fake_id)
    assert report.imported == 1, report
    account_id = report.results[0].account_id
    assert account_id is not None
    return pool.accounts.get(account_id)


@pytest.fixture
def account(pool: codexpool.Pool, fake: FakeOpenAi) -> codexpool.Account:
    return add_account(pool, fake)


def free_addr() -> str:
    """A loopback `host:port` that nothing listens on (a fixed LOGIN_ADDR, like 1455)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def fork() -> int:
    """`os.fork()`, without Python 3.12+'s warning that forking a multi-threaded process may
    deadlock (what these tests check it does not)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def child_exit_code(pid: int, timeout: float = 20) -> int:
    """The exit code of forked child `pid`; fails the test (after killing it) if it hangs."""
    deadline = time.monotonic() + timeout
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(done[1])
