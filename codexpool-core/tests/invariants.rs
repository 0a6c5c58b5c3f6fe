//! Property tests of the pool's invariants: no lease of an unusable account, inflight back to
//! zero after any interleaving of acquires and drops, round-robin visits every usable account.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use codexpool_core::usage::{ReadingSource, UsageSnapshot, WindowKind, WindowReading};
use codexpool_core::{AccountPatch, AccountStatus, Clock, Demand, Outcome};
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
                        pool.usage().record(id, &UsageSnapshot { windows: vec![r], ..Default::default() });
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
