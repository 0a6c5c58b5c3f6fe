"""Return values are frozen, comparable, readable records with to_dict()."""

import datetime

import pytest

import codexpool
from codexpool.testing import FakeOpenAi


def test_records_are_frozen_comparable_and_convert_to_dicts(
    pool: codexpool.Pool, fake: FakeOpenAi, account: codexpool.Account
) -> None:
    with pytest.raises(AttributeError):
        account.label = "x"  # type: ignore[misc]
    assert account == pool.accounts.get(account.id)
    assert account != pool.accounts.update(account.id, note="changed")
    d = account.to_dict()
    assert d["id"] == account.id and d["tags"] == [] and d["note"] is None
    assert isinstance(d["created_at"], datetime.datetime)
    assert set(d) == {
        "id", "label", "email", "chatgpt_account_id", "chatgpt_user_id", "plan_type", "group",
        "tags", "sort", "note", "status", "status_reason", "token_expires_at",
        "token_refreshed_at", "created_at", "updated_at", "last_used_at",
    }
    r = repr(account)
    assert r.startswith("Account(id='") and "created_at=20" in r and "tags=[]" in r
    assert "token" not in r.replace("token_expires_at", "").replace("token_refreshed_at", "")
    # Nested records become nested dicts.
    pool.usage.refresh()
    u = pool.usage.get(account.id).to_dict()
    assert u["five_hour"]["kind"] == "five_hour"
    assert isinstance(u["five_hour"]["observed_at"], datetime.datetime)
    assert u["credits"] == {"balance": 0.0, "has_credits": False, "unlimited": False}
    with pytest.raises(TypeError):
        codexpool.Account()


def test_records_hash_as_they_compare(
    pool: codexpool.Pool, fake: FakeOpenAi, account: codexpool.Account
) -> None:
    same = pool.accounts.get(account.id)
    assert hash(account) == hash(same) and len({account, same}) == 1
    changed = pool.accounts.update(account.id, tags=["a", "b"], note="changed")
    assert {account: 1}.get(changed) is None and {changed: 1}[pool.accounts.get(account.id)] == 1
    # Nested records, floats, lists and times hash too.
    pool.usage.refresh()
    usage = pool.usage.get(account.id)
    assert hash(usage) == hash(pool.usage.get(account.id))
    assert len(set(pool.usage.refresh())) == 1
    key = pool.keys.create("k").key
    assert {key, pool.keys.get(key.id)} == {key}


def test_records_copy_as_themselves(pool: codexpool.Pool, account: codexpool.Account) -> None:
    import copy

    pool.usage.refresh()
    usage = pool.usage.get(account.id)
    for record in (account, usage, pool.keys.create("k").key):
        assert copy.copy(record) is record
        assert copy.deepcopy(record) is record
    # Inside a container copied deep too.
    assert copy.deepcopy({"a": [account]})["a"][0] is account


def test_handles_show_what_they_are(pool: codexpool.Pool, account: codexpool.Account) -> None:
    assert repr(pool.accounts) == "AccountPool(len=1)"
    assert repr(pool.keys) == "KeyStore(len=0)"
    assert repr(pool.usage) == "UsageTracker()"
    assert repr(pool.request_log) == "RequestLog()"
