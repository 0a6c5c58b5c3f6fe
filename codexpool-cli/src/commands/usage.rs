//! `codexpool usage [--refresh]`: each account's 5-hour and weekly windows as bars, with the
//! time to reset, where each figure came from and how old it is; `--refresh` polls first, with a
//! progress bar on a terminal.
//!
//! JSON: `[{"id", "label", "email", "plan_type", "status", "status_reason", "usable",
//! "inflight", "cooldown_until", "exhausted_until", "runtime_source", "five_hour": Window|null,
//! "weekly": Window|null, "credits": {"balance", "has_credits", "unlimited"}|null, "refresh":
//! null | {"ok", "error", "error_kind"}}]` where `Window` is `{"kind", "used_percent",
//! "window_minutes", "resets_at", "source" (poll|headers|rate-limit), "observed_at", "stale"}`.
//! `refresh` is `null` without `--refresh`. `usable`, `inflight` and the cooldown are the running
//! server's (`runtime_source: "server"`) when one runs on this database, else `"local"`.

use std::collections::HashMap;

use codexpool_core::poll::{PollError, PollResult};
use codexpool_core::pool::AccountRuntime;
use codexpool_core::usage::{AccountUsage, Credits, WindowKind, WindowReading};
use codexpool_core::{Account, AccountFilter, AccountStatus, Pool, RefreshProgress, RefreshScope};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::Ctx;
use super::runtime::{Runtimes, Source};
use crate::args::UsageArgs;
use crate::output::{Output, Paint, ago, bar, duration, level, percent, visible};

/// `usage`.
pub async fn usage(ctx: &Ctx, pool: &Pool, a: UsageArgs) -> anyhow::Result<()> {
    let out = &ctx.out;
    let refreshed = if a.refresh {
        let results = refresh(out, pool).await?;
        // The servers read the new figures before they are asked for their view (one that
        // found an account exhausted would still say so).
        pool.flush().await?;
        super::runtime::tell_servers(ctx).await;
        Some(results)
    } else {
        None
    };
    let runtimes = Runtimes::load(ctx).await;
    if out.json {
        out.json(&views(pool, &runtimes, refreshed.as_ref()))?;
        return failed_polls(refreshed.as_ref());
    }
    if pool.accounts().is_empty() {
        out.note(
            "No accounts yet. Sign in with `codexpool account login`, or see it all work with \
             `codexpool demo`.",
        );
        return Ok(());
    }
    print(out, pool, &runtimes, refreshed.as_ref())?;
    if !a.refresh {
        out.note("Figures come from responses and polls; `codexpool usage --refresh` polls now.");
    }
    failed_polls(refreshed.as_ref())
}

/// After the figures are shown: an error (exit 1) when a poll failed, so scripts notice.
fn failed_polls(refreshed: Option<&HashMap<String, PollResult>>) -> anyhow::Result<()> {
    let Some(results) = refreshed else {
        return Ok(());
    };
    let polled = results
        .values()
        .filter(|r| !matches!(r.outcome, Err(PollError::Skipped { .. })));
    let (polled, failed) = polled.fold((0, 0), |(n, f), r| {
        (n + 1, f + usize::from(r.outcome.is_err()))
    });
    if failed == 0 {
        return Ok(());
    }
    Err(crate::Failure::new(
        format!("{failed} of {polled} usage polls failed"),
        "each account's line says why; the figures shown for them are the last known",
    )
    .into())
}

/// Polls every active account, with a progress bar on a terminal; returns the results by
/// account id.
async fn refresh(out: &Output, pool: &Pool) -> anyhow::Result<HashMap<String, PollResult>> {
    let bar = if out.json || out.quiet || !out.stderr_is_tty() {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} polling usage {bar:24} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let results = pool
        .usage()
        .refresh(RefreshScope::All, |p| match p {
            RefreshProgress::Started { total } => bar.set_length(total as u64),
            RefreshProgress::Account { done, result, .. } => {
                bar.set_position(done as u64);
                bar.set_message(result.label.clone());
            }
            _ => {}
        })
        .await?;
    bar.finish_and_clear();
    Ok(results
        .into_iter()
        .map(|r| (r.account_id.clone(), r))
        .collect())
}

/// An account's status for people, with what keeps it from serving right now.
pub(super) fn status_text(
    a: &Account,
    rt: Option<&AccountRuntime>,
    now: codexpool_core::Timestamp,
) -> (String, Paint) {
    match a.status {
        AccountStatus::Active => match rt {
            Some(rt) if rt.exhausted_until.is_some() => {
                let until = rt.exhausted_until.map_or(now, |t| t);
                (
                    format!("exhausted, back in {}", duration(until.since(now))),
                    Paint::Red,
                )
            }
            Some(rt) if rt.cooldown_until.is_some() => {
                let until = rt.cooldown_until.map_or(now, |t| t);
                (
                    format!("cooling down, back in {}", duration(until.since(now))),
                    Paint::Yellow,
                )
            }
            _ => ("active".into(), Paint::Green),
        },
        AccountStatus::Disabled => ("disabled".into(), Paint::Dim),
        AccountStatus::NeedsLogin => ("needs sign-in".into(), Paint::Red),
        AccountStatus::Banned => ("deactivated".into(), Paint::Red),
    }
}

/// A window as `48%` (or `—` when unknown or past its reset), with its colour.
pub(super) fn window_short(
    w: Option<&WindowReading>,
    now: codexpool_core::Timestamp,
) -> (String, Option<Paint>) {
    match w {
        Some(w) if !w.is_stale(now) => (percent(w.used_percent), Some(level(w.used_percent))),
        _ => (crate::output::NONE.into(), Some(Paint::Dim)),
    }
}

/// The human view: one block per account.
///
/// ```text
/// ada@example.com  3f2a9c1b0d4e  plus  active
///   5-hour  █░░░░░░░░░  12%  resets in 2h 13m  poll, just now
///   weekly  ███░░░░░░░  30%  resets in 3d 4h   poll, just now
/// ```
pub(super) fn print(
    out: &Output,
    pool: &Pool,
    runtimes: &Runtimes,
    refreshed: Option<&HashMap<String, PollResult>>,
) -> anyhow::Result<()> {
    let now = pool.now();
    let accounts = pool.accounts().list(&AccountFilter::default());
    // Window lines first, so that their columns line up across accounts.
    struct Line {
        name: &'static str,
        gauge: String,
        reset: String,
        seen: String,
        paint: Option<Paint>,
    }
    let mut blocks = Vec::new();
    for a in &accounts {
        let u = pool.usage().get(&a.id).unwrap_or_default();
        let mut lines = Vec::new();
        for (kind, name) in [
            (WindowKind::FiveHour, "5-hour"),
            (WindowKind::Weekly, "weekly"),
        ] {
            let line = match u.window(kind) {
                None => Line {
                    name,
                    gauge: format!("{} {:>4}", "·".repeat(10), "?"),
                    reset: "no reading yet".into(),
                    seen: String::new(),
                    paint: Some(Paint::Dim),
                },
                Some(w) if w.is_stale(now) => Line {
                    name,
                    gauge: format!("{} {:>4}", "·".repeat(10), "?"),
                    reset: "reset since the last reading".into(),
                    seen: seen(w, now),
                    paint: Some(Paint::Dim),
                },
                Some(w) => Line {
                    name,
                    gauge: format!("{} {:>4}", bar(w.used_percent), percent(w.used_percent)),
                    reset: match w.resets_at {
                        Some(r) => format!("resets in {}", duration(r.since(now))),
                        None => "reset time unknown".into(),
                    },
                    seen: seen(w, now),
                    paint: Some(level(w.used_percent)),
                },
            };
            lines.push(line);
        }
        blocks.push((a, u, lines));
    }
    let reset_width = blocks
        .iter()
        .flat_map(|(_, _, l)| l.iter().map(|l| l.reset.chars().count()))
        .max()
        .unwrap_or(0);
    for (i, (a, u, lines)) in blocks.iter().enumerate() {
        if i > 0 {
            out.data("")?;
        }
        let rt = runtimes.get(pool, &a.id).map(|(rt, _)| rt);
        let (status, paint) = status_text(a, rt.as_ref(), now);
        // Labels, plans and reasons come from sign-ins, imported files and upstream answers:
        // their control characters are written out, never sent to the terminal.
        let mut head = vec![
            out.paint(visible(&a.label), Paint::Bold),
            out.paint(&a.id, Paint::Dim),
        ];
        if let Some(p) = &a.plan_type {
            head.push(visible(p).into_owned());
        }
        head.push(out.paint(status, paint));
        if let Some(c) = credits(u.credits.as_ref()) {
            head.push(c);
        }
        out.data(head.join("  "))?;
        for l in lines {
            let gauge = match l.paint {
                Some(p) => out.paint(&l.gauge, p),
                None => l.gauge.clone(),
            };
            let text = format!(
                "  {}  {gauge}  {:<reset_width$}  {}",
                l.name,
                l.reset,
                out.paint(&l.seen, Paint::Dim)
            );
            out.data(text.trim_end())?;
        }
        if let Some(r) = a
            .status_reason
            .as_deref()
            .filter(|_| a.status != AccountStatus::Active)
        {
            out.data(format!("  {}", out.paint(visible(r), Paint::Dim)))?;
        }
        if let Some(Err(e)) = refreshed.and_then(|m| m.get(&a.id)).map(|r| &r.outcome) {
            let text = format!("  refresh failed: {}", visible(&e.to_string()));
            out.data(out.paint(text, Paint::Red))?;
        }
    }
    Ok(())
}

/// `poll, 5m ago`.
fn seen(w: &WindowReading, now: codexpool_core::Timestamp) -> String {
    format!("{}, {}", w.source, ago(now, w.observed_at))
}

fn credits(c: Option<&Credits>) -> Option<String> {
    let c = c?;
    if c.unlimited == Some(true) {
        return Some("credits: unlimited".into());
    }
    c.balance
        .filter(|b| *b > 0.0)
        .map(|b| format!("credits: {b:.2}"))
}

/// One account's usage as `usage --json` prints it.
#[derive(Serialize)]
pub(super) struct View {
    id: String,
    label: String,
    email: Option<String>,
    plan_type: Option<String>,
    status: AccountStatus,
    status_reason: Option<String>,
    usable: bool,
    inflight: u32,
    cooldown_until: Option<codexpool_core::Timestamp>,
    exhausted_until: Option<codexpool_core::Timestamp>,
    /// Where `usable`, `inflight` and the cooldown come from.
    runtime_source: Source,
    five_hour: Option<WindowView>,
    weekly: Option<WindowView>,
    credits: Option<Credits>,
    refresh: Option<RefreshView>,
}

#[derive(Serialize)]
struct WindowView {
    #[serde(flatten)]
    reading: WindowReading,
    /// Past its reset: the figure no longer describes the window.
    stale: bool,
}

#[derive(Serialize)]
struct RefreshView {
    ok: bool,
    error: Option<String>,
    error_kind: Option<&'static str>,
}

fn window_view(w: Option<WindowReading>, now: codexpool_core::Timestamp) -> Option<WindowView> {
    w.map(|r| WindowView {
        stale: r.is_stale(now),
        reading: r,
    })
}

/// Every account's usage as `usage --json` prints it.
pub(super) fn views(
    pool: &Pool,
    runtimes: &Runtimes,
    refreshed: Option<&HashMap<String, PollResult>>,
) -> Vec<View> {
    let now = pool.now();
    pool.accounts()
        .list(&AccountFilter::default())
        .into_iter()
        .map(|a| {
            let u: AccountUsage = pool.usage().get(&a.id).unwrap_or_default();
            let (rt, runtime_source) = match runtimes.get(pool, &a.id) {
                Some((rt, source)) => (Some(rt), source),
                None => (None, Source::Local),
            };
            let refresh = refreshed.map(|m| match m.get(&a.id).map(|r| &r.outcome) {
                Some(Ok(_)) => RefreshView {
                    ok: true,
                    error: None,
                    error_kind: None,
                },
                Some(Err(e)) => RefreshView {
                    ok: false,
                    error: Some(e.to_string()),
                    error_kind: Some(e.kind()),
                },
                None => RefreshView {
                    ok: false,
                    error: Some(format!("not polled: the account is {}", a.status)),
                    error_kind: Some("skipped"),
                },
            });
            View {
                usable: rt.as_ref().is_some_and(|r| r.usable),
                inflight: rt.as_ref().map_or(0, |r| r.inflight),
                cooldown_until: rt.as_ref().and_then(|r| r.cooldown_until),
                exhausted_until: rt.as_ref().and_then(|r| r.exhausted_until),
                runtime_source,
                five_hour: window_view(u.five_hour, now),
                weekly: window_view(u.weekly, now),
                credits: u.credits,
                refresh,
                id: a.id,
                label: a.label,
                email: a.email,
                plan_type: a.plan_type,
                status: a.status,
                status_reason: a.status_reason,
            }
        })
        .collect()
}
