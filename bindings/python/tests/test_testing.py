"""codexpool.testing.FakeOpenAi and Reply: what Python users script their tests with."""

import gc
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
from conftest import child_exit_code, fork

import codexpool
from codexpool.testing import FakeOpenAi, Reply


def test_addresses_accounts_and_tokens() -> None:
    with FakeOpenAi.start(openai_api_key="sk-mine") as fake:
        assert fake.running
        assert fake.url.startswith("http://127.0.0.1:")
        assert fake.issuer == fake.url
        assert fake.codex_base_url == fake.url + "/backend-api/codex"
        assert fake.openai_base_url == fake.url + "/v1"
        assert fake.usage_base_url.startswith(fake.url)
        assert fake.openai_api_key == "sk-mine"
        assert fake.client_id
        assert fake.settings() == {
            "issuer": fake.issuer,
            "usage_base_url": fake.usage_base_url,
            "upstream_base_url": fake.codex_base_url,
        }
        tokens = fake.add_account("acct-1", email="me@example.com", plan="pro")
        assert set(tokens) == {"id_token", "access_token", "refresh_token"}
        assert fake.has_account("acct-1") and not fake.has_account("acct-2")
        auth = fake.auth_json("acct-1")
        assert auth["tokens"]["access_token"] == tokens["access_token"]
        assert fake.current_tokens("acct-1") == tokens
        assert fake.refresh_count("acct-1") == 0
        with pytest.raises(codexpool.Conflict):
            fake.add_account("acct-1")
        for call in (
            fake.auth_json,
            fake.current_tokens,
            fake.expire_access_token,
            fake.revoke_sessions,
            fake.refresh_count,
            fake.set_next_login,
            fake.pending_replies,
            lambda a: fake.set_usage(a, 1.0),
            lambda a: fake.push_reply(a, Reply.text("x")),
            lambda a: fake.set_default_reply(a, None),
        ):
            with pytest.raises(codexpool.NotFound, match="acct-404"):
                call("acct-404")
    assert not fake.running
    fake.stop()  # idempotent
    with pytest.raises(codexpool.CodexPoolError, match="stopped"):
        fake.count("/x")
    assert "running=False" in repr(fake)


def test_replies_counts_and_the_plain_openai_api() -> None:
    with FakeOpenAi() as fake:
        fake.add_account("acct-1")
        fake.push_reply("acct-1", Reply.text("a"))
        fake.push_reply("acct-1", Reply.usage_limit_429(60))
        assert fake.pending_replies("acct-1") == 2
        fake.set_default_reply("acct-1", Reply.overloaded())
        fake.set_default_reply("acct-1", None)
        fake.set_global_default_reply(Reply.text("global"))
        fake.set_global_default_reply(None)
        fake.push_reply_any(Reply.text("any"))
        fake.push_openai_reply(Reply.text("plain answer"))
        req = urllib.request.Request(
            fake.openai_base_url + "/chat/completions",
            data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode(),
            headers={"Authorization": "Bearer sk-fake", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
        assert body["choices"][0]["message"]["content"] == "plain answer"
        assert fake.count("/v1/chat/completions") == 1
        reqs = fake.requests("/v1/chat/completions")
        assert reqs[0]["method"] == "POST"
        assert reqs[0]["headers"]["authorization"] == "Bearer sk-fake"
        assert json.loads(reqs[0]["body"])["model"] == "m"
        assert len(fake.requests()) >= 1
        fake.clear_requests()
        assert fake.count("/v1/chat/completions") == 0
        assert fake.open_streams() == 0 and fake.cancelled_streams() == 0
        assert fake.wait_streams_closed(1.0)
        fake.set_usage("acct-1", 10.0, 20.0, plan="pro", credits_balance=1.0, limit_reached=False)
        fake.fail_next_authorize("access_denied", "no")


def test_reply_kinds_build_and_show() -> None:
    replies = [
        Reply.text("hello there"),
        Reply.deltas(["a", "b"]),
        Reply.reasoning_then_text("r", "t"),
        Reply.tool_call("c1", "f", "{}"),
        Reply.usage_limit_429(),
        Reply.rate_limit_429(),
        Reply.failed("server_error", "boom"),
        Reply.failed_after_text(["a"], "server_error", "boom"),
        Reply.overloaded(),
        Reply.usage_limit_text(),
        Reply.status(500, "{}"),
        Reply.unauthorized(),
        Reply.deactivated(),
        Reply.challenge_html(),
        Reply.cut_mid_stream(2),
        Reply.incomplete(["a"], "max_output_tokens"),
        Reply.raw_sse("data: {}\n\n"),
        Reply.hang_forever(),
        Reply.text("x").slow_first_byte(0.1).paced(0.01).with_usage(input_tokens=1, output_tokens=2),
    ]
    assert all(repr(r).startswith("Reply(") for r in replies)
    assert "UsageLimit429" in repr(Reply.usage_limit_429(5))
    with pytest.raises(codexpool.InvalidInput):
        Reply.text("x").slow_first_byte(-1)


def test_fake_instant_mode_and_workers() -> None:
    with FakeOpenAi(instant=True, workers=2, strict_requests=False) as fake:
        assert fake.running


def test_stop_while_another_thread_waits_for_streams_to_close() -> None:
    """`stop()` used to wait for the fake's lock holding the GIL, while `wait_streams_closed`
    held the lock and needed the GIL back: both hung. Run in a child process, so a hang is a
    failure and not a stuck suite."""
    script = textwrap.dedent(
        """
        import http.client, threading, time, urllib.parse
        from codexpool.testing import FakeOpenAi, Reply

        fake = FakeOpenAi(strict_requests=False)
        tokens = fake.add_account("acct-1")
        fake.push_reply("acct-1", Reply.hang_forever())
        u = urllib.parse.urlsplit(fake.codex_base_url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("POST", u.path + "/responses", body="{}", headers={
            "Authorization": "Bearer " + tokens["access_token"],
            "ChatGPT-Account-ID": "acct-1",
            "Content-Type": "application/json",
        })
        conn.getresponse()  # the head; the body never ends
        deadline = time.monotonic() + 5
        while fake.open_streams() != 1:
            assert time.monotonic() < deadline, "no open stream"
            time.sleep(0.01)
        outcome = []

        def wait():
            try:
                outcome.append(fake.wait_streams_closed(2.0))
            except Exception as e:
                outcome.append(e)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)  # the waiter is inside wait_streams_closed
        fake.stop()
        waiter.join(10)
        assert not waiter.is_alive()
        assert not fake.running
        print("stopped:", outcome)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "stopped: [CodexPoolError('the fake is stopped')]" in done.stdout, done.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_forked_child_drops_its_copy_of_the_fake_quietly() -> None:
    """A test suite that forks: the child's copy of a running fake goes without a panic (its
    server thread is the parent's), and the parent's fake serves on."""
    fake = FakeOpenAi.start()
    pid = fork()
    if pid == 0:  # the child: report through the exit code only
        code = 3
        try:
            raised: list[object] = []
            sys.unraisablehook = raised.append
            del fake
            gc.collect()
            code = 1 if raised else 0
        finally:
            os._exit(code)
    assert child_exit_code(pid) == 0, "dropping the fake in the child raised"
    assert fake.running
    with pytest.raises(urllib.error.HTTPError) as e:  # no key: the fake's 401, so it serves
        urllib.request.urlopen(fake.url + "/v1/models", timeout=10)
    assert e.value.code == 401
    fake.stop()
