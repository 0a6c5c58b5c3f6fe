"""codexpool.serve: the server's handle, the admin RPC token, a stop that is idempotent and
frees the port, and the exceptions for bad addresses."""

import gc
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import child_exit_code, db_file, fork

import codexpool


def rpc(srv: codexpool.Server, token: str, method: str) -> tuple[int, dict]:
    req = urllib.request.Request(
        srv.url + "/rpc",
        data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def refused(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) != 0


def test_serve_stop_and_context_manager(pool: codexpool.Pool) -> None:
    srv = codexpool.serve(pool)
    assert srv.running
    assert srv.host == "127.0.0.1" and srv.port > 0
    assert srv.url == f"http://127.0.0.1:{srv.port}"
    assert srv.base_url == srv.url + "/v1"
    with urllib.request.urlopen(srv.url + "/health", timeout=10) as r:
        assert r.status == 200
    # The generated RPC token is written beside the database, and never shown in repr().
    assert srv.rpc_token_file == db_file(pool).parent / "rpc-token"
    assert srv.rpc_token_file.read_text() == srv.rpc_token
    assert srv.rpc_token not in repr(srv)
    pool.keys.create("ci")
    status, answer = rpc(srv, srv.rpc_token, "apikey/list")
    assert status == 200
    assert [k["name"] for k in answer["result"]] == ["ci"], answer
    assert rpc(srv, "wrong", "apikey/list")[0] == 401
    srv.stop()
    assert not srv.running
    assert refused(srv.host, srv.port), "the port is free after stop()"
    srv.stop()  # idempotent
    assert "running=False" in repr(srv)

    given = "given-token-of-32-characters-ok!"
    with codexpool.serve(pool, "127.0.0.1:0", rpc_token=f" {given} ", background_tasks=False) as s2:
        assert s2.rpc_token == given, "trimmed, as clients' tokens are"
        assert s2.rpc_token_file is None
        status, answer = rpc(s2, given, "apikey/list")
        assert status == 200 and len(answer["result"]) == 1, answer
    assert not s2.running and refused(s2.host, s2.port)
    # A token no client could present, or one easy to guess, as for RPC_TOKEN.
    with pytest.raises(codexpool.InvalidInput) as e:
        codexpool.serve(pool, rpc_token=" ")
    assert e.value.field == "rpc_token"
    with pytest.warns(codexpool.CodexPoolWarning, match="rpc_token is short"):
        codexpool.serve(pool, rpc_token="short", background_tasks=False).stop()


def test_wait_blocks_until_another_thread_stops_the_server(pool: codexpool.Pool) -> None:
    import threading

    with codexpool.serve(pool, background_tasks=False) as srv:
        started = time.monotonic()
        assert srv.wait(timeout=0.3) is False, "still serving"
        assert time.monotonic() - started >= 0.3
        threading.Timer(0.3, srv.stop).start()
        assert srv.wait() is True
        assert not srv.running
    assert srv.wait(timeout=0) is True, "a stopped server does not wait"
    with pytest.raises(codexpool.InvalidInput):
        srv.wait(timeout=-1)


def test_a_pool_in_memory_is_no_server_of_the_database_at_db_path(
    pool: codexpool.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DB_PATH names a database that exists: an in-memory pool's server must not take its
    # token nor say in servers/ that it is that database's server.
    monkeypatch.setenv("CODEXPOOL_DB_PATH", str(db_file(pool)))
    db_dir = db_file(pool).parent
    with codexpool.Pool.in_memory() as mem, codexpool.serve(mem, background_tasks=False) as srv:
        assert srv.rpc_token_file is None
        assert not (db_dir / "rpc-token").exists()
        assert not list(db_dir.glob("servers/*.json"))


def test_addresses_as_for_the_cli(pool: codexpool.Pool) -> None:
    # `host:port` as the CLI's `serve --addr` takes it: `localhost` is 127.0.0.1.
    with codexpool.serve(pool, "localhost:0", background_tasks=False) as srv:
        assert srv.host == "127.0.0.1" and srv.url.startswith("http://127.0.0.1:")
    with codexpool.serve(pool, " 127.0.0.1:0 ", background_tasks=False) as srv:
        assert srv.host == "127.0.0.1"


def _url_of_a_server_of(pool: codexpool.Pool) -> str:
    # Returns from inside `with`: type-checks only if `__exit__` says it lets exceptions pass.
    with pool, codexpool.serve(pool, background_tasks=False) as srv:
        return srv.url


def test_with_blocks_let_exceptions_through(pool: codexpool.Pool) -> None:
    assert _url_of_a_server_of(pool).startswith("http://127.0.0.1:")
    with pytest.raises(KeyError), pool, codexpool.serve(pool, background_tasks=False):
        raise KeyError("passes")


def test_bad_addresses(pool: codexpool.Pool) -> None:
    with pytest.raises(codexpool.InvalidInput, match="expected host:port") as e:
        codexpool.serve(pool, "localhost")
    assert e.value.field == "addr"
    with pytest.raises(codexpool.InvalidInput, match="did you mean 127.0.0.1:8080") as e:
        codexpool.serve(pool, "8080")
    assert e.value.field == "addr"
    with pytest.raises(codexpool.InvalidInput, match="shutdown_grace"):
        codexpool.serve(pool, shutdown_grace=-1)
    with codexpool.serve(pool) as srv:
        with pytest.raises(codexpool.ServerError, match="in use|cannot listen"):
            codexpool.serve(pool, f"127.0.0.1:{srv.port}")


def test_no_socket_or_thread_is_left_after_stop(pool: codexpool.Pool, tmp_path: Path) -> None:
    if not Path("/proc/self/fd").exists():
        pytest.skip("needs /proc")

    def sockets() -> int:
        n = 0
        for fd in Path("/proc/self/fd").iterdir():
            try:
                n += fd.readlink().as_posix().startswith("socket:")
            except OSError:
                pass
        return n

    def threads() -> int:
        return len(list(Path("/proc/self/task").iterdir()))

    # Warm up the runtime (its worker threads stay for the process) and the pool's connections.
    with codexpool.serve(pool):
        pass
    before = (sockets(), threads())
    for i in range(5):
        other = codexpool.Pool.open(tmp_path / f"other-{i}.db")
        for p in (pool, other):
            with codexpool.serve(p) as srv:
                with urllib.request.urlopen(srv.url + "/health", timeout=10):
                    pass
        del other, p
    gc.collect()
    deadline = time.monotonic() + 10
    while (sockets() > before[0] or threads() > before[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sockets() <= before[0]
    assert threads() <= before[1], "a dropped pool or stopped server left a thread"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_forked_child_leaves_the_parents_server_alone(pool: codexpool.Pool) -> None:
    srv = codexpool.serve(pool, background_tasks=False)
    files = list(db_file(pool).parent.glob("servers/*.json"))
    assert len(files) == 1, files
    pid = fork()
    if pid == 0:  # the child: report through the exit code only
        code = 3
        try:
            try:
                srv.stop()
                code = 2
            except codexpool.CodexPoolError as e:
                code = 0 if "forked" in str(e) else 1
            del srv  # the child's copy goes: the parent's server file must stay
            gc.collect()
        finally:
            os._exit(code)
    assert child_exit_code(pid) == 0, "stop() in the child is the fork error"
    assert all(f.exists() for f in files), "the parent's server file is still there"
    assert srv.running
    with urllib.request.urlopen(srv.url + "/health", timeout=10) as r:
        assert r.status == 200
    srv.stop()
    assert not any(f.exists() for f in files)
    assert refused(srv.host, srv.port)

