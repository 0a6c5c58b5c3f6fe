"""pool.keys: create (the secret once), list, get, update, enable/disable, delete, verify."""

import datetime
import time

import pytest

import codexpool


def test_create_shows_the_secret_once_and_never_in_repr(pool: codexpool.Pool) -> None:
    created = pool.keys.create(
        "ci",
        "gpt-5-codex",
        allowed_models=["gpt-5-codex", "gpt-5"],
        allowed_groups=["team"],
        reasoning_effort="high",
    )
    secret = created.secret
    assert secret.startswith("sk-cp-") and len(secret) == 6 + 48
    k = created.key
    assert (k.name, k.model, k.allowed_models, k.allowed_groups, k.reasoning_effort, k.enabled) == (
        "ci",
        "gpt-5-codex",
        ["gpt-5-codex", "gpt-5"],
        ["team"],
        "high",
        True,
    )
    assert k.hint.startswith("sk-cp-") and k.hint.endswith(secret[-4:])
    for text in (repr(created), str(created), repr(created.to_dict()), repr(k), repr(pool.keys.list())):
        assert secret not in text
    assert "*****" in repr(created)
    assert created.to_dict() == {"key": k.to_dict()}
    assert pool.keys.get(k.id) == k
    assert pool.keys.list() == [k]
    assert len(pool.keys) == 1


def test_create_rejects_bad_input(pool: codexpool.Pool) -> None:
    with pytest.raises(codexpool.InvalidInput) as e:
        pool.keys.create(" ")
    assert e.value.field == "name"
    with pytest.raises(codexpool.InvalidInput, match="reasoning"):
        pool.keys.create("k", reasoning_effort="extreme")
    with pytest.raises(codexpool.InvalidInput, match="allowed_models"):
        pool.keys.create("k", "gpt-5-codex", allowed_models=["gpt-5"])
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    with pytest.raises(codexpool.InvalidInput, match="expires_at"):
        pool.keys.create("k", expires_at=past)
    with pytest.raises(codexpool.InvalidInput, match="expires_at"):
        pool.keys.create("k", expires_at="tomorrow")
    with pytest.raises(codexpool.InvalidInput, match="expires_at"):
        pool.keys.create("k", expires_at=[1])  # type: ignore[arg-type]
    # An int no float holds: the same error as any time outside the years, not OverflowError.
    with pytest.raises(codexpool.InvalidInput, match="outside the years"):
        pool.keys.create("k", expires_at=10**400)
    with pytest.raises(codexpool.InvalidInput, match="since"):
        pool.usage.ledger(since=10**400)
    assert pool.keys.list() == []


def test_expiry_accepts_datetime_text_and_epoch_seconds(pool: codexpool.Pool) -> None:
    when = datetime.datetime(2099, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
    a = pool.keys.create("a", expires_at=when).key
    b = pool.keys.create("b", expires_at="2099-01-02T03:04:05.678Z").key
    c = pool.keys.create("c", expires_at=when.timestamp()).key
    naive_local = when.astimezone().replace(tzinfo=None)
    d = pool.keys.create("d", expires_at=naive_local).key
    assert a.expires_at == b.expires_at == c.expires_at == d.expires_at == when


def test_expiry_more_than_100_years_ahead_is_refused(pool: codexpool.Pool) -> None:
    # Milliseconds passed as seconds: the year ~58000, beyond what a datetime can hold.
    # (Refused by the binding, as beyond a datetime; core refuses it too, as over 100 years.)
    with pytest.raises(codexpool.InvalidInput, match="milliseconds given as seconds") as e:
        pool.keys.create("k", expires_at=time.time() * 1000)
    assert e.value.field == "expires_at"
    assert pool.keys.list() == []
    k = pool.keys.create("k", expires_at="2099-01-01T00:00:00Z").key
    with pytest.raises(codexpool.InvalidInput) as e:
        pool.keys.update(k.id, expires_at="9999-12-31T00:00:00Z")
    assert e.value.field == "expires_at"
    assert pool.keys.get(k.id).expires_at == datetime.datetime(2099, 1, 1, tzinfo=datetime.timezone.utc)


def test_update_enable_disable_delete(pool: codexpool.Pool) -> None:
    k = pool.keys.create("ci", "gpt-5-codex", reasoning_effort="low").key
    u = pool.keys.update(k.id, name="renamed", allowed_groups=["a"], expires_at="2099-01-01T00:00:00Z")
    assert (u.name, u.model, u.allowed_groups) == ("renamed", "gpt-5-codex", ["a"])
    assert u.expires_at == datetime.datetime(2099, 1, 1, tzinfo=datetime.timezone.utc)
    u = pool.keys.update(k.id, model=None, reasoning_effort=None, expires_at=None, allowed_groups=None)
    assert (u.model, u.reasoning_effort, u.expires_at, u.allowed_groups) == (None, None, None, [])
    pool.keys.update(k.id, model="gpt-5", reasoning_effort="high")
    u = pool.keys.update(k.id, model="", reasoning_effort=" ")
    assert (u.model, u.reasoning_effort) == (None, None), "blank clears, as in every front-end"
    assert pool.keys.update(k.id, enabled=False).enabled is False
    assert pool.keys.enable(k.id).enabled is True
    assert pool.keys.disable(k.id).enabled is False
    with pytest.raises(codexpool.InvalidInput, match="name"):
        pool.keys.update(k.id, name=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="colour"):
        pool.keys.update(k.id, colour="x")  # type: ignore[call-arg]
    assert pool.keys.delete(k.id).id == k.id
    assert pool.keys.list() == []
    for call in (pool.keys.get, pool.keys.enable, pool.keys.disable, pool.keys.delete):
        with pytest.raises(codexpool.NotFound) as e:
            call(k.id)
        assert e.value.what == "key"


def test_a_secret_given_as_an_id_is_not_echoed(pool: codexpool.Pool) -> None:
    created = pool.keys.create("ci")
    for call in (pool.keys.get, pool.keys.delete, pool.keys.disable, lambda s: pool.request_log.list(key_id=s)):
        with pytest.raises(codexpool.InvalidInput) as e:
            call(created.secret)
        assert created.secret not in str(e.value) and created.secret not in repr(e.value.args)
        assert created.key.hint in str(e.value)
    assert pool.keys.get(created.key.id).enabled
    # Nor where an account's id belongs.
    for account_call in (
        pool.accounts.get,
        pool.accounts.remove,
        pool.usage.get,
        lambda s: pool.request_log.list(account_id=s),
        lambda s: pool.accounts.set_sort_orders({s: 1}),
    ):
        with pytest.raises(codexpool.NotFound) as nf:
            account_call(created.secret)
        assert created.secret not in str(nf.value) and created.secret not in repr(nf.value.args)
        assert created.secret not in (nf.value.id or "")


def test_verify(pool: codexpool.Pool) -> None:
    created = pool.keys.create("ci")
    assert pool.keys.verify(created.secret).id == created.key.id
    with pytest.raises(codexpool.KeyRefused, match="unknown"):
        pool.keys.verify("sk-cp-" + "x" * 48)
    with pytest.raises(codexpool.KeyRefused):
        pool.keys.verify("")
    pool.keys.disable(created.key.id)
    with pytest.raises(codexpool.KeyRefused, match="disabled"):
        pool.keys.verify(created.secret)
