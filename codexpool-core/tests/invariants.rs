//! Property tests of the pool's invariants: no lease of an unusable account, inflight back to
//! zero after any interleaving of acquires and drops, round-robin visits every usable account;
//! folding the token ledger keeps every sum.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use codexpool_core::store::{MemoryStore, SqliteStore, Store};
use codexpool_core::usage::{
    LedgerEntry, LedgerGroup, LedgerQuery, LedgerRow, ReadingSource, TokenCounts, UsageSnapshot,
    WindowKind, WindowReading,
};
use codexpool_core::{AccountPatch, AccountStatus, Clock, Demand, Outcome, Timestamp};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum State {
    Active,
    Disabled,
    NeedsLogin,
    Banned,
    Exhausted,
    Cooling,
    StaleExhausted,
}

fn state() -> impl Strategy<Value = State> {
    prop_oneof![
        3 => Just(State::Active),
        1 => Just(State::Disabled),
        1 => Just(State::NeedsLogin),
        1 => Just(State::Banned),
        1 => Just(State::Exhausted),
        1 => Just(State::Cooling),
        1 => Just(State::StaleExhausted),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Acquire,
    Drop(usize),
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn never_leases_an_unusable_account(states in proptest::collection::vec(state(), 1..8), strategy in 0..3usize, cap in 0..3u32) {
        rt().block_on(async {
            let strategy = ["ordered", "round-robin", "headroom"][strategy];
            let (pool, clock) = common::pool_with(&[("ROUTE_STRATEGY", strategy), ("ACCOUNT_MAX_INFLIGHT", &cap.to_string()), ("REQUEST_GATE_WAIT_TIMEOUT_MS", "0")]).await;
            let ids = common::add_accounts(&pool, states.len()).await;
            let now = clock.now();
            let mut usable = HashSet::new();
            for (id, st) in ids.iter().zip(&states) {
                let status = |s| AccountPatch::default().status(s, None);
                match st {
                    State::Active => { usable.insert(id.clone()); }
                    State::Disabled => { pool.accounts().update(id, status(AccountStatus::Disabled)).await.unwrap(); }
                    State::NeedsLogin => { pool.accounts().update(id, status(AccountStatus::NeedsLogin)).await.unwrap(); }
                    State::Banned => { pool.accounts().update(id, status(AccountStatus::Banned)).await.unwrap(); }
                    State::Exhausted | State::StaleExhausted => {
                        let stale = matches!(st, State::StaleExhausted);
                        let r = WindowReading {
                            kind: WindowKind::FiveHour, used_percent: 100.0, window_minutes: 300,
                            resets_at: Some(if stale { now.minus(Duration::from_secs(1)) } else { now.plus(Duration::from_secs(60)) }),
                            source: ReadingSource::Poll, observed_at: now.minus(Duration::from_secs(10)),
                        };
                        pool.usage().record(id, &UsageSnapshot { windows: vec![r], ..Default::default() }).unwrap();
                        if stale { usable.insert(id.clone()); }
                    }
                    State::Cooling => {
                        let tried: Vec<String> = ids.iter().filter(|x| *x != id).cloned().collect();
                        // Lease exactly this account by excluding the others, then cool it.
                        let lease = pool.accounts().acquire(&Demand::any().tried(&tried)).await.unwrap();
                        prop_assert_eq!(lease.account_id(), id.as_str());
                        lease.report(Outcome::UpstreamError).await;
                    }
                }
            }
            let mut held = Vec::new();
            for _ in 0..(states.len() * 3) {
                match pool.accounts().acquire(&Demand::any()).await {
                    Ok(l) => {
                        prop_assert!(usable.contains(l.account_id()), "leased unusable {}", l.account_id());
                        held.push(l);
                    }
                    Err(_) => break,
                }
            }
            if cap > 0 {
                for id in &usable {
                    prop_assert!(held.iter().filter(|l| l.account_id() == id).count() <= cap as usize);
                }
            }
            if usable.is_empty() {
                prop_assert!(held.is_empty());
            }
            Ok(())
        })?;
    }

    #[test]
    fn inflight_returns_to_zero(steps in proptest::collection::vec(prop_oneof![Just(Step::Acquire), (0..16usize).prop_map(Step::Drop)], 1..60), cap in 0..3u32) {
        rt().block_on(async {
            let (pool, _) = common::pool_with(&[("ACCOUNT_MAX_INFLIGHT", &cap.to_string()), ("REQUEST_GATE_WAIT_TIMEOUT_MS", "0")]).await;
            let ids = common::add_accounts(&pool, 3).await;
            let mut held = Vec::new();
            for s in steps {
                match s {
                    Step::Acquire => if let Ok(l) = pool.accounts().acquire(&Demand::any()).await { held.push(l) },
                    Step::Drop(i) => if !held.is_empty() { held.remove(i % held.len()); },
                }
                let total: u32 = ids.iter().map(|id| pool.accounts().runtime(id).unwrap().inflight).sum();
                prop_assert_eq!(total as usize, held.len());
            }
            drop(held);
            prop_assert_eq!(pool.accounts().total_inflight(), 0);
            Ok(())
        })?;
    }

    #[test]
    fn round_robin_visits_every_usable_account(n in 1..8usize, disabled in proptest::collection::vec(any::<bool>(), 8)) {
        rt().block_on(async {
            let (pool, _) = common::pool_with(&[("ROUTE_STRATEGY", "round-robin")]).await;
            let ids = common::add_accounts(&pool, n).await;
            let mut usable = HashSet::new();
            for (i, id) in ids.iter().enumerate() {
                if disabled[i] { pool.accounts().disable(id).await.unwrap(); } else { usable.insert(id.clone()); }
            }
            let mut seen = HashSet::new();
            for _ in 0..usable.len() {
                seen.insert(pool.accounts().acquire(&Demand::any()).await.unwrap().account_id().to_string());
            }
            prop_assert_eq!(seen, usable);
            Ok(())
        })?;
    }
}

/// A ledger entry on `day` (0..) at `ms` into it.
fn ledger_entry(
    day: i64,
    ms: i64,
    key: usize,
    model: usize,
    status: u16,
    input: u64,
) -> LedgerEntry {
    LedgerEntry {
        // A UTC midnight, 2027-01-15.
        at: Timestamp::from_millis((20_833 + day) * 86_400_000 + ms),
        key_id: [None, Some("k1".to_string()), Some("k2".to_string())][key].clone(),
        account_id: Some(format!("a{}", key % 2)),
        model: format!("m{model}"),
        tokens: TokenCounts {
            input_tokens: input,
            cached_tokens: input / 3,
            output_tokens: input / 2 + 1,
            reasoning_tokens: input % 5,
        },
        status,
    }
}

fn ledger_entries() -> impl Strategy<Value = Vec<LedgerEntry>> {
    // Some entries exactly at midnight, where folded days are stamped.
    let ms = prop_oneof![1 => Just(0i64), 4 => 0..86_400_000i64];
    proptest::collection::vec(
        (
            0..5i64,
            ms,
            0..3usize,
            0..2usize,
            prop_oneof![Just(200u16), Just(502u16)],
            0..1000u64,
        ),
        0..60,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(d, ms, k, m, s, i)| ledger_entry(d, ms, k, m, s, i))
            .collect()
    })
}

/// Every grouping's sums, over everything and from each midnight on.
async fn all_sums(s: &dyn Store) -> Vec<Vec<LedgerRow>> {
    let mut out = Vec::new();
    for g in [
        LedgerGroup::Key,
        LedgerGroup::Account,
        LedgerGroup::Model,
        LedgerGroup::Day,
    ] {
        out.push(s.ledger_summary(&LedgerQuery::by(g)).await.unwrap());
        for day in 0..6 {
            let since = ledger_entry(day, 0, 0, 0, 200, 0).at;
            out.push(
                s.ledger_summary(&LedgerQuery::by(g).since(since))
                    .await
                    .unwrap(),
            );
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Folding (in steps, between appends, with entries arriving later for folded days) changes
    /// no sum by key, account, model or day, from any midnight on, in either store; and a folded
    /// day is one row per group.
    #[test]
    fn folding_the_ledger_keeps_every_sum(
        first in ledger_entries(),
        later in ledger_entries(),
        cutoff in 0..6i64,
        max_rows in 1..25usize,
    ) {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let sqlite = SqliteStore::open(dir.path().join("pool.db")).await.unwrap();
            let memory = MemoryStore::new();
            let reference = MemoryStore::new();
            let before = ledger_entry(cutoff, 0, 0, 0, 200, 0).at;
            for store in [&sqlite as &dyn Store, &memory, &reference] {
                store.append_ledger(&first).await.unwrap();
            }
            for store in [&sqlite as &dyn Store, &memory] {
                while store.fold_ledger(before, max_rows).await.unwrap() == max_rows as u64 {}
            }
            for store in [&sqlite as &dyn Store, &memory, &reference] {
                store.append_ledger(&later).await.unwrap();
            }
            for store in [&sqlite as &dyn Store, &memory] {
                while store.fold_ledger(before, max_rows).await.unwrap() == max_rows as u64 {}
                prop_assert_eq!(store.fold_ledger(before, max_rows).await.unwrap(), 0);
            }
            let expected = all_sums(&reference).await;
            prop_assert_eq!(&all_sums(&sqlite).await, &expected);
            prop_assert_eq!(&all_sums(&memory).await, &expected);

            // Rows left in SQLite: every entry of the days kept, one per group and day before;
            // entries that fell exactly on a midnight before the cutoff may stand alone (they
            // look folded already).
            let all: Vec<&LedgerEntry> = first.iter().chain(&later).collect();
            let groups: HashSet<_> = all
                .iter()
                .filter(|e| e.at < before)
                .map(|e| (e.at.as_millis() / 86_400_000, e.key_id.clone(), e.model.clone(), e.status))
                .collect();
            let kept = all.iter().filter(|e| e.at >= before).count();
            let at_midnight = all
                .iter()
                .filter(|e| e.at < before && e.at.as_millis() % 86_400_000 == 0)
                .count();
            let c = rusqlite::Connection::open(dir.path().join("pool.db")).unwrap();
            let rows: i64 = c
                .query_row("SELECT COUNT(*) FROM token_ledger", [], |r| r.get(0))
                .unwrap();
            let rows = usize::try_from(rows).unwrap();
            let least = kept + groups.len();
            prop_assert!(
                (least..=least + at_midnight).contains(&rows),
                "{} rows, expected {} (+ up to {} at midnight)", rows, least, at_midnight
            );
            Ok(())
        })?;
    }
}
