//! `demo`: the whole product against the in-process fake, on a temporary database.

use serde_json::Value;

use crate::support::{Env, texts};

#[test]
fn demo_runs_to_completion_without_touching_the_users_database() {
    let env = Env::new();
    let o = env.cmd().arg("demo").output().unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("assistant: Hello, and welcome!"),
        "{stdout}"
    );
    assert!(stdout.contains("one complete answer"), "{stdout}");
    assert!(
        stdout.contains("had hit its usage limit, so the gateway moved the request"),
        "{stdout}"
    );
    assert!(stdout.contains("5-hour  ██████████ 100%"), "{stdout}");
    assert!(
        stdout.contains("ada@example.com → grace@example.com"),
        "{stdout}"
    );
    // The ledger: both answers on the demo key, summed.
    let tokens = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Tokens per key (codexpool tokens):"))
        .nth(2)
        .unwrap_or_default();
    assert!(tokens.starts_with("demo ("), "{stdout}");
    assert_eq!(tokens.split_whitespace().nth(2), Some("2"), "{stdout}");
    assert!(stdout.contains("codexpool serve"), "{stdout}");
    assert!(
        !env.db().exists(),
        "the demo never opens the configured database"
    );
    // And says so when one is named.
    assert!(
        stderr.contains("is not used: the demo runs on a database of its own"),
        "{stderr}"
    );

    let o = env.cmd().args(["demo", "--json"]).output().unwrap();
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["answers"]["streaming"]
            .as_str()
            .unwrap()
            .starts_with("Hello, and welcome!")
    );
    assert!(
        v["answers"]["non_streaming"]
            .as_str()
            .unwrap()
            .starts_with("Here you are")
    );
    assert_eq!(v["failover"], true);
    assert_eq!(v["requests"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"].as_array().unwrap().len(), 2);
}

#[test]
fn demo_stays_off_a_proxy_named_by_the_environment() {
    let env = Env::new();
    // A proxy that refuses every connection: anything sent through it fails.
    let o = env
        .cmd()
        .args(["demo", "--json"])
        .env("HTTP_PROXY", "http://127.0.0.1:1")
        .env("http_proxy", "http://127.0.0.1:1")
        .env("ALL_PROXY", "http://127.0.0.1:1")
        .env("NO_PROXY", "example.com")
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failover"], true);
    assert_eq!(v["requests"].as_array().unwrap().len(), 2);
    let usage = v["usage"].as_array().unwrap();
    assert!(
        usage.len() == 2 && usage.iter().all(|u| u["five_hour"].is_object()),
        "{usage:?}"
    );
}
