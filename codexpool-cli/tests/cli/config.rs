//! `config`.

use serde_json::Value;

use crate::support::{Env, texts};

#[test]
fn every_setting_with_value_and_source_and_secrets_hidden() {
    let env = Env::new();
    std::fs::write(
        env.path().join("codexpool.env"),
        "CODEXPOOL_ROUTE_STRATEGY=headroom\n",
    )
    .unwrap();
    let o = env
        .cmd()
        .env("CODEXPOOL_RPC_TOKEN", "tok-very-secret")
        .env("GPTTOOLS_ACCOUNT_MAX_INFLIGHT", "3")
        .env("CODEXPOOL_USAGE_POLL_INTERVAL_SECS", "5")
        // A relative path keeps the table's columns independent of the temporary directory.
        .args(["--db", "data/codexpool.db", "config"])
        .output()
        .unwrap();
    let (stdout, stderr) = texts(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(!stdout.contains("tok-very-secret") && !stderr.contains("tok-very-secret"));
    // The clamped value is reported once.
    assert_eq!(
        stderr.matches("USAGE_POLL_INTERVAL_SECS").count(),
        1,
        "{stderr}"
    );
    env.settings()
        .bind(|| insta::assert_snapshot!("config", stdout));

    let o = env
        .cmd()
        .env("CODEXPOOL_RPC_TOKEN", "tok-very-secret")
        .args(["config", "--json"])
        .output()
        .unwrap();
    let text = texts(&o).0;
    assert!(!text.contains("tok-very-secret"));
    let v: Value = serde_json::from_str(&text).unwrap();
    let row = |name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(row("RPC_TOKEN")["value"], "*****");
    assert_eq!(row("DB_PATH")["source"], "flag");
    assert_eq!(row("ROUTE_STRATEGY")["value"], "headroom");
    assert!(
        row("ROUTE_STRATEGY")["source"]
            .as_str()
            .unwrap()
            .ends_with("codexpool.env (CODEXPOOL_ROUTE_STRATEGY)")
    );
    assert_eq!(row("SERVICE_ADDR")["default"], "127.0.0.1:48760");
    for r in v.as_array().unwrap() {
        for field in ["name", "value", "source", "default", "help"] {
            assert!(r[field].is_string(), "{field} in {r}");
        }
    }
}
