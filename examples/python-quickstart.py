#!/usr/bin/env python3
"""codexpool quick start: a pool, an account, a key, a local OpenAI-compatible endpoint, usage.

It runs as is, against codexpool's built-in fake OpenAI (no real account, no network).
codexpool is not on PyPI: build it from this repository into a virtualenv with maturin (see
bindings/python/README.md), from the repository root:

    python3 -m venv .venv && . .venv/bin/activate
    pip install maturin==1.16.0 openai
    (cd bindings/python && maturin develop)
    python examples/python-quickstart.py

(bindings/python/test.sh does the same in .venv and runs this script after the tests.)

For real use, drop the fake: open the pool without settings (`codexpool.Pool.open()` keeps it in
your data dir), import `~/.codex/auth.json` or sign in with `pool.accounts.login_start(
open_browser=True).wait()`, and keep `codexpool.serve(pool, "127.0.0.1:48760")` running
(`with codexpool.serve(pool, "127.0.0.1:48760") as srv: srv.wait()` serves until Ctrl-C).
"""

import json
import tempfile
from pathlib import Path

import openai

import codexpool
from codexpool.testing import FakeOpenAi


def main() -> None:
    with FakeOpenAi() as fake, tempfile.TemporaryDirectory() as tmp:
        # The fake plays auth.openai.com, chatgpt.com's usage endpoint and the Codex backend.
        fake.add_account("acct-1", email="you@example.com", plan="plus")
        fake.set_usage("acct-1", 12.5, 40.0)
        auth_json = Path(tmp) / "auth.json"  # what the Codex CLI keeps in ~/.codex/auth.json
        auth_json.write_text(json.dumps(fake.auth_json("acct-1")))

        # 1. A pool (SQLite) whose sign-in, usage and upstream URLs point at the fake.
        pool = codexpool.Pool.open(Path(tmp) / "pool.db", route_strategy="headroom", **fake.settings())

        # 2. An account, imported from the auth.json.
        report = pool.accounts.import_file(auth_json)
        account = pool.accounts.get(report.results[0].account_id or "")
        print(f"imported {account.label} ({account.plan_type}), id {account.id}")

        # 3. A platform key for clients; its secret is shown only here.
        created = pool.keys.create("quickstart", allowed_models=["gpt-5-codex"])
        print(f"key {created.key.name}: {created.key.hint}")

        # 4. Usage windows, read from the usage endpoint.
        pool.usage.refresh(progress=lambda done, total, r: print(f"  polled {done}/{total}"))
        usage = pool.usage.get(account.id)
        for w in (usage.five_hour, usage.weekly):
            if w:
                print(f"  {w.kind}: {w.used_percent:.1f}% used, resets {w.resets_at:%Y-%m-%d %H:%M} UTC")

        # 5. The gateway on a free local port, used with the official OpenAI client.
        with codexpool.serve(pool) as srv:
            print(f"serving {srv.base_url}")
            client = openai.OpenAI(base_url=srv.base_url, api_key=created.secret)
            chat = client.chat.completions.create(
                model="gpt-5-codex", messages=[{"role": "user", "content": "Say hello"}]
            )
            print("chat:", chat.choices[0].message.content)
            print("responses (streamed): ", end="")
            with client.responses.create(model="gpt-5-codex", input="Hi", stream=True) as events:
                for event in events:
                    if event.type == "response.output_text.delta":
                        print(event.delta, end="", flush=True)
            print()

        # 6. The token ledger: who used how much.
        for row in pool.usage.ledger(group_by="key"):
            print(
                f"ledger: key {row.group}: {row.requests} requests, "
                f"{row.input_tokens} in + {row.output_tokens} out = {row.total_tokens} tokens"
            )


if __name__ == "__main__":
    main()
