"""The whole path over real sockets: FakeOpenAi upstream → an account imported from its
auth.json → a platform key → codexpool.serve → the official `openai` client (chat completions and
responses, streaming and not) → the ledger and request log; and errors as `openai` exceptions."""

import time
import warnings
from collections.abc import Iterator

import openai
import pytest

import codexpool
from codexpool.testing import FakeOpenAi, Reply

from conftest import add_account


@pytest.fixture
def served(pool: codexpool.Pool, fake: FakeOpenAi) -> Iterator[tuple[codexpool.Server, str]]:
    add_account(pool, fake, "acct-1")
    key = pool.keys.create("roundtrip")
    with codexpool.serve(pool) as srv:
        yield srv, key.secret


def client(srv: codexpool.Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=0, timeout=30)


def test_openai_client_round_trip_and_ledger(
    pool: codexpool.Pool, fake: FakeOpenAi, served: tuple[codexpool.Server, str]
) -> None:
    srv, key = served
    c = client(srv, key)
    acct = pool.accounts.list()[0]

    chat = c.chat.completions.create(
        model="gpt-5-codex", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert chat.choices[0].message.content == "Hello from acct-1."
    assert chat.usage is not None and chat.usage.prompt_tokens > 0
    expected = chat.usage.total_tokens

    fake.push_reply("acct-1", Reply.text("streamed chat answer"))
    stream = c.chat.completions.create(
        model="gpt-5-codex",
        messages=[{"role": "user", "content": "stream it"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text == "streamed chat answer"
    assert usage is not None and usage.completion_tokens == 3
    expected += usage.total_tokens

    fake.push_reply("acct-1", Reply.text("a responses answer"))
    r = c.responses.create(model="gpt-5-codex", input="hi")
    assert r.output_text == "a responses answer"
    assert r.usage is not None
    expected += r.usage.total_tokens

    fake.push_reply("acct-1", Reply.reasoning_then_text("thinking hard", "streamed responses"))
    deltas, completed = [], None
    with c.responses.create(model="gpt-5-codex", input="stream", stream=True) as events:
        for ev in events:
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
            elif ev.type == "response.completed":
                completed = ev.response
    assert "".join(deltas) == "streamed responses"
    assert completed is not None and completed.usage is not None
    assert completed.usage.output_tokens_details.reasoning_tokens == 2
    expected += completed.usage.total_tokens

    fake.push_reply("acct-1", Reply.tool_call("call_1", "get_weather", '{"city": "Paris"}'))
    tool = c.chat.completions.create(
        model="gpt-5-codex",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ],
    )
    call = tool.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')  # type: ignore[union-attr]
    assert tool.usage is not None
    expected += tool.usage.total_tokens

    rows = pool.usage.ledger()
    assert [(row.group, row.requests) for row in rows] == [(acct.id, 5)]
    assert rows[0].total_tokens == expected
    assert rows[0].reasoning_tokens == 2
    log = pool.request_log.list()
    assert len(log) == 5
    assert [e.route for e in log][:2] == ["/v1/chat/completions", "/v1/responses"]
    assert {e.status for e in log} == {200}
    assert sum(e.stream for e in log) == 2
    assert all(e.account_id == acct.id and e.tokens for e in log)
    key_id = pool.keys.list()[0].id
    assert len(pool.request_log.list(2, key_id=key_id)) == 2
    # A unique prefix names a key or an account, as on the command line; an unknown one is an error.
    assert len(pool.request_log.list(2, key_id=key_id[:6])) == 2
    assert len(pool.request_log.list(account_id=acct.id[:5])) == 5
    with pytest.raises(codexpool.NotFound):
        pool.request_log.list(key_id="nope")
    assert len(pool.request_log.list(account_id=acct.id, after_id=log[-1].id)) == 4
    # Following the log a page at a time: the oldest rows after an id first, no gap.
    pages, last = [], log[-1].id
    while page := pool.request_log.list(2, after_id=last, oldest_first=True):
        pages.append([e.id for e in page])
        last = page[-1].id
    assert pages == [[log[3].id, log[2].id], [log[1].id, log[0].id]]
    # Pruning: nothing arrived before 2000; all but the newest row arrived before tomorrow.
    assert pool.request_log.prune("2000-01-01T00:00:00Z") == 0
    assert pool.request_log.prune(time.time() + 86_400) == 4
    assert [e.id for e in pool.request_log.list()] == [log[0].id]
    with pytest.raises(codexpool.InvalidInput, match="before"):
        pool.request_log.prune("yesterday")
    # A limit is a count of rows, at least 1: 0 and a negative one are refused by name.
    for bad in (0, -1):
        with pytest.raises(codexpool.InvalidInput, match="limit") as e:
            pool.request_log.list(bad)
        assert e.value.field == "limit"
    assert pool.keys.list()[0].last_used_at is not None
    assert c.models.list().data, "the model list is served too"


def test_errors_surface_as_openai_exceptions(
    pool: codexpool.Pool, fake: FakeOpenAi, served: tuple[codexpool.Server, str]
) -> None:
    srv, key = served
    with pytest.raises(openai.AuthenticationError) as auth:
        client(srv, "sk-cp-" + "0" * 48).chat.completions.create(
            model="gpt-5-codex", messages=[{"role": "user", "content": "hi"}]
        )
    assert auth.value.status_code == 401

    restricted = pool.keys.create("restricted", allowed_models=["gpt-5"]).secret
    with pytest.raises(openai.APIStatusError) as refused:
        client(srv, restricted).responses.create(model="gpt-5-codex", input="hi")
    assert refused.value.status_code in (400, 403)
    assert "gpt-5-codex" in str(refused.value)

    disabled = pool.keys.create("off")
    pool.keys.disable(disabled.key.id)
    with pytest.raises(openai.PermissionDeniedError):
        client(srv, disabled.secret).responses.create(model="gpt-5-codex", input="hi")

    # The only account hits its usage limit: the client gets a 429 and the account is marked
    # exhausted until the reset.
    fake.push_reply("acct-1", Reply.usage_limit_429(resets_in_secs=3600))
    with pytest.raises(openai.RateLimitError) as limited:
        client(srv, key).chat.completions.create(
            model="gpt-5-codex", messages=[{"role": "user", "content": "hi"}]
        )
    assert limited.value.status_code == 429
    acct = pool.accounts.list()[0]
    assert pool.usage.exhausted_until(acct.id) is not None
    assert pool.accounts.runtime(acct.id).exhausted_until is not None
    with pytest.raises(openai.RateLimitError):
        client(srv, key).responses.create(model="gpt-5-codex", input="again")
    statuses = [e.status for e in pool.request_log.list()]
    assert statuses[:2] == [429, 429]


def test_failover_to_the_next_account_is_invisible(
    pool: codexpool.Pool, fake: FakeOpenAi, served: tuple[codexpool.Server, str]
) -> None:
    srv, key = served
    second = add_account(pool, fake, "acct-2")
    first = pool.accounts.list()[0]
    pool.accounts.set_sort_orders({first.id: 0, second.id: 1})
    fake.push_reply("acct-1", Reply.usage_limit_429())
    r = client(srv, key).responses.create(model="gpt-5-codex", input="hi")
    assert r.output_text == "Hello from acct-2."
    entry = pool.request_log.list(1)[0]
    assert entry.accounts_tried == [first.id, second.id]
    assert entry.account_id == second.id


def test_a_conversation_is_read_back_through_the_sdk(
    fake: FakeOpenAi, served: tuple[codexpool.Server, str]
) -> None:
    srv, key = served
    c = client(srv, key)
    fake.push_reply("acct-1", Reply.text("first answer"))
    questions = [{"role": "user", "content": f"q{n}"} for n in range(3)]
    r1 = c.responses.create(model="gpt-5-codex", input=questions)  # type: ignore[arg-type]
    fake.push_reply("acct-1", Reply.text("second answer"))
    r2 = c.responses.create(model="gpt-5-codex", input="q3", previous_response_id=r1.id)
    assert c.responses.retrieve(r2.id).output_text == "second answer"
    # The SDK's own paging (two items a page, following `last_id`) walks the whole input
    # turn 2 was answered for: turn 1's questions and answer, then its own question.
    # Messages sent the short way are listed as OpenAI lists them (as the SDK's types say).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pages = c.responses.input_items.list(r2.id, limit=2, order="asc")
        items = [item.model_dump() for item in pages]
    assert [i["content"][0]["text"] for i in items] == ["q0", "q1", "q2", "first answer", "q3"]
    assert len({i["id"] for i in items}) == 5
    assert items[3]["id"] == r1.output[0].id
    c.responses.delete(r2.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.input_items.list(r2.id)
