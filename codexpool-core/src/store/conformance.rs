//! The conformance suite every [`Store`] implementation must pass. Run [`check_all`] on a fresh,
//! empty store; the SQLite and memory stores run it in this crate's tests, and an outside
//! implementation (e.g. PostgreSQL) should run it in its own.

use std::sync::Arc;
use std::time::Duration;

use super::{
    LeaseTake, LoginKind, LoginSession, LoginStatus, RecordBatch, RefreshedTokens, Store,
    StoreError, TokenSave,
};
use crate::account::{Account, AccountPatch, AccountStatus, Tokens};
use crate::keys::{KeyPatch, PlatformKey};
use crate::request_log::{RequestLogEntry, RequestLogQuery};
use crate::secret::Secret;
use crate::time::Timestamp;
use crate::usage::{
    Credits, LedgerEntry, LedgerGroup, LedgerQuery, LedgerRow, ReadingSource, TokenCounts,
    WindowKind, WindowReading,
};

/// A failed check: which, and what was seen.
pub type Failure = String;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("{}:{}: {}", file!(), line!(), format!($($msg)+)));
        }
    };
}

fn t(s: i64) -> Timestamp {
    Timestamp::from_secs(1_800_000_000 + s)
}

fn e(err: StoreError) -> Failure {
    format!("store error: {err}")
}

/// A sample account.
pub fn sample_account(id: &str, chatgpt_account_id: &str) -> Account {
    Account {
        id: id.into(),
        label: format!("label {id}"),
        email: Some(format!("{id}@example.com")),
        chatgpt_account_id: Some(chatgpt_account_id.into()),
        chatgpt_user_id: Some("user-1".into()),
        plan_type: Some("plus".into()),
        group: Some("team".into()),
        tags: vec!["a".into(), "b".into()],
        sort: 3,
        note: Some("note".into()),
        status: AccountStatus::Active,
        status_reason: None,
        tokens: Tokens {
            id_token: Secret::from("id-token"),
            access_token: Secret::from(format!("access-{id}")),
            refresh_token: Secret::from(format!("refresh-{id}")),
            expires_at: Some(t(3600)),
            last_refresh: Some(t(0)),
        },
        created_at: t(0),
        updated_at: t(0),
        last_used_at: None,
    }
}

/// A sample key.
pub fn sample_key(id: &str, hash_byte: u8) -> PlatformKey {
    PlatformKey {
        id: id.into(),
        name: format!("key {id}"),
        hint: "sk-cp-…abcd".into(),
        secret_hash: [hash_byte; 32],
        model: Some("gpt-5-codex".into()),
        allowed_models: vec!["gpt-5-codex".into()],
        allowed_groups: vec!["team".into()],
        reasoning_effort: Some("high".into()),
        enabled: true,
        expires_at: Some(t(86_400)),
        created_at: t(0),
        updated_at: t(0),
        last_used_at: None,
    }
}

fn same_account(a: &Account, b: &Account) -> bool {
    a.id == b.id
        && a.label == b.label
        && a.email == b.email
        && a.chatgpt_account_id == b.chatgpt_account_id
        && a.chatgpt_user_id == b.chatgpt_user_id
        && a.plan_type == b.plan_type
        && a.group == b.group
        && a.tags == b.tags
        && a.sort == b.sort
        && a.note == b.note
        && a.status == b.status
        && a.status_reason == b.status_reason
        && a.tokens == b.tokens
        && a.created_at == b.created_at
        && a.updated_at == b.updated_at
        && a.last_used_at == b.last_used_at
}

/// Runs every check on a fresh, empty store.
pub async fn check_all(store: &dyn Store) -> Result<(), Failure> {
    accounts(store).await?;
    keys(store).await?;
    usage(store).await?;
    ledger(store).await?;
    ledger_folding(store).await?;
    ledger_huge_counts(store).await?;
    request_log(store).await?;
    records(store).await?;
    login_sessions(store).await?;
    refresh_leases(store).await?;
    refreshed_tokens(store).await?;
    Ok(())
}

async fn accounts(s: &dyn Store) -> Result<(), Failure> {
    ensure!(
        s.list_accounts().await.map_err(e)?.is_empty(),
        "a fresh store has no accounts"
    );
    let a = sample_account("acc1", "chatgpt-1");
    s.insert_account(&a).await.map_err(e)?;
    let got = s
        .get_account("acc1")
        .await
        .map_err(e)?
        .ok_or("inserted account not found")?;
    ensure!(
        same_account(&got, &a),
        "round trip changed the account: {got:?}"
    );
    ensure!(
        s.get_account("nope").await.map_err(e)?.is_none(),
        "unknown id must be None"
    );

    // Same identity under another id: conflict, and nothing written.
    let dup = sample_account("acc2", "chatgpt-1");
    ensure!(
        matches!(
            s.insert_account(&dup).await,
            Err(StoreError::Conflict { .. })
        ),
        "a second account with the same identity must conflict"
    );
    ensure!(
        s.list_accounts().await.map_err(e)?.len() == 1,
        "a conflicting insert wrote something"
    );
    ensure!(
        matches!(s.insert_account(&a).await, Err(StoreError::Conflict { .. })),
        "a second account with the same id must conflict"
    );
    // Same account id, different user: a different sign-in (team workspaces).
    let mut teammate = sample_account("acc3", "chatgpt-1");
    teammate.chatgpt_user_id = Some("user-2".into());
    s.insert_account(&teammate).await.map_err(e)?;

    let patch = AccountPatch::default()
        .label("renamed")
        .group(None)
        .tags(vec!["x".into()])
        .sort(-1)
        .status(
            AccountStatus::NeedsLogin,
            Some("refresh_token_reused".into()),
        );
    let patched = s.patch_account("acc1", &patch, t(10)).await.map_err(e)?;
    ensure!(
        patched.label == "renamed" && patched.group.is_none() && patched.tags == ["x"],
        "patch not applied: {patched:?}"
    );
    ensure!(
        patched.status == AccountStatus::NeedsLogin && patched.updated_at == t(10),
        "status/updated_at not set"
    );
    ensure!(
        patched.tokens == a.tokens && patched.note == a.note,
        "patch changed fields it did not name"
    );
    let again = s
        .get_account("acc1")
        .await
        .map_err(e)?
        .ok_or("patched account vanished")?;
    ensure!(same_account(&again, &patched), "patch not persisted");
    // A conditional status change applies only from the named statuses; the rest of the patch
    // applies either way.
    let only_active = AccountPatch::default()
        .sort(-2)
        .status(AccountStatus::Banned, Some("deactivated".into()))
        .only_from(&[AccountStatus::Active]);
    let kept = s
        .patch_account("acc1", &only_active, t(11))
        .await
        .map_err(e)?;
    ensure!(
        kept.status == AccountStatus::NeedsLogin
            && kept.status_reason.as_deref() == Some("refresh_token_reused")
            && kept.sort == -2,
        "a status change conditional on `active` applied to a needs_login account: {kept:?}"
    );
    let from_needs_login = only_active.only_from(&[AccountStatus::NeedsLogin]);
    let moved = s
        .patch_account("acc1", &from_needs_login, t(12))
        .await
        .map_err(e)?;
    ensure!(
        moved.status == AccountStatus::Banned,
        "a status change conditional on `needs_login` did not apply: {moved:?}"
    );
    ensure!(
        matches!(
            s.patch_account("nope", &patch, t(10)).await,
            Err(StoreError::NotFound { .. })
        ),
        "patching an unknown id must be NotFound"
    );
    let clash = AccountPatch {
        chatgpt_user_id: Some(Some("user-1".into())),
        ..Default::default()
    };
    ensure!(
        matches!(
            s.patch_account("acc3", &clash, t(11)).await,
            Err(StoreError::Conflict { .. })
        ),
        "a patch onto an existing identity must conflict"
    );

    let tokens = Tokens {
        id_token: Secret::from("id2"),
        access_token: Secret::from("access2"),
        refresh_token: Secret::from("refresh2"),
        expires_at: None,
        last_refresh: Some(t(20)),
    };
    let p = s
        .patch_account(
            "acc1",
            &AccountPatch::default().tokens(tokens.clone()),
            t(20),
        )
        .await
        .map_err(e)?;
    ensure!(p.tokens == tokens && p.label == "renamed", "token patch");

    s.set_sort_orders(&[("acc1".into(), 7), ("acc3".into(), 8)], t(30))
        .await
        .map_err(e)?;
    ensure!(
        s.get_account("acc3").await.map_err(e)?.map(|a| a.sort) == Some(8),
        "bulk sort"
    );
    ensure!(
        matches!(
            s.set_sort_orders(&[("acc1".into(), 1), ("nope".into(), 2)], t(31))
                .await,
            Err(StoreError::NotFound { .. })
        ),
        "bulk sort with an unknown id must fail"
    );
    ensure!(
        s.get_account("acc1").await.map_err(e)?.map(|a| a.sort) == Some(7),
        "a failed bulk sort must change nothing"
    );

    s.touch_accounts(&[("acc1".into(), t(50)), ("nope".into(), t(50))])
        .await
        .map_err(e)?;
    s.touch_accounts(&[("acc1".into(), t(40))])
        .await
        .map_err(e)?;
    ensure!(
        s.get_account("acc1")
            .await
            .map_err(e)?
            .and_then(|a| a.last_used_at)
            == Some(t(50)),
        "last used only moves forward"
    );

    ensure!(
        s.delete_account("acc3").await.map_err(e)?,
        "delete existing"
    );
    ensure!(!s.delete_account("acc3").await.map_err(e)?, "delete twice");
    ensure!(
        s.list_accounts().await.map_err(e)?.len() == 1,
        "one account left"
    );
    Ok(())
}

async fn keys(s: &dyn Store) -> Result<(), Failure> {
    let k = sample_key("key1", 1);
    s.insert_key(&k).await.map_err(e)?;
    let list = s.list_keys().await.map_err(e)?;
    ensure!(list == vec![k.clone()], "key round trip: {list:?}");
    ensure!(
        matches!(
            s.insert_key(&sample_key("key2", 1)).await,
            Err(StoreError::Conflict { .. })
        ),
        "same hash must conflict"
    );
    let p = KeyPatch::default()
        .enabled(false)
        .model(None)
        .allowed_models(vec![])
        .expires_at(None);
    let got = s.patch_key("key1", &p, t(5)).await.map_err(e)?;
    ensure!(
        !got.enabled
            && got.model.is_none()
            && got.allowed_models.is_empty()
            && got.expires_at.is_none(),
        "key patch"
    );
    ensure!(
        got.name == k.name && got.secret_hash == k.secret_hash && got.updated_at == t(5),
        "key patch kept the rest"
    );
    ensure!(
        s.list_keys().await.map_err(e)? == vec![got.clone()],
        "key patch persisted"
    );
    ensure!(
        matches!(
            s.patch_key("nope", &p, t(5)).await,
            Err(StoreError::NotFound { .. })
        ),
        "patch unknown key"
    );
    // Allowed models that leave out the bound one: refused in the transaction, nothing written.
    let bind = KeyPatch::default()
        .model(Some("o3".into()))
        .allowed_models(vec!["gpt-5".into()]);
    ensure!(
        matches!(
            s.patch_key("key1", &bind, t(6)).await,
            Err(StoreError::Refused {
                field: "allowed_models",
                ..
            })
        ),
        "a bound model outside the allowed ones is refused"
    );
    ensure!(
        s.list_keys().await.map_err(e)? == vec![got.clone()],
        "a refused key patch wrote nothing"
    );
    s.touch_keys(&[("key1".into(), t(9))]).await.map_err(e)?;
    ensure!(
        s.list_keys().await.map_err(e)?[0].last_used_at == Some(t(9)),
        "key last used"
    );
    ensure!(s.delete_key("key1").await.map_err(e)?, "delete key");
    ensure!(!s.delete_key("key1").await.map_err(e)?, "delete key twice");
    ensure!(s.list_keys().await.map_err(e)?.is_empty(), "no keys left");
    Ok(())
}

fn reading(kind: WindowKind, used: f64, observed: i64) -> WindowReading {
    WindowReading {
        kind,
        used_percent: used,
        window_minutes: if kind == WindowKind::Weekly {
            10080
        } else {
            300
        },
        resets_at: Some(t(observed + 3600)),
        source: ReadingSource::Poll,
        observed_at: t(observed),
    }
}

async fn usage(s: &dyn Store) -> Result<(), Failure> {
    s.insert_account(&sample_account("u1", "chatgpt-u1"))
        .await
        .map_err(e)?;
    let five = reading(WindowKind::FiveHour, 25.0, 100);
    let week = reading(WindowKind::Weekly, 80.0, 100);
    s.save_windows(
        &[
            ("u1".into(), five.clone()),
            ("u1".into(), week.clone()),
            ("ghost".into(), five.clone()),
        ],
        Some(t(1000)),
    )
    .await
    .map_err(e)?;
    let mut got = s.list_windows().await.map_err(e)?;
    got.retain(|(a, _)| a == "u1");
    ensure!(got.len() == 2, "two windows stored, ghost ignored: {got:?}");
    ensure!(
        s.list_windows()
            .await
            .map_err(e)?
            .iter()
            .all(|(a, _)| a != "ghost"),
        "readings of unknown accounts are ignored"
    );
    // An older reading never replaces a newer one.
    s.save_windows(
        &[("u1".into(), reading(WindowKind::FiveHour, 99.0, 50))],
        Some(t(1000)),
    )
    .await
    .map_err(e)?;
    let got = s.list_windows().await.map_err(e)?;
    let f = got
        .iter()
        .find(|(a, r)| a == "u1" && r.kind == WindowKind::FiveHour)
        .ok_or("five-hour window lost")?;
    ensure!(
        f.1 == five,
        "an older reading replaced a newer one: {:?}",
        f.1
    );
    let newer = WindowReading {
        source: ReadingSource::Headers,
        ..reading(WindowKind::FiveHour, 30.0, 200)
    };
    s.save_windows(&[("u1".into(), newer.clone())], Some(t(1000)))
        .await
        .map_err(e)?;
    let got = s.list_windows().await.map_err(e)?;
    ensure!(
        got.iter().any(|(a, r)| a == "u1" && *r == newer),
        "a newer reading replaces the old one"
    );
    // The clock was set back to t(150): the stored reading (observed at t(200)) was taken while
    // it ran ahead, and gives way to what is seen now.
    let after_the_step = reading(WindowKind::FiveHour, 40.0, 140);
    s.save_windows(&[("u1".into(), after_the_step.clone())], Some(t(150)))
        .await
        .map_err(e)?;
    let got = s.list_windows().await.map_err(e)?;
    ensure!(
        got.iter().any(|(a, r)| a == "u1" && *r == after_the_step),
        "a reading stored while the clock ran ahead holds out against what is seen after it \
         was set back: {got:?}"
    );
    // Without a clock, newer still wins.
    s.save_windows(
        &[("u1".into(), reading(WindowKind::FiveHour, 50.0, 130))],
        None,
    )
    .await
    .map_err(e)?;
    let got = s.list_windows().await.map_err(e)?;
    ensure!(
        got.iter().any(|(a, r)| a == "u1" && *r == after_the_step),
        "an older reading replaced a newer one without a clock: {got:?}"
    );

    let c = Credits {
        balance: Some(12.5),
        has_credits: Some(true),
        unlimited: None,
    };
    s.save_credits(&[("u1".into(), c.clone()), ("ghost".into(), c.clone())])
        .await
        .map_err(e)?;
    ensure!(
        s.list_credits().await.map_err(e)? == vec![("u1".to_string(), c)],
        "credits round trip"
    );

    s.delete_account("u1").await.map_err(e)?;
    ensure!(
        s.list_windows()
            .await
            .map_err(e)?
            .iter()
            .all(|(a, _)| a != "u1"),
        "deleting an account deletes its readings"
    );
    ensure!(
        s.list_credits().await.map_err(e)?.is_empty(),
        "deleting an account deletes its credits"
    );
    Ok(())
}

async fn ledger(s: &dyn Store) -> Result<(), Failure> {
    let entry =
        |at: i64, key: Option<&str>, acc: &str, model: &str, input: u64, output: u64| LedgerEntry {
            at: t(at),
            key_id: key.map(str::to_string),
            account_id: Some(acc.into()),
            model: model.into(),
            tokens: TokenCounts {
                input_tokens: input,
                cached_tokens: input / 2,
                output_tokens: output,
                reasoning_tokens: 1,
            },
            status: 200,
        };
    s.append_ledger(&[
        entry(0, Some("k1"), "a1", "m1", 100, 10),
        entry(1, Some("k1"), "a2", "m2", 200, 20),
        entry(86_400, Some("k2"), "a1", "m1", 1, 1),
        entry(86_401, None, "a1", "m1", 1, 1),
    ])
    .await
    .map_err(e)?;
    let by_key = s
        .ledger_summary(&LedgerQuery::by(LedgerGroup::Key))
        .await
        .map_err(e)?;
    ensure!(
        by_key.len() == 3,
        "three key groups (k1, k2, -): {by_key:?}"
    );
    ensure!(
        by_key[0].group == "k1" && by_key[0].requests == 2,
        "largest first: {by_key:?}"
    );
    ensure!(
        by_key[0].tokens.input_tokens == 300 && by_key[0].tokens.cached_tokens == 150,
        "sums"
    );
    ensure!(
        by_key[0].tokens.output_tokens == 30 && by_key[0].tokens.reasoning_tokens == 2,
        "sums"
    );
    ensure!(by_key[0].total_tokens == 330, "total");
    ensure!(
        by_key.iter().any(|r| r.group == "-" && r.requests == 1),
        "no key is '-'"
    );
    let by_model = s
        .ledger_summary(&LedgerQuery::by(LedgerGroup::Model))
        .await
        .map_err(e)?;
    ensure!(
        by_model.iter().map(|r| r.requests).sum::<u64>() == 4 && by_model.len() == 2,
        "by model: {by_model:?}"
    );
    let by_day = s
        .ledger_summary(&LedgerQuery::by(LedgerGroup::Day))
        .await
        .map_err(e)?;
    ensure!(by_day.len() == 2, "two days: {by_day:?}");
    ensure!(
        by_day
            .iter()
            .all(|r| r.group.len() == 10 && r.group.starts_with("2027-")),
        "day format: {by_day:?}"
    );
    let since = s
        .ledger_summary(&LedgerQuery::by(LedgerGroup::Account).since(t(86_400)))
        .await
        .map_err(e)?;
    ensure!(
        since.len() == 1 && since[0].group == "a1" && since[0].requests == 2,
        "since filter: {since:?}"
    );
    Ok(())
}

/// Every grouping's sums, with and without a `since`.
async fn ledger_sums(
    s: &dyn Store,
    since: Option<Timestamp>,
) -> Result<Vec<Vec<LedgerRow>>, Failure> {
    let mut all = Vec::new();
    for g in [
        LedgerGroup::Key,
        LedgerGroup::Account,
        LedgerGroup::Model,
        LedgerGroup::Day,
    ] {
        let q = LedgerQuery { group_by: g, since };
        all.push(s.ledger_summary(&q).await.map_err(e)?);
    }
    Ok(all)
}

/// Folding old days keeps every sum; a `since` inside a folded day leaves that day out. Runs on
/// what [`ledger`] wrote: two entries on day 0 (from 08:00 UTC), two on day 1.
async fn ledger_folding(s: &dyn Store) -> Result<(), Failure> {
    let entry = |at: i64, key: Option<&str>, model: &str, status: u16| LedgerEntry {
        at: t(at),
        key_id: key.map(str::to_string),
        account_id: Some("a1".into()),
        model: model.into(),
        tokens: TokenCounts {
            input_tokens: 7,
            cached_tokens: 3,
            output_tokens: 5,
            reasoning_tokens: 2,
        },
        status,
    };
    // Day 0 gets a second entry of a group it has and one with another status; day 2 stays.
    s.append_ledger(&[
        entry(10, Some("k1"), "m1", 200),
        entry(11, Some("k1"), "m1", 502),
        entry(2 * 86_400, Some("k3"), "m3", 200),
    ])
    .await
    .map_err(e)?;
    let before = ledger_sums(s, None).await?;
    // Cutoffs at the ends of time: nothing precedes the first; the last's day has begun.
    ensure!(
        s.fold_ledger(Timestamp::from_millis(i64::MIN), 100)
            .await
            .map_err(e)?
            == 0,
        "a cutoff at the earliest time folds nothing"
    );
    ensure!(ledger_sums(s, None).await? == before, "nothing folded");
    let day2 = t(2 * 86_400);
    ensure!(
        s.fold_ledger(day2, 100).await.map_err(e)? == 6,
        "the six entries of days 0 and 1 are folded"
    );
    ensure!(
        ledger_sums(s, None).await? == before,
        "folding keeps every sum: {:?}",
        ledger_sums(s, None).await?
    );
    ensure!(
        s.fold_ledger(day2, 100).await.map_err(e)? == 0,
        "a folded day is not folded again"
    );
    // `before` is taken to its day's start: day 2 is not touched.
    ensure!(
        s.fold_ledger(t(2 * 86_400 + 3_600), 100).await.map_err(e)? == 0,
        "the day of the cutoff stays whole"
    );
    let day2_only = ledger_sums(s, Some(day2)).await?;
    ensure!(
        day2_only[0].len() == 1 && day2_only[0][0].group == "k3" && day2_only[0][0].requests == 1,
        "day 2 as it was: {day2_only:?}"
    );
    let within_day1 = s
        .ledger_summary(&LedgerQuery::by(LedgerGroup::Day).since(t(86_400)))
        .await
        .map_err(e)?;
    ensure!(
        within_day1.len() == 1 && within_day1[0].requests == 1,
        "a since inside a folded day leaves that day out: {within_day1:?}"
    );

    // Entries that arrive later for a folded day join its sums, a few per call.
    s.append_ledger(&[entry(20, Some("k1"), "m1", 200), entry(30, None, "m9", 200)])
        .await
        .map_err(e)?;
    let before = ledger_sums(s, None).await?;
    ensure!(
        s.fold_ledger(day2, 1).await.map_err(e)? == 1,
        "one per call"
    );
    ensure!(s.fold_ledger(day2, 1).await.map_err(e)? == 1, "the next");
    ensure!(s.fold_ledger(day2, 1).await.map_err(e)? == 0, "none left");
    ensure!(
        ledger_sums(s, None).await? == before,
        "folding in steps keeps every sum"
    );
    let by_model = s
        .ledger_summary(&LedgerQuery::by(LedgerGroup::Model))
        .await
        .map_err(e)?;
    ensure!(
        by_model.iter().any(|r| r.group == "m1"
            && r.requests == 6
            && r.tokens.input_tokens == 100 + 1 + 1 + 7 * 3),
        "m1: three entries from the first check, three from this one: {by_model:?}"
    );
    Ok(())
}

/// Counts no request could have (garbage from an upstream) saturate the sums instead of
/// failing every report and every fold after them.
async fn ledger_huge_counts(s: &dyn Store) -> Result<(), Failure> {
    let day = 10 * 86_400;
    let huge = |at: i64| LedgerEntry {
        at: t(at),
        key_id: None,
        account_id: None,
        model: "m-huge".into(),
        tokens: TokenCounts {
            input_tokens: u64::MAX,
            cached_tokens: u64::MAX,
            output_tokens: u64::MAX,
            reasoning_tokens: u64::MAX,
        },
        status: 200,
    };
    let m1 = |rows: &[LedgerRow]| rows.iter().find(|r| r.group == "m1").cloned();
    let by_model = LedgerQuery::by(LedgerGroup::Model);
    let m1_before = m1(&s.ledger_summary(&by_model).await.map_err(e)?);
    s.append_ledger(&[huge(day), huge(day + 1), huge(day + 2)])
        .await
        .map_err(e)?;
    for step in ["before folding", "after folding"] {
        let rows = s.ledger_summary(&by_model).await.map_err(e)?;
        let row = rows.iter().find(|r| r.group == "m-huge");
        ensure!(
            row.is_some_and(|r| r.requests == 3
                && r.tokens.input_tokens >= i64::MAX as u64
                && r.total_tokens == u64::MAX),
            "{step}: the huge counts saturate: {rows:?}"
        );
        ensure!(
            m1(&rows) == m1_before,
            "{step}: the other sums stay: {rows:?}"
        );
        ledger_sums(s, None).await?;
        s.fold_ledger(t(day + 86_400), 100).await.map_err(e)?;
    }
    Ok(())
}

/// The background writer's batch: every part lands (atomicity is SQLite's own test).
async fn records(s: &dyn Store) -> Result<(), Failure> {
    let batch = RecordBatch {
        ledger: vec![LedgerEntry {
            at: t(500),
            key_id: None,
            account_id: None,
            model: "batch-model".into(),
            tokens: TokenCounts::default(),
            status: 200,
        }],
        request_log: vec![RequestLogEntry::new("batch-1", t(500), "/v1/responses")],
        ..RecordBatch::default()
    };
    s.write_records(Arc::new(batch)).await.map_err(e)?;
    let models = s
        .ledger_summary(&LedgerQuery::by(LedgerGroup::Model))
        .await
        .map_err(e)?;
    ensure!(
        models
            .iter()
            .any(|r| r.group == "batch-model" && r.requests == 1),
        "the batch's ledger entry: {models:?}"
    );
    let log = s
        .list_request_log(&RequestLogQuery::latest(1))
        .await
        .map_err(e)?;
    ensure!(
        log.first().is_some_and(|r| r.request_id == "batch-1"),
        "the batch's log row: {log:?}"
    );
    Ok(())
}

async fn request_log(s: &dyn Store) -> Result<(), Failure> {
    s.check_writable().await.map_err(e)?;
    let mut rows = Vec::new();
    for i in 0..5 {
        let mut r = RequestLogEntry::new(format!("req-{i}"), t(i), "/v1/chat/completions");
        r.key_id = Some(if i % 2 == 0 { "k1" } else { "k2" }.into());
        r.accounts_tried = vec!["a1".into(), format!("a{}", i + 2)];
        r.account_id = Some(format!("a{}", i + 2));
        r.model = Some("m".into());
        r.status = 200;
        r.stream = i % 2 == 1;
        r.latency_ms = 12;
        r.ttfb_ms = Some(3);
        r.tokens = Some(TokenCounts {
            input_tokens: 1,
            cached_tokens: 0,
            output_tokens: 2,
            reasoning_tokens: 0,
        });
        r.error_class = (i == 4).then(|| "upstream_cut".into());
        r.fallback = i == 3;
        rows.push(r);
    }
    s.append_request_log(&rows).await.map_err(e)?;
    let all = s
        .list_request_log(&RequestLogQuery::latest(10))
        .await
        .map_err(e)?;
    ensure!(all.len() == 5, "five rows: {}", all.len());
    ensure!(
        all[0].request_id == "req-4" && all[4].request_id == "req-0",
        "newest first"
    );
    ensure!(
        all.windows(2).all(|w| w[0].id > w[1].id),
        "ids increase with insertion"
    );
    let mut first = all[4].clone();
    first.id = 0;
    ensure!(first == rows[0], "row round trip: {first:?}");
    ensure!(
        s.list_request_log(&RequestLogQuery::latest(2))
            .await
            .map_err(e)?
            .len()
            == 2,
        "limit"
    );
    let k2 = s
        .list_request_log(&RequestLogQuery::latest(10).key("k2"))
        .await
        .map_err(e)?;
    ensure!(
        k2.len() == 2 && k2.iter().all(|r| r.key_id.as_deref() == Some("k2")),
        "key filter"
    );
    let a3 = s
        .list_request_log(&RequestLogQuery::latest(10).account("a3"))
        .await
        .map_err(e)?;
    ensure!(
        a3.len() == 1 && a3[0].request_id == "req-1",
        "account filter looks at every account tried: {a3:?}"
    );
    let a1 = s
        .list_request_log(&RequestLogQuery::latest(10).account("a1"))
        .await
        .map_err(e)?;
    ensure!(a1.len() == 5, "a1 was tried everywhere");
    let after = s
        .list_request_log(&RequestLogQuery::latest(10).after(all[2].id))
        .await
        .map_err(e)?;
    ensure!(after.len() == 2, "after filter: {after:?}");
    // Following the log: the oldest rows after an id first, a page at a time.
    let page = s
        .list_request_log(&RequestLogQuery::latest(2).after(all[4].id).oldest_first())
        .await
        .map_err(e)?;
    let ids: Vec<i64> = page.iter().map(|r| r.id).collect();
    let want: Vec<i64> = all.iter().rev().skip(1).take(2).map(|r| r.id).collect();
    ensure!(
        ids == want,
        "oldest first after an id: {ids:?}, not {want:?}"
    );

    // Pruning: the oldest rows before the cutoff, at most `max_rows` per call, never the newest
    // row; ids go on from where they were.
    ensure!(
        s.prune_request_log(t(2), 1).await.map_err(e)? == 1,
        "one row per call"
    );
    ensure!(
        s.prune_request_log(t(2), 10).await.map_err(e)? == 1,
        "req-1 next, req-2 is not older than the cutoff"
    );
    ensure!(
        s.prune_request_log(t(2), 10).await.map_err(e)? == 0,
        "nothing left before the cutoff"
    );
    let left = log_ids(s).await?;
    ensure!(
        left == ["req-4", "req-3", "req-2"],
        "the oldest went: {left:?}"
    );
    ensure!(
        s.prune_request_log(t(1000), 10).await.map_err(e)? == 2,
        "all but the newest row"
    );
    s.append_request_log(&[RequestLogEntry::new("req-5", t(1001), "/v1/models")])
        .await
        .map_err(e)?;
    let newest = s
        .list_request_log(&RequestLogQuery::latest(10))
        .await
        .map_err(e)?;
    ensure!(
        newest.len() == 2 && newest[0].request_id == "req-5" && newest[0].id > all[0].id,
        "ids keep growing after a prune: {newest:?}"
    );
    // Rows dated ahead (a clock that ran fast) at the low ids do not stop the pruning of the
    // rows after them: the earliest before the cutoff go, whatever their ids.
    s.append_request_log(&[
        RequestLogEntry::new("req-6", t(5000), "/v1/models"),
        RequestLogEntry::new("req-7", t(1100), "/v1/models"),
        RequestLogEntry::new("req-8", t(1002), "/v1/models"),
        RequestLogEntry::new("req-9", t(1200), "/v1/models"),
    ])
    .await
    .map_err(e)?;
    ensure!(
        s.prune_request_log(t(1150), 2).await.map_err(e)? == 2,
        "the two earliest before the cutoff (req-4, req-5)"
    );
    ensure!(
        s.prune_request_log(t(1150), 1).await.map_err(e)? == 1,
        "req-8, though the dated-ahead req-6 has the lowest id left"
    );
    let left = log_ids(s).await?;
    ensure!(
        left == ["req-9", "req-7", "req-6"],
        "the earliest by time went (req-8, not req-7): {left:?}"
    );
    ensure!(
        s.prune_request_log(t(1150), 10).await.map_err(e)? == 1,
        "req-7, the last before the cutoff"
    );
    let left = log_ids(s).await?;
    ensure!(
        left == ["req-9", "req-6"],
        "the dated-ahead row and those after the cutoff stay: {left:?}"
    );
    Ok(())
}

/// The request ids of the newest ten request-log rows, newest first.
async fn log_ids(s: &dyn Store) -> Result<Vec<String>, Failure> {
    Ok(s.list_request_log(&RequestLogQuery::latest(10))
        .await
        .map_err(e)?
        .into_iter()
        .map(|r| r.request_id)
        .collect())
}

async fn login_sessions(s: &dyn Store) -> Result<(), Failure> {
    let sess = LoginSession {
        state: "state-1".into(),
        kind: LoginKind::Browser,
        code_verifier: Secret::from("verifier"),
        redirect_uri: "http://localhost:1455/auth/callback".into(),
        label: Some("me".into()),
        group: Some("g".into()),
        tags: vec!["t".into()],
        note: Some("n".into()),
        created_at: t(0),
        expires_at: t(900),
        status: LoginStatus::Pending,
    };
    s.insert_login_session(&sess).await.map_err(e)?;
    ensure!(
        s.get_login_session("state-1").await.map_err(e)? == Some(sess.clone()),
        "session round trip"
    );
    ensure!(
        matches!(
            s.insert_login_session(&sess).await,
            Err(StoreError::Conflict { .. })
        ),
        "duplicate state"
    );
    ensure!(
        s.claim_login_session("state-1", t(900))
            .await
            .map_err(e)?
            .is_none(),
        "an expired session cannot be claimed"
    );
    let claimed = s.claim_login_session("state-1", t(10)).await.map_err(e)?;
    ensure!(
        claimed.as_ref().map(|c| &c.code_verifier) == Some(&sess.code_verifier),
        "claim returns the session"
    );
    ensure!(
        s.claim_login_session("state-1", t(11))
            .await
            .map_err(e)?
            .is_none(),
        "a session is claimed at most once"
    );
    ensure!(
        s.claim_login_session("nope", t(11))
            .await
            .map_err(e)?
            .is_none(),
        "unknown state"
    );
    let done = LoginStatus::Completed {
        account_id: "acc1".into(),
    };
    s.set_login_status("state-1", &done).await.map_err(e)?;
    ensure!(
        s.get_login_session("state-1")
            .await
            .map_err(e)?
            .map(|x| x.status)
            == Some(done),
        "status persisted"
    );
    ensure!(
        matches!(
            s.set_login_status("nope", &LoginStatus::Cancelled).await,
            Err(StoreError::NotFound { .. })
        ),
        "unknown"
    );
    ensure!(
        s.purge_login_sessions(t(901)).await.map_err(e)? == 1,
        "purge expired"
    );
    ensure!(
        s.get_login_session("state-1").await.map_err(e)?.is_none(),
        "purged"
    );
    Ok(())
}

async fn refresh_leases(s: &dyn Store) -> Result<(), Failure> {
    let ttl = Duration::from_secs(30);
    let wait = Duration::from_secs(5);
    let taken = |left: Option<&str>| LeaseTake::Taken {
        left_behind: left.map(str::to_string),
    };
    let held = |h: &str, until: Timestamp| LeaseTake::Held {
        holder: h.into(),
        until,
    };
    let got = s
        .acquire_refresh_lease("a", "p1", t(0), ttl, None)
        .await
        .map_err(e)?;
    ensure!(got == taken(None), "free lease: {got:?}");
    let got = s
        .acquire_refresh_lease("a", "p2", t(1), ttl, None)
        .await
        .map_err(e)?;
    ensure!(got == held("p1", t(30)), "held lease: {got:?}");
    let got = s
        .acquire_refresh_lease("a", "p2", t(1), ttl, Some("p9"))
        .await
        .map_err(e)?;
    ensure!(
        got == held("p1", t(30)),
        "replacing names the holder: {got:?}"
    );
    let got = s
        .acquire_refresh_lease("a", "p1", t(2), ttl, None)
        .await
        .map_err(e)?;
    ensure!(
        got == taken(Some("p1")),
        "re-entrant for the holder: {got:?}"
    );
    let got = s
        .acquire_refresh_lease("b", "p2", t(2), ttl, None)
        .await
        .map_err(e)?;
    ensure!(got == taken(None), "leases are per account: {got:?}");
    let got = s
        .acquire_refresh_lease("a", "p2", t(40), ttl, None)
        .await
        .map_err(e)?;
    ensure!(
        got == taken(Some("p1")),
        "an expired lease can be taken over, and says it was left behind: {got:?}"
    );
    s.release_refresh_lease("a", "p1").await.map_err(e)?;
    let got = s
        .acquire_refresh_lease("a", "p3", t(41), ttl, None)
        .await
        .map_err(e)?;
    ensure!(
        got == held("p2", t(70)),
        "only the holder releases: {got:?}"
    );
    let got = s
        .acquire_refresh_lease("a", "p3", t(41), ttl, Some("p2"))
        .await
        .map_err(e)?;
    ensure!(
        got == taken(Some("p2")),
        "a holder known to be gone is replaced: {got:?}"
    );
    s.release_refresh_lease("a", "p3").await.map_err(e)?;
    let got = s
        .acquire_refresh_lease("a", "p4", t(42), ttl, None)
        .await
        .map_err(e)?;
    ensure!(got == taken(None), "released lease is free: {got:?}");

    // Renewing: only the holder; a zero TTL frees the lease but leaves its mark.
    ensure!(
        s.renew_refresh_lease("a", "p4", t(60), ttl, wait)
            .await
            .map_err(e)?,
        "the holder renews"
    );
    ensure!(
        !s.renew_refresh_lease("a", "p1", t(60), ttl, wait)
            .await
            .map_err(e)?,
        "others do not"
    );
    let got = s
        .acquire_refresh_lease("a", "p5", t(80), ttl, None)
        .await
        .map_err(e)?;
    ensure!(got == held("p4", t(90)), "renewed until 60 + 30: {got:?}");
    ensure!(
        s.renew_refresh_lease("a", "p4", t(81), Duration::ZERO, wait)
            .await
            .map_err(e)?,
        "expire now"
    );
    let got = s
        .acquire_refresh_lease("a", "p5", t(81), ttl, None)
        .await
        .map_err(e)?;
    ensure!(
        got == taken(Some("p4")),
        "an expired mark is free and reported: {got:?}"
    );
    Ok(())
}

async fn refreshed_tokens(s: &dyn Store) -> Result<(), Failure> {
    let wait = Duration::from_secs(5);
    let a = sample_account("rt1", "chatgpt-rt");
    s.insert_account(&a).await.map_err(e)?;
    let tokens = |rt: &str, exp: i64| Tokens {
        id_token: Secret::from("id-new"),
        access_token: Secret::from(format!("access-{rt}")),
        refresh_token: Secret::from(rt),
        expires_at: Some(t(exp)),
        last_refresh: Some(t(10)),
    };
    let missing = s
        .save_refreshed_tokens(
            "nope",
            &RefreshedTokens::new(
                a.tokens.refresh_token.clone(),
                tokens("x", 1),
                AccountPatch::default(),
            ),
            t(10),
            wait,
        )
        .await;
    ensure!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "unknown account: {missing:?}"
    );

    // The successor of the stored refresh token, with a status change.
    let first = RefreshedTokens::new(
        a.tokens.refresh_token.clone(),
        tokens("rt-2", 7200),
        AccountPatch {
            email: Some(Some("new@example.com".into())),
            ..Default::default()
        },
    );
    let saved = s
        .save_refreshed_tokens("rt1", &first, t(10), wait)
        .await
        .map_err(e)?;
    let TokenSave::Saved(got) = saved else {
        return Err(format!("not saved: {saved:?}"));
    };
    ensure!(got.tokens == first.tokens, "tokens written");
    ensure!(
        got.email.as_deref() == Some("new@example.com"),
        "extra changes written"
    );
    let stored = s.get_account("rt1").await.map_err(e)?.ok_or("gone")?;
    ensure!(stored.tokens == first.tokens, "and stored");
    // Again: already there, still fine.
    let again = s
        .save_refreshed_tokens("rt1", &first, t(11), wait)
        .await
        .map_err(e)?;
    ensure!(
        matches!(again, TokenSave::Saved(_)),
        "idempotent: {again:?}"
    );

    // A late write of older tokens (their refresh token is not the stored one): refused.
    let late = RefreshedTokens::new(
        Secret::from("rt-0"),
        tokens("rt-1", 3600),
        AccountPatch::default(),
    );
    let got = s
        .save_refreshed_tokens("rt1", &late, t(12), wait)
        .await
        .map_err(e)?;
    let TokenSave::Superseded(kept) = got else {
        return Err(format!("older tokens written: {got:?}"));
    };
    ensure!(kept.tokens == first.tokens, "the newer ones stay");
    // Newer tokens from someone else's refresh: written.
    let newer = RefreshedTokens::new(
        Secret::from("rt-other"),
        tokens("rt-3", 9000),
        AccountPatch::default(),
    );
    let got = s
        .save_refreshed_tokens("rt1", &newer, t(13), wait)
        .await
        .map_err(e)?;
    ensure!(
        matches!(&got, TokenSave::Saved(a) if a.tokens == newer.tokens),
        "newer tokens written: {got:?}"
    );
    Ok(())
}
