//! The whole service on a real socket: the admin RPC (token, origin, methods, bad params),
//! sign-in through `/auth/callback`, load shedding, and a graceful stop that flushes the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use codexpool_core::keys::NewKey;
use codexpool_core::request_log::RequestLogQuery;
use codexpool_core::{Config, Pool, Secret};
use codexpool_gateway::{RunningServer, Server, SharedServer};
use codexpool_testkit::{FakeAccount, FakeOpenAi, Reply};
use serde_json::{Value, json};

struct Env {
    fake: FakeOpenAi,
    dir: tempfile::TempDir,
    pool: Pool,
}

async fn env(settings: &[(&str, &str)]) -> Env {
    let fake = FakeOpenAi::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config_for(&fake, settings);
    config
        .set("DB_PATH", dir.path().join("pool.db").to_str().unwrap())
        .unwrap();
    let pool = Pool::open(config).await.unwrap();
    Env { fake, dir, pool }
}

/// An environment with one account (`acct-0`) and a platform key.
async fn env_with_an_account(settings: &[(&str, &str)]) -> (Env, codexpool_core::keys::CreatedKey) {
    let e = env(settings).await;
    e.fake.add_account(FakeAccount::new("acct-0"));
    e.pool
        .accounts()
        .import_bytes("a", e.fake.auth_json("acct-0").to_string().as_bytes())
        .await;
    let key = e
        .pool
        .keys()
        .create(codexpool_core::keys::NewKey::named("k"))
        .await
        .unwrap();
    (e, key)
}

/// The newest ten request-log rows of `pool`.
async fn log_rows(pool: &Pool) -> Vec<codexpool_core::request_log::RequestLogEntry> {
    pool.request_log()
        .list(&RequestLogQuery::latest(10))
        .await
        .unwrap()
}

async fn start(e: &Env) -> RunningServer {
    common::serve(&e.pool).await
}

async fn rpc(srv: &RunningServer, token: Option<&str>, body: Value) -> (u16, Value) {
    rpc_at(&srv.url(), token, body).await
}

/// [`rpc`] to the server at `url` (for a task that cannot borrow the server).
async fn rpc_at(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/rpc"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn call(srv: &RunningServer, method: &str, params: Value) -> Value {
    let (status, v) = rpc(
        srv,
        Some(srv.rpc_token().expose()),
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_requires_the_token_and_a_local_origin() {
    let e = env(&[]).await;
    let srv = start(&e).await;
    let file = srv.rpc_token_file().unwrap().to_path_buf();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        srv.rpc_token().expose()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "apikey/list"});
    assert_eq!(rpc(&srv, None, list.clone()).await.0, 401);
    assert_eq!(rpc(&srv, Some("wrong"), list.clone()).await.0, 401);
    let (s, v) = rpc(&srv, Some(srv.rpc_token().expose()), list.clone()).await;
    assert_eq!((s, v["result"].clone()), (200, json!([])));
    let evil = reqwest::Client::new()
        .post(format!("{}/rpc", srv.url()))
        .bearer_auth(srv.rpc_token().expose())
        .header("origin", "https://evil.example")
        .json(&list)
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status().as_u16(), 403);
    let local = reqwest::Client::new()
        .post(format!("{}/rpc", srv.url()))
        .bearer_auth(srv.rpc_token().expose())
        .header("origin", "http://localhost:3000")
        .json(&list)
        .send()
        .await
        .unwrap();
    assert_eq!(local.status().as_u16(), 200);
    // A second server on the same database shares the token: the first one's clients (and
    // the file they read it from) keep working.
    let second = start(&e).await;
    assert_eq!(second.rpc_token().expose(), srv.rpc_token().expose());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        srv.rpc_token().expose()
    );
    let (s, _) = rpc(&srv, Some(srv.rpc_token().expose()), list.clone()).await;
    assert_eq!(s, 200);
    let first = srv.rpc_token().expose().to_string();
    second.stop().await.unwrap();
    srv.stop().await.unwrap();
    // A token file others could read is not trusted: a new token replaces it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let third = start(&e).await;
        assert_ne!(third.rpc_token().expose(), first);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600,
            "rewritten private"
        );
        third.stop().await.unwrap();
    }
}

/// Stops from several callers: one stop, which every caller waits for; a caller that gives up
/// waiting does not cut it short; after it, stopping does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_server_stops_once_for_every_caller() {
    let e = env(&[]).await;
    let srv = Server::new(e.pool.clone())
        .addr("127.0.0.1:0".parse().unwrap())
        .background_tasks(false)
        .start()
        .await
        .unwrap();
    let url = srv.url();
    let shared = SharedServer::new(srv);
    assert!(shared.is_running());
    let runtime = tokio::runtime::Handle::current();
    // The first caller gives up at once: the stop goes on.
    drop(shared.stop(&runtime));
    assert!(!shared.is_running());
    let (a, b) = tokio::join!(shared.stop(&runtime), shared.stop(&runtime));
    assert!(a.is_ok() && b.is_ok());
    assert!(
        reqwest::get(format!("{url}/health")).await.is_err(),
        "stopped when the callers got their answer"
    );
    shared.stop(&runtime).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_methods_and_bad_params() {
    let e = env(&[]).await;
    let srv = Server::new(e.pool.clone())
        .addr("127.0.0.1:0".parse().unwrap())
        .rpc_token(Secret::from("tok"))
        .background_tasks(false)
        .start()
        .await
        .unwrap();
    assert!(
        srv.rpc_token_file().is_none(),
        "a given token is not written anywhere"
    );
    e.fake.add_account(FakeAccount::new("acct-0"));
    let doc = e.fake.auth_json("acct-0").to_string();
    let v = call(&srv, "account/import", json!({"content": doc})).await;
    assert_eq!(v["result"]["results"][0]["status"], "imported", "{v}");
    let id = v["result"]["results"][0]["account_id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = call(
        &srv,
        "account/update",
        json!({"id": &id[..6], "label": "Work", "group": "team", "tags": ["a"]}),
    )
    .await;
    assert_eq!(
        (v["result"]["label"].as_str(), v["result"]["group"].as_str()),
        (Some("Work"), Some("team"))
    );
    assert!(v["result"]["usage"].is_object() && v["result"]["runtime"]["usable"] == true);
    let v = call(
        &srv,
        "account/update",
        json!({"id": id, "group": null, "enabled": false}),
    )
    .await;
    assert_eq!(
        (v["result"]["group"].clone(), v["result"]["status"].as_str()),
        (Value::Null, Some("disabled"))
    );
    let v = call(&srv, "account/list", json!({"status": "disabled"})).await;
    assert_eq!(v["result"].as_array().unwrap().len(), 1);
    let v = call(
        &srv,
        "apikey/create",
        json!({"name": "ci", "model": "gpt-5-codex"}),
    )
    .await;
    let secret = v["result"]["secret"].as_str().unwrap();
    assert!(secret.starts_with("sk-cp-"));
    let key_id = v["result"]["id"].as_str().unwrap().to_string();
    let v = call(&srv, "apikey/list", json!(null)).await;
    assert!(!v.to_string().contains(secret), "list never shows secrets");
    call(&srv, "apikey/disable", json!({"id": key_id})).await;
    let v = call(&srv, "apikey/get", json!({"id": key_id})).await;
    assert_eq!(v["error"]["code"], -32601);
    let v = call(&srv, "stats/summary", json!({"group_by": "model"})).await;
    assert_eq!(
        (
            v["result"]["accounts"].as_u64(),
            v["result"]["keys"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // The request log, newest first, or oldest first after an id (how a follower pages).
    for n in 0..5 {
        let entry = codexpool_core::request_log::RequestLogEntry::new(
            format!("req-{n}"),
            e.pool.now(),
            "chat/completions",
        );
        e.pool.request_log().record(entry);
    }
    let ids = |v: &Value| -> Vec<String> {
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let v = call(&srv, "requestlog/list", json!({"limit": 2})).await;
    assert_eq!(ids(&v), ["req-4", "req-3"]);
    let first = call(
        &srv,
        "requestlog/list",
        json!({"limit": 1, "oldest_first": true}),
    )
    .await;
    let after = first["result"][0]["id"].as_i64().unwrap();
    let v = call(
        &srv,
        "requestlog/list",
        json!({"limit": 2, "after_id": after, "oldest_first": true}),
    )
    .await;
    assert_eq!(ids(&v), ["req-1", "req-2"]);
    // Bad params name the field.
    for (method, params, needle) in [
        ("apikey/create", json!({}), "name"),
        ("apikey/create", json!({"name": 5}), "invalid type"),
        (
            "apikey/create",
            json!({"name": "x", "colour": "red"}),
            "colour",
        ),
        ("account/get", json!({"id": "zzzz"}), "no account"),
        ("account/list", json!({"status": "gone"}), "gone"),
        ("account/import", json!({}), "path"),
        (
            "apikey/create",
            json!({"name": "x", "reasoning_effort": "max"}),
            "reasoning_effort",
        ),
        ("requestlog/list", json!({"limit": "ten"}), "invalid type"),
    ] {
        let v = call(&srv, method, params).await;
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{method}: {v}"
        );
        assert!(v["error"]["code"].as_i64().unwrap() < 0);
    }
    // Protocol errors.
    let t = Some("tok");
    let (_, v) = rpc(
        &srv,
        t,
        json!({"jsonrpc": "1.0", "id": 1, "method": "apikey/list"}),
    )
    .await;
    assert_eq!(v["error"]["code"], -32600);
    let raw = reqwest::Client::new()
        .post(format!("{}/rpc", srv.url()))
        .bearer_auth("tok")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.json::<Value>().await.unwrap()["error"]["code"], -32700);
    let (_, v) = rpc(&srv, t, json!([{"jsonrpc": "2.0", "id": 1, "method": "apikey/list"}, {"jsonrpc": "2.0", "method": "apikey/list"}])).await;
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "a notification gets no answer"
    );
    srv.stop().await.unwrap();
}

/// `account/list` while other clients delete accounts: an account gone between the listing and
/// its view is left out (as `/metrics` and `stats/summary` leave it out); the call does not
/// fail with "no account" (-32001).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_list_leaves_out_accounts_deleted_while_it_lists() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let e = env(&[]).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let name = format!("acct-{i}");
        e.fake.add_account(FakeAccount::new(&name));
        let doc = e.fake.auth_json(&name).to_string();
        let r = e.pool.accounts().import_bytes(&name, doc.as_bytes()).await;
        ids.push(r.results[0].account_id.clone().unwrap());
    }
    let srv = start(&e).await;
    let v = call(&srv, "account/list", json!({})).await;
    assert_eq!(v["result"].as_array().map(Vec::len), Some(30), "{v}");
    let done = Arc::new(AtomicBool::new(false));
    let listers: Vec<_> = (0..2)
        .map(|_| {
            let (done, url) = (done.clone(), srv.url());
            let token = srv.rpc_token().expose().to_string();
            tokio::spawn(async move {
                let mut lists = 0;
                // At least once, however late the task starts.
                while lists == 0 || !done.load(Ordering::Relaxed) {
                    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "account/list"});
                    let (_, v) = rpc_at(&url, Some(&token), list).await;
                    assert!(v["result"].is_array(), "a listing failed: {v}");
                    lists += 1;
                }
                lists
            })
        })
        .collect();
    for id in &ids[1..] {
        let v = call(&srv, "account/delete", json!({"id": id})).await;
        assert_eq!(v["result"]["id"], json!(id), "{v}");
    }
    done.store(true, Ordering::Relaxed);
    for l in listers {
        assert!(l.await.unwrap() > 0, "it listed while accounts went");
    }
    let v = call(&srv, "account/list", json!({})).await;
    let left: Vec<_> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["id"])
        .collect();
    assert_eq!(left, [&json!(ids[0])], "{v}");
    assert!(v["result"][0]["runtime"].is_object() && v["result"][0]["usage"].is_object());
    srv.stop().await.unwrap();
}

/// A body past the limit is a 413; one that cannot be read whole (its client broke off, or it
/// is malformed) is a 400 that says so. Each says why, in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_body_too_large_is_413_and_one_cut_short_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = env(&[]).await;
    let srv = start(&e).await;
    let token = srv.rpc_token().expose().to_string();
    let big = reqwest::Client::new()
        .post(format!("{}/rpc", srv.url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(vec![b' '; 8 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status().as_u16(), 413);
    let v: Value = big.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too large")),
        "{v}"
    );
    let head = |framing: &str| {
        format!(
            "POST /rpc HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\n{framing}\r\n\r\n"
        )
    };
    for (what, request) in [
        // Fewer bytes than announced, then the client shuts its side.
        (
            "cut short",
            head("content-length: 100") + r#"{"jsonrpc": "2.0""#,
        ),
        (
            "a bad chunk",
            head("transfer-encoding: chunked") + "5\r\n{\"jso\r\nzz\r\n",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(srv.local_addr())
            .await
            .unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{what}: {answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not be read")),
            "{what}: {answer}"
        );
    }
    srv.stop().await.unwrap();
}

/// Servers starting at once on one database agree on one RPC token, the one in the file: none
/// keeps a token of its own that a later writer replaced (its CLI calls would get 401). Also
/// when the file there is not to be trusted (readable by others) and each replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_at_once_share_the_token_in_the_file() {
    let planted = "p".repeat(64);
    for round in 0..6 {
        let e = env(&[]).await;
        let untrusted = cfg!(unix) && round % 2 == 1;
        #[cfg(unix)]
        if untrusted {
            use std::os::unix::fs::PermissionsExt;
            let file = e.dir.path().join("rpc-token");
            std::fs::write(&file, &planted).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        // Two at once when each sets an untrusted file aside: a third placing its token in
        // the moment a second puts a moved one back is the case no lock guards.
        let starts: Vec<_> = (0..if untrusted { 2 } else { 6 })
            .map(|_| {
                let pool = e.pool.clone();
                tokio::spawn(async move { common::serve(&pool).await })
            })
            .collect();
        let mut servers = Vec::new();
        for s in starts {
            servers.push(s.await.unwrap());
        }
        let file = servers[0].rpc_token_file().unwrap().to_path_buf();
        let token = std::fs::read_to_string(&file).unwrap();
        assert_ne!(token, planted);
        for srv in &servers {
            assert_eq!(srv.rpc_token().expose(), token, "{}", srv.url());
            let (status, v) = rpc(
                srv,
                Some(&token),
                json!({"jsonrpc": "2.0", "id": 1, "method": "apikey/list"}),
            )
            .await;
            assert_eq!(status, 200, "{v}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the token file: no temporary file left beside it.
        let mut names: Vec<_> = std::fs::read_dir(e.dir.path())
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("rpc-token"))
            .collect();
        names.sort();
        assert_eq!(names, ["rpc-token"]);
        for srv in servers {
            srv.stop().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_through_the_service_port() {
    let e = env(&[]).await;
    let srv = start(&e).await;
    e.fake
        .add_account(FakeAccount::new("acct-new").email("new@example.com"));
    e.fake.set_next_login("acct-new");
    let v = call(
        &srv,
        "account/login/start",
        json!({"listen": false, "group": "g"}),
    )
    .await;
    let url = v["result"]["url"].as_str().unwrap().to_string();
    let state = v["result"]["state"].as_str().unwrap().to_string();
    // The "browser": the issuer redirects; the redirect's query is delivered to our callback route.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = no_redirect.get(&url).send().await.unwrap();
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let query = location.split_once('?').unwrap().1;
    // A link checker's HEAD spends nothing.
    let head = no_redirect
        .head(format!("{}/auth/callback?{query}", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 405);
    let page = reqwest::get(format!("{}/auth/callback?{query}", srv.url()))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().to_lowercase().contains("close"));
    let v = call(&srv, "account/login/status", json!({"state": state})).await;
    assert_eq!(v["result"]["status"]["state"], "completed", "{v}");
    let accounts = e.pool.accounts().list(&Default::default());
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].group.as_deref(), Some("g"));
    // A replayed callback stores nothing and says why.
    let again = reqwest::get(format!("{}/auth/callback?{query}", srv.url()))
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 400);

    // Bad input gets the codes the README gives (as the bindings' NotFound and InvalidInput).
    for (method, params, code) in [
        ("account/login/status", json!({"state": "nope"}), -32001),
        ("account/login/cancel", json!({"state": "nope"}), -32001),
        (
            "account/login/complete",
            json!({"redirect_url": "garbage"}),
            -32602,
        ),
        (
            "account/login/start",
            json!({"listen": false, "tags": ["a,b"]}),
            -32602,
        ),
    ] {
        let v = call(&srv, method, params).await;
        assert_eq!(v["error"]["code"], code, "{method}: {v}");
    }
    // A value of the wrong type is named by its field.
    for (method, params, field) in [
        ("apikey/create", json!({"name": 5}), "`name`"),
        (
            "account/update",
            json!({"id": "x", "sort": "high"}),
            "`sort`",
        ),
        ("requestlog/list", json!({"limit": -1}), "`limit`"),
        ("requestlog/list", json!({"limit": 0}), "limit"),
        (
            "apikey/create",
            json!({"name": "k", "allowed_models": ["a", 1]}),
            "`allowed_models[1]`",
        ),
    ] {
        let v = call(&srv, method, params).await;
        assert_eq!(v["error"]["code"], -32602, "{method}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{method}: {message}");
    }
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_requests_and_flushes_the_log_on_stop() {
    let (e, key) = env_with_an_account(&[]).await;
    let srv = start(&e).await;
    let res = reqwest::Client::new()
        .post(format!("{}/chat/completions", srv.base_url()))
        .bearer_auth(key.secret.expose())
        .json(&common::chat(true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let health: Value = reqwest::get(format!("{}/health", srv.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["usable_accounts"], 1);
    srv.stop().await.unwrap();
    // Another process would see the row: read it through a second pool on the same file.
    let other = Pool::open(
        Config::default()
            .with("DB_PATH", e.dir.path().join("pool.db").to_str().unwrap())
            .unwrap(),
    )
    .await
    .unwrap();
    let rows = log_rows(&other).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, 200);
}

/// Past the cap, model requests get 503 at once; health checks, metrics and the admin API still
/// answer (a busy gateway is alive and takes orders: a key disabled now is refused once a slot
/// frees).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_beyond_the_limit_is_shed_with_503() {
    let (e, key) =
        env_with_an_account(&[("HTTP_QUEUE_FACTOR", "0"), ("HTTP_QUEUE_MIN", "1")]).await;
    e.fake
        .push_reply("acct-0", Reply::StallMidStream { after_deltas: 1 });
    let srv = start(&e).await;
    let client = reqwest::Client::new();
    let held = client
        .post(format!("{}/chat/completions", srv.base_url()))
        .bearer_auth(key.secret.expose())
        .json(&common::chat(true))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status().as_u16(), 200);
    let models = || {
        client
            .get(format!("{}/models", srv.base_url()))
            .bearer_auth(key.secret.expose())
            .send()
    };
    let shed = models().await.unwrap();
    assert_eq!(shed.status().as_u16(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let error: Value = shed.json().await.unwrap();
    assert_eq!(error["error"]["code"], "overloaded", "{error}");
    let metrics = client
        .get(format!("{}/metrics", srv.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\ncodexpool_shed_requests_total 1\n"),
        "{metrics}"
    );
    for path in ["/health", "/metrics"] {
        let res = client
            .get(format!("{}{path}", srv.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path} is not shed");
    }
    let other = e.pool.keys().create(NewKey::named("other")).await.unwrap();
    call(&srv, "apikey/disable", json!({"id": other.key.id})).await;
    drop(held);
    let mut status = 0;
    for _ in 0..50 {
        status = models().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "the slot comes back when the stream ends");
    let refused = client
        .get(format!("{}/models", srv.base_url()))
        .bearer_auth(other.secret.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status().as_u16(),
        403,
        "disabled during the overload"
    );
    srv.stop().await.unwrap();
}

/// The accounts (their tokens too) and keys as the pool holds them, and their rows as the
/// database holds them.
fn records(pool: &Pool, db: &rusqlite::Connection) -> (Vec<String>, Vec<String>) {
    let mut memory: Vec<String> = pool
        .accounts()
        .list(&Default::default())
        .iter()
        .map(|a| {
            let t = &a.tokens;
            let secrets = [&t.id_token, &t.access_token, &t.refresh_token].map(|s| s.expose());
            format!("{} {secrets:?}", serde_json::to_string(a).unwrap())
        })
        .collect();
    memory.extend(
        pool.keys()
            .list()
            .iter()
            .map(|k| serde_json::to_string(k).unwrap()),
    );
    let mut stored = Vec::new();
    for table in ["accounts", "platform_keys"] {
        let mut rows = db
            .prepare(&format!("SELECT * FROM {table} ORDER BY id"))
            .unwrap();
        let width = rows.column_count();
        let all = rows
            .query_map([], |r| {
                (0..width)
                    .map(|i| r.get::<_, rusqlite::types::Value>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap();
        stored.extend(all.map(|r| format!("{table} {:?}", r.unwrap())));
    }
    (memory, stored)
}

/// Arbitrary params for every RPC method: each call answers with a result or a JSON-RPC error,
/// never an HTTP failure, and one refused changes no account or key, not even half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_rpc_params_get_clear_answers() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let (e, key) = env_with_an_account(&[]).await;
    let account = e.pool.accounts().list(&Default::default()).remove(0);
    let db = rusqlite::Connection::open(e.dir.path().join("pool.db")).unwrap();
    let (memory, stored) = records(&e.pool, &db);
    assert_eq!(
        (memory.len(), stored.len()),
        (2, 2),
        "the account and the key"
    );
    let srv = start(&e).await;
    let methods = [
        "account/list",
        "account/get",
        "account/update",
        "account/delete",
        "account/import",
        "account/export",
        "account/usage/list",
        "account/usage/refresh",
        "account/login/start",
        "account/login/status",
        "account/login/cancel",
        "account/login/complete",
        "apikey/create",
        "apikey/list",
        "apikey/update",
        "apikey/enable",
        "apikey/disable",
        "apikey/delete",
        "requestlog/list",
        "stats/summary",
        "pool/catch_up",
    ];
    // Real ids now and then: a call that fails on them must leave them whole.
    let ids = vec![
        Value::String(account.id.clone()),
        Value::String(key.key.id.clone()),
        Value::String(account.id[..4].to_string()),
    ];
    let leaf = proptest::prop_oneof![
        proptest::strategy::Just(Value::Null),
        proptest::arbitrary::any::<bool>().prop_map(Value::Bool),
        proptest::arbitrary::any::<i32>().prop_map(|n| json!(n)),
        "[a-z0-9 :/?=&]{0,12}".prop_map(Value::String),
        proptest::sample::select(ids),
    ];
    let params = leaf.prop_recursive(2, 12, 4, |inner| {
        proptest::prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map(
                proptest::sample::select(vec![
                    "id",
                    "name",
                    "label",
                    "tags",
                    "path",
                    "content",
                    "state",
                    "limit",
                    "model",
                    "group_by",
                    "redirect_url",
                    "enabled"
                ]),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    });
    let mut runner = TestRunner::deterministic();
    for i in 0..300 {
        let method = methods[i % methods.len()];
        let mut p = params.new_tree(&mut runner).unwrap().current();
        match method {
            // Not a file on this machine (the RPC reads and writes where it is told, and
            // takes its parameters by name or by position).
            "account/export" | "account/import" => {
                let mut o = p.as_object().cloned().unwrap_or_default();
                o.remove("path");
                p = Value::Object(o);
            }
            // Not the sign-in listener's real port.
            "account/login/start" => {
                let mut o = p.as_object().cloned().unwrap_or_default();
                o.insert("listen".into(), json!(false));
                p = Value::Object(o);
            }
            _ => {}
        }
        let before = records(&e.pool, &db);
        let (status, v) = rpc(
            &srv,
            Some(srv.rpc_token().expose()),
            json!({"jsonrpc": "2.0", "id": i, "method": method, "params": p}),
        )
        .await;
        assert_eq!(status, 200, "{method} {p}: {v}");
        assert!(
            v.get("result").is_some() ^ v.get("error").is_some(),
            "{method}: {v}"
        );
        if let Some(err) = v.get("error") {
            assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
            // A refused call leaves the accounts and keys exactly as they were, in memory
            // and in the database.
            assert!(
                records(&e.pool, &db) == before,
                "{method} {p} was refused ({v}) yet changed the records"
            );
        }
    }
    // The envelope itself: arbitrary bytes, or JSON that is no request, get a JSON-RPC error.
    let bytes = proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..64);
    for i in 0..40 {
        let body = if i % 2 == 0 {
            bytes.new_tree(&mut runner).unwrap().current()
        } else {
            params
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .to_string()
                .into_bytes()
        };
        let res = reqwest::Client::new()
            .post(format!("{}/rpc", srv.url()))
            .bearer_auth(srv.rpc_token().expose())
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert!(status == 200 || status == 400, "{status} {v}");
        // A batch (an array) is answered per element.
        let answers = match &v {
            Value::Array(all) => all.clone(),
            one => vec![one.clone()],
        };
        assert!(
            !answers.is_empty(),
            "{}: {v}",
            String::from_utf8_lossy(&body)
        );
        for a in answers {
            let message = a["error"]["message"].as_str().unwrap_or_default();
            assert!(
                !message.is_empty(),
                "{}: {v}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // Whatever went through: records whole, the ones not deleted still there as they were.
    for k in e.pool.keys().list() {
        assert!(!k.name.trim().is_empty());
    }
    for a in e.pool.accounts().list(&Default::default()) {
        assert!(!a.label.trim().is_empty(), "{a:?}");
        assert!(!a.tokens.refresh_token.expose().is_empty(), "{a:?}");
    }
    srv.stop().await.unwrap();
}

/// A server whose shutdown grace is 200 ms, without background tasks.
async fn start_with_a_short_grace(e: &Env) -> RunningServer {
    Server::new(e.pool.clone())
        .addr("127.0.0.1:0".parse().unwrap())
        .background_tasks(false)
        .shutdown_grace(Duration::from_millis(200))
        .start()
        .await
        .unwrap()
}

/// A chat request to `srv` with `key`.
fn ask_chat(
    srv: &RunningServer,
    key: &codexpool_core::keys::CreatedKey,
    stream: bool,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", srv.base_url()))
        .bearer_auth(key.secret.expose())
        .json(&common::chat(stream))
        .send()
}

/// A stop that cannot wait the configured grace (an exiting interpreter's) gives open streams
/// the shorter time it names, through the shared handle and a weak one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_within_a_shorter_grace_ends_open_streams_sooner() {
    let (e, key) = env_with_an_account(&[]).await;
    let srv = Server::new(e.pool.clone())
        .addr("127.0.0.1:0".parse().unwrap())
        .background_tasks(false)
        .shutdown_grace(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    e.fake
        .push_reply("acct-0", Reply::StallMidStream { after_deltas: 2 });
    let mut streamed = ask_chat(&srv, &key, true).await.unwrap();
    assert!(
        streamed.chunk().await.unwrap().is_some(),
        "the stream started"
    );
    let shared = SharedServer::new(srv);
    let weak = shared.downgrade();
    let runtime = tokio::runtime::Handle::current();
    let stopped = weak
        .upgrade()
        .unwrap()
        .stop_within(&runtime, Duration::from_millis(200));
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the stop took the shorter grace, not the server's 60 s")
        .unwrap();
    assert!(!shared.is_running());
    drop(shared);
    assert!(weak.upgrade().is_none());
    let rows = log_rows(&e.pool).await;
    assert_eq!(rows[0].error_class.as_deref(), Some("server_stopped"));
}

/// Answers still coming when the shutdown grace is over end with an error of their own: a
/// stream's last chunk says the gateway stopped and the stream ends cleanly, an assembled
/// answer is a 503, and so is a request no account has answered yet. Every row says
/// `server_stopped`, the account is blamed for nothing, and its slots come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_open_past_the_shutdown_grace_end_with_the_reason() {
    let (e, key) = env_with_an_account(&[]).await;
    let srv = start_with_a_short_grace(&e).await;
    let ask = |stream: bool| ask_chat(&srv, &key, stream);
    let pool = e.pool.clone();
    let inflight = |n: u32| {
        let pool = pool.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(5), async {
                while pool.accounts().total_inflight() < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("the request reached the upstream");
        }
    };
    // A stream under way.
    e.fake
        .push_reply("acct-0", Reply::StallMidStream { after_deltas: 2 });
    let mut streamed = ask(true).await.unwrap();
    assert_eq!(streamed.status().as_u16(), 200);
    assert!(
        streamed.chunk().await.unwrap().is_some(),
        "the stream started"
    );
    // An assembled answer under way (its first deltas came, the rest will not).
    e.fake
        .push_reply("acct-0", Reply::StallMidStream { after_deltas: 2 });
    let assembling = tokio::spawn(ask(false));
    inflight(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // And one no account has answered yet.
    e.fake.push_reply("acct-0", Reply::HangForever);
    let unanswered = tokio::spawn(ask(false));
    inflight(3).await;

    tokio::time::timeout(Duration::from_secs(10), srv.stop())
        .await
        .expect("stop returns after the grace")
        .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = Vec::new();
        loop {
            match streamed.chunk().await {
                Ok(Some(c)) => rest.extend_from_slice(&c),
                Ok(None) => return Ok(rest),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the stream ended");
    let rest = String::from_utf8(rest.expect("the stream ended cleanly")).unwrap();
    assert!(rest.contains("\"server_stopped\""), "{rest}");
    let res = assembling.await.unwrap().unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "server_stopped", "{v}");
    let res = unanswered.await.unwrap().unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "server_stopped", "{v}");
    assert_eq!(
        e.pool.accounts().total_inflight(),
        0,
        "the leases went back"
    );
    let id = &e.pool.accounts().list(&Default::default())[0].id;
    let runtime = e.pool.accounts().runtime(id).unwrap();
    assert_eq!(
        runtime.cooldown_until, None,
        "the account is blamed for nothing"
    );
    // The rows were written before the final flush, and say the server ended them.
    let rows = log_rows(&e.pool).await;
    let mut seen: Vec<_> = rows
        .iter()
        .map(|r| (r.stream, r.status, r.error_class.as_deref()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (false, 503, Some("server_stopped")),
            (false, 503, Some("server_stopped")),
            (true, 200, Some("server_stopped"))
        ],
        "{rows:?}"
    );
}

/// A request still waiting for an account's slot when the shutdown grace ends (the slot held
/// by something the shutdown does not end: here a lease taken through the pool, as an app
/// that embeds the gateway may) is answered too: a 503 `server_stopped`, not a connection
/// closed on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_slot_past_the_grace_is_told_why() {
    let (e, key) = env_with_an_account(&[
        ("ACCOUNT_MAX_INFLIGHT", "1"),
        ("REQUEST_GATE_WAIT_TIMEOUT_MS", "60000"),
    ])
    .await;
    let held = e
        .pool
        .accounts()
        .acquire(&codexpool_core::Demand::any())
        .await
        .unwrap();
    let srv = start_with_a_short_grace(&e).await;
    let waiting = tokio::spawn(ask_chat(&srv, &key, false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "it waits for the slot");
    tokio::time::timeout(Duration::from_secs(10), srv.stop())
        .await
        .expect("stop returns after the grace")
        .unwrap();
    let res = waiting
        .await
        .unwrap()
        .expect("an answer, not a closed connection");
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "server_stopped", "{v}");
    assert_eq!(e.fake.count("/backend-api/codex/responses"), 0);
    drop(held);
    let rows = log_rows(&e.pool).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].status, rows[0].error_class.as_deref()),
        (503, Some("server_stopped"))
    );
}

/// A client that stops reading a stream (a suspended process) while its connection stays open
/// is given up once what was sent stays unread for long: the account's slot comes back and the
/// row is written.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_given_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (e, key) = env_with_an_account(&[]).await;
    // Far more than the sockets' buffers hold.
    e.fake.push_reply(
        "acct-0",
        Reply::Text {
            deltas: vec!["x".repeat(1000); 6_000],
        },
    );
    let srv = Server::new(e.pool.clone())
        .addr("127.0.0.1:0".parse().unwrap())
        .background_tasks(false)
        .client_unread_timeout(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(srv.local_addr()).await.unwrap();
    let body = common::chat(true).to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        key.secret.expose(),
        body.len()
    );
    conn.write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 1024];
    let n = conn.read(&mut first).await.unwrap();
    let head = String::from_utf8_lossy(&first[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Reads nothing more, and keeps the connection open.
    let released = tokio::time::timeout(Duration::from_secs(30), async {
        while e.pool.accounts().total_inflight() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(released.is_ok(), "the slot is still held");
    let rows = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let rows = log_rows(&e.pool).await;
            if !rows.is_empty() {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(rows[0].error_class.as_deref(), Some("client_closed"));
    drop(conn);
    srv.stop().await.unwrap();
}

/// Another process finds the servers on a database through their files in `servers/` and
/// asks them; each server removes its own file when it stops.
#[tokio::test]
async fn another_process_finds_the_servers_on_the_database() {
    use codexpool_gateway::admin::{AdminClient, AdminError, ServerFile};
    let (e, _key) = env_with_an_account(&[]).await;
    let config = e.pool.config().clone();
    assert!(
        AdminClient::find_all(&config).is_empty(),
        "nothing runs yet"
    );

    let first = start(&e).await;
    let second = start(&e).await;
    let files = ServerFile::list(&config);
    let urls: Vec<_> = files.iter().map(|f| f.url.clone()).collect();
    assert_eq!(urls.len(), 2, "{files:?}");
    assert!(
        urls.contains(&first.url()) && urls.contains(&second.url()),
        "{files:?}"
    );
    assert!(files.iter().all(|f| f.pid == std::process::id()));
    // Another database in the same folder has no server: these are not its.
    let mut other = config.clone();
    other.db_path = config.db_dir().join("other.db");
    assert!(ServerFile::list(&other).is_empty(), "{files:?}");
    assert!(AdminClient::find_all(&other).is_empty());
    first.stop().await.unwrap();
    let clients = AdminClient::find_all(&config);
    assert_eq!(clients.len(), 1, "the second server still runs");
    let client = &clients[0];
    assert_eq!(client.url(), second.url());
    let list = client.call("account/list", json!({})).await.unwrap();
    assert_eq!(list[0]["runtime"]["inflight"], 0, "{list}");
    let refused = client.call("nope", json!({})).await.unwrap_err();
    assert!(
        matches!(&refused, AdminError::Failed { message, .. } if message.contains("nope")),
        "{refused}"
    );

    // A client holding a stale address (the server is gone) is told nobody answers there.
    let url = second.url();
    second.stop().await.unwrap();
    assert!(ServerFile::list(&config).is_empty());
    let gone = AdminClient::new(url, Secret::from("t".repeat(64)))
        .call("account/list", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(gone, AdminError::NotRunning { .. }), "{gone}");
}

/// A pool in memory whose settings name an existing database file (the default `DB_PATH`, or
/// the environment's) is not that database's server: it neither reads nor writes the token
/// file there, nor says where it listens.
#[tokio::test]
async fn a_pool_in_memory_is_no_server_of_the_database_its_settings_name() {
    use codexpool_gateway::admin::{AdminClient, ServerFile};
    let e = env(&[]).await;
    let config = e.pool.config().clone();
    assert!(config.db_path.is_file());
    let real = start(&e).await;
    let token_file = real.rpc_token_file().unwrap().to_path_buf();
    let token = std::fs::read_to_string(&token_file).unwrap();
    real.stop().await.unwrap();

    let memory = Pool::builder(config.clone())
        .store(std::sync::Arc::new(
            codexpool_core::store::MemoryStore::new(),
        ))
        .open()
        .await
        .unwrap();
    let srv = Server::new(memory)
        .addr("127.0.0.1:0".parse().unwrap())
        .background_tasks(false)
        .start()
        .await
        .unwrap();
    assert!(srv.rpc_token_file().is_none());
    assert_ne!(srv.rpc_token().expose(), token.trim(), "its own token");
    assert!(ServerFile::list(&config).is_empty(), "no file in servers/");
    assert!(AdminClient::find_all(&config).is_empty());
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
    srv.stop().await.unwrap();
}

/// A client that closes its TCP connection in the middle of a stream, against the real server:
/// the upstream request is cancelled, the account's lease is back, and the log row says the
/// client left. (The 1 s bound is asserted in-process by `failover.rs`; over real sockets on a
/// shared, loaded machine this allows 3 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closing_its_connection_mid_stream_cancels_upstream() {
    let (e, key) = env_with_an_account(&[]).await;
    e.fake
        .push_reply("acct-0", Reply::StallMidStream { after_deltas: 2 });
    let srv = start(&e).await;
    let mut res = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", srv.url()))
        .bearer_auth(key.secret.expose())
        .json(&json!({"model": "gpt-5-codex", "stream": true,
            "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.chunk().await.unwrap().is_some(), "the first chunk");
    let id = e.pool.accounts().list(&Default::default()).remove(0).id;
    assert_eq!(e.pool.accounts().runtime(&id).unwrap().inflight, 1);
    drop(res); // mid-body: the connection closes
    assert!(
        e.fake
            .wait_until_async(Duration::from_secs(3), |f| f.cancelled_streams() == 1)
            .await,
        "upstream cancelled"
    );
    let t = std::time::Instant::now();
    while e.pool.accounts().runtime(&id).unwrap().inflight != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the lease is released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.stop().await.unwrap();
    let rows = log_rows(&e.pool).await;
    assert_eq!(
        rows[0].error_class.as_deref(),
        Some("client_closed"),
        "{rows:?}"
    );
}

/// A taken address is named, and the setting only when the address came from it.
#[tokio::test]
async fn a_taken_address_names_the_setting_only_when_it_came_from_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (e, _key) = env_with_an_account(&[("SERVICE_ADDR", &addr.to_string())]).await;
    // Given (as Python's `serve(pool, addr)` gives it), though the setting says the same.
    let err = Server::new(e.pool.clone())
        .addr(addr)
        .background_tasks(false)
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot listen on {addr}: ")),
        "{text}"
    );
    assert!(!text.contains("SERVICE_ADDR"), "{text}");

    let err = Server::new(e.pool.clone())
        .background_tasks(false)
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot listen on {addr} (CODEXPOOL_SERVICE_ADDR): "
        )),
        "{text}"
    );
    assert!(
        matches!(
            err,
            codexpool_gateway::ServerError::Bind {
                from_setting: true,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Listening beyond this machine takes an explicit setting (the sign-in listener's rule).
#[tokio::test]
async fn a_non_loopback_address_needs_to_be_allowed() {
    let (e, _key) = env_with_an_account(&[]).await;
    let err = Server::new(e.pool.clone())
        .addr("0.0.0.0:0".parse().unwrap())
        .background_tasks(false)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, codexpool_gateway::ServerError::NonLoopback { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("CODEXPOOL_ALLOW_NON_LOOPBACK_SERVICE_ADDR=1"),
        "{err}"
    );

    let (allowed, _key) = env_with_an_account(&[("ALLOW_NON_LOOPBACK_SERVICE_ADDR", "1")]).await;
    let srv = Server::new(allowed.pool.clone())
        .addr("0.0.0.0:0".parse().unwrap())
        .background_tasks(false)
        .start()
        .await
        .unwrap();
    // This machine still reaches everything, the admin API included.
    assert!(srv.url().starts_with("http://127.0.0.1:"), "{}", srv.url());
    let v = call(&srv, "apikey/list", json!({})).await;
    assert_eq!(v["result"][0]["name"], "k", "{v}");
    srv.stop().await.unwrap();

    // On one of this machine's own addresses (a LAN one), this machine connects from that very
    // address: it is still this machine. Skipped where the host has no such address.
    let own = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").and_then(|()| s.local_addr()))
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    if let Some(ip) = own {
        let srv = Server::new(allowed.pool.clone())
            .addr(std::net::SocketAddr::new(ip, 0))
            .background_tasks(false)
            .start()
            .await
            .unwrap();
        assert!(srv.url().contains(&ip.to_string()), "{}", srv.url());
        let v = call(&srv, "apikey/list", json!({})).await;
        assert_eq!(v["result"][0]["name"], "k", "{v}");
        srv.stop().await.unwrap();
    }
}

/// A reverse proxy on this machine connects from loopback for clients elsewhere: requests that
/// say they came through one are refused by the admin API (the gateway still serves them).
#[tokio::test]
async fn the_admin_api_refuses_what_came_through_a_proxy() {
    let (e, key) = env_with_an_account(&[]).await;
    let srv = start(&e).await;
    let http = reqwest::Client::new();
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
        ("x-real-ip", "203.0.113.9"),
        ("via", "1.1 caddy"),
    ] {
        let rpc = http
            .post(format!("{}/rpc", srv.url()))
            .bearer_auth(srv.rpc_token().expose())
            .header(name, value)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "account/list"}))
            .send()
            .await
            .unwrap();
        assert_eq!(rpc.status().as_u16(), 403, "{name}");
        let proof = http
            .get(format!("{}/rpc/proof?nonce=abc", srv.url()))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(proof.status().as_u16(), 403, "{name}");
    }
    let models = http
        .get(format!("{}/v1/models", srv.url()))
        .bearer_auth(key.secret.expose())
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(models.status().as_u16(), 200);
    srv.stop().await.unwrap();
}

/// A page that made its own name resolve to 127.0.0.1 (DNS rebinding) reaches the server with
/// that name in `Host`: the routes that ask for no key refuse it; `localhost`, addresses and
/// `ALLOWED_HOSTS` pass; the model routes, which a page without a key cannot use, do not look.
#[tokio::test]
async fn the_open_routes_refuse_a_host_a_page_could_pose_as() {
    let get = |srv: &RunningServer, path: &str, host: &str, key: Option<&str>| {
        let mut req = reqwest::Client::new()
            .get(format!("{}{path}", srv.url()))
            .header("host", host);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.text().await.unwrap())
        }
    };
    let (e, key) = env_with_an_account(&[]).await;
    let srv = start(&e).await;
    let port = srv.local_addr().port();
    for path in ["/health", "/metrics"] {
        let (status, body) = get(&srv, path, &format!("rebind.example:{port}"), None).await;
        assert_eq!(status, 403, "{path}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "host_not_allowed", "{body}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("rebind.example") && message.contains("CODEXPOOL_ALLOWED_HOSTS"),
            "{message}"
        );
        for host in [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ] {
            assert_eq!(get(&srv, path, &host, None).await.0, 200, "{path} {host}");
        }
    }
    let (status, _) = get(
        &srv,
        "/v1/models",
        "rebind.example",
        Some(key.secret.expose()),
    )
    .await;
    assert_eq!(status, 200);
    srv.stop().await.unwrap();

    let (e, _) = env_with_an_account(&[("ALLOWED_HOSTS", "gateway.lan")]).await;
    let srv = start(&e).await;
    assert_eq!(get(&srv, "/metrics", "Gateway.LAN:1", None).await.0, 200);
    assert_eq!(get(&srv, "/metrics", "rebind.example", None).await.0, 403);
    srv.stop().await.unwrap();
}

/// `GET /rpc/proof` answers only a sane nonce, and only a server with a file.
#[tokio::test]
async fn the_proof_endpoint_checks_its_nonce() {
    let (e, _key) = env_with_an_account(&[]).await;
    let srv = start(&e).await;
    let get = |q: &str| reqwest::get(format!("{}/rpc/proof{q}", srv.url()));
    let ok = get("?nonce=abc").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap().len(), 64);
    assert_eq!(get("?nonce=").await.unwrap().status(), 400);
    assert_eq!(
        get(&format!("?nonce={}", "a".repeat(129)))
            .await
            .unwrap()
            .status(),
        400
    );
    // Every refusal says why, in JSON (a missing nonce was axum's plain text).
    for q in ["", "?nonce="] {
        let res = get(q).await.unwrap();
        assert_eq!(res.status(), 400, "{q}");
        let v: serde_json::Value = res.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains("nonce"),
            "{q}: {v}"
        );
    }
    srv.stop().await.unwrap();
}

/// `account/update` with `enabled` is one write: when the store refuses it, nothing of it is
/// kept (not the label without the status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_account_update_is_all_or_nothing() {
    let (e, _) = env_with_an_account(&[]).await;
    let srv = start(&e).await;
    let before = e.pool.accounts().list(&Default::default()).remove(0);
    let db = rusqlite::Connection::open(e.dir.path().join("pool.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse_disable BEFORE UPDATE ON accounts WHEN NEW.status = 'disabled'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .unwrap();
    let update = json!({"id": before.id, "label": "new", "enabled": false});
    let v = call(&srv, "account/update", update.clone()).await;
    assert!(v["error"]["message"].is_string(), "{v}");
    let stored: String = db
        .query_row(
            "SELECT label FROM accounts WHERE id = ?1",
            [&before.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, before.label);
    assert_eq!(
        e.pool.accounts().get(&before.id).unwrap().label,
        before.label
    );

    db.execute_batch("DROP TRIGGER refuse_disable").unwrap();
    let v = call(&srv, "account/update", update).await;
    assert_eq!(v["result"]["label"], "new", "{v}");
    assert_eq!(v["result"]["status"], "disabled", "{v}");
    srv.stop().await.unwrap();
}

/// A refresh a request started goes on when the request is gone and the server stops: `stop`
/// waits for it, so the rotated refresh token is stored (its HTTP thread's runtime ending
/// with the server took the refresh with it, and the sign-in was lost).
#[tokio::test]
async fn a_refresh_in_flight_at_stop_is_finished_and_stored() {
    let (e, key) = env_with_an_account(&[]).await;
    let srv = start(&e).await;
    e.fake.expire_access_token("acct-0");
    e.fake.refresh_delay(Duration::from_millis(1500));
    let gone = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", srv.url()))
        .bearer_auth(key.secret.expose())
        .json(&common::chat(false))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gone.is_err(), "the client left before the refresh ended");
    while e.fake.refreshes_held() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.stop().await.unwrap();
    let stored = e.pool.accounts().list(&Default::default()).remove(0).tokens;
    let issued = e.fake.current_tokens("acct-0");
    assert_eq!(stored.refresh_token.expose(), issued.refresh_token);
    assert_eq!(e.fake.refresh_count("acct-0"), 1);
    // And it is in the database, not only in memory.
    let again = Pool::open(e.pool.config().clone()).await.unwrap();
    let reread = again.accounts().list(&Default::default()).remove(0).tokens;
    assert_eq!(reread.refresh_token.expose(), issued.refresh_token);
}
