//! `tokens [--by] [--since]`: the token ledger as people and scripts read it.

use codexpool_core::usage::{LedgerEntry, TokenCounts};
use codexpool_core::{Pool, Timestamp};
use serde_json::json;

use crate::support::{Env, key_id};

const DAY: i64 = 86_400;

fn entry(at: Timestamp, key: &str, account: &str, model: &str, input: u64) -> LedgerEntry {
    LedgerEntry {
        at,
        key_id: Some(key.to_owned()),
        account_id: Some(account.to_owned()),
        model: model.to_owned(),
        tokens: TokenCounts {
            input_tokens: input,
            cached_tokens: input / 2,
            output_tokens: 10,
            reasoning_tokens: 2,
        },
        status: 200,
    }
}

/// Two keys on two accounts: "laptop" made three requests today, "ci" one 10 days ago; an
/// account since removed served one of them. The key ids.
async fn ledger(env: &Env, pool: &Pool) -> (String, String, Vec<String>) {
    let ids = env.add_accounts(&["acct-1", "acct-2"]);
    pool.reload().await.unwrap();
    let (laptop, ci) = (key_id(pool, "laptop").await, key_id(pool, "ci").await);
    let now = Timestamp::now();
    let old = Timestamp::from_secs(now.as_secs() - 10 * DAY);
    for e in [
        entry(now, &laptop, &ids[0], "gpt-5-codex", 1_000_000),
        entry(now, &laptop, &ids[1], "gpt-5", 200),
        entry(now, &laptop, "0123456789ab", "gpt-5", 100),
        entry(old, &ci, &ids[0], "gpt-5-codex", 4_000),
    ] {
        pool.usage().record_tokens(e);
    }
    pool.flush().await.unwrap();
    (laptop, ci, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_key_account_model_and_day_with_totals() {
    let env = Env::new();
    let pool = env.pool().await;
    let (laptop, ci, ids) = ledger(&env, &pool).await;

    let out = env.ok(&["tokens"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "KEY",
            "REQUESTS",
            "INPUT",
            "CACHED",
            "OUTPUT",
            "REASONING",
            "TOTAL"
        ],
        "{out}"
    );
    // Largest total first, names with ids, grouped thousands, a total row.
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let laptop_label = format!("({laptop})");
    assert_eq!(
        words(lines[1]),
        [
            "laptop",
            &laptop_label,
            "3",
            "1,000,300",
            "500,150",
            "30",
            "6",
            "1,000,330"
        ],
        "{out}"
    );
    assert!(lines[2].starts_with(&format!("ci ({ci})")), "{out}");
    assert_eq!(
        words(lines[3]),
        ["total", "4", "1,004,300", "502,150", "40", "8", "1,004,340"],
        "{out}"
    );
    // Numbers are right-aligned: the columns end together.
    assert_eq!(lines[1].len(), lines[3].len(), "{out}");

    let by_account = env.json(&["tokens", "--by", "account"]);
    let groups: Vec<(&str, Option<&str>, u64)> = by_account
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap(),
                r["name"].as_str(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            (ids[0].as_str(), Some("acct-1@example.com"), 2),
            (ids[1].as_str(), Some("acct-2@example.com"), 1),
            ("0123456789ab", None, 1),
        ]
    );
    // An id that names nothing any more (the ledger outlives it) is marked, in the table only.
    let out = env.ok(&["tokens", "--by", "account"]);
    assert!(out.contains("0123456789ab (deleted)"), "{out}");
    assert!(
        out.contains(&format!("acct-1@example.com ({})", ids[0])),
        "{out}"
    );
    assert_eq!(
        by_account[0],
        json!({"group": ids[0], "name": "acct-1@example.com", "requests": 2, "input_tokens": 1_004_000,
               "cached_tokens": 502_000, "output_tokens": 20, "reasoning_tokens": 4,
               "total_tokens": 1_004_020})
    );

    // Each key once (a parser that keeps the last of two would hide a repeat).
    let raw = env.ok(&["tokens", "--by", "model", "--json"]);
    assert_eq!(raw.matches("\"group\"").count(), 2, "{raw}");
    assert_eq!(raw.matches("\"name\"").count(), 2, "{raw}");
    let models = env.json(&["tokens", "--by", "model"]);
    assert_eq!(models[0]["group"], "gpt-5-codex");
    assert_eq!(models[0]["name"], json!(null));

    // Days oldest first; --since leaves the older day out.
    let days = env.json(&["tokens", "--by", "day"]);
    assert_eq!(days.as_array().unwrap().len(), 2);
    assert!(days[0]["group"].as_str() < days[1]["group"].as_str());
    let recent = env.json(&["tokens", "--by", "day", "--since", "2d"]);
    assert_eq!(recent.as_array().unwrap().len(), 1);
    assert_eq!(recent[0]["requests"], 3);
    let out = env.ok(&["tokens", "--by", "model"]);
    assert!(
        !out.contains("deleted"),
        "models and days are not ids: {out}"
    );
    let out = env.ok(&["tokens", "--since", "2d"]);
    assert!(!out.contains("ci ("), "{out}");
    assert!(!out.contains("total"), "one row needs no total: {out}");
}

#[test]
fn tokens_says_when_nothing_is_counted_and_refuses_bad_arguments() {
    let env = Env::new();
    let o = env.cmd().arg("tokens").output().unwrap();
    assert!(o.status.success());
    assert!(o.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No requests counted yet."),
        "{o:?}"
    );
    assert_eq!(env.json(&["tokens"]), json!([]));
    let o = env
        .cmd()
        .args(["tokens", "--since", "2020-01-01"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No requests counted since 2020-01-01"),
        "{o:?}"
    );
    for bad in [
        &["tokens", "--by", "week"][..],
        &["tokens", "--since", "soon"],
        &["tokens", "--since", "2999-01-01"],
        &["tokens", "--since", "0d"],
    ] {
        let o = env.cmd().args(bad).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {o:?}");
    }
}
