"""Test helpers: :class:`FakeOpenAi`, a fake auth.openai.com + chatgpt.com usage endpoint + Codex
backend on 127.0.0.1 (running on its own thread), and :class:`Reply` scripts for it.

>>> from codexpool.testing import FakeOpenAi, Reply
>>> with FakeOpenAi() as fake:                                   # doctest: +SKIP
...     fake.add_account("acct-1")
...     fake.push_reply("acct-1", Reply.usage_limit_429())
...     pool = codexpool.Pool.open(tmp / "pool.db", **fake.settings())
...     pool.accounts.import_text(json.dumps(fake.auth_json("acct-1")))
"""

from ._native import FakeOpenAi as FakeOpenAi, Reply as Reply

__all__ = ["FakeOpenAi", "Reply"]
