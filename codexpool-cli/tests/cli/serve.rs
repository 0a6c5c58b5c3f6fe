//! `serve` as a child process: the banner, `/rpc` with and without the token, a chat request
//! through the gateway, other commands on the same database while it runs, and a graceful stop
//! on SIGTERM that writes the request log; listings showing the running server's runtime state.

use std::time::Duration;

use codexpool_core::request_log::RequestLogQuery;
use codexpool_testkit::Reply;
use serde_json::{Value, json};

use crate::support::{Env, Lines, chat_status, finish, signal, stop, texts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_rpc_and_chat_then_stops_gracefully_on_sigterm() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-1"]);
    let secret = env.key_secret("ci");

    let mut child = env.spawn(&["serve", "--addr", "127.0.0.1:0"], &[]);
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let url = lines.find(|l| {
        l.split_once("listening on ")
            .map(|(_, u)| u.trim().to_string())
    });
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let banner = lines.find(|l| l.contains("base_url").then(|| l.to_string()));
    assert!(banner.contains(&format!("{url}/v1")), "{banner}");
    let seen = lines.seen.join("\n");
    assert!(seen.contains("accounts  1 usable of 1"), "{seen}");
    assert!(seen.contains("keys      1 usable of 1"), "{seen}");
    assert!(seen.contains(&env.db().display().to_string()), "{seen}");
    let token_file = env.db().parent().unwrap().join("rpc-token");
    assert!(seen.contains(&token_file.display().to_string()), "{seen}");
    let token = std::fs::read_to_string(&token_file).unwrap();

    let client = reqwest::Client::new();
    let rpc = |auth: Option<String>, method: &'static str| {
        let mut req = client
            .post(format!("{url}/rpc"))
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let res = rpc(None, "apikey/list").await.unwrap();
    assert_eq!(res.status(), 401);
    let res = rpc(Some("wrong".into()), "apikey/list").await.unwrap();
    assert_eq!(res.status(), 401);
    let res = rpc(Some(token.trim().to_string()), "apikey/list")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["result"][0]["name"], "ci", "{v}");

    // A chat request through the gateway, as any OpenAI client sends it.
    let chat = |key: String| {
        client
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
    };
    let res = chat(secret.clone()).await.unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-1.");

    // Other commands on the same database while it runs; the server sees their changes.
    let live = env.key_secret("live");
    let mut status = 0;
    for _ in 0..60 {
        status = chat(live.clone()).await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 200,
        "a key created by another process works within seconds"
    );
    assert_eq!(env.json(&["account", "list"])[0]["id"], ids[0].as_str());
    env.ok(&["usage"]);
    env.ok(&["logs"]);

    // One more request, and the stop right after it: its row is written by the graceful stop.
    let res = chat(secret.clone()).await.unwrap();
    assert_eq!(res.status(), 200);
    let stderr = stop(child);
    assert!(stderr.contains("SIGTERM: stopping"), "{stderr}");
    assert!(stderr.contains("Stopped."), "{stderr}");

    // The request log reached the database.
    let pool = env.pool().await;
    let rows = pool
        .request_log()
        .list(&RequestLogQuery::latest(10))
        .await
        .unwrap();
    // Three answered requests; any others are the new key's tries before the server saw it.
    let ok: Vec<_> = rows.iter().filter(|r| r.status == 200).collect();
    assert_eq!(ok.len(), 3, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.status == 200 || r.status == 401),
        "{rows:?}"
    );
    assert!(ok.iter().all(|r| r.route == "/v1/chat/completions"));
    assert!(
        ok.iter()
            .all(|r| r.account_id.as_deref() == Some(ids[0].as_str()))
    );
}

#[test]
fn serve_says_when_the_address_is_taken() {
    let env = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // The flag named the address: the error names the flag.
    let o = env.cmd().args(["serve", "--addr", &addr]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!("error: cannot listen on {addr} (--addr): ")),
        "{err}"
    );
    assert!(!err.contains("SERVICE_ADDR)"), "{err}");
    assert!(
        err.contains(
            "hint: is another codexpool running? Pick another address with --addr or \
             CODEXPOOL_SERVICE_ADDR"
        ),
        "{err}"
    );
    // The variable named it: the error names the variable as it was set.
    for var in ["CODEXPOOL_SERVICE_ADDR", "GPTTOOLS_SERVICE_ADDR"] {
        let o = env.cmd().env(var, &addr).arg("serve").output().unwrap();
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with(&format!("error: cannot listen on {addr} ({var}): ")),
            "{err}"
        );
    }
    // Nothing was created on the way: the address is tried before the database.
    assert!(!env.db().exists(), "{}", env.db().display());
    assert!(!env.db().parent().unwrap().exists());
}

/// `--addr` and `SERVICE_ADDR` take host names (`localhost` is 127.0.0.1, as for
/// `LOGIN_ADDR`); a bare port is refused with the address it most likely meant.
#[test]
fn serve_takes_a_host_name_and_hints_at_a_bare_port() {
    let env = Env::new();
    for (args, extra) in [
        (&["serve", "--addr", "localhost:0"][..], &[][..]),
        (&["serve"], &[("CODEXPOOL_SERVICE_ADDR", "localhost:0")]),
    ] {
        let mut child = env.spawn(args, extra);
        let mut lines = Lines::new(child.stdout.take().unwrap());
        let url = lines.find(|l| {
            l.split_once("listening on ")
                .map(|(_, u)| u.trim().to_string())
        });
        assert!(url.starts_with("http://127.0.0.1:"), "{args:?}: {url}");
        stop(child);
    }
    let o = env
        .cmd()
        .args(["serve", "--addr", "48761"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = texts(&o).1;
    assert!(
        err.starts_with(
            "error: invalid value '48761' for '--addr <ADDR>': expected host:port; did you \
             mean 127.0.0.1:48761?"
        ),
        "{err}"
    );
    let o = env
        .cmd()
        .env("CODEXPOOL_SERVICE_ADDR", "48761")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        texts(&o).1.starts_with(
            "error: invalid CODEXPOOL_SERVICE_ADDR=\"48761\": expected host:port; did you mean \
             127.0.0.1:48761?"
        ),
        "{}",
        texts(&o).1
    );
}

/// A 503 the gateway gives on purpose (no account can serve) is an ordinary answer, in the
/// request log: it is no ERROR line in the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliberate_503s_are_not_logged_as_errors() {
    let env = Env::new();
    let secret = env.key_secret("ci");
    let (url, child) = env.serve(&[]);
    let res = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let stderr = stop(child);
    assert!(
        !stderr.contains("response failed") && !stderr.contains("ERROR"),
        "{stderr}"
    );
}

/// Secrets stay out of the server's log at its most verbose (`RUST_LOG=trace`, every crate's
/// lines too): a platform key, the RPC token, an account's tokens before and after the refresh a
/// 401 brings, a sign-in's code on `/auth/callback`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_the_most_verbose_log() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let first = env.fake.auth_json("acct-1");
    env.fake.expire_access_token("acct-1");
    let secret = env.key_secret("ci");
    let (url, child) = env.serve(&[("RUST_LOG", "trace")]);
    assert_eq!(chat_status(&url, &secret).await, 200);
    let client = reqwest::Client::new();
    let token = std::fs::read_to_string(env.db().parent().unwrap().join("rpc-token")).unwrap();
    let token = token.trim();
    let res = client
        .post(format!("{url}/rpc"))
        .bearer_auth(token)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "account/list", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let code = "code-7f3a9c1e5b2d4f60";
    let res = client
        .get(format!(
            "{url}/auth/callback?code={code}&state=state-unknown"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let refreshed = env.fake.auth_json("acct-1");
    let stderr = stop(child);
    // The log is verbose indeed: the requests' spans are in it.
    assert!(stderr.contains("/auth/callback"), "{stderr}");
    let tokens = |auth: &Value| {
        ["access_token", "refresh_token", "id_token"]
            .map(|k| auth["tokens"][k].as_str().unwrap().to_string())
    };
    let (before, after) = (tokens(&first), tokens(&refreshed));
    assert_ne!(before[0], after[0], "the 401 brought a refresh");
    for s in [secret.as_str(), token, code]
        .into_iter()
        .chain(before.iter().chain(&after).map(String::as_str))
    {
        assert!(!stderr.contains(s), "{s} is in the log");
    }
}

/// With `HTTP_PROXY` (or `HTTPS_PROXY`, `ALL_PROXY`) naming a proxy for the upstream, requests go
/// through it. The fake serves proxy-style (absolute-form) requests as its own, so it plays the
/// proxy here, in front of an upstream host name that does not resolve: only a request sent
/// through the proxy can be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reaches_the_upstream_through_the_proxy_the_environment_names() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let secret = env.key_secret("ci");
    let behind_proxy = "http://codex-upstream.invalid/backend-api/codex";
    let chat = |url: String| {
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&json!({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
    };
    // Without the proxy the host cannot be reached: the test can tell the two apart.
    let (url, child) = env.serve(&[("CODEXPOOL_UPSTREAM_BASE_URL", behind_proxy)]);
    let res = chat(url).await.unwrap();
    assert_eq!(res.status(), 502, "{:?}", res.text().await);
    signal(&child, "TERM");
    finish(child, 40);

    let proxy = env.fake.url();
    let (url, child) = env.serve(&[
        ("CODEXPOOL_UPSTREAM_BASE_URL", behind_proxy),
        ("HTTP_PROXY", proxy.as_str()),
    ]);
    let res = chat(url).await.unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from acct-1.");
    stop(child);
}

/// The banner cannot be printed (stdout is closed from the start): the server still serves, and
/// still stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_serving_when_its_stdout_is_closed() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let secret = env.key_secret("ci");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut child = env.spawn(&["serve", "--addr", &addr], &[]);
    drop(child.stdout.take());

    let client = reqwest::Client::new();
    let t = std::time::Instant::now();
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/health")).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the server never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let stderr = stop(child);
    assert!(stderr.contains("Stopped."), "{stderr}");
}

/// A stop asked twice at once (`timeout` signals the server and then its process group, as do
/// some supervisors) is one graceful stop; a second signal a moment later quits at once, and
/// says what that cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_signal_is_one_stop_and_a_later_one_quits_at_once() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let secret = env.key_secret("ci");
    // An answer that keeps the graceful stop waiting.
    env.fake.push_reply(
        "acct-1",
        Reply::text("Later.").slow_first_byte(Duration::from_secs(30)),
    );
    let (url, mut child) = env.serve(&[]);
    let open = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&json!({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "Hi"}]}))
            .send(),
    );
    for _ in 0..100 {
        if env.fake.requests_to("/backend-api/codex/responses").len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        env.fake.requests_to("/backend-api/codex/responses").len(),
        1,
        "the request never went upstream"
    );
    let mut stderr = Lines::new(child.stderr.take().unwrap());
    signal(&child, "TERM");
    stderr.find(|l| l.contains("TERM: stopping").then_some(()));
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the repeated signal was taken for a second Ctrl-C: {:?}",
        stderr.seen
    );
    signal(&child, "INT");
    let (status, _) = finish(child, 20);
    assert_eq!(status.code(), Some(1));
    stderr.find(|l| {
        l.contains("stopped before the graceful stop finished")
            .then_some(())
    });
    open.abort();
}

/// Requests in flight and cooldowns live in the servers' memory: `account list` and `usage`
/// ask the servers running on the database for them (several add up), and fall back to their
/// own view (nothing in flight, nothing cooling down) once they stopped — or crashed and left
/// their address behind. `key create` names the address a running server listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_the_running_servers_cooldowns_and_requests_in_flight() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-1", "acct-2"]);
    let secret = env.key_secret("ci");
    let runtime_of = |id: &str| {
        let list = env.json(&["account", "list"]);
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap()["runtime"]
            .clone()
    };
    assert_eq!(runtime_of(&ids[0])["source"], "local");
    let servers = env.db().parent().unwrap().join("servers");
    let files = || -> Vec<Value> {
        let Ok(dir) = std::fs::read_dir(&servers) else {
            return Vec::new();
        };
        dir.map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
            .collect()
    };

    let (url, child) = env.serve(&[]);
    let said = files();
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(said[0]["url"], url.as_str());
    assert_eq!(said[0]["pid"], child.id());
    let created = env.json(&["key", "create", "--name", "other"]);
    assert_eq!(
        created["base_url"],
        format!("{url}/v1"),
        "the server's real address"
    );

    // The first account answers 429 (it cools down, the second serves); the second holds its
    // next answer back, so that request is in flight while the CLI looks.
    // A rate limit without `Retry-After`: 45 s of cooldown, which no slow machine outlasts
    // (the fake's own 429 says 1 s).
    env.fake.push_reply(
        "acct-1",
        Reply::status_json(
            429,
            json!({"error": {"type": "rate_limit_exceeded",
            "code": "rate_limit_exceeded", "message": "Rate limit reached."}}),
        ),
    );
    env.fake.push_reply(
        "acct-2",
        Reply::text("Later.").slow_first_byte(Duration::from_secs(6)),
    );
    let client = reqwest::Client::new();
    let chat = || {
        client
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&json!({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
    };
    let slow = tokio::spawn(chat());
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = runtime_of(&ids[1]);
        if seen["inflight"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen["inflight"], 1, "{seen}");
    assert_eq!(seen["source"], "server");
    let cooling = runtime_of(&ids[0]);
    assert!(cooling["cooldown_until"].is_string(), "{cooling}");
    assert_eq!(cooling["usable"], false, "{cooling}");
    let usage = env.json(&["usage"]);
    assert_eq!(usage[0]["runtime_source"], "server", "{usage}");
    assert!(usage[0]["cooldown_until"].is_string(), "{usage}");
    assert!(env.ok(&["usage"]).contains("cooling down, back in"));
    assert!(env.ok(&["account", "list"]).contains("cooling down"));

    // A second server on the database: its own (empty) runtime adds to the first's, and its
    // stop leaves the first one's file alone.
    let (_, second) = env.serve(&[]);
    assert_eq!(files().len(), 2);
    assert_eq!(runtime_of(&ids[1])["inflight"], 1);
    assert!(runtime_of(&ids[0])["cooldown_until"].is_string());
    // Its banner said the first one runs there.
    let said = stop(second);
    assert!(
        said.contains("another server already runs on this database")
            && said.contains(&format!("{url} (pid {})", child.id())),
        "{said}"
    );
    assert_eq!(files().len(), 1);
    assert!(runtime_of(&ids[0])["cooldown_until"].is_string());
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);

    // A clean stop takes its address back: the listings are this process's again.
    stop(child);
    assert!(files().is_empty());
    let rt = runtime_of(&ids[0]);
    assert_eq!(
        (&rt["source"], &rt["cooldown_until"], &rt["usable"]),
        (&json!("local"), &Value::Null, &json!(true)),
        "{rt}"
    );

    // A crash leaves it behind; nobody answers there: nothing is said, the file is cleared.
    let (_, child) = env.serve(&[]);
    signal(&child, "KILL");
    let (_, _) = finish(child, 20);
    assert_eq!(files().len(), 1);
    let out = env
        .cmd()
        .args(["account", "list", "--json"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list[0]["runtime"]["source"], "local", "{stdout}");
    assert!(files().is_empty());
}

/// A change the CLI makes holds at a running server when the command returns: a script that
/// makes a key and uses it at once is not refused (the server would see it within half a
/// second by itself), nor is a key it disabled still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_hold_at_the_server_when_the_command_returns() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let (url, child) = env.serve(&[]);
    for i in 0..5 {
        let name = format!("k{i}");
        let made = env.json(&["key", "create", "--name", &name]);
        let secret = made["secret"].as_str().unwrap().to_string();
        assert_eq!(chat_status(&url, &secret).await, 200, "a key just made");
        env.ok(&["key", "disable", &name]);
        assert_eq!(chat_status(&url, &secret).await, 403, "a key just disabled");
    }
    stop(child);
}

/// An import that fails part-way (a sign-in whose take-over the issuer refuses, exit 1) still
/// holds at the server for the accounts it stored when it returns: they serve at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_failed_import_holds_at_the_server_when_it_returns() {
    let env = Env::new();
    let secret = env.key_secret("ci");
    let (url, child) = env.serve(&[]);
    for round in 0..3 {
        let dir = env.path().join(format!("homes-{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (live, dead) = (format!("live-{round}"), format!("dead-{round}"));
        for n in [&live, &dead] {
            env.fake
                .add_account(codexpool_testkit::FakeAccount::new(n.as_str()));
            let auth = env.fake.auth_json(n);
            std::fs::write(dir.join(format!("{n}.json")), auth.to_string()).unwrap();
        }
        env.fake.revoke_sessions(&dead);
        let o = env
            .cmd()
            .args(["account", "import", "--take-over"])
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{:?}", texts(&o));
        assert_eq!(chat_status(&url, &secret).await, 200, "round {round}");
        // The next round starts with no account again.
        for a in env.json(&["account", "list"]).as_array().unwrap() {
            env.ok(&["account", "remove", a["id"].as_str().unwrap()]);
        }
        assert_eq!(chat_status(&url, &secret).await, 503, "round {round}");
    }
    stop(child);
}

/// A server given its RPC token by the environment writes no token file: a CLI without it
/// still finds the server's address (`key create`'s `base_url`), and says why it shows its
/// own view instead of the server's, rather than passing it off as the server's.
#[test]
fn a_cli_without_the_servers_token_says_so() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let token = "0123456789abcdef0123456789abcdef01234567";
    let (url, child) = env.serve(&[("CODEXPOOL_RPC_TOKEN", token)]);
    let out = env
        .cmd()
        .args(["--json", "key", "create", "--name", "k"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    let created: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(created["base_url"], format!("{url}/v1"));
    // The server was not told at once: a script that used the key now could meet a 401 there.
    assert!(
        stderr.contains("RPC token is not available here")
            && stderr.contains("takes the change within a second, not at once"),
        "{stderr}"
    );
    let out = env
        .cmd()
        .args(["--json", "account", "list"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list[0]["runtime"]["source"], "local", "{stdout}");
    assert!(
        stderr.contains("RPC token is not available here") && stderr.contains(&url),
        "{stderr}"
    );
    let out = env
        .cmd()
        .env("CODEXPOOL_RPC_TOKEN", token)
        .args(["--json", "account", "list"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&out);
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list[0]["runtime"]["source"], "server", "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
    stop(child);
}

/// A server file whose port something else took after a crash (another user's program): the
/// CLI asks it to prove it wrote the file, and never sends it the RPC token.
#[test]
fn listings_never_send_the_token_to_whatever_took_a_crashed_servers_port() {
    use std::io::{Read, Write};
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let (_, child) = env.serve(&[]);
    signal(&child, "KILL");
    finish(child, 20);
    let servers = env.db().parent().unwrap().join("servers");
    let file = std::fs::read_dir(&servers)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let said: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let port = said["port"].as_u64().unwrap();

    // The impostor: answers every request with a made-up proof, keeps what it was sent.
    let impostor = std::net::TcpListener::bind(("127.0.0.1", port as u16)).unwrap();
    impostor.set_nonblocking(true).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut s, _)) = impostor.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbeef",
                );
            }
        })
    };

    let out = env
        .cmd()
        .args(["account", "list", "--json"])
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.join().unwrap();
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list[0]["runtime"]["source"], "local", "{stdout}");
    assert!(
        stderr.contains("something else answers at") && stderr.contains("its file was removed"),
        "{stderr}"
    );
    let token = std::fs::read_to_string(env.db().parent().unwrap().join("rpc-token")).unwrap();
    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(seen.contains("GET /rpc/proof?nonce="), "{seen}");
    assert!(
        !seen.contains(token.trim()) && !seen.contains("authorization"),
        "{seen}"
    );
    assert!(!file.exists(), "the stale file is gone");
}

/// Listening beyond this machine needs the setting, and then the banner says so.
#[test]
fn serve_listens_beyond_loopback_only_when_allowed() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["serve", "--addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0")
            && stderr.contains("CODEXPOOL_ALLOW_NON_LOOPBACK_SERVICE_ADDR=1"),
        "{stderr}"
    );
    assert!(!env.db().exists(), "nothing was created");

    let mut child = env.spawn(
        &["--json", "serve", "--addr", "0.0.0.0:0"],
        &[("CODEXPOOL_ALLOW_NON_LOOPBACK_SERVICE_ADDR", "1")],
    );
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let banner: Value = lines.find(|l| serde_json::from_str(l).ok());
    assert!(
        banner["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("other machines can reach the gateway")),
        "{banner}"
    );
    stop(child);
}

/// Keys that exist but none of which can be used (disabled, expired) are said in the banner,
/// as no keys at all are.
#[test]
fn the_banner_says_when_no_key_can_be_used() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    env.key_secret("off");
    env.ok(&["key", "disable", "off"]);
    let mut child = env.spawn(&["--json", "serve", "--addr", "127.0.0.1:0"], &[]);
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let banner: Value = lines.find(|l| serde_json::from_str(l).ok());
    assert_eq!(
        (&banner["keys"], &banner["usable_keys"]),
        (&json!(1), &json!(0))
    );
    let warnings = banner["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("no API key can be used")),
        "{banner}"
    );
    stop(child);
}

/// `--json` gives the database's path whole: a script reads it from another directory.
#[test]
fn the_json_banner_gives_an_absolute_database_path() {
    let env = Env::new();
    let mut child = env.spawn_on(
        "here.db".as_ref(),
        &["--json", "serve", "--addr", "127.0.0.1:0"],
        &[],
    );
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let banner: Value = lines.find(|l| serde_json::from_str(l).ok());
    let expected = env.path().canonicalize().unwrap().join("here.db");
    assert_eq!(
        std::path::Path::new(banner["db_path"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        expected,
        "{banner}"
    );
    assert!(banner["db_path"].as_str().unwrap().starts_with('/'));
    stop(child);
}

/// Makes a file read-only for this process until dropped: `chattr +i` for root (which ignores
/// permissions), mode 0400 otherwise (no one else's read: a database others may read is warned
/// of). `None` when the file stays writable (no `chattr`, or a
/// filesystem without the flag).
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn make(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        let ro = Self(path.to_path_buf());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let _ = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status();
        let writable = std::fs::OpenOptions::new().append(true).open(path).is_ok();
        (!writable).then_some(ro)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o644));
    }
}

/// A database this process may only read: `serve` refuses to start (it would drop every usage
/// reading, request-log row and refreshed sign-in) and says what to do; reading still works.
#[test]
fn serve_refuses_a_database_it_cannot_write() {
    let env = Env::new();
    env.ok(&["key", "create", "--name", "k1"]);
    let Some(_ro) = ReadOnly::make(&env.db()) else {
        eprintln!("skipped: cannot make a file read-only for this user here");
        return;
    };
    let child = env.spawn(&["serve", "--addr", "127.0.0.1:0"], &[]);
    let (status, err) = finish(child, 20);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "error: cannot serve from {}: the database does not take writes (",
            env.db().display()
        )) && err.contains("readonly database"),
        "{err}"
    );
    assert_eq!(
        err.matches("readonly database").count(),
        1,
        "said once: {err}"
    );
    assert!(
        err.contains("hint: run as the user who owns the database and its folder"),
        "{err}"
    );
    assert!(env.ok(&["key", "list"]).contains("k1"));
}
