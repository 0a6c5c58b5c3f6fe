"""pool.usage: readings, refresh with a progress callback, headroom, the ledger."""

import datetime
import json
import sqlite3
import time

import openai
import pytest

import codexpool
from codexpool.testing import FakeOpenAi, Reply

from conftest import add_account, db_file


def test_refresh_records_readings_and_reports_progress(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    a = add_account(pool, fake, "acct-1")
    b = add_account(pool, fake, "acct-2")
    fake.set_usage("acct-1", 25.0, 80.0, credits_balance=3.5)
    fake.set_usage("acct-2", 100.0, 10.0)
    assert pool.usage.get(a.id).five_hour is None
    seen: list[tuple[int, int, codexpool.PollResult | None]] = []
    results = pool.usage.refresh(progress=lambda done, total, r: seen.append((done, total, r)))
    assert [r.account_id for r in results] == [x.id for x in pool.accounts.list()]
    assert all(r.ok and r.error is None for r in results)
    assert seen[0] == (0, 2, None)
    assert sorted(d for d, _, _ in seen[1:]) == [1, 2]
    assert {r.account_id for _, _, r in seen[1:] if r} == {a.id, b.id}
    u = pool.usage.get(a.id)
    assert u.five_hour is not None and u.weekly is not None
    assert (u.five_hour.kind, u.five_hour.used_percent, u.five_hour.source) == ("five_hour", 25.0, "poll")
    assert (u.weekly.kind, u.weekly.used_percent) == ("weekly", 80.0)
    assert u.credits is not None and u.credits.balance == 3.5
    assert u.five_hour.resets_at and u.five_hour.resets_at > datetime.datetime.now(datetime.timezone.utc)
    assert pool.usage.headroom(a.id) == pytest.approx(20.0)
    assert pool.usage.exhausted_until(a.id) is None
    assert pool.usage.exhausted_until(b.id) is not None
    assert [x.account_id for x in pool.usage.list()] == [x.id for x in pool.accounts.list()]


def test_refresh_one_account_and_failures(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    a = add_account(pool, fake, "acct-1")
    add_account(pool, fake, "acct-2")
    results = pool.usage.refresh(a.id[:5])
    assert [r.account_id for r in results] == [a.id]
    with pytest.raises(codexpool.NotFound):
        pool.usage.refresh("ffffffffffff")
    with pytest.raises(codexpool.NotFound):
        pool.usage.get("ffffffffffff")
    fake.revoke_sessions("acct-1")
    fake.expire_access_token("acct-1")
    r = pool.usage.refresh(a.id)[0]
    assert not r.ok and r.error and r.error_kind
    assert r.windows == []


def test_a_raising_progress_callback_propagates(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    add_account(pool, fake, "acct-1")
    calls = []

    def progress(done: int, total: int, r: object) -> None:
        calls.append(done)
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        pool.usage.refresh(progress=progress)
    assert calls == [0], "not called again after it raised"


def test_a_callback_cannot_call_back_into_a_blocking_method(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    add_account(pool, fake, "acct-1")

    def progress(done: int, total: int, r: object) -> None:
        pool.keys.create("inside")

    with pytest.raises(codexpool.CodexPoolError, match="callback"):
        pool.usage.refresh(progress=progress)
    # Non-blocking reads are fine from a callback.
    pool.usage.refresh(progress=lambda *_: pool.accounts.list())


def test_ledger_groups_and_since(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    add_account(pool, fake, "acct-1")
    assert pool.usage.ledger() == []
    key = pool.keys.create("k")
    fake.push_reply("acct-1", Reply.text("one two three").with_usage(input_tokens=10, output_tokens=3))
    import openai

    with codexpool.serve(pool, background_tasks=False) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=key.secret, max_retries=0)
        client.responses.create(model="gpt-5-codex", input="hi")
    rows = pool.usage.ledger("key")
    assert [(r.group, r.requests, r.input_tokens, r.output_tokens, r.total_tokens) for r in rows] == [
        (key.key.id, 1, 10, 3, 13)
    ]
    assert pool.usage.ledger("model")[0].group == "gpt-5-codex"
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    assert pool.usage.ledger(group_by="day")[0].group == today
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    assert pool.usage.ledger(since=future) == []
    assert len(pool.usage.ledger(since="2000-01-01T00:00:00Z")) == 1
    with pytest.raises(codexpool.InvalidInput) as e:
        pool.usage.ledger("colour")
    assert e.value.field == "group_by"

    # Folding today's entry (a cutoff tomorrow) keeps the sums; there is nothing left to fold then.
    assert pool.usage.fold_ledger(datetime.datetime.now(datetime.timezone.utc)) == 0
    assert pool.usage.fold_ledger(time.time() + 86_400) == 1
    assert pool.usage.ledger("key") == rows
    assert pool.usage.ledger(group_by="day")[0].group == today
    assert pool.usage.fold_ledger(time.time() + 86_400) == 0
    with pytest.raises(codexpool.InvalidInput) as e:
        pool.usage.fold_ledger("yesterday")
    assert e.value.field == "before"


def test_times_outside_datetime_are_refused(pool: codexpool.Pool) -> None:
    """Epoch seconds beyond the years 1 to 9999 are an InvalidInput, not a PanicException (or,
    in a release build, a cutoff that folds every ledger day)."""
    for t in (-1e300, 1e300, -62_135_596_801, 253_402_300_800):
        with pytest.raises(codexpool.InvalidInput, match="years 1 to 9999") as e:
            pool.usage.fold_ledger(t)
        assert e.value.field == "before"
    # A naive datetime at the very start is local time, which Python may not place (a
    # ValueError from `timestamp()`, as at UTC): an InvalidInput naming the argument.
    try:
        datetime.datetime.min.timestamp()
    except ValueError:
        with pytest.raises(codexpool.InvalidInput, match="0001-01-01") as e:
            pool.usage.ledger(since=datetime.datetime.min)
        assert e.value.field == "since"
    else:
        assert pool.usage.ledger(since=datetime.datetime.min) == []
    # The ends themselves are times like any other.
    assert pool.usage.fold_ledger(-62_135_596_800) == 0
    assert pool.usage.fold_ledger(253_402_300_799) == 0


def test_reset_times_beyond_datetime_max_are_clamped(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    """A garbage upstream reset time (10^13 s away) is held to its window (a week, and a day);
    one stored beyond the year 9999 (by a version that took such times as they came) reads as
    datetime.max, not OverflowError."""
    a = add_account(pool, fake, "acct-1")
    key = pool.keys.create("k")
    body = {"error": {"type": "usage_limit_reached", "message": "x", "resets_at": 9_999_999_999_999}}
    fake.push_reply("acct-1", Reply.status(429, json.dumps(body)))
    with codexpool.serve(pool, background_tasks=False) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=key.secret, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model="gpt-5-codex", input="hi")
    now = datetime.datetime.now(datetime.timezone.utc)
    until = pool.usage.exhausted_until(a.id)
    assert until is not None
    assert now + datetime.timedelta(days=7) < until <= now + datetime.timedelta(days=8), until

    pool.flush()
    with sqlite3.connect(db_file(pool)) as db:
        db.execute("UPDATE usage_windows SET resets_at = ?", (9_999_999_999_999_000,))
    pool.reload()
    utc_max = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
    assert pool.usage.exhausted_until(a.id) == utc_max
    # The 429's reading of the window it hit carries the same reset time.
    u = pool.usage.get(a.id)
    hit = [w for w in (u.five_hour, u.weekly) if w is not None and w.source == "rate-limit"]
    assert [w.resets_at for w in hit] == [utc_max], u
    assert utc_max in [w["resets_at"] for w in u.to_dict().values() if isinstance(w, dict) and "kind" in w]
    assert "resets_at=9999-12-31T23:59:59.999999Z" in repr(u)
