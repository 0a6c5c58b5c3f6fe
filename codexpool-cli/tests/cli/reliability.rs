//! Faults around a running `codexpool serve` (issue 7's reliability suite): killed with SIGKILL
//! in the middle of load, and changed by the CLI while under load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Env, chat_status, finish, signal};

/// What the load saw: answers read whole with 200, every other answer (status, body), and
/// requests that got no answer (the connection failed or broke).
#[derive(Default)]
struct Seen {
    ok: AtomicUsize,
    other: Mutex<Vec<(u16, String)>>,
    unanswered: Mutex<Vec<String>>,
}

impl Seen {
    /// Every answer the server gave was a 200 (a `database is locked` would be a 500).
    fn all_ok(&self) {
        let other = self.other.lock().unwrap();
        assert!(other.is_empty(), "answers other than 200: {other:?}");
    }

    /// [`Seen::all_ok`], and every request got its answer (for a server that stays up).
    fn all_answered(&self) {
        self.all_ok();
        let unanswered = self.unanswered.lock().unwrap();
        assert!(
            unanswered.is_empty(),
            "requests without an answer: {unanswered:?}"
        );
    }
}

/// Clients sending chat requests in a loop until `stop`; what they saw.
fn load(
    url: &str,
    key: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let client = reqwest::Client::new();
    let tasks = (0..clients)
        .map(|i| {
            let (client, url, key, stop, seen) = (client.clone(), url.to_string(), key.to_string(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = json!({"model": "gpt-5-codex", "stream": n % 2 == 0,
                        "messages": [{"role": "user", "content": format!("client {i} request {n}")}]});
                    match client.post(format!("{url}/v1/chat/completions")).bearer_auth(&key).json(&body).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => {
                                seen.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            // A body cut short: the server died under it (the SIGKILL test).
                            Err(e) => seen.unanswered.lock().unwrap().push(e.to_string()),
                        },
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            seen.other.lock().unwrap().push((status, body));
                        }
                        // The server is gone (the SIGKILL test).
                        Err(e) => {
                            seen.unanswered.lock().unwrap().push(e.to_string());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect();
    (tasks, seen)
}

/// Waits until the load has `n` answers (a server that stopped answering fails the test).
async fn until_answered(ok: &AtomicUsize, n: usize) {
    let t = Instant::now();
    while ok.load(Ordering::Relaxed) < n {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "only {} answers in 60 s",
            ok.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_load_leaves_a_sound_database() {
    let env = Env::new();
    let ids = env.add_accounts(&["acct-1", "acct-2"]);
    let key = env.key_secret("load");
    let (url, child) = env.serve(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, seen) = load(&url, &key, 8, stop.clone());
    until_answered(&seen.ok, 50).await;
    // Acknowledged admin writes made while the server is busy.
    let mut created = Vec::new();
    for i in 0..5 {
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["--json", "key", "create", "--name", &format!("k{i}")]))
                .unwrap();
        created.push(v["key"]["id"].as_str().unwrap().to_string());
    }
    let added = env.add_accounts(&["acct-3"]);
    // Answered requests whose rows the batched writer has had time to write (it writes what
    // came in within 200 ms at once): they are acknowledged, and must survive the kill.
    let acknowledged = seen.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(&child, "KILL");
    let (status, _) = finish(child, 10);
    assert!(!status.success(), "killed");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    seen.all_ok();

    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let pool = env.pool().await;
    for id in ids.iter().chain(&added) {
        assert!(pool.accounts().get(id).is_ok(), "account {id} lost");
    }
    for id in &created {
        assert!(pool.keys().get(id).is_ok(), "key {id} lost");
    }
    assert_eq!(pool.keys().list().len(), 6);
    // The log rows of acknowledged answers are there and whole; at most the last batch died
    // with the process (and a row per request cut by the kill may be there).
    let rows = pool
        .request_log()
        .list(&codexpool_core::request_log::RequestLogQuery::latest(
            10_000,
        ))
        .await
        .unwrap();
    let answered = seen.ok.load(Ordering::Relaxed);
    assert!(
        acknowledged >= 50 && (acknowledged..=answered + 8).contains(&rows.len()),
        "{} rows for {acknowledged} acknowledged and {answered} answered requests",
        rows.len()
    );
    assert!(
        rows.iter()
            .all(|r| r.status == 200 && r.account_id.is_some() && !r.accounts_tried.is_empty())
    );
    drop(pool);
    // And the CLI keeps working on it, and a new server serves from it (leases are counted in
    // the serving process's memory: the killed one's die with it).
    env.ok(&["account", "list"]);
    let (url, child) = env.serve(&[]);
    let res = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "after"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let accounts: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "account", "list"])).unwrap();
    for a in accounts.as_array().unwrap() {
        assert_eq!(a["runtime"]["inflight"], 0, "{a}");
        assert_eq!(a["runtime"]["source"], "server", "{a}");
    }
    crate::support::stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_reach_a_busy_server_within_a_second() {
    let env = Env::new();
    env.add_accounts(&["acct-1"]);
    let load_key = env.key_secret("load");
    let victim = env.json(&["key", "create", "--name", "victim"]);
    let (victim_id, victim_secret) = (
        victim["key"]["id"].as_str().unwrap().to_string(),
        victim["secret"].as_str().unwrap().to_string(),
    );
    let (url, child) = env.serve(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, seen) = load(&url, &load_key, 6, stop.clone());
    until_answered(&seen.ok, 20).await;
    let client = reqwest::Client::new();
    assert_eq!(chat_status(&url, &victim_secret).await, 200);

    // A key disabled by the CLI is refused by the server within a second (counted from when
    // the CLI is done: the change is made then; the server's watcher looks every 500 ms).
    env.ok(&["key", "disable", &victim_id]);
    let t = Instant::now();
    loop {
        match chat_status(&url, &victim_secret).await {
            403 => break,
            200 => {}
            other => panic!("the key's request got {other}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5), "never refused");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the disable took {took:?} to take effect"
    );

    // An account added by the CLI serves requests: import a second, disable the first; the
    // new account answers within a second of the import, give or take the `disable` itself.
    let first = env.json(&["account", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let added = env.add_accounts(&["acct-2"]);
    let imported = Instant::now();
    env.ok(&["account", "disable", &first]);
    let disable_took = imported.elapsed();
    loop {
        let res = client
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&load_key)
            .json(
                &json!({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "who?"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        if res
            .headers()
            .get("x-codexpool-account")
            .and_then(|v| v.to_str().ok())
            == Some(added[0].as_str())
        {
            break;
        }
        assert!(
            imported.elapsed() < Duration::from_secs(5),
            "the new account never served"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let took = imported.elapsed();
    assert!(
        took < Duration::from_secs(1) + disable_took,
        "the new account took {took:?} to serve (the disable took {disable_took:?})"
    );

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    seen.all_answered();
    // The refused key's requests are in the log as such; nothing is left in flight.
    let log: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "logs", "--key", &victim_id, "--limit", "1000"]))
            .unwrap();
    let statuses: Vec<&serde_json::Value> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert!(statuses.contains(&&json!(403)), "{log}");
    let all: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "logs", "--limit", "10000"])).unwrap();
    let failed: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"].as_u64().unwrap() >= 500)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    // As the server counts them (not an idle pool of the CLI's own).
    let accounts: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "account", "list"])).unwrap();
    for a in accounts.as_array().unwrap() {
        assert_eq!(a["runtime"]["source"], "server", "{a}");
        assert_eq!(a["runtime"]["inflight"], 0, "{a}");
    }
    let stderr = crate::support::stop(child);
    assert!(!stderr.contains("locked"), "{stderr}");
}
