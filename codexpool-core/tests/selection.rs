//! Selection and leases through the public API: strategies, the quota guard, exhaustion and
//! staleness, cooldowns, inflight caps and waiting, affinity, groups, failover exclusion, and
//! the error that says why nothing could be leased.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use codexpool_core::usage::{ReadingSource, UsageSnapshot, WindowKind, WindowReading};
use codexpool_core::{AccountPatch, AccountStatus, Demand, Outcome, Pool, PoolError, Timestamp};
use common::{add_accounts, pool_with};

fn reading(kind: WindowKind, used: f64, now: Timestamp, resets_in: Duration) -> WindowReading {
    WindowReading {
        kind,
        used_percent: used,
        window_minutes: if kind == WindowKind::Weekly {
            10080
        } else {
            300
        },
        resets_at: Some(now.plus(resets_in)),
        source: ReadingSource::Poll,
        observed_at: now,
    }
}

fn set_usage(pool: &Pool, id: &str, windows: Vec<WindowReading>) {
    pool.usage()
        .record(
            id,
            &UsageSnapshot {
                windows,
                ..Default::default()
            },
        )
        .unwrap();
}

async fn pick(pool: &Pool) -> String {
    pool.accounts()
        .acquire(&Demand::any())
        .await
        .unwrap()
        .account_id()
        .to_string()
}

#[tokio::test]
async fn ordered_takes_the_lowest_sort_first() {
    let (pool, _) = pool_with(&[]).await;
    let ids = add_accounts(&pool, 3).await;
    pool.accounts()
        .update(&ids[2], AccountPatch::default().sort(-1))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(pick(&pool).await, ids[2]);
    }
}

#[tokio::test]
async fn round_robin_visits_every_usable_account() {
    let (pool, _) = pool_with(&[("ROUTE_STRATEGY", "round-robin")]).await;
    let ids = add_accounts(&pool, 4).await;
    pool.accounts().disable(&ids[1]).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(pick(&pool).await);
    }
    assert_eq!(
        seen,
        [&ids[0], &ids[2], &ids[3], &ids[0], &ids[2], &ids[3]].map(|s| s.to_string())
    );
}

#[tokio::test]
async fn headroom_prefers_most_left_then_earliest_reset() {
    let (pool, clock) = pool_with(&[("ROUTE_STRATEGY", "headroom")]).await;
    let ids = add_accounts(&pool, 3).await;
    let now = clock.now_ts();
    set_usage(
        &pool,
        &ids[0],
        vec![reading(
            WindowKind::FiveHour,
            50.0,
            now,
            Duration::from_secs(3600),
        )],
    );
    set_usage(
        &pool,
        &ids[1],
        vec![reading(
            WindowKind::FiveHour,
            20.0,
            now,
            Duration::from_secs(7200),
        )],
    );
    set_usage(
        &pool,
        &ids[2],
        vec![reading(
            WindowKind::FiveHour,
            20.0,
            now,
            Duration::from_secs(600),
        )],
    );
    assert_eq!(
        pick(&pool).await,
        ids[2],
        "same headroom, earlier reset wins"
    );
    clock.advance(Duration::from_secs(1));
    set_usage(
        &pool,
        &ids[2],
        vec![reading(
            WindowKind::FiveHour,
            60.0,
            now.plus(Duration::from_secs(1)),
            Duration::from_secs(600),
        )],
    );
    assert_eq!(pick(&pool).await, ids[1]);
}

trait NowTs {
    fn now_ts(&self) -> Timestamp;
}
impl NowTs for codexpool_core::ManualClock {
    fn now_ts(&self) -> Timestamp {
        codexpool_core::Clock::now(self)
    }
}

#[tokio::test]
async fn the_quota_guard_keeps_low_accounts_for_last() {
    let (pool, clock) = pool_with(&[]).await;
    let ids = add_accounts(&pool, 2).await;
    let now = clock.now_ts();
    // First account: 96 % of the 5-hour window used (below the 5 % guard).
    set_usage(
        &pool,
        &ids[0],
        vec![reading(
            WindowKind::FiveHour,
            96.0,
            now,
            Duration::from_secs(3600),
        )],
    );
    assert_eq!(
        pick(&pool).await,
        ids[1],
        "the guarded account is passed over"
    );
    // Weekly guard is 10 %.
    set_usage(
        &pool,
        &ids[1],
        vec![reading(
            WindowKind::Weekly,
            91.0,
            now,
            Duration::from_secs(86400),
        )],
    );
    assert_eq!(
        pick(&pool).await,
        ids[1],
        "when all are guarded, the one with most left is used"
    );
    pool.accounts().disable(&ids[1]).await.unwrap();
    assert_eq!(
        pick(&pool).await,
        ids[0],
        "a guarded account is used when nothing else is left"
    );
}

#[tokio::test]
async fn exhausted_accounts_are_skipped_until_their_reset() {
    let (pool, clock) = pool_with(&[]).await;
    let ids = add_accounts(&pool, 2).await;
    let now = clock.now_ts();
    set_usage(
        &pool,
        &ids[0],
        vec![reading(
            WindowKind::FiveHour,
            100.0,
            now,
            Duration::from_secs(600),
        )],
    );
    set_usage(
        &pool,
        &ids[1],
        vec![reading(
            WindowKind::Weekly,
            100.0,
            now,
            Duration::from_secs(900),
        )],
    );
    let err = pool.accounts().acquire(&Demand::any()).await.unwrap_err();
    assert_eq!(
        err,
        PoolError::Exhausted {
            resets_at: now.plus(Duration::from_secs(600))
        },
        "earliest reset"
    );
    assert_eq!(err.retry_at(), Some(now.plus(Duration::from_secs(600))));
    assert_eq!(
        pool.usage().exhausted_until(&ids[0]).unwrap(),
        Some(now.plus(Duration::from_secs(600)))
    );
    clock.advance(Duration::from_secs(601));
    assert_eq!(
        pick(&pool).await,
        ids[0],
        "a reading past its reset is stale and does not block"
    );
    assert_eq!(pool.usage().exhausted_until(&ids[0]).unwrap(), None);
    assert_eq!(
        pool.usage().headroom(&ids[0]).unwrap(),
        None,
        "stale = unknown"
    );
}

#[tokio::test]
async fn a_usage_limit_report_exhausts_until_the_reset() {
    let (pool, clock) = pool_with(&[]).await;
    let ids = add_accounts(&pool, 2).await;
    let now = clock.now_ts();
    let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
    assert_eq!(lease.account_id(), ids[0]);
    lease
        .report(Outcome::UsageLimit {
            resets_at: Some(now.plus(Duration::from_secs(3600))),
        })
        .await;
    drop(lease);
    assert_eq!(pick(&pool).await, ids[1]);
    let u = pool.usage().get(&ids[0]).unwrap();
    let w = u.five_hour.unwrap();
    assert_eq!(
        (w.used_percent, w.source),
        (100.0, ReadingSource::RateLimit)
    );
    // A reset more than five hours away belongs to the weekly window.
    let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
    lease
        .report(Outcome::UsageLimit {
            resets_at: Some(now.plus(Duration::from_secs(3 * 86400))),
        })
        .await;
    drop(lease);
    assert!(pool.usage().get(&ids[1]).unwrap().weekly.is_some());
    let err = pool.accounts().acquire(&Demand::any()).await.unwrap_err();
    assert!(matches!(err, PoolError::Exhausted { .. }), "{err}");
    assert!(err.to_string().contains("usage limit"), "{err}");
}

/// A rate limit during another failure's shorter cooldown (a challenge's 6 s) still holds the
/// account as long as a first refusal does.
#[tokio::test]
async fn a_rate_limit_during_a_shorter_cooldown_is_not_lost() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let a = pool.accounts().acquire(&Demand::any()).await.unwrap();
    let b = pool.accounts().acquire(&Demand::any()).await.unwrap();
    a.report(Outcome::Challenge).await;
    b.report(Outcome::RateLimited { retry_after: None }).await;
    assert_eq!(
        pool.accounts().runtime(&id).unwrap().cooldown_until,
        Some(clock.now_ts().plus(Duration::from_secs(45)))
    );
}

/// A reset the upstream names that is already past by this clock (the upstream's is behind)
/// neither undoes an exhaustion known from the same answer's headers nor frees the account at
/// once; an absurd `Retry-After` is believed only up to the ladder's last step.
#[tokio::test]
async fn past_resets_and_absurd_retry_afters_are_not_taken_as_given() {
    // One request per account: the three leases are on the three accounts.
    let (pool, clock) = pool_with(&[("ACCOUNT_MAX_INFLIGHT", "1")]).await;
    let ids = add_accounts(&pool, 3).await;
    let now = clock.now_ts();
    let past = Some(now.minus(Duration::from_secs(30)));
    let leases = [
        pool.accounts().acquire(&Demand::any()).await.unwrap(),
        pool.accounts().acquire(&Demand::any()).await.unwrap(),
        pool.accounts().acquire(&Demand::any()).await.unwrap(),
    ];
    let id = |i: usize| leases[i].account_id().to_string();
    let exhausted = |i: usize| pool.usage().exhausted_until(&id(i)).unwrap();
    // The answer's headers said: exhausted for two more minutes; its body, a past reset.
    let mut headers = reading(WindowKind::FiveHour, 100.0, now, Duration::from_secs(120));
    headers.source = ReadingSource::Headers;
    set_usage(&pool, &id(0), vec![headers]);
    leases[0]
        .report(Outcome::UsageLimit { resets_at: past })
        .await;
    assert_eq!(exhausted(0), Some(now.plus(Duration::from_secs(120))));
    // Nothing known: a minute, not at once.
    leases[1]
        .report(Outcome::UsageLimit { resets_at: past })
        .await;
    assert_eq!(exhausted(1), Some(now.plus(Duration::from_secs(60))));
    leases[2]
        .report(Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(999_999_999)),
        })
        .await;
    assert_eq!(
        pool.accounts().runtime(&id(2)).unwrap().cooldown_until,
        Some(now.plus(codexpool_core::pool::MAX_RETRY_AFTER))
    );
    assert_eq!(
        codexpool_core::pool::MAX_RETRY_AFTER,
        Duration::from_secs(7200)
    );
    let mut sorted = ids.clone();
    sorted.sort();
    let mut leased: Vec<String> = (0..3).map(id).collect();
    leased.sort();
    assert_eq!(leased, sorted);
}

#[tokio::test]
async fn cooldowns_grow_on_repeated_rate_limits_and_success_clears_them() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let expect = [45, 300, 1800, 7200, 7200];
    for secs in expect {
        let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
        lease
            .report(Outcome::RateLimited { retry_after: None })
            .await;
        drop(lease);
        let err = pool.accounts().acquire(&Demand::any()).await.unwrap_err();
        let now = clock.now_ts();
        assert_eq!(
            err,
            PoolError::CoolingDown {
                until: now.plus(Duration::from_secs(secs))
            }
        );
        assert_eq!(
            pool.accounts().runtime(&id).unwrap().cooldown_until,
            Some(now.plus(Duration::from_secs(secs)))
        );
        clock.advance(Duration::from_secs(secs));
    }
    let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
    lease.report(Outcome::Success).await;
    lease
        .report(Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(100)),
        })
        .await;
    drop(lease);
    let until = pool
        .accounts()
        .runtime(&id)
        .unwrap()
        .cooldown_until
        .unwrap();
    assert_eq!(
        until,
        clock.now_ts().plus(Duration::from_secs(100)),
        "strikes reset; Retry-After beats 45 s"
    );
}

#[tokio::test]
async fn a_burst_of_rate_limits_is_one_strike() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let cooldown = |pool: &Pool| pool.accounts().runtime(&id).unwrap().cooldown_until;
    // Five requests in flight together, all refused with a short 429.
    let mut leases = Vec::new();
    for _ in 0..5 {
        leases.push(pool.accounts().acquire(&Demand::any()).await.unwrap());
    }
    for lease in &leases[..4] {
        lease
            .report(Outcome::RateLimited { retry_after: None })
            .await;
    }
    assert_eq!(
        cooldown(&pool),
        Some(clock.now_ts().plus(Duration::from_secs(45))),
        "one strike: 45 s, not 2 h"
    );
    // A longer Retry-After from the same burst still counts, without a strike.
    leases[4]
        .report(Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(120)),
        })
        .await;
    drop(leases);
    assert_eq!(
        cooldown(&pool),
        Some(clock.now_ts().plus(Duration::from_secs(120)))
    );
    // The next refusal after the cooldown is the second strike.
    clock.advance(Duration::from_secs(120));
    let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
    lease
        .report(Outcome::RateLimited { retry_after: None })
        .await;
    assert_eq!(
        cooldown(&pool),
        Some(clock.now_ts().plus(Duration::from_secs(300)))
    );
}

/// Refusals of one burst reported on several threads at once are still one strike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_rate_limits_on_many_threads_is_one_strike() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let rt = tokio::runtime::Handle::current();
    for round in 0..500 {
        let mut leases = Vec::new();
        for _ in 0..4 {
            leases.push(pool.accounts().acquire(&Demand::any()).await.unwrap());
        }
        let start = std::sync::Barrier::new(leases.len());
        std::thread::scope(|s| {
            for lease in &leases {
                let (start, rt) = (&start, &rt);
                s.spawn(move || {
                    start.wait();
                    rt.block_on(lease.report(Outcome::RateLimited { retry_after: None }));
                });
            }
        });
        assert_eq!(
            pool.accounts().runtime(&id).unwrap().cooldown_until,
            Some(clock.now_ts().plus(Duration::from_secs(45))),
            "round {round}: one strike"
        );
        // The cooldown runs out and a success clears the strike.
        clock.advance(Duration::from_secs(45));
        leases[0].report(Outcome::Success).await;
    }
}

#[tokio::test]
async fn a_success_does_not_lift_a_cooldown_set_while_it_ran() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    // A long stream holds the account while a second request on it is rate limited.
    let stream = pool.accounts().acquire(&Demand::any()).await.unwrap();
    let other = pool.accounts().acquire(&Demand::any()).await.unwrap();
    other
        .report(Outcome::RateLimited { retry_after: None })
        .await;
    drop(other);
    clock.advance(Duration::from_secs(5));
    stream.report(Outcome::Success).await;
    drop(stream);
    let cooling = clock.now_ts().plus(Duration::from_secs(40));
    assert_eq!(
        pool.accounts().runtime(&id).unwrap().cooldown_until,
        Some(cooling),
        "the newer failure's cooldown stands"
    );
    assert_eq!(
        pool.accounts().acquire(&Demand::any()).await.unwrap_err(),
        PoolError::CoolingDown { until: cooling }
    );
    // The strike was kept too: the next rate limit escalates (45 s → 5 min).
    clock.advance(Duration::from_secs(40));
    let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
    lease
        .report(Outcome::RateLimited { retry_after: None })
        .await;
    assert_eq!(
        pool.accounts().runtime(&id).unwrap().cooldown_until,
        Some(clock.now_ts().plus(Duration::from_secs(300)))
    );
}

/// One upstream error benches an account for seconds (a pool of three with a stream broken on
/// each was unusable for 30 s); an upstream that keeps failing, longer; a success clears it;
/// errors of requests in flight together count once.
#[tokio::test]
async fn upstream_errors_cool_briefly_then_longer_on_repeats() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let cooldown = |pool: &Pool| pool.accounts().runtime(&id).unwrap().cooldown_until;
    for secs in [5, 15, 30, 60, 60] {
        // Two requests of one burst fail together: one strike.
        let a = pool.accounts().acquire(&Demand::any()).await.unwrap();
        let b = pool.accounts().acquire(&Demand::any()).await.unwrap();
        a.report(Outcome::UpstreamError).await;
        b.report(Outcome::UpstreamError).await;
        drop((a, b));
        let until = clock.now_ts().plus(Duration::from_secs(secs));
        assert_eq!(cooldown(&pool), Some(until));
        assert_eq!(
            pool.accounts().acquire(&Demand::any()).await.unwrap_err(),
            PoolError::CoolingDown { until }
        );
        clock.advance(Duration::from_secs(secs));
    }
    let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
    lease.report(Outcome::Success).await;
    lease.report(Outcome::UpstreamError).await;
    drop(lease);
    assert_eq!(
        cooldown(&pool),
        Some(clock.now_ts().plus(Duration::from_secs(5))),
        "a success cleared the strikes"
    );
}

/// Rate limits and upstream errors climb their own ladders: two errors in a row do not make
/// the next rate limit a third strike (30 min), nor a rate limit the next error a second.
#[tokio::test]
async fn rate_limits_and_upstream_errors_count_apart() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let cooldown = |pool: &Pool| pool.accounts().runtime(&id).unwrap().cooldown_until;
    for (outcome, secs) in [
        (Outcome::UpstreamError, 5),
        (Outcome::UpstreamError, 15),
        (Outcome::RateLimited { retry_after: None }, 45),
        (Outcome::UpstreamError, 30),
        (Outcome::RateLimited { retry_after: None }, 300),
    ] {
        let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
        lease.report(outcome.clone()).await;
        drop(lease);
        assert_eq!(
            cooldown(&pool),
            Some(clock.now_ts().plus(Duration::from_secs(secs))),
            "{outcome:?}"
        );
        clock.advance(Duration::from_secs(secs));
    }
}

#[tokio::test]
async fn short_cooldowns_for_challenges_and_401s() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    for (outcome, secs) in [(Outcome::Challenge, 6), (Outcome::Unauthorized, 30)] {
        let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
        lease.report(outcome).await;
        drop(lease);
        assert_eq!(
            pool.accounts().runtime(&id).unwrap().cooldown_until,
            Some(clock.now_ts().plus(Duration::from_secs(secs)))
        );
        clock.advance(Duration::from_secs(secs));
    }
}

#[tokio::test]
async fn banned_and_needs_login_change_status_but_never_override_disabled() {
    let (pool, _) = pool_with(&[]).await;
    let ids = add_accounts(&pool, 2).await;
    let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
    lease
        .report(Outcome::Banned {
            reason: "account_deactivated".into(),
        })
        .await;
    drop(lease);
    let a = pool.accounts().get(&ids[0]).unwrap();
    assert_eq!(
        (a.status, a.status_reason.as_deref()),
        (AccountStatus::Banned, Some("account_deactivated"))
    );
    let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
    assert_eq!(lease.account_id(), ids[1]);
    pool.accounts().disable(&ids[1]).await.unwrap();
    lease
        .report(Outcome::NeedsLogin {
            reason: "refresh_token_reused".into(),
        })
        .await;
    drop(lease);
    assert_eq!(
        pool.accounts().get(&ids[1]).unwrap().status,
        AccountStatus::Disabled,
        "a person's choice stands"
    );
    let err = pool.accounts().acquire(&Demand::any()).await.unwrap_err();
    assert_eq!(
        err,
        PoolError::NoneActive {
            disabled: 1,
            needs_login: 0,
            banned: 1
        }
    );
}

#[tokio::test]
async fn inflight_cap_and_waiting_for_a_slot() {
    let (pool, _) = pool_with(&[
        ("ACCOUNT_MAX_INFLIGHT", "1"),
        ("REQUEST_GATE_WAIT_TIMEOUT_MS", "200"),
    ])
    .await;
    let ids = add_accounts(&pool, 2).await;
    let a = pool.accounts().acquire(&Demand::any()).await.unwrap();
    let b = pool.accounts().acquire(&Demand::any()).await.unwrap();
    assert_eq!(
        (a.account_id(), b.account_id()),
        (ids[0].as_str(), ids[1].as_str())
    );
    // Both busy: a third waits and gets the first slot that frees up.
    let p2 = pool.clone();
    let waiter = tokio::spawn(async move {
        p2.accounts()
            .acquire(&Demand::any())
            .await
            .map(|l| l.account_id().to_string())
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(b);
    assert_eq!(waiter.await.unwrap().unwrap(), ids[1]);
    // Nobody frees up: a clear error after the wait.
    let c = pool.accounts().acquire(&Demand::any()).await.unwrap();
    let started = std::time::Instant::now();
    let err = pool.accounts().acquire(&Demand::any()).await.unwrap_err();
    assert!(matches!(err, PoolError::Busy { cap: 1, .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    drop((a, c));
    assert_eq!(pool.accounts().total_inflight(), 0);
}

/// A lease for conversation `key` that serves (commits), as a request whose answer began.
async fn serve(pool: &codexpool_core::Pool, key: &str) -> codexpool_core::Lease {
    let lease = pool
        .accounts()
        .acquire(&Demand::any().affinity(key))
        .await
        .unwrap();
    lease.commit();
    lease
}

/// A conversation moves only with an attempt that served: a lease on another account that is
/// dropped before it commits (it failed, or its client left) leaves the pin where it was.
#[tokio::test]
async fn a_conversation_moves_only_when_the_new_account_serves() {
    let (pool, _) = pool_with(&[("ACCOUNT_MAX_INFLIGHT", "1")]).await;
    add_accounts(&pool, 2).await;
    let first = serve(&pool, "conv-1").await.account_id().to_string();
    // Its account busy, the conversation gets the other one; that attempt never serves.
    let busy = pool.accounts().acquire(&Demand::any()).await.unwrap();
    assert_eq!(busy.account_id(), first);
    let elsewhere = pool
        .accounts()
        .acquire(&Demand::any().affinity("conv-1"))
        .await
        .unwrap();
    assert!(elsewhere.moved());
    drop(elsewhere);
    drop(busy);
    let back = pool
        .accounts()
        .acquire(&Demand::any().affinity("conv-1"))
        .await
        .unwrap();
    assert_eq!(back.account_id(), first);
    assert!(!back.moved(), "still its account's conversation");
}

#[tokio::test]
async fn affinity_keeps_a_conversation_on_its_account_while_usable() {
    let (pool, clock) = pool_with(&[("ROUTE_STRATEGY", "round-robin")]).await;
    let ids = add_accounts(&pool, 3).await;
    let first = serve(&pool, "conv-1").await.account_id().to_string();
    for _ in 0..4 {
        let l = serve(&pool, "conv-1").await;
        assert_eq!(l.account_id(), first);
        assert!(!l.moved());
    }
    // Unusable → moves (and the lease says so), and stays on the new account.
    pool.accounts().disable(&first).await.unwrap();
    let lease = serve(&pool, "conv-1").await;
    assert!(lease.moved(), "the conversation left its account");
    let moved = lease.account_id().to_string();
    drop(lease);
    assert_ne!(moved, first);
    pool.accounts().enable(&first).await.unwrap();
    let lease = serve(&pool, "conv-1").await;
    assert_eq!(lease.account_id(), moved);
    assert!(!lease.moved(), "settled on the new account");
    drop(lease);
    // Expires after an hour of silence.
    clock.advance(Duration::from_secs(3601));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        seen.insert(serve(&pool, "conv-1").await.account_id().to_string());
    }
    assert!(seen.len() == 1 && ids.len() == 3);
}

#[tokio::test]
async fn groups_restrict_and_name_themselves_in_errors() {
    let (pool, _) = pool_with(&[]).await;
    let ids = add_accounts(&pool, 2).await;
    pool.accounts()
        .update(&ids[1], AccountPatch::default().group(Some("team".into())))
        .await
        .unwrap();
    let team = vec!["team".to_string()];
    assert_eq!(
        pool.accounts()
            .acquire(&Demand::any().groups(&team))
            .await
            .unwrap()
            .account_id(),
        ids[1]
    );
    let other = vec!["ops".to_string()];
    let err = pool
        .accounts()
        .acquire(&Demand::any().groups(&other))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PoolError::NoneInGroups {
            groups: other.clone()
        }
    );
    assert!(err.to_string().contains("ops"));
}

#[tokio::test]
async fn failover_excludes_tried_accounts() {
    let (pool, clock) = pool_with(&[]).await;
    let ids = add_accounts(&pool, 3).await;
    let tried = vec![ids[0].clone()];
    assert_eq!(
        pool.accounts()
            .acquire(&Demand::any().tried(&tried))
            .await
            .unwrap()
            .account_id(),
        ids[1]
    );
    let all = ids.clone();
    let err = pool
        .accounts()
        .acquire(&Demand::any().tried(&all))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PoolError::AllTried {
            tried: 3,
            back_at: None
        }
    );
    assert_eq!(err.retry_at(), None);
    // One of them cooling down after a refusal: when it is back is when to try again.
    let lease = pool
        .accounts()
        .acquire(&Demand::any().tried(&ids[..2]))
        .await
        .unwrap();
    assert_eq!(lease.account_id(), ids[2]);
    lease
        .report(Outcome::RateLimited { retry_after: None })
        .await;
    let back = pool.accounts().runtime(&ids[2]).unwrap().cooldown_until;
    assert!(back.is_some_and(|t| t > clock.now_ts()));
    let err = pool
        .accounts()
        .acquire(&Demand::any().tried(&ids[..2]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        PoolError::AllTried {
            tried: 2,
            back_at: back
        }
    );
    assert_eq!(err.retry_at(), back);
}

#[tokio::test]
async fn an_empty_pool_says_how_to_fix_it() {
    let (pool, _) = pool_with(&[]).await;
    let err = pool.accounts().acquire(&Demand::any()).await.unwrap_err();
    assert_eq!(err, PoolError::NoAccounts);
    assert!(err.to_string().contains("codexpool account login"));
}

#[tokio::test]
async fn dropping_leases_releases_even_on_cancel_and_panic() {
    let (pool, _) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let p = pool.clone();
    let task = tokio::spawn(async move {
        let _lease = p.accounts().acquire(&Demand::any()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(pool.accounts().runtime(&id).unwrap().inflight, 1);
    task.abort();
    let _ = task.await;
    assert_eq!(
        pool.accounts().runtime(&id).unwrap().inflight,
        0,
        "cancellation released the lease"
    );
    let p = pool.clone();
    let task = tokio::spawn(async move {
        let _lease = p.accounts().acquire(&Demand::any()).await.unwrap();
        panic!("boom");
    });
    assert!(task.await.is_err());
    assert_eq!(
        pool.accounts().runtime(&id).unwrap().inflight,
        0,
        "a panic released the lease"
    );
}

#[tokio::test]
async fn a_lease_sees_a_refreshed_token() {
    let (pool, _) = pool_with(&[]).await;
    add_accounts(&pool, 1).await;
    let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
    let before = lease.access_token();
    let fresh = common::jwt(
        "acct-0",
        "user-acct-0",
        "acct-0@example.com",
        "plus",
        2_100_000_000,
    );
    let doc = serde_json::json!({"tokens": {"access_token": fresh, "refresh_token": "rt-2"}});
    let r = pool
        .accounts()
        .import_bytes("again", &serde_json::to_vec(&doc).unwrap())
        .await;
    assert_eq!(r.updated(), 1, "{r:?}");
    assert_ne!(lease.access_token(), before);
    assert_eq!(lease.access_token().expose(), fresh);
}

/// A slot freed just as a request finds every account busy must still wake it: a lost wake-up
/// left it asleep until the gate timeout (here a minute), although the slot was free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_freed_just_as_a_request_starts_waiting_wakes_it() {
    let (pool, _) = pool_with(&[
        ("ACCOUNT_MAX_INFLIGHT", "1"),
        ("REQUEST_GATE_WAIT_TIMEOUT_MS", "60000"),
    ])
    .await;
    add_accounts(&pool, 1).await;
    for round in 0..20_000u32 {
        let held = pool.accounts().acquire(&Demand::any()).await.unwrap();
        let p = pool.clone();
        let waiter =
            tokio::spawn(async move { p.accounts().acquire(&Demand::any()).await.map(drop) });
        // Free the slot at moments spread around the waiter's first try (on the other worker).
        for _ in 0..round % 200 {
            std::hint::spin_loop();
        }
        drop(held);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the waiter slept through the release"))
            .unwrap()
            .unwrap();
    }
    assert_eq!(pool.accounts().total_inflight(), 0);
}

/// The upstream's `Retry-After` is believed the first time: a 1 s rate limit rests the account
/// 1 s, not 45. Repeats without a success in between climb the ladder one step behind.
#[tokio::test]
async fn a_short_retry_after_is_believed_then_repeats_climb() {
    let (pool, clock) = pool_with(&[]).await;
    let id = add_accounts(&pool, 1).await.remove(0);
    let cooldown = |pool: &Pool| pool.accounts().runtime(&id).unwrap().cooldown_until;
    let refuse = |secs: u64| {
        let pool = pool.clone();
        async move {
            let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
            lease
                .report(Outcome::RateLimited {
                    retry_after: Some(Duration::from_secs(secs)),
                })
                .await;
        }
    };
    refuse(1).await;
    assert_eq!(
        cooldown(&pool),
        Some(clock.now_ts().plus(Duration::from_secs(1)))
    );
    clock.advance(Duration::from_secs(1));
    refuse(1).await;
    assert_eq!(
        cooldown(&pool),
        Some(clock.now_ts().plus(Duration::from_secs(45))),
        "the second strike in a row rests at least the first step"
    );
    // A success clears the strikes: the next short limit is believed again.
    clock.advance(Duration::from_secs(45));
    let lease = pool.accounts().acquire(&Demand::any()).await.unwrap();
    lease.report(Outcome::Success).await;
    drop(lease);
    refuse(2).await;
    assert_eq!(
        cooldown(&pool),
        Some(clock.now_ts().plus(Duration::from_secs(2)))
    );
}
