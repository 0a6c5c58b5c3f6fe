"""Shared fixtures: a FakeOpenAi per test, a SQLite pool in a temp dir pointed at it, and a
helper that imports one of the fake's accounts the way a user would (its auth.json)."""

import json
import os
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


def add_account(
    pool: codexpool.Pool, fake: FakeOpenAi, fake_id: str = "acct-1", **fake_opts: str
) -> codexpool.Account:
    """Adds an account to the fake and imports its auth.json into the pool."""
    fake.add_account(fake_id, **fake_opts)
    report = pool.accounts.import_text(json.dumps(fake.auth_json(fake_id)), source=fake_id)
    assert report.imported == 1, report
    account_id = report.results[0].account_id
    assert account_id is not None
    return pool.accounts.get(account_id)


@pytest.fixture
def account(pool: codexpool.Pool, fake: FakeOpenAi) -> codexpool.Account:
    return add_account(pool, fake)
