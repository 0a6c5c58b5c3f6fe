"""Pool.open / in_memory, settings given as keywords, and the exceptions for bad settings."""

import datetime
import json
import os
import subprocess
import sqlite3
import sys
from pathlib import Path

import pytest

import codexpool
from codexpool.testing import FakeOpenAi, Reply


def test_open_creates_the_database_and_applies_settings(fake: FakeOpenAi, tmp_path: Path) -> None:
    db = tmp_path / "sub" / "pool.db"
    pool = codexpool.Pool.open(
        db,
        route_strategy="headroom",
        usage_poll_interval_secs=120,
        disable_polling=True,
        CODEXPOOL_ACCOUNT_MAX_INFLIGHT=3,
        **fake.settings(),
    )
    assert db.exists()
    assert pool.db_path == db
    s = pool.settings()
    assert s["ROUTE_STRATEGY"] == "headroom"
    assert s["USAGE_POLL_INTERVAL_SECS"] == "120"
    assert s["DISABLE_POLLING"] == "true"
    assert s["ACCOUNT_MAX_INFLIGHT"] == "3"
    assert s["ISSUER"] == fake.issuer
    assert "Pool(db_path=" in repr(pool)


def test_settings_come_from_the_environment_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CODEXPOOL_ROUTE_STRATEGY", "round-robin")
    monkeypatch.setenv("CODEXPOOL_DB_PATH", str(tmp_path / "env.db"))
    pool = codexpool.Pool.open()
    assert pool.settings()["ROUTE_STRATEGY"] == "round-robin"
    assert pool.db_path == tmp_path / "env.db"
    # Keywords win over the environment.
    pool = codexpool.Pool.open(tmp_path / "kw.db", route_strategy="ordered")
    assert pool.settings()["ROUTE_STRATEGY"] == "ordered"


def test_the_db_path_argument_wins_over_a_db_path_keyword(tmp_path: Path) -> None:
    pool = codexpool.Pool.open(tmp_path / "a.db", DB_PATH=str(tmp_path / "b.db"))
    assert pool.db_path == tmp_path / "a.db"
    assert (tmp_path / "a.db").exists() and not (tmp_path / "b.db").exists()
    # Without the argument, the keyword is the path.
    assert codexpool.Pool.open(db_path=None, DB_PATH=str(tmp_path / "c.db")).db_path == tmp_path / "c.db"


def test_the_db_path_argument_is_a_path_taken_as_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An empty one is refused by name, not opened as "".
    for blank in ("", "  "):
        with pytest.raises(codexpool.InvalidInput, match="db_path") as e:
            codexpool.Pool.open(blank)
        assert e.value.field == "db_path"
    # Quotes are part of an argument (only an env file's reader takes them off), as in open().
    pool = codexpool.Pool.open("'q.db'")
    assert pool.db_path == Path("'q.db'") and (tmp_path / "'q.db'").is_file()
    assert pool.settings()["DB_PATH"] == "'q.db'"
    # A leading ~ is the home directory, as for the DB_PATH setting.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert codexpool.Pool.open("~/h.db").db_path == tmp_path / "home" / "h.db"


def test_an_in_memory_pool_has_no_db_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODEXPOOL_DB_PATH", str(tmp_path / "env.db"))
    pool = codexpool.Pool.in_memory()
    assert pool.db_path is None
    assert repr(pool) == "Pool(db_path=None, accounts=0)"
    assert not (tmp_path / "env.db").exists()
    # The setting is still listed: it is what the environment says.
    assert pool.settings()["DB_PATH"] == str(tmp_path / "env.db")


def test_a_whole_float_is_taken_for_a_number_setting(tmp_path: Path) -> None:
    pool = codexpool.Pool.in_memory(usage_poll_interval_secs=600.0, account_max_inflight=3.0)
    assert pool.settings()["USAGE_POLL_INTERVAL_SECS"] == "600"
    assert pool.settings()["ACCOUNT_MAX_INFLIGHT"] == "3"
    for bad in (600.5, float("nan"), float("inf")):
        with pytest.raises(codexpool.InvalidInput, match="whole number") as e:
            codexpool.Pool.in_memory(usage_poll_interval_secs=bad)
        assert e.value.field == "USAGE_POLL_INTERVAL_SECS"


def test_settings_warnings_are_issued_when_a_pool_opens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.warns(codexpool.CodexPoolWarning, match="USAGE_POLL_INTERVAL_SECS=5") as w:
        codexpool.Pool.open(tmp_path / "p.db", usage_poll_interval_secs=5)
    assert w[0].filename == __file__, "attributed to the caller's line"
    with pytest.warns(codexpool.CodexPoolWarning, match="USAGE_POLL_INTERVAL_SECS=5"):
        codexpool.Pool.in_memory(usage_poll_interval_secs=5)
    monkeypatch.setenv("CODEXPOOL_ROUTE_STRATEGI", "ordered")
    with pytest.warns(codexpool.CodexPoolWarning, match="CODEXPOOL_ROUTE_STRATEGI"):
        codexpool.Pool.open(tmp_path / "p.db")


def test_a_bad_setting_value_raises_invalid_input_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(codexpool.InvalidInput, match="ROUTE_STRATEGY") as e:
        codexpool.Pool.open(tmp_path / "p.db", route_strategy="fastest")
    assert e.value.field == "ROUTE_STRATEGY"
    assert isinstance(e.value, codexpool.CodexPoolError)
    with pytest.raises(codexpool.InvalidInput, match="USAGE_BASE_URL"):
        codexpool.Pool.open(tmp_path / "p.db", usage_base_url="not a url")
    with pytest.raises(codexpool.InvalidInput, match="unknown setting"):
        codexpool.Pool.open(tmp_path / "p.db", no_such_setting="1")
    with pytest.raises(codexpool.InvalidInput, match="expected a str"):
        codexpool.Pool.open(tmp_path / "p.db", route_strategy=["ordered"])  # type: ignore[arg-type]


def test_a_bad_environment_variable_raises_invalid_input(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CODEXPOOL_ACCOUNT_MAX_INFLIGHT", "many")
    with pytest.raises(codexpool.InvalidInput, match="CODEXPOOL_ACCOUNT_MAX_INFLIGHT"):
        codexpool.Pool.open(tmp_path / "p.db")


def test_an_unopenable_database_raises_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(codexpool.StoreError):
        codexpool.Pool.open(tmp_path / "file" / "pool.db")


def test_in_memory_pool_and_context_manager(fake: FakeOpenAi) -> None:
    with codexpool.Pool.in_memory(route_strategy="headroom", **fake.settings()) as pool:
        assert pool.settings()["ROUTE_STRATEGY"] == "headroom"
        assert pool.accounts.list() == []
        key = pool.keys.create("k")
        assert pool.keys.get(key.key.id) == key.key
    with pytest.raises(codexpool.InvalidInput):
        codexpool.Pool.in_memory(route_strategy="nope")


def test_two_pools_on_one_database_see_each_others_changes(tmp_path: Path) -> None:
    a = codexpool.Pool.open(tmp_path / "shared.db")
    b = codexpool.Pool.open(tmp_path / "shared.db")
    key = a.keys.create("shared")
    b.reload()
    assert b.keys.get(key.key.id).name == "shared"
    a.flush()


def test_secret_settings_are_hidden(tmp_path: Path) -> None:
    secret = "super-secret-token-" + "x" * 20
    pool = codexpool.Pool.open(tmp_path / "p.db", rpc_token=secret)
    assert pool.settings()["RPC_TOKEN"] == "*****"
    assert "super-secret" not in repr(pool)
    # A short one is taken, with a warning that never shows it.
    with pytest.warns(codexpool.CodexPoolWarning, match="RPC_TOKEN is short") as seen:
        codexpool.Pool.open(tmp_path / "q.db", rpc_token="hunter2")
    assert all("hunter2" not in str(w.message) for w in seen)


def test_times_are_aware_utc_datetimes(tmp_path: Path) -> None:
    pool = codexpool.Pool.open(tmp_path / "p.db")
    before = datetime.datetime.now(datetime.timezone.utc)
    k = pool.keys.create("t").key
    assert k.created_at.tzinfo is datetime.timezone.utc
    assert abs((k.created_at - before).total_seconds()) < 5


def test_version_is_exposed() -> None:
    assert codexpool.__version__
    assert os.path.basename(codexpool._native.__file__).startswith("_native")


def test_a_script_that_ends_without_flush_loses_nothing(fake: FakeOpenAi, tmp_path: Path) -> None:
    """What a pool has queued (last-used times, usage readings) is written when the interpreter
    exits, without `flush()` or a `with` block: by the module's `atexit` hook, while the pool is
    still alive (a checker registered before the module runs after that hook)."""
    fake.add_account("acct-1")
    db = tmp_path / "pool.db"
    script = (
        "import atexit, json, sqlite3, sys, warnings\n"
        "settings, auth, db = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
        "def check():\n"
        "    c = sqlite3.connect(db)\n"
        "    used = c.execute('SELECT count(*) FROM platform_keys WHERE last_used_at IS NOT NULL')\n"
        "    windows = c.execute('SELECT count(*) FROM usage_windows')\n"
        "    print('at exit', used.fetchone()[0], windows.fetchone()[0], flush=True)\n"
        "atexit.register(check)\n"
        "import codexpool\n"
        "warnings.filterwarnings('ignore', message='.*Codex CLI')\n"
        "pool = codexpool.Pool.open(db, **settings)\n"
        "pool.accounts.import_text(auth, source='a')\n"
        "key = pool.keys.create('k')\n"
        "pool.keys.verify(key.secret)\n"
        "assert all(r.ok for r in pool.usage.refresh())\n"
    )
    args = [json.dumps(fake.settings()), json.dumps(fake.auth_json("acct-1")), str(db)]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "not flushed" not in done.stderr, done.stderr
    assert done.stdout.split() == ["at", "exit", "1", "2"], (done.stdout, done.stderr)


def test_a_script_that_ends_while_serving_stops_the_server(
    fake: FakeOpenAi, tmp_path: Path
) -> None:
    """A script that ends while its server answers a request, without `stop()`: the exit hook
    stops the server (open streams get a second, then end with `server_stopped`), so that
    request has its log row and the server's file is gone."""
    fake.add_account("acct-1")
    fake.push_reply("acct-1", Reply.deltas(["tick "] * 100).paced(0.1))
    db = tmp_path / "pool.db"
    script = (
        "import json, sys, threading, urllib.request, warnings\n"
        "settings, auth, db = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
        "import codexpool\n"
        "warnings.filterwarnings('ignore', message='.*Codex CLI')\n"
        "pool = codexpool.Pool.open(db, disable_polling=True, **settings)\n"
        "pool.accounts.import_text(auth, source='a')\n"
        "key = pool.keys.create('k')\n"
        "srv = codexpool.serve(pool)\n"
        "started = threading.Event()\n"
        "def ask():\n"
        "    body = json.dumps({'model': 'gpt-5-codex', 'stream': True,\n"
        "                       'messages': [{'role': 'user', 'content': 'hi'}]}).encode()\n"
        "    req = urllib.request.Request(srv.base_url + '/chat/completions', data=body,\n"
        "        headers={'Authorization': 'Bearer ' + key.secret,\n"
        "                 'Content-Type': 'application/json'})\n"
        "    with urllib.request.urlopen(req) as r:\n"
        "        r.readline()\n"
        "        started.set()\n"
        "        r.read()\n"
        "threading.Thread(target=ask, daemon=True).start()\n"
        "assert started.wait(30)\n"
        "print('in flight', flush=True)\n"
    )
    args = [json.dumps(fake.settings()), json.dumps(fake.auth_json("acct-1")), str(db)]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "in flight", (done.stdout, done.stderr)
    assert "not stopped" not in done.stderr, done.stderr
    assert list((tmp_path / "servers").glob("*.json")) == []
    rows = sqlite3.connect(db).execute("SELECT error_class FROM request_log").fetchall()
    assert rows == [("server_stopped",)], rows
