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


def test_handles_show_what_they_are(pool: codexpool.Pool, account: codexpool.Account) -> None:
    assert repr(pool.accounts) == "AccountPool(len=1)"
    assert repr(pool.keys) == "KeyStore(len=0)"
    assert repr(pool.usage) == "UsageTracker()"
    assert repr(pool.request_log) == "RequestLog()"
