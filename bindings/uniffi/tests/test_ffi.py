"""End-to-end test of the generated uniffi Python module `codexpool_ffi`.

Runs against `FakeOpenAi` (exported by codexpool-ffi's `testing` feature), so no network and no
real account are needed. Plain asserts: run it with `python3 tests/test_ffi.py` or collect it
with pytest. `bindings/uniffi/test.sh` builds the library, generates the module and runs this.

The module is imported from `$CODEXPOOL_FFI_DIR` (default: `../generated` beside this file).
"""

import asyncio
import gc
import json
import os
import signal
import socket
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("CODEXPOOL_FFI_DIR", os.path.join(HERE, "..", "generated")))

import codexpool_ffi as cp  # noqa: E402
from codexpool_ffi import CodexPoolError  # noqa: E402


def step(what):
    print(f"  - {what}", flush=True)


def expect_sync(kind, fn, *args):
    """Calls `fn(*args)`, asserts it raises `CodexPoolError.<kind>`, returns the message."""
    try:
        fn(*args)
    except CodexPoolError as e:
        assert isinstance(e, getattr(CodexPoolError, kind)), f"expected {kind}, got {e!r}"
        assert str(e), "errors carry the Rust message"
        return str(e)
    raise AssertionError(f"expected CodexPoolError.{kind}")


async def expect(kind, coro):
    """Awaits `coro`, asserts it raises `CodexPoolError.<kind>`, returns the message."""
    try:
        await coro
    except CodexPoolError as e:
        assert isinstance(e, getattr(CodexPoolError, kind)), f"expected {kind}, got {e!r}"
        assert str(e), "errors carry the Rust message"
        return str(e)
    raise AssertionError(f"expected CodexPoolError.{kind}")


def http(method, url, body=None, headers=None):
    """(status, headers, parsed-or-raw body) without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw


async def run(tmp, fake):
    fake.add_account("acct-1", "pro")
    fake.set_usage("acct-1", 25.0, 40.0)
    auth_path = os.path.join(tmp, "auth.json")
    with open(auth_path, "w") as f:
        f.write(fake.auth_json("acct-1"))
    db = os.path.join(tmp, "pool.db")
    settings = dict(fake.settings(), DISABLE_POLLING="true")

    step("open a pool with settings")
    pool = await cp.Pool.open(db, settings)
    assert pool.db_path() == db
    by_name = {s.name: s for s in pool.settings()}
    assert by_name["DB_PATH"].source == "flag", by_name["DB_PATH"]
    assert by_name["UPSTREAM_BASE_URL"].value == fake.settings()["UPSTREAM_BASE_URL"]

    step("a bad setting raises InvalidInput naming it")
    msg = await expect("InvalidInput", cp.Pool.open(db, {"ROUTE_STRATEGY": "sideways"}))
    assert "ROUTE_STRATEGY" in msg, msg
    msg = await expect("InvalidInput", cp.Pool.open(db, {"NO_SUCH_SETTING": "1"}))
    assert "unknown setting" in msg, msg

    step("the db_path argument is a path as given: a blank one is refused, quotes are kept")
    for blank in ("", "  "):
        msg = await expect("InvalidInput", cp.Pool.open(blank, settings))
        assert "db_path" in msg, msg
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        quoted = await cp.Pool.open("'q.db'", settings)
        assert quoted.db_path() == "'q.db'" and os.path.isfile(os.path.join(tmp, "'q.db'"))
        by_name = {s.name: s for s in quoted.settings()}
        assert by_name["DB_PATH"].source == "flag", by_name["DB_PATH"]
    finally:
        os.chdir(cwd)

    keys, accounts, usage = pool.keys(), pool.accounts(), pool.usage()

    step("keys: create, list, get, verify, update, disable, enable, delete")
    created = await keys.create(cp.NewKey(name="ci"))
    ci, ci_secret = created.key(), created.secret()
    assert ci_secret.startswith("sk-cp-") and ci.name == "ci" and ci.enabled
    assert ci_secret not in repr(ci)

    step("a created key prints without its secret")
    for shown in (str(created), repr(created), f"{created}", str([created])):
        assert ci_secret not in shown, shown
    shown = f"CreatedKey(id={ci.id}, name=ci, hint={ci.hint}, secret=*****)"
    assert str(created) == repr(created) == shown
    tmp_created = await keys.create(
        cp.NewKey(name="temp", model="gpt-5-codex", reasoning_effort="low", expires_at=None)
    )
    tmp_key, tmp_secret = tmp_created.key(), tmp_created.secret()
    # Oldest first; two keys made in the same millisecond are ordered by id.
    assert sorted(k.name for k in keys.list()) == ["ci", "temp"]
    assert keys.get(tmp_key.id[:6]).id == tmp_key.id, "ids accept a unique prefix"
    assert keys.verify(tmp_secret).id == tmp_key.id
    msg = expect_sync("InvalidInput", keys.get, tmp_secret)
    assert tmp_secret not in msg and tmp_key.hint in msg, "a secret given as an id is not echoed"
    k = await keys.update(tmp_key.id, cp.KeyPatch(name="renamed", model=""))
    assert k.name == "renamed" and k.model is None, "an empty model clears it"
    await keys.disable(tmp_key.id)
    assert "disabled" in expect_sync("Auth", keys.verify, tmp_secret)
    await keys.enable(tmp_key.id)
    keys.verify(tmp_secret)
    await keys.delete(tmp_key.id)
    expect_sync("Auth", keys.verify, tmp_secret)
    expect_sync("NotFound", keys.get, tmp_key.id)
    await expect("NotFound", keys.delete(tmp_key.id))
    await expect("InvalidInput", keys.create(cp.NewKey(name="  ")))
    assert [k.name for k in keys.list()] == ["ci"]

    step("accounts: import an auth.json, list, get, update, disable, enable, export")
    results = await accounts.import_path(auth_path)
    assert [r.status for r in results] == [cp.ImportStatus.IMPORTED], results
    assert results[0].codex_cli, "an auth.json is a Codex CLI sign-in"
    account_id = results[0].account_id
    again = await accounts.import_text("stdin", fake.auth_json("acct-1"))
    # The same tokens again: nothing to update.
    assert again[0].status == cp.ImportStatus.UNCHANGED and again[0].account_id == account_id
    bad = await accounts.import_text("stdin", "{not json")
    assert bad[0].status == cp.ImportStatus.SKIPPED and bad[0].reason, bad
    await expect("Io", accounts.import_path(os.path.join(tmp, "missing.json")))
    listed = accounts.list()
    assert [a.id for a in listed] == [account_id]
    a = listed[0]
    assert a.chatgpt_account_id == "acct-1" and a.plan_type == "pro"
    assert a.status == cp.AccountStatus.ACTIVE
    assert a.created_at > 1_600_000_000_000, "times are epoch milliseconds"
    assert accounts.get(account_id[:5]).id == account_id
    a = await accounts.update(
        account_id, cp.AccountPatch(label="work", group="team", tags=["a", "b", "a"], sort=3)
    )
    assert (a.label, a.group, a.tags, a.sort) == ("work", "team", ["a", "b"], 3)
    assert [x.id for x in accounts.list(cp.AccountFilter(group="team"))] == [account_id]
    assert accounts.list(cp.AccountFilter(tag="nope")) == []
    a = await accounts.update(account_id, cp.AccountPatch(group=""))
    assert a.group is None, "an empty group clears it"
    a = await accounts.disable(account_id)
    assert a.status == cp.AccountStatus.DISABLED and a.status_reason
    a = await accounts.enable(account_id)
    assert a.status == cp.AccountStatus.ACTIVE
    export = os.path.join(tmp, "export.json")
    assert await accounts.export_to_file(export) == 1
    assert stat.S_IMODE(os.stat(export).st_mode) == 0o600
    with open(export) as f:
        assert json.load(f)["accounts"][0]["chatgpt_account_id"] == "acct-1"

    step("paths may start with ~ for the home directory")
    home = os.path.join(tmp, "home")
    os.makedirs(os.path.join(home, ".codex"))
    with open(os.path.join(home, ".codex", "auth.json"), "w") as f:
        f.write(fake.auth_json("acct-1"))
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = home
    try:
        results = await accounts.import_path("~/.codex/auth.json")
        assert [r.status for r in results] == [cp.ImportStatus.UNCHANGED], results
        assert await accounts.export_to_file("~/export.json") == 1
        assert os.path.exists(os.path.join(home, "export.json"))
        other = await cp.Pool.open("~/other.db", settings)
        assert other.db_path() == os.path.join(home, "other.db")
    finally:
        if old_home is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old_home

    step("unknown ids raise NotFound")
    expect_sync("NotFound", accounts.get, "zzzzzz")
    expect_sync("NotFound", usage.get, "zzzzzz")
    await expect("NotFound", accounts.update("zzzzzz", cp.AccountPatch(label="x")))
    await expect("NotFound", accounts.login_status("no-such-state"))
    await expect("InvalidInput", accounts.update(account_id, cp.AccountPatch(label=" ")))

    step("usage: list, refresh (polls the fake), get")
    u = usage.list()
    assert [x.account_id for x in u] == [account_id]
    polled = await usage.refresh()
    assert len(polled) == 1 and polled[0].ok, polled
    assert {w.kind for w in polled[0].windows} == {cp.WindowKind.FIVE_HOUR, cp.WindowKind.WEEKLY}
    got = usage.get(account_id)
    assert got.five_hour.used_percent == 25.0 and got.weekly.used_percent == 40.0
    assert got.five_hour.source == cp.ReadingSource.POLL and got.five_hour.resets_at
    await expect("NotFound", usage.refresh("zzzzzz"))

    step("sign-in: login_start, follow the fake's authorize redirect, login_complete")
    start = await accounts.login_start(cp.LoginOptions(listen=False, label="relogged"))
    assert start.url().startswith(fake.url() + "/oauth/authorize?"), start.url()
    assert start.listen_addr() is None and not start.browser_opened()
    assert start.expires_at() > int(time.time() * 1000)
    assert (await accounts.login_status(start.state())).status == "pending"
    status, headers, _ = http("GET", start.url())
    assert status == 302, status
    done = await accounts.login_complete(headers["Location"])
    assert done.account.id == account_id and not done.created, "same sign-in, same account"
    assert done.account.label == "relogged"
    assert (await start.wait()).account.id == account_id
    info = await accounts.login_status(start.state())
    assert info.status == "completed" and info.account_id == account_id, info
    await expect("Auth", accounts.login_complete(headers["Location"]))
    await expect("InvalidInput", accounts.login_complete("https://example.com/nothing"))

    step("serve: GET /health, one chat request through the gateway, stop")
    server = await cp.serve(pool, "127.0.0.1:0")
    assert server.is_running() and server.url().startswith("http://127.0.0.1:")
    assert server.base_url() == server.url() + "/v1" and len(server.rpc_token()) >= 32
    status, _, _ = http("GET", server.url() + "/health")
    assert status == 200, status
    status, _, body = http(
        "POST",
        server.base_url() + "/chat/completions",
        {"model": "gpt-5-codex", "messages": [{"role": "user", "content": "hi"}]},
        {"authorization": "Bearer " + ci_secret},
    )
    assert status == 200, (status, body)
    assert body["choices"][0]["message"]["content"] == "Hello from acct-1.", body
    status, _, body = http(
        "POST",
        server.base_url() + "/chat/completions",
        {"model": "gpt-5-codex", "messages": [{"role": "user", "content": "hi"}]},
        {"authorization": "Bearer sk-cp-unknown"},
    )
    assert status == 401, (status, body)
    msg = await expect("InvalidInput", cp.serve(pool, "not an address"))
    assert "expected host:port" in msg, msg
    # `localhost` is 127.0.0.1, as for the CLI's `serve --addr`.
    local = await cp.serve(pool, "localhost:0")
    assert local.url().startswith("http://127.0.0.1:"), local.url()
    # A stop while another runs waits for that one; both end with the server stopped.
    first = asyncio.ensure_future(local.stop())
    await asyncio.sleep(0)
    await asyncio.gather(local.stop(), first)
    assert not local.is_running()
    # Other machines could reach it: refused as a bad argument, not as a bug.
    msg = await expect("InvalidInput", cp.serve(pool, "0.0.0.0:0"))
    assert "ALLOW_NON_LOOPBACK_SERVICE_ADDR" in msg, msg
    await server.stop()
    await server.stop()  # a second stop does nothing
    assert not server.is_running()
    try:
        http("GET", server.url() + "/health")
        raise AssertionError("the server still answers after stop()")
    except urllib.error.URLError:
        pass

    step("ledger and request log show the request")
    rows = []
    for _ in range(50):  # the gateway records right after the response; allow a moment
        rows = await usage.ledger(cp.LedgerGroup.KEY)
        if rows:
            break
        await asyncio.sleep(0.05)
    assert [(r.group, r.requests) for r in rows] == [(ci.id, 1)], rows
    assert rows[0].total_tokens == rows[0].tokens.input_tokens + rows[0].tokens.output_tokens > 0
    assert await usage.ledger(cp.LedgerGroup.MODEL, int(time.time() * 1000) + 60_000) == []
    tomorrow = int(time.time() * 1000) + 86_400_000
    assert await usage.fold_ledger(tomorrow) == 1
    assert await usage.ledger(cp.LedgerGroup.KEY) == rows, "folding keeps the sums"
    assert await usage.fold_ledger(tomorrow) == 0
    for t in (-(2**63), 2**63 - 1, 253_402_300_800_000):
        msg = await expect("InvalidInput", usage.fold_ledger(t))
        assert "years 1 to 9999" in msg, msg
    log = await pool.request_log().list()
    chat = [e for e in log if e.route == "/v1/chat/completions" and e.status == 200]
    assert chat and chat[0].key_id == ci.id and chat[0].account_id == account_id, log
    assert (await pool.request_log().list(cp.RequestLogQuery(limit=1))) == log[:1]
    oldest = await pool.request_log().list(cp.RequestLogQuery(limit=len(log), oldest_first=True))
    assert oldest == log[::-1], "oldest first"
    assert (await pool.request_log().list(cp.RequestLogQuery(after_id=log[-1].id, oldest_first=True))) == log[-2::-1]
    # A unique prefix names the key, as on the command line; an unknown one is an error.
    by_key = await pool.request_log().list(cp.RequestLogQuery(key_id=ci.id))
    assert by_key and (await pool.request_log().list(cp.RequestLogQuery(key_id=ci.id[:6]))) == by_key
    await expect("NotFound", pool.request_log().list(cp.RequestLogQuery(key_id="nope")))
    # A limit is a count of rows: 0 is refused, and an unset one reads the newest 100.
    msg = await expect("InvalidInput", pool.request_log().list(cp.RequestLogQuery(limit=0)))
    assert "limit" in msg, msg
    assert cp.RequestLogQuery().limit == 100
    assert await pool.request_log().prune(0) == 0
    assert await pool.request_log().prune(int(time.time() * 1000) + 60_000) == len(log) - 1
    assert [e.id for e in await pool.request_log().list()] == [log[0].id]

    step("remove the account")
    removed = await accounts.remove(account_id)
    assert removed.id == account_id and accounts.list() == []
    await pool.flush()


def free_addr():
    """A loopback `host:port` nothing listens on (a fixed LOGIN_ADDR, like 1455)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def until_cancelled(accounts, state):
    """Waits (at most 5 s) until the sign-in is cancelled (abandoned ones are cancelled in the
    background)."""
    deadline = time.monotonic() + 5
    while (await accounts.login_status(state)).status != "cancelled":
        assert time.monotonic() < deadline, "the abandoned sign-in was not cancelled"
        await asyncio.sleep(0.02)


async def abandoned_sign_ins(tmp, fake):
    addr = free_addr()
    settings = dict(fake.settings(), DISABLE_POLLING="true", LOGIN_ADDR=addr)
    pool = await cp.Pool.open(os.path.join(tmp, "login.db"), settings)
    accounts = pool.accounts()

    step("a taken LOGIN_ADDR names the way out for the CLI and the bindings")
    start = await accounts.login_start()
    assert start.listen_addr() == addr
    msg = await expect("Auth", accounts.login_start())
    assert "in use" in msg and "codexpool account complete" in msg and "login_complete(url)" in msg, msg

    step("a wait that times out cancels the sign-in and frees the port")
    try:
        await asyncio.wait_for(start.wait(), 0.3)
        raise AssertionError("the wait ended")
    except asyncio.TimeoutError:
        pass
    await until_cancelled(accounts, start.state())
    assert await start.cancel() is False
    again = await accounts.login_start()  # the port is free at once
    assert again.listen_addr() == addr

    step("cancel() wakes a pending wait() and frees the port")
    waiting = asyncio.ensure_future(again.wait())
    await asyncio.sleep(0.2)
    assert await again.cancel() is True
    assert "cancelled" in await expect("Auth", waiting)

    step("a freed handle with a listener cancels its sign-in; without one it stays open")
    start = await accounts.login_start()
    state = start.state()
    del start
    gc.collect()
    await until_cancelled(accounts, state)
    last = await accounts.login_start()
    assert await last.cancel() is True
    start = await accounts.login_start(cp.LoginOptions(listen=False))
    state = start.state()
    del start
    gc.collect()
    await asyncio.sleep(0.2)
    assert (await accounts.login_status(state)).status == "pending"


async def take_over(tmp, fake):
    fake.add_account("acct-t")
    pool = await cp.Pool.open(os.path.join(tmp, "take-over.db"), dict(fake.settings(), DISABLE_POLLING="true"))
    accounts = pool.accounts()

    step("import without take-over: shared with the Codex CLI, nothing refreshed")
    refreshes = fake.count("/oauth/token")
    results = await accounts.import_text("auth.json", fake.auth_json("acct-t"))
    assert results[0].codex_cli and "single-use refresh token" in results[0].warning, results
    assert not results[0].taken_over and results[0].take_over_error is None, results
    assert fake.count("/oauth/token") == refreshes

    step("import with take_over: one refresh, and the warning says so")
    path = os.path.join(tmp, "auth.json")
    with open(path, "w") as f:
        f.write(fake.auth_json("acct-t"))
    results = await accounts.import_path(path, take_over=True)
    assert results[0].warning.startswith(f"took over {path}"), results
    assert results[0].taken_over and results[0].take_over_error is None, results
    assert fake.count("/oauth/token") == refreshes + 1

    step("a failed take-over is put on its result, not raised: the results stay")
    homes = os.path.join(tmp, "homes")
    os.makedirs(homes)
    for n in ("acct-a", "acct-b", "acct-c"):
        fake.add_account(n)
        with open(os.path.join(homes, f"{n}.json"), "w") as f:
            f.write(fake.auth_json(n))
    fake.revoke_sessions("acct-b")
    results = await accounts.import_path(homes, take_over=True)
    assert [r.status for r in results] == [cp.ImportStatus.IMPORTED] * 3, results
    assert [r.taken_over for r in results] == [True, False, True], results
    assert results[0].warning.startswith("took over"), results
    assert results[1].take_over_error and results[1].sign_in_dead, results
    assert not results[0].sign_in_dead and not results[2].sign_in_dead, results
    assert results[0].take_over_error is None and results[2].take_over_error is None, results
    assert fake.refresh_count("acct-a") == 1 and fake.refresh_count("acct-c") == 1, "goes on past the failure"
    assert len(accounts.list()) == 4, "the import stands"


def forked_child_opens_its_own_pool(tmp, fake):
    """Forks after the runtime ran: in the child the parent's pool must raise, not hang, and a
    pool the child opens must work. 0 when both did."""
    db = os.path.join(tmp, "fork.db")
    child_db = os.path.join(tmp, "fork-child.db")
    settings = dict(fake.settings(), DISABLE_POLLING="true")
    pool = asyncio.run(cp.Pool.open(db, settings))
    asyncio.run(pool.flush())  # the runtime runs in this process now
    step("a child forked after use gets an error for the parent's pool, and opens its own")
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock: the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 3
        try:
            # The parent's pool: its threads are not here, and its memory is a copy nothing
            # updates (a key disabled since would still verify), so even reads refuse.
            calls = [
                lambda: asyncio.run(pool.flush()),
                lambda: pool.keys().list(),
                lambda: pool.keys().verify("sk-cp-anything"),
                lambda: pool.keys().get("k"),
                lambda: pool.accounts().list(),
                lambda: pool.accounts().get("a"),
                lambda: pool.usage().list(),
                lambda: pool.usage().get("a"),
            ]
            code = 0
            for call in calls:
                try:
                    call()
                    code = 2
                except CodexPoolError.Internal as e:
                    if "forked" not in str(e) or "Pool.open" not in str(e):
                        code = 1
            if code == 0:
                # The parent's database file: SQLite's locks do not survive the fork.
                code = 4
                try:
                    asyncio.run(cp.Pool.open(db, settings))
                except CodexPoolError as e:
                    code = 0 if "forked" in str(e) else 8
            if code == 0:
                code = 4
                own = asyncio.run(cp.Pool.open(child_db, settings))
                asyncio.run(own.keys().create(cp.NewKey(name="from-the-child")))
                asyncio.run(own.flush())
                code = 0 if [k.name for k in own.keys().list()] == ["from-the-child"] else 5
        except BaseException:
            code = 6
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung in a codexpool call")
        time.sleep(0.05)
    code = os.waitstatus_to_exitcode(done[1])
    assert code == 0, f"the child got the fork errors, then used its own pool (exit {code})"
    childs = asyncio.run(cp.Pool.open(child_db, settings))
    assert [k.name for k in childs.keys().list()] == ["from-the-child"]
    asyncio.run(pool.keys().create(cp.NewKey(name="parent")))  # the parent goes on as before


def test_ffi():
    fake = cp.FakeOpenAi.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(tmp, fake))
    finally:
        fake.shutdown()


def test_abandoned_sign_ins_free_the_listener_port():
    fake = cp.FakeOpenAi.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(abandoned_sign_ins(tmp, fake))
    finally:
        fake.shutdown()


def test_import_take_over():
    fake = cp.FakeOpenAi.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(take_over(tmp, fake))
    finally:
        fake.shutdown()


def test_a_child_forked_after_use_gets_an_error_not_a_hang():
    if not hasattr(os, "fork"):
        return  # no fork() here
    fake = cp.FakeOpenAi.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            forked_child_opens_its_own_pool(tmp, fake)
    finally:
        fake.shutdown()


if __name__ == "__main__":
    t0 = time.monotonic()
    test_ffi()
    test_abandoned_sign_ins_free_the_listener_port()
    test_import_take_over()
    test_a_child_forked_after_use_gets_an_error_not_a_hang()
    print(f"codexpool_ffi: all checks passed in {time.monotonic() - t0:.1f}s")
