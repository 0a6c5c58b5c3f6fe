//! `codexpool logs`: the request log, oldest of the shown rows first; `--follow` keeps printing
//! new rows (polling the database every 500 ms) until Ctrl-C.
//!
//! JSON: an array of rows, oldest first; with `--follow`, one row per line (JSON Lines) as they
//! arrive. A row is `{"id", "request_id", "at", "key_id", "accounts_tried": [id…],
//! "account_id", "route", "model", "status", "stream", "latency_ms", "ttfb_ms", "tokens":
//! {"input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"}|null, "error_class",
//! "fallback", "body_preview"}`.

use std::collections::HashMap;
use std::time::Duration;

use codexpool_core::request_log::{RequestLogEntry, RequestLogQuery};
use codexpool_core::{AccountFilter, Pool};
use comfy_table::Cell;

use super::Ctx;
use crate::args::LogsArgs;
use crate::output::{NONE, Output, Paint, cell, datetime, deleted, millis, visible};

/// How often `--follow` looks for new rows.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// How many rows `--follow` reads at a time.
const FOLLOW_PAGE: usize = 1000;

/// `logs`.
pub async fn logs(ctx: &Ctx, pool: &Pool, a: LogsArgs) -> anyhow::Result<()> {
    let out = &ctx.out;
    // `-n 0` (only with --follow) still reads the newest row: new rows are the ones after it.
    let limit = usize::try_from(a.limit.max(1)).unwrap_or(usize::MAX);
    let mut q = RequestLogQuery::latest(limit);
    if let Some(k) = &a.key {
        q = q.key(k.clone());
    }
    if let Some(acc) = &a.account {
        q = q.account(acc.clone());
    }
    // Resolved once: following goes on if the key or account is deleted meanwhile.
    let q = pool.request_log().resolve(&q)?;
    let mut rows = pool.request_log().list(&q).await?;
    rows.reverse();
    let last = rows.last().map_or(0, |r| r.id);
    if a.limit == 0 {
        rows.clear();
    }
    let mut names = Names::load(pool);
    if !a.follow {
        if out.json {
            out.json(&rows)?;
        } else if rows.is_empty() && (a.key.is_some() || a.account.is_some()) {
            let mut filters = Vec::new();
            if let Some(k) = &a.key {
                filters.push(format!("--key {k}"));
            }
            if let Some(acc) = &a.account {
                filters.push(format!("--account {acc}"));
            }
            out.note(format!(
                "No request matches {}; `codexpool logs` shows them all.",
                filters.join(" ")
            ));
        } else if rows.is_empty() {
            out.note(
                "No requests yet. Point a client at `codexpool serve`, or try `codexpool demo`.",
            );
        } else {
            print_table(out, &names, &rows)?;
        }
        return Ok(());
    }
    follow(out, pool, &mut names, q, rows, last).await
}

async fn follow(
    out: &Output,
    pool: &Pool,
    names: &mut Names,
    mut q: RequestLogQuery,
    rows: Vec<RequestLogEntry>,
    mut last: i64,
) -> anyhow::Result<()> {
    let mut signals = super::Signals::new()?;
    if !out.json {
        out.data(out.paint(follow_line(&Header), Paint::Bold))?;
    }
    emit(out, names, &rows)?;
    out.note("Following new requests; Ctrl-C stops.");
    // The rows after the last one printed, oldest first, a page at a time until caught up:
    // asking for the newest page would skip what came before it when more arrived at once.
    q.limit = FOLLOW_PAGE;
    q.oldest_first = true;
    loop {
        tokio::select! {
            _ = signals.recv() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        loop {
            q.after_id = Some(last);
            let new = pool.request_log().list(&q).await?;
            let Some(newest) = new.last() else { break };
            last = newest.id;
            if new.iter().any(|r| !names.knows(r)) {
                // A key or account added by another process since we started.
                pool.reload().await?;
                *names = Names::load(pool);
            }
            emit(out, names, &new)?;
            if new.len() < FOLLOW_PAGE {
                break;
            }
        }
    }
}

fn emit(out: &Output, names: &Names, rows: &[RequestLogEntry]) -> anyhow::Result<()> {
    for r in rows {
        if out.json {
            out.json_line(r)?;
        } else {
            let line = follow_line(&Row { names, r });
            let paint = if r.status >= 400 {
                Some(Paint::Red)
            } else {
                None
            };
            out.data(match paint {
                Some(p) => out.paint(line, p),
                None => line,
            })?;
        }
    }
    Ok(())
}

/// Key names and account labels by id.
struct Names {
    keys: HashMap<String, String>,
    accounts: HashMap<String, String>,
}

impl Names {
    fn load(pool: &Pool) -> Self {
        Self {
            keys: pool
                .keys()
                .list()
                .into_iter()
                .map(|k| (k.id, k.name))
                .collect(),
            accounts: pool
                .accounts()
                .list(&AccountFilter::default())
                .into_iter()
                .map(|a| (a.id, a.label))
                .collect(),
        }
    }

    fn knows(&self, r: &RequestLogEntry) -> bool {
        r.key_id.as_ref().is_none_or(|k| self.keys.contains_key(k))
            && r.accounts_tried
                .iter()
                .all(|a| self.accounts.contains_key(a))
    }

    fn key(&self, r: &RequestLogEntry) -> String {
        match &r.key_id {
            Some(id) => self.keys.get(id).cloned().unwrap_or_else(|| deleted(id)),
            None => NONE.into(),
        }
    }

    fn accounts(&self, r: &RequestLogEntry) -> String {
        if r.accounts_tried.is_empty() {
            return if r.fallback {
                "fallback".into()
            } else {
                NONE.into()
            };
        }
        let mut v: Vec<String> = r
            .accounts_tried
            .iter()
            .map(|id| {
                self.accounts
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| deleted(id))
            })
            .collect();
        if r.fallback {
            v.push("fallback".into());
        }
        v.join(" → ")
    }
}

fn route(r: &RequestLogEntry) -> String {
    let path = r.route.strip_prefix("/v1/").unwrap_or(&r.route);
    if r.stream {
        format!("{path} (stream)")
    } else {
        path.to_string()
    }
}

fn tokens(r: &RequestLogEntry) -> String {
    match &r.tokens {
        Some(t) => format!("{} → {}", t.input_tokens, t.output_tokens),
        None => NONE.into(),
    }
}

const HEADERS: [&str; 10] = [
    "TIME (UTC)",
    "KEY",
    "ROUTE",
    "MODEL",
    "STATUS",
    "LATENCY",
    "TTFB",
    "TOKENS IN→OUT",
    "ERROR",
    "ACCOUNTS TRIED",
];

/// The newest `limit` rows as a table (for `demo`).
pub(super) async fn print_recent(out: &Output, pool: &Pool, limit: usize) -> anyhow::Result<()> {
    let mut rows = pool
        .request_log()
        .list(&RequestLogQuery::latest(limit))
        .await?;
    rows.reverse();
    print_table(out, &Names::load(pool), &rows)
}

/// The request log as a table.
fn print_table(out: &Output, names: &Names, rows: &[RequestLogEntry]) -> anyhow::Result<()> {
    let mut t = out.table(&HEADERS);
    for r in rows {
        let status = if r.status < 400 {
            cell(r.status, Some(Paint::Green))
        } else {
            cell(r.status, Some(Paint::Red))
        };
        let row: Vec<Cell> = vec![
            cell(datetime(r.at), None),
            cell(names.key(r), None),
            cell(route(r), None),
            cell(r.model.as_deref().unwrap_or(NONE), None),
            status,
            cell(millis(r.latency_ms), None),
            cell(r.ttfb_ms.map_or_else(|| NONE.into(), millis), None),
            cell(tokens(r), None),
            match &r.error_class {
                Some(e) => cell(e, Some(Paint::Red)),
                None => cell(NONE, None),
            },
            cell(names.accounts(r), None),
        ];
        t.add_row(row);
    }
    out.print_table(&t)?;
    Ok(())
}

/// A line of `--follow` output: fixed widths, since rows arrive one by one.
trait FollowColumns {
    fn columns(&self) -> [String; 10];
}

struct Header;

impl FollowColumns for Header {
    fn columns(&self) -> [String; 10] {
        HEADERS.map(str::to_string)
    }
}

struct Row<'a> {
    names: &'a Names,
    r: &'a RequestLogEntry,
}

impl FollowColumns for Row<'_> {
    fn columns(&self) -> [String; 10] {
        let r = self.r;
        [
            datetime(r.at),
            self.names.key(r),
            route(r),
            r.model.clone().unwrap_or_else(|| NONE.into()),
            r.status.to_string(),
            millis(r.latency_ms),
            r.ttfb_ms.map_or_else(|| NONE.into(), millis),
            tokens(r),
            r.error_class.clone().unwrap_or_else(|| NONE.into()),
            self.names.accounts(r),
        ]
    }
}

fn follow_line(row: &dyn FollowColumns) -> String {
    const WIDTHS: [usize; 9] = [19, 12, 25, 14, 6, 8, 8, 13, 14];
    let cols = row.columns();
    let mut line = String::new();
    for (i, c) in cols.iter().enumerate() {
        let c = visible(c);
        match WIDTHS.get(i) {
            Some(w) => line.push_str(&format!("{c:<w$}  ")),
            None => line.push_str(&c),
        }
    }
    line.trim_end().to_string()
}
