"""pool.accounts: listing, organising, status, removal, import/export (warnings, take-over), and
the sign-ins (browser with and without the callback listener, device code) against the fake
issuer, including what frees a listener's port when the caller gives up."""

import _thread
import asyncio
import gc
import json
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

import codexpool
from codexpool.testing import FakeOpenAi

from conftest import add_account, free_addr


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def authorize(url: str) -> str:
    """Plays the browser at the fake issuer: returns where it redirects to."""
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(url, timeout=10)
    assert e.value.code == 302
    location = e.value.headers["Location"]
    assert location
    return str(location)


def test_list_get_and_filters(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    a = add_account(pool, fake, "acct-1", plan="pro")
    b = add_account(pool, fake, "acct-2", email="second@example.com")
    assert [x.id for x in pool.accounts.list()] == sorted([a.id, b.id], key=lambda i: pool.accounts.get(i).label)
    assert len(pool.accounts) == 2
    assert pool.accounts.get(a.id) == a
    assert pool.accounts.get(a.id[:6]).id == a.id, "a unique prefix is enough"
    assert a.plan_type == "pro"
    assert a.chatgpt_account_id == "acct-1"
    assert a.status == "active"
    assert pool.accounts.list(text="second")[0].id == b.id
    assert pool.accounts.list(status="active") == pool.accounts.list()
    assert pool.accounts.list(status="disabled") == []
    pool.accounts.update(a.id, group="team", tags=["x", "y"])
    assert [x.id for x in pool.accounts.list(group="team")] == [a.id]
    assert [x.id for x in pool.accounts.list(tag="y")] == [a.id]
    assert pool.accounts.list(tag="z") == []
    with pytest.raises(codexpool.InvalidInput) as e:
        pool.accounts.list(status="sleeping")
    assert e.value.field == "status"


def test_unknown_and_ambiguous_ids(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    with pytest.raises(codexpool.NotFound) as e:
        pool.accounts.get("ffffffffffff")
    assert (e.value.what, e.value.id) == ("account", "ffffffffffff")
    for call in (
        pool.accounts.remove,
        pool.accounts.enable,
        pool.accounts.disable,
        pool.accounts.runtime,
        lambda i: pool.accounts.update(i, label="x"),
    ):
        with pytest.raises(codexpool.NotFound):
            call("ffffffffffff")
    # Add accounts until two ids share a first character, then ask for that character.
    ids: list[str] = []
    n = 0
    while True:
        n += 1
        ids.append(add_account(pool, fake, f"acct-{n}").id)
        firsts = [i[0] for i in ids]
        dup = next((c for c in firsts if firsts.count(c) > 1), None)
        if dup:
            break
    with pytest.raises(codexpool.Ambiguous) as amb:
        pool.accounts.get(dup)
    assert isinstance(amb.value, codexpool.InvalidInput)
    assert amb.value.candidates is not None and len(amb.value.candidates) >= 2


def test_update_sets_and_clears_fields(pool: codexpool.Pool, account: codexpool.Account) -> None:
    a = pool.accounts.update(
        account.id, label="  Work  ", group="team", tags=["a", "b", "a"], note="hi", sort=5
    )
    assert (a.label, a.group, a.tags, a.note, a.sort) == ("Work", "team", ["a", "b"], "hi", 5)
    assert a.updated_at >= account.updated_at
    # Omitted keywords stay; None clears the optional ones.
    a = pool.accounts.update(account.id, note=None)
    assert (a.label, a.group, a.note) == ("Work", "team", None)
    a = pool.accounts.update(account.id, group=None, tags=None)
    assert (a.group, a.tags) == (None, [])
    assert pool.accounts.update(account.id) == pool.accounts.get(account.id)
    with pytest.raises(codexpool.InvalidInput, match="label"):
        pool.accounts.update(account.id, label=" ")
    with pytest.raises(codexpool.InvalidInput, match="label"):
        pool.accounts.update(account.id, label=None)  # type: ignore[arg-type]
    with pytest.raises(codexpool.InvalidInput, match="tags"):
        pool.accounts.update(account.id, tags=["a,b"])
    with pytest.raises(TypeError, match="colour"):
        pool.accounts.update(account.id, colour="red")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        pool.accounts.update(account.id, sort="first")  # type: ignore[arg-type]


def test_sort_orders(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    a = add_account(pool, fake, "acct-1")
    b = add_account(pool, fake, "acct-2")
    out = pool.accounts.set_sort_orders({a.id: 10, b.id: 1})
    assert {x.id: x.sort for x in out} == {a.id: 10, b.id: 1}
    assert [x.id for x in pool.accounts.list()] == [b.id, a.id]
    with pytest.raises(codexpool.NotFound):
        pool.accounts.set_sort_orders({"ffffffffffff": 1})


def test_enable_disable_remove_and_runtime(pool: codexpool.Pool, account: codexpool.Account) -> None:
    rt = pool.accounts.runtime(account.id)
    assert (rt.inflight, rt.cooldown_until, rt.exhausted_until, rt.usable) == (0, None, None, True)
    d = pool.accounts.disable(account.id)
    assert d.status == "disabled" and d.status_reason
    assert not pool.accounts.runtime(account.id).usable
    assert pool.accounts.list(status="disabled") == [pool.accounts.get(account.id)]
    e = pool.accounts.enable(account.id)
    assert (e.status, e.status_reason) == ("active", None)
    removed = pool.accounts.remove(account.id)
    assert removed.id == account.id
    assert pool.accounts.list() == []
    with pytest.raises(codexpool.NotFound):
        pool.accounts.remove(account.id)


def test_import_file_folder_bytes_text_and_reimport(
    pool: codexpool.Pool, fake: FakeOpenAi, tmp_path: Path
) -> None:
    fake.add_account("acct-1")
    fake.add_account("acct-2")
    home = tmp_path / "exports"
    home.mkdir()
    (home / "one.json").write_text(json.dumps(fake.auth_json("acct-1")))
    (home / "two.json").write_text(json.dumps(fake.auth_json("acct-2")))
    with pytest.warns(codexpool.CodexPoolWarning, match="single-use refresh token"):
        r = pool.accounts.import_file(home / "one.json")
    assert (r.imported, r.updated, r.skipped) == (1, 0, 0)
    assert r.results[0].status == "imported"
    assert str(home / "one.json") in r.results[0].source
    assert r.results[0].warning, "an auth.json shares its refresh token with the Codex CLI"
    assert r.results[0].codex_cli
    # A folder: acct-1 again (unchanged: the stored tokens are the file's) and acct-2 (new).
    with pytest.warns(codexpool.CodexPoolWarning):
        r = pool.accounts.import_file(str(home))
    assert (r.imported, r.updated, r.unchanged) == (1, 0, 1)
    # Bytes of the same document: nothing to update.
    with pytest.warns(codexpool.CodexPoolWarning):
        r = pool.accounts.import_bytes(json.dumps(fake.auth_json("acct-2")).encode(), source="b")
    assert (r.unchanged, r.results[0].source) == (1, "b")
    assert "already up to date" in (r.results[0].reason or ""), r
    r = pool.accounts.import_text("{ not json", source="broken")
    assert (r.skipped, r.results[0].status) == (1, "skipped")
    assert r.results[0].reason
    assert len(pool.accounts) == 2
    with pytest.raises(codexpool.FileError) as e:
        pool.accounts.import_file(tmp_path / "missing.json")
    assert e.value.path and "missing.json" in e.value.path
    assert r.to_dict()["results"][0]["status"] == "skipped"


def test_paths_may_start_with_a_tilde_for_the_home_directory(
    fake: FakeOpenAi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    fake.add_account("acct-1")
    (home / ".codex" / "auth.json").write_text(json.dumps(fake.auth_json("acct-1")))
    pool = codexpool.Pool.open("~/pool.db", **fake.settings())
    assert pool.db_path == home / "pool.db"
    assert (home / "pool.db").exists()
    with pytest.warns(codexpool.CodexPoolWarning):
        r = pool.accounts.import_file("~/.codex/auth.json")
    assert (r.imported, r.skipped) == (1, 0), r
    with pytest.warns(codexpool.CodexPoolWarning):
        assert pool.accounts.import_file(Path("~") / ".codex").unchanged == 1
    assert pool.accounts.export("~/export.json") == 1
    assert json.loads((home / "export.json").read_text())["accounts"][0]["chatgpt_account_id"] == "acct-1"
    # Only a leading `~` component is the home directory.
    with pytest.raises(codexpool.FileError) as e:
        pool.accounts.import_file("~nobody-here/auth.json")
    assert e.value.path == "~nobody-here/auth.json"


def test_export_dict_and_file_round_trip(
    pool: codexpool.Pool, fake: FakeOpenAi, tmp_path: Path
) -> None:
    a = add_account(pool, fake, "acct-1")
    add_account(pool, fake, "acct-2")
    pool.accounts.update(a.id, group="team", note="keep me")
    doc = pool.accounts.export()
    assert doc["version"] == 1
    assert len(doc["accounts"]) == 2
    assert pool.accounts.export(group="team")["accounts"][0]["note"] == "keep me"
    path = tmp_path / "export.json"
    assert pool.accounts.export(path, group="team") == 1
    assert (path.stat().st_mode & 0o777) == 0o600
    other = codexpool.Pool.open(tmp_path / "other.db", **fake.settings())
    r = other.accounts.import_file(path)
    assert r.imported == 1
    copied = other.accounts.list()[0]
    assert (copied.group, copied.note, copied.chatgpt_account_id) == ("team", "keep me", "acct-1")
    with pytest.raises(codexpool.InvalidInput):
        pool.accounts.export(status="nope")


def test_browser_sign_in_completed_with_the_redirect_url(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    fake.add_account("acct-9", email="nine@example.com", plan="team")
    login = pool.accounts.login_start(label="Nine", group="g", tags=["t"], note="n", listen=False)
    assert login.url.startswith(fake.issuer + "/oauth/authorize?")
    assert login.listen_addr is None and not login.browser_opened
    assert login.state in repr(login)
    info = pool.accounts.login_status(login.state)
    assert (info.kind, info.status, info.expired) == ("browser", "pending", False)
    location = authorize(login.url)
    done = pool.accounts.login_complete(location)
    assert done.created
    a = done.account
    assert (a.label, a.group, a.tags, a.note, a.plan_type) == ("Nine", "g", ["t"], "n", "team")
    info = pool.accounts.login_status(login.state)
    assert (info.status, info.account_id) == ("completed", a.id)
    # Once only.
    with pytest.raises(codexpool.AuthError, match="already completed"):
        pool.accounts.login_complete(location)
    assert login.wait(timeout=5).account.id == a.id


def test_browser_sign_in_through_the_callback_listener(fake: FakeOpenAi, tmp_path: Path) -> None:
    fake.add_account("acct-1")
    pool = codexpool.Pool.open(tmp_path / "p.db", login_addr="127.0.0.1:0", **fake.settings())
    login = pool.accounts.login_start()
    assert login.listen_addr and login.listen_addr.startswith("127.0.0.1:")
    port = login.listen_addr.rsplit(":", 1)[1]
    assert f":{port}/auth/callback" in login.redirect_uri
    result: dict[str, object] = {}

    def wait() -> None:
        result["done"] = pool.accounts.login_wait(login.state, timeout=20)

    t = threading.Thread(target=wait)
    t.start()
    # The browser follows the redirect to the listener, which completes the sign-in.
    with urllib.request.urlopen(login.url, timeout=10) as page:
        assert page.status == 200
    t.join(30)
    done = result["done"]
    assert isinstance(done, codexpool.LoginCompleted)
    assert done.account.chatgpt_account_id == "acct-1"


def test_sign_in_failures_cancel_and_timeout(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    fake.add_account("acct-1")
    with pytest.raises(codexpool.NotFound, match="unknown state") as nf:
        pool.accounts.login_complete("http://localhost:1455/auth/callback?code=x&state=nope")
    assert (nf.value.what, nf.value.id) == ("sign-in", None)
    for call in (pool.accounts.login_status, pool.accounts.login_cancel, pool.accounts.login_wait):
        with pytest.raises(codexpool.NotFound) as nf:
            call("nope")
        assert nf.value.what == "sign-in"
    login = pool.accounts.login_start(listen=False)
    assert login.cancel() is True
    assert login.cancel() is False
    assert pool.accounts.login_cancel(login.state) is False
    assert pool.accounts.login_status(login.state).status == "cancelled"
    with pytest.raises(codexpool.AuthError, match="cancelled"):
        login.wait(timeout=5)
    fake.fail_next_authorize("access_denied", "nope")
    login = pool.accounts.login_start(listen=False)
    with pytest.raises(codexpool.AuthError, match="refused"):
        pool.accounts.login_complete(authorize(login.url))
    assert pool.accounts.login_status(login.state).status == "failed"
    assert pool.accounts.login_status(login.state).error
    with pytest.raises(codexpool.InvalidInput):
        login.wait(timeout=-1)


def test_device_sign_in(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    fake.add_account("acct-1")
    fake.auto_approve_device(1, "acct-1")
    d = pool.accounts.device_start(label="dev")
    assert d.user_code and d.verification_url.startswith(fake.issuer)
    assert d.interval_secs >= 1
    assert d.user_code in repr(d)
    done = d.wait(timeout=20)
    assert done.account.label == "dev" and done.created
    assert pool.accounts.login_status(d.state).kind == "device"


def test_import_warnings_are_codexpool_warnings(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    assert issubclass(codexpool.CodexPoolWarning, UserWarning)
    fake.add_account("acct-1")
    with pytest.warns(codexpool.CodexPoolWarning, match="single-use refresh token") as w:
        r = pool.accounts.import_text(json.dumps(fake.auth_json("acct-1")), source="auth.json")
    assert [str(x.message) for x in w] == [r.results[0].warning]
    assert "take_over=True" in str(w[0].message)
    assert w[0].filename == __file__, "attributed to the caller's line"
    # An export is no Codex CLI sign-in: nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = pool.accounts.import_text(json.dumps(pool.accounts.export()), source="export")
    assert r.results[0].warning is None


def test_import_with_take_over(pool: codexpool.Pool, fake: FakeOpenAi, tmp_path: Path) -> None:
    fake.add_account("acct-1")
    cli_copy = fake.current_tokens("acct-1")["refresh_token"]
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(fake.auth_json("acct-1")))
    with pytest.warns(codexpool.CodexPoolWarning, match="took over") as w:
        r = pool.accounts.import_file(path, take_over=True)
    assert len(w) == 1, "the shared-sign-in warning is replaced"
    assert r.imported == 1 and r.results[0].codex_cli and r.results[0].taken_over
    assert r.results[0].warning and r.results[0].warning.startswith(f"took over {path}")
    # One refresh: the Codex CLI's copy of the refresh token is spent, codexpool's is live.
    assert fake.refresh_count("acct-1") == 1
    assert fake.current_tokens("acct-1")["refresh_token"] != cli_copy
    fake.add_account("acct-2")
    with pytest.warns(codexpool.CodexPoolWarning, match="took over b"):
        r = pool.accounts.import_bytes(json.dumps(fake.auth_json("acct-2")).encode(), "b", take_over=True)
    assert fake.refresh_count("acct-2") == 1
    # Without take_over nothing is refreshed.
    fake.add_account("acct-3")
    with pytest.warns(codexpool.CodexPoolWarning, match="single-use"):
        pool.accounts.import_text(json.dumps(fake.auth_json("acct-3")), "t")
    assert fake.refresh_count("acct-3") == 0
    # A refresh that fails names the source; the account stays imported.
    fake.add_account("acct-4")
    fake.revoke_sessions("acct-4")
    # Its warnings are issued all the same: this one's sign-in is dead.
    with pytest.warns(codexpool.CodexPoolWarning, match="no longer valid"):
        with pytest.raises(codexpool.AuthError, match="could not take over other/auth.json") as e:
            pool.accounts.import_text(json.dumps(fake.auth_json("acct-4")), "other/auth.json", take_over=True)
    assert [a.chatgpt_account_id for a in pool.accounts.list(text="acct-4")] == ["acct-4"]
    assert e.value.report is not None and e.value.report.imported == 1
    assert not e.value.report.results[0].taken_over
    assert "sign in again" in (e.value.report.results[0].take_over_error or "")
    assert e.value.report.results[0].sign_in_dead
    assert codexpool.AuthError.report is None, "other auth errors carry no report"


def test_a_failed_take_over_keeps_the_report(pool: codexpool.Pool, fake: FakeOpenAi, tmp_path: Path) -> None:
    for n in ("acct-a", "acct-b", "acct-c", "acct-d"):
        fake.add_account(n)
        (tmp_path / f"{n}.json").write_text(json.dumps(fake.auth_json(n)))
    fake.revoke_sessions("acct-b")
    fake.revoke_sessions("acct-c")
    with pytest.warns(codexpool.CodexPoolWarning) as w:
        with pytest.raises(codexpool.AuthError, match="could not take over .*acct-b.json") as e:
            pool.accounts.import_file(tmp_path, take_over=True)
    report = e.value.report
    assert report is not None and report.imported == 4
    # The dead sign-ins do not stop the others; each says why it failed.
    assert [r.taken_over for r in report.results] == [True, False, False, True]
    assert [r.take_over_error is not None for r in report.results] == [False, True, True, False]
    assert report.results[1].to_dict()["take_over_error"] == report.results[1].take_over_error
    assert any(str(x.message).startswith("took over") for x in w), "the take-over warnings are issued"
    assert fake.refresh_count("acct-a") == 1 and fake.refresh_count("acct-d") == 1
    assert len(pool.accounts.list()) == 4


def test_login_complete_with_something_else_than_a_redirect_is_invalid_input(pool: codexpool.Pool) -> None:
    for garbage in ("garbage", "https://example.com/nothing", "http://localhost:1455/auth/callback?code=x"):
        with pytest.raises(codexpool.InvalidInput, match="not a sign-in redirect URL") as e:
            pool.accounts.login_complete(garbage)
        assert e.value.field == "redirect_url"


def test_a_wait_that_times_out_cancels_the_sign_in_and_frees_the_port(
    fake: FakeOpenAi, tmp_path: Path
) -> None:
    addr = free_addr()
    pool = codexpool.Pool.open(tmp_path / "p.db", login_addr=addr, **fake.settings())
    login = pool.accounts.login_start()
    assert login.listen_addr == addr
    # While it listens, the port is taken; the message says how to finish from Python.
    with pytest.raises(codexpool.AuthError, match=r"in use.*login_complete\(url\)"):
        pool.accounts.login_start()
    with pytest.raises(codexpool.Timeout, match="0.2 s"):
        login.wait(timeout=0.2)
    assert pool.accounts.login_status(login.state).status == "cancelled"
    assert login.cancel() is False
    # The next sign-in gets the same port at once.
    again = pool.accounts.login_start()
    assert again.listen_addr == addr
    assert again.cancel() is True


def test_ctrl_c_in_wait_cancels_the_sign_in_and_frees_the_port(fake: FakeOpenAi, tmp_path: Path) -> None:
    addr = free_addr()
    pool = codexpool.Pool.open(tmp_path / "p.db", login_addr=addr, **fake.settings())
    login = pool.accounts.login_start()
    ctrl_c = threading.Timer(0.3, _thread.interrupt_main)
    ctrl_c.start()
    with pytest.raises(KeyboardInterrupt):
        login.wait()
    ctrl_c.join()
    assert pool.accounts.login_status(login.state).status == "cancelled"
    assert pool.accounts.login_start().cancel() is True


def test_a_forgotten_sign_in_with_a_listener_is_cancelled_when_collected(
    fake: FakeOpenAi, tmp_path: Path
) -> None:
    addr = free_addr()
    pool = codexpool.Pool.open(tmp_path / "p.db", login_addr=addr, **fake.settings())
    state = pool.accounts.login_start().state  # the handle is gone at once
    gc.collect()
    deadline = time.monotonic() + 5
    while True:
        try:
            again = pool.accounts.login_start()
            break
        except codexpool.AuthError:
            assert time.monotonic() < deadline, "the listener still holds the port"
            time.sleep(0.05)
    assert pool.accounts.login_status(state).status == "cancelled"
    assert again.cancel() is True
    # Without a listener nothing is held: the sign-in stays open for login_complete.
    state = pool.accounts.login_start(listen=False).state
    gc.collect()
    time.sleep(0.2)
    assert pool.accounts.login_status(state).status == "pending"


def test_login_start_is_a_context_manager(pool: codexpool.Pool, fake: FakeOpenAi) -> None:
    fake.add_account("acct-1")
    with pytest.raises(RuntimeError):
        with pool.accounts.login_start(listen=False) as login:
            state = login.state
            raise RuntimeError("the caller gave up")
    assert pool.accounts.login_status(state).status == "cancelled"
    # Leaving after the sign-in ended changes nothing.
    with pool.accounts.login_start(listen=False) as login:
        done = pool.accounts.login_complete(authorize(login.url))
        assert login.wait(timeout=5).account.id == done.account.id
    assert pool.accounts.login_status(login.state).status == "completed"


def test_cancel_from_another_thread_wakes_a_blocked_wait(fake: FakeOpenAi, tmp_path: Path) -> None:
    pool = codexpool.Pool.open(tmp_path / "p.db", login_addr="127.0.0.1:0", **fake.settings())
    login = pool.accounts.login_start()
    ended: list[BaseException] = []

    def wait() -> None:
        try:
            login.wait()
        except codexpool.AuthError as e:
            ended.append(e)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)
    assert t.is_alive()
    started = time.monotonic()
    assert login.cancel() is True
    t.join(5)
    assert not t.is_alive() and time.monotonic() - started < 1.0
    assert "cancelled" in str(ended[0])


def test_asyncio_a_cancelled_task_cancels_its_sign_in(fake: FakeOpenAi, tmp_path: Path) -> None:
    """The README's pattern: the `with` block cancels the sign-in, which ends the `wait` that
    `asyncio.to_thread` runs, so the worker thread (and `asyncio.run`) does not hang."""
    pool = codexpool.Pool.open(tmp_path / "p.db", login_addr="127.0.0.1:0", **fake.settings())
    states: list[str] = []

    async def sign_in() -> codexpool.LoginCompleted:
        with pool.accounts.login_start() as login:
            states.append(login.state)
            return await asyncio.to_thread(login.wait)

    async def main() -> None:
        task = asyncio.create_task(sign_in())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(main())  # waits for the worker thread too
    assert time.monotonic() - started < 5
    assert pool.accounts.login_status(states[0]).status == "cancelled"
