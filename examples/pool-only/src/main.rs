//! Example: use codexpool as a library, without HTTP — accounts, platform keys, leases and
//! usage against a throw-away database.
//!
//! It starts `FakeOpenAi` (codexpool-testkit) in place of auth.openai.com and chatgpt.com, so it
//! needs no network and no real account, then:
//!
//! 1. opens a pool over a temporary SQLite file, pointed at the fake;
//! 2. imports an account from a Codex CLI `auth.json`;
//! 3. creates a platform key and verifies its secret, as the gateway does for each request;
//! 4. polls the account's 5-hour and weekly usage windows;
//! 5. leases the best account for a request (`Demand`), reports success and records the token
//!    counts in the ledger — what the gateway does around each upstream call;
//! 6. prints the usage table and the ledger.
//!
//! Run it with `cargo run -p pool-only`.

use std::error::Error;
use std::time::Duration;

use codexpool_core::usage::{LedgerEntry, LedgerGroup, LedgerQuery, TokenCounts, WindowReading};
use codexpool_core::{Config, Demand, Outcome, Pool, RefreshProgress, RefreshScope, keys::NewKey};
use codexpool_testkit::{FakeAccount, FakeOpenAi, FakeUsage, FakeWindow};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // The fake upstream: one ChatGPT Pro sign-in with some of its quota used.
    let fake = FakeOpenAi::start()?;
    fake.add_account(
        FakeAccount::new("acct-1")
            .email("ada@example.com")
            .plan("pro"),
    );
    fake.set_usage(
        "acct-1",
        FakeUsage::new(25.0, 40.0)
            .primary(FakeWindow::five_hour(25.0).resets_in(Duration::from_secs(2 * 3600)))
            .secondary(FakeWindow::weekly(40.0).resets_in(Duration::from_secs(3 * 86400))),
    );
    let dir = tempfile::tempdir()?;

    // 1. A pool over a temporary database. A real program would start from
    //    `Config::from_env()?` and set only what it must.
    let mut config = Config::default();
    config.set("DB_PATH", &dir.path().join("pool.db").to_string_lossy())?;
    config.set("ISSUER", &fake.issuer())?;
    config.set("USAGE_BASE_URL", &fake.usage_base_url())?;
    let pool = Pool::open(config).await?;
    println!("opened a pool at {}", pool.config().db_path.display());

    // 2. Import a Codex CLI auth.json (the fake wrote it; usually it is ~/.codex/auth.json).
    let auth_json = dir.path().join("auth.json");
    std::fs::write(&auth_json, fake.auth_json("acct-1").to_string())?;
    let report = pool.accounts().import_path(&auth_json).await?;
    for r in &report.results {
        println!(
            "import {}: {:?} -> account {}",
            r.source,
            r.outcome,
            r.account_id.as_deref().unwrap_or("-")
        );
    }
    let account = pool
        .accounts()
        .list(&Default::default())
        .into_iter()
        .next()
        .ok_or("the import added no account")?;
    println!(
        "account {} ({}, plan {}, status {})",
        account.id,
        account.label,
        account.plan_type.as_deref().unwrap_or("?"),
        account.status
    );

    // 3. A platform key. The secret is shown once; only its hash is stored.
    let created = pool
        .keys()
        .create(NewKey::named("ci").model("gpt-5-codex"))
        .await?;
    println!(
        "created key {} ({}), bound to {}",
        created.key.id,
        created.key.hint,
        created.key.model.as_deref().unwrap_or("any model")
    );
    let key = pool.keys().verify(created.secret.expose())?;
    println!("verified the secret: it is key {:?}", key.name);
    match pool.keys().verify("sk-cp-not-a-key") {
        Ok(_) => return Err("an unknown key was accepted".into()),
        Err(e) => println!("an unknown secret is refused: {e}"),
    }

    // 4. Read the usage windows now (a server does this in the background).
    let results = pool
        .usage()
        .refresh(RefreshScope::All, |p| {
            if let RefreshProgress::Account {
                done,
                total,
                result,
            } = p
            {
                let ok = if result.outcome.is_ok() {
                    "ok"
                } else {
                    "failed"
                };
                println!("polled usage {done}/{total}: {} {ok}", result.label);
            }
        })
        .await?;
    if let Some(Err(e)) = results.first().map(|r| &r.outcome) {
        return Err(format!("usage poll failed: {e}").into());
    }

    // 5. One request's life in the pool: lease the best account, call upstream with its token
    //    (skipped here), report how it went, record the tokens. Dropping the lease frees the
    //    account's slot even when the request fails or is cancelled.
    let lease = pool
        .accounts()
        .acquire(&Demand::any().model("gpt-5-codex"))
        .await?;
    let id = lease.account_id().to_string();
    println!(
        "leased account {} for a request (in flight: {})",
        lease.account().label,
        pool.accounts().runtime(&id)?.inflight
    );
    lease.report(Outcome::Success).await;
    pool.usage().record_tokens(LedgerEntry {
        at: pool.now(),
        key_id: Some(key.id.clone()),
        account_id: Some(id.clone()),
        model: "gpt-5-codex".into(),
        tokens: TokenCounts {
            input_tokens: 1200,
            cached_tokens: 800,
            output_tokens: 300,
            reasoning_tokens: 64,
        },
        status: 200,
    });
    drop(lease);
    println!(
        "reported success and released it (in flight: {})",
        pool.accounts().runtime(&id)?.inflight
    );

    // 6. What the pool knows now.
    println!("\nusage");
    println!(
        "{:<18} {:>14} {:>14}  source",
        "account", "5h used", "weekly used"
    );
    for u in pool.usage().list() {
        let label = pool.accounts().get(&u.account_id)?.label;
        let source = u.five_hour.as_ref().map_or("-", |w| w.source.as_str());
        println!(
            "{label:<18} {:>14} {:>14}  {source}",
            percent(u.five_hour.as_ref()),
            percent(u.weekly.as_ref())
        );
    }
    for group in [LedgerGroup::Key, LedgerGroup::Account] {
        println!("\nledger by {group:?}");
        println!(
            "{:<14} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "group", "requests", "input", "cached", "output", "total"
        );
        for row in pool.usage().ledger(&LedgerQuery::by(group)).await? {
            println!(
                "{:<14} {:>8} {:>8} {:>8} {:>8} {:>8}",
                row.group,
                row.requests,
                row.tokens.input_tokens,
                row.tokens.cached_tokens,
                row.tokens.output_tokens,
                row.total_tokens
            );
        }
    }

    pool.flush().await?;
    println!("\ndone");
    Ok(())
}

/// `25.0 %`, or `-` for a window never seen.
fn percent(w: Option<&WindowReading>) -> String {
    w.map_or_else(|| "-".into(), |w| format!("{:.1} %", w.used_percent))
}
