//! `codexpool account …`: sign-in (browser or device code, and completing a sign-in from a
//! pasted URL), import and export, listing and organising accounts.
//!
//! JSON shapes (`Account` is `{"id", "label", "email", "chatgpt_account_id", "chatgpt_user_id",
//! "plan_type", "group", "tags", "sort", "note", "status", "status_reason", "created_at",
//! "updated_at", "last_used_at"}`; tokens are never included except in `export`):
//! - `account login`: JSON Lines — first the started sign-in (`{"url", "state", "redirect_uri",
//!   "expires_at", "listen_addr", "browser_opened"}`, or with `--device` `{"verification_url",
//!   "user_code", "interval_secs", "state", "expires_at"}`), then `{"account": Account,
//!   "created": bool}`;
//! - `account complete`: `{"account": Account, "created": bool}`;
//! - `account import`: `{"imported", "updated", "unchanged", "skipped", "failed", "results":
//!   [{"source", "status" (imported|updated|unchanged|skipped|failed: the database refused it,
//!   exit 1), "reason" (when unchanged, skipped or failed),
//!   "account_id", "label", "warning", "codex_cli", "taken_over"}]}`; with `--take-over`, each
//!   result whose refresh failed has `"take_over_error": "why"` (and `"sign_in_dead": true`
//!   when the issuer declared the sign-in dead: it needs a new one; the others are still taken
//!   over) and the first such failure adds `"take_over_error": {"source", "account_id",
//!   "message"}` to the document (exit 1);
//! - `account export`: the export document `{"version": 1, "exported_at", "accounts": […]}`
//!   (always JSON); with `-o FILE` and `--json`: `{"path", "accounts": N}`;
//! - `account list`: `[Account + {"usage": {"five_hour": Window|null, "weekly": Window|null},
//!   "runtime": {"inflight", "cooldown_until", "exhausted_until", "usable", "source"}}]`, where
//!   `Window` is `{"kind", "used_percent", "window_minutes", "resets_at", "source",
//!   "observed_at"}` and the runtime's `source` is `server` (the server running on this database
//!   answered) or `local` (none runs: nothing is in flight, nothing cools down);
//! - `account update|enable|disable|remove`: `Account`.

use std::io::IsTerminal;
use std::path::Path;

use codexpool_core::auth::{LoginCompleted, LoginOptions};
use codexpool_core::import::{ImportOutcome, ImportReport};
use codexpool_core::{Account, AccountFilter, AccountPatch, AccountStatus, Pool};
use serde::Serialize;

use super::runtime::{Runtimes, Source};
use super::{Ctx, usage};
use crate::Failure;
use crate::args::{AccountFilterArgs, AccountUpdateArgs, LoginArgs};
use crate::output::{NONE, Paint, ago, cell, visible};

fn filter_of(f: &AccountFilterArgs) -> AccountFilter {
    let mut filter = AccountFilter::default();
    if let Some(g) = &f.group {
        filter = filter.group(g);
    }
    if let Some(t) = &f.tag {
        filter = filter.tag(t);
    }
    if let Some(s) = f.status {
        filter = filter.status(s.into());
    }
    filter
}

fn login_options(a: &LoginArgs) -> LoginOptions {
    let mut opts = LoginOptions::default()
        .open_browser(!a.no_browser)
        .tags(a.tags.clone());
    opts.label = a.label.clone();
    opts.group = a.group.clone();
    opts.note = a.note.clone();
    opts.allowed_workspace_id = a.workspace.clone();
    opts.listen = !a.no_listen;
    opts
}

fn cancelled() -> anyhow::Error {
    Failure::new(
        "sign-in cancelled",
        "run `codexpool account login` again when you are ready",
    )
    .into()
}

/// `account login`.
pub async fn login(ctx: &Ctx, pool: &Pool, a: LoginArgs) -> anyhow::Result<()> {
    let out = &ctx.out;
    let auth = pool.auth();
    let opts = login_options(&a);
    let mut signals = super::Signals::new()?;
    let done = if a.device {
        let d = auth.device_start(opts).await?;
        if out.json {
            out.json_line(&d)?;
        } else if out.quiet {
            // What the person must act on is data, and with `-q` nothing else: one per line.
            out.data(&d.verification_url)?;
            out.data(&d.user_code)?;
        } else {
            out.data(format!(
                "To sign in, open {} on any device and enter this code:",
                out.paint(&d.verification_url, Paint::Cyan)
            ))?;
            out.data("")?;
            out.data(format!("    {}", out.paint(&d.user_code, Paint::Bold)))?;
            out.data("")?;
            out.note("Waiting for approval (the code works for 15 minutes). Ctrl-C cancels.");
        }
        tokio::select! {
            r = d.wait() => r?,
            _ = signals.recv() => {
                let _ = auth.login_cancel(&d.state).await;
                return Err(cancelled());
            }
        }
    } else {
        let h = auth.login_start(opts).await?;
        if out.json {
            out.json_line(h.info())?;
        } else if out.quiet {
            out.data(h.url())?;
        } else {
            out.data("Open this URL in a browser to sign in:")?;
            out.data("")?;
            out.data(format!("  {}", out.paint(h.url(), Paint::Cyan)))?;
            out.data("")?;
            if h.browser_opened() {
                out.note("(Your browser should have opened it.)");
            }
            match h.listen_addr() {
                Some(addr) => {
                    out.line(format!(
                        "Waiting for the sign-in callback on http://{addr}{} (Ctrl-C cancels).",
                        path_of(h.redirect_uri())
                    ))?;
                    if let Some(port) = port_of(h.redirect_uri())
                        && port != addr.port()
                    {
                        out.warn(format!(
                            "the browser is sent back to port {port} (CODEXPOOL_REDIRECT_URI), \
                             the callback listens on port {} (CODEXPOOL_LOGIN_ADDR): forward \
                             one to the other, or finish with `codexpool account complete`",
                            addr.port()
                        ));
                    }
                    out.note(format!(
                        "If the browser cannot reach this machine, copy the address it ends on \
                         ({}?code=…) and run: codexpool account complete '<URL>'",
                        h.redirect_uri()
                    ));
                }
                None => {
                    out.line("Waiting for `codexpool account complete` (Ctrl-C cancels).")?;
                    out.note(format!(
                        "The browser ends on an address that does not load ({}?code=…): copy \
                         it and run in another terminal: codexpool account complete '<URL>'",
                        h.redirect_uri()
                    ));
                }
            }
        }
        let done = tokio::select! {
            r = h.wait() => r?,
            _ = signals.recv() => {
                let _ = h.cancel().await;
                return Err(cancelled());
            }
        };
        if let Some(addr) = h.listen_addr() {
            listener_stopped(addr).await;
        }
        done
    };
    signed_in(ctx, &done)
}

/// Waits (at most 3 s) until the callback listener has stopped accepting. It stops right after
/// it has sent the browser the page of a sign-in it completed (or, when the sign-in completed
/// elsewhere, at its next check): exiting before that would cut the success page off.
async fn listener_stopped(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The path of a URL (`/auth/callback` of `http://localhost:1455/auth/callback`).
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// The port of an `http(s)://host[:port]/…` URL (the scheme's when none is written).
fn port_of(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    // After the last `:` outside an IPv6 literal's brackets.
    match authority.rsplit_once(':') {
        Some((_, port)) if !port.contains(']') => port.parse().ok(),
        _ => match scheme {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        },
    }
}

/// `account complete`.
pub async fn complete(ctx: &Ctx, pool: &Pool, redirect_url: &str) -> anyhow::Result<()> {
    let done = pool.auth().login_complete(redirect_url).await?;
    signed_in(ctx, &done)
}

fn signed_in(ctx: &Ctx, done: &LoginCompleted) -> anyhow::Result<()> {
    let out = &ctx.out;
    if out.json {
        out.json_line(done)?;
        return Ok(());
    }
    let a = &done.account;
    out.line(format!(
        "{} {} as account {}{}",
        out.paint("Signed in", Paint::Green),
        out.paint(who(a), Paint::Bold),
        a.id,
        if done.created {
            String::new()
        } else {
            " (already in the pool: its tokens were replaced)".into()
        }
    ))?;
    out.note("See its usage with `codexpool usage --refresh`.");
    Ok(())
}

/// `label (email, plan)` or what of it is known.
fn who(a: &Account) -> String {
    let mut extra = Vec::new();
    if let Some(e) = &a.email
        && *e != a.label
    {
        extra.push(e.clone());
    }
    if let Some(p) = &a.plan_type {
        extra.push(p.clone());
    }
    let who = if extra.is_empty() {
        a.label.clone()
    } else {
        format!("{} ({})", a.label, extra.join(", "))
    };
    // From the sign-in's claims or an imported file: no control characters reach the terminal.
    visible(&who).into_owned()
}

/// What `account import` reads: a file or folder, or stdin's document, read whole before the
/// database is opened (stdin cannot be read twice, and an import that would store nothing
/// makes no database: see [`Ctx::import_stores_nothing`](super::Ctx)).
pub enum ImportSource {
    /// A path: a file, or a folder of them (Codex CLI homes).
    Path(String),
    /// `-`: the document stdin held.
    Stdin(Vec<u8>),
}

impl ImportSource {
    /// `-` reads stdin now; anything else is a path, read by the import.
    pub async fn read(ctx: &Ctx, source: &str) -> anyhow::Result<Self> {
        if source != "-" {
            return Ok(Self::Path(source.to_owned()));
        }
        if std::io::stdin().is_terminal() {
            ctx.out
                .note("Reading an account file from stdin (paste it, then Ctrl-D)…");
        }
        let read =
            tokio::task::spawn_blocking(|| codexpool_core::import::read_import(std::io::stdin()));
        let Some(bytes) = read.await?? else {
            anyhow::bail!(
                "stdin holds more than {} MiB; that is not an account file",
                codexpool_core::import::MAX_IMPORT_BYTES >> 20
            );
        };
        Ok(Self::Stdin(bytes))
    }

    /// Imports it into `pool`.
    pub async fn import_into(&self, pool: &Pool) -> codexpool_core::Result<ImportReport> {
        match self {
            Self::Path(path) => pool.accounts().import_path(path).await,
            Self::Stdin(bytes) => Ok(pool.accounts().import_bytes("stdin", bytes).await),
        }
    }
}

/// `account import`.
pub async fn import(
    ctx: &Ctx,
    pool: &Pool,
    source: &ImportSource,
    take_over: bool,
) -> anyhow::Result<()> {
    let mut report = source.import_into(pool).await?;
    // A take-over that fails leaves the import written and the other sign-ins taken over: the
    // report says which, so it is printed before the error.
    let take_over_error = if take_over {
        pool.accounts().take_over(&mut report).await.err()
    } else {
        None
    };
    print_import(ctx, &report, take_over_error.as_ref())?;
    if let Some(e) = take_over_error {
        return Err(take_over_failure(&report, e));
    }
    if let Some(why) = report.results.iter().find_map(|r| match &r.outcome {
        ImportOutcome::Failed(why) => Some(why),
        _ => None,
    }) {
        return Err(Failure::new(
            format!(
                "the database refused {} of the accounts: {why}",
                report.failed()
            ),
            "nothing of those was written; fix the database (space, permissions) and import again",
        )
        .into());
    }
    if report.imported() + report.updated() + report.unchanged() == 0 && report.skipped() > 0 {
        return Err(Failure::new(
            format!("nothing imported: {} skipped", report.skipped()),
            "import a Codex CLI auth.json (~/.codex/auth.json) or a `codexpool account export` file",
        )
        .into());
    }
    Ok(())
}

/// The error of a failed `--take-over` (core's
/// [`AccountPool::take_over`](codexpool_core::AccountPool::take_over) names the first refresh
/// that failed; the report has every one), naming each failed sign-in, with a hint saying what
/// stands: every account was written, and the other sign-ins were taken over; and what to do
/// about the failed ones: a sign-in the issuer declared dead (its account now needs a new
/// login) cannot be taken over again.
fn take_over_failure(report: &ImportReport, e: codexpool_core::Error) -> anyhow::Error {
    let codexpool_core::Error::TakeOver { .. } = &e else {
        return e.into();
    };
    let failed: Vec<String> = report
        .results
        .iter()
        .filter_map(|r| Some(format!("{}: {}", r.source, r.take_over_error.as_ref()?)))
        .collect();
    let message = if failed.len() > 1 {
        format!(
            "could not take over {} sign-ins: {}",
            failed.len(),
            failed.join("; ")
        )
    } else {
        e.to_string()
    };
    let taken = report.results.iter().filter(|r| r.taken_over).count();
    let dead = report.results.iter().filter(|r| r.sign_in_dead).count();
    let what_now = match (dead, failed.len().saturating_sub(dead)) {
        (0, _) => {
            "the failed ones still share their sign-in with the Codex CLI: run the import \
                   with --take-over again later"
        }
        (_, 0) => {
            "the failed ones' sign-ins are no longer valid: sign in again with `codexpool \
                   account login`"
        }
        _ => {
            "those whose sign-in is no longer valid need a new one (`codexpool account login`); \
              the others still share theirs with the Codex CLI: run the import with --take-over \
              again later"
        }
    };
    Failure::new(
        message,
        format!(
            "the import itself stands, and {} taken over; {what_now}",
            plural(taken, "sign-in was", "sign-ins were"),
        ),
    )
    .into()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn print_import(
    ctx: &Ctx,
    report: &ImportReport,
    take_over_error: Option<&codexpool_core::Error>,
) -> anyhow::Result<()> {
    let out = &ctx.out;
    if out.json {
        #[derive(Serialize)]
        struct View<'a> {
            imported: usize,
            updated: usize,
            unchanged: usize,
            skipped: usize,
            failed: usize,
            results: &'a [codexpool_core::import::ImportResult],
            #[serde(skip_serializing_if = "Option::is_none")]
            take_over_error: Option<TakeOverError<'a>>,
        }
        #[derive(Serialize)]
        struct TakeOverError<'a> {
            source: Option<&'a str>,
            account_id: Option<&'a str>,
            message: String,
        }
        let take_over_error = take_over_error.map(|e| match e {
            codexpool_core::Error::TakeOver {
                input, account_id, ..
            } => TakeOverError {
                source: Some(input),
                account_id: Some(account_id),
                message: e.to_string(),
            },
            _ => TakeOverError {
                source: None,
                account_id: None,
                message: e.to_string(),
            },
        });
        out.json(&View {
            imported: report.imported(),
            updated: report.updated(),
            unchanged: report.unchanged(),
            skipped: report.skipped(),
            failed: report.failed(),
            results: &report.results,
            take_over_error,
        })?;
        return Ok(());
    }
    if out.quiet {
        // The report confirms what happened; a failed import is an error either way.
        return Ok(());
    }
    let mut t = out.table(&["SOURCE", "RESULT", "ACCOUNT", "LABEL", "DETAIL"]);
    for r in &report.results {
        let (result, detail) = match &r.outcome {
            ImportOutcome::Imported => (cell("imported", Some(Paint::Green)), String::new()),
            ImportOutcome::Updated => (
                cell("updated", Some(Paint::Cyan)),
                "same sign-in: tokens replaced".into(),
            ),
            ImportOutcome::Unchanged(why) => (cell("unchanged", Some(Paint::Dim)), why.clone()),
            ImportOutcome::Skipped(why) => (cell("skipped", Some(Paint::Red)), why.clone()),
            ImportOutcome::Failed(why) => (cell("failed", Some(Paint::Red)), why.clone()),
        };
        t.add_row(vec![
            cell(&r.source, None),
            result,
            cell(r.account_id.as_deref().unwrap_or(NONE), None),
            cell(r.label.as_deref().unwrap_or(NONE), None),
            cell(detail, None),
        ]);
    }
    out.print_table(&t)?;
    let counts = [
        (report.imported(), "imported"),
        (report.updated(), "updated"),
        (report.unchanged(), "unchanged"),
        (report.skipped(), "skipped"),
        (report.failed(), "failed"),
    ];
    let summary: Vec<String> = counts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    out.line(format!(
        "\n{}",
        if summary.is_empty() {
            "no accounts found".to_string()
        } else {
            summary.join(", ")
        }
    ))?;
    let mut seen = Vec::new();
    for w in report.results.iter().filter_map(|r| r.warning.as_deref()) {
        if !seen.contains(&w) {
            seen.push(w);
            out.warn(w);
        }
    }
    Ok(())
}

/// `account export`.
pub async fn export(
    ctx: &Ctx,
    pool: &Pool,
    output: Option<&Path>,
    filter: &AccountFilterArgs,
) -> anyhow::Result<()> {
    let out = &ctx.out;
    let filter = filter_of(filter);
    // `-o -` is stdout, as `import -` is stdin.
    let output = output.filter(|p| *p != Path::new("-"));
    // An export of nothing is still a valid document; said so, as `account list` says it. But
    // it does not replace a file (a backup, most likely: a mistyped --db or filter would
    // empty it).
    if pool.accounts().list(&filter).is_empty() {
        let why = if pool.accounts().is_empty() {
            "No accounts yet"
        } else {
            "No account matches these filters"
        };
        if let Some(path) = output.filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0)) {
            return Err(Failure::new(
                format!(
                    "{why}: nothing to export, and {} is not replaced by an empty export",
                    path.display()
                ),
                "check --db and the filters; to write an empty export, remove the file first",
            )
            .into());
        }
        out.note(format!("{why}: the export holds none."));
    }
    match output {
        Some(path) => {
            let n = pool.accounts().export_to_file(path, &filter).await?;
            if out.json {
                out.json(&serde_json::json!({"path": path, "accounts": n}))?;
            } else {
                out.line(format!(
                    "Exported {} to {} (readable by you only: it holds their tokens)",
                    plural(n, "account", "accounts"),
                    path.display()
                ))?;
            }
        }
        None => {
            if std::io::stdout().is_terminal() {
                out.warn(
                    "this prints the accounts' tokens; use -o FILE to write them to a private file",
                );
            }
            out.json(&pool.accounts().export(&filter))?;
        }
    }
    Ok(())
}

/// One account with its usage and runtime state, as `account list --json` prints it.
#[derive(Serialize)]
struct AccountView<'a> {
    #[serde(flatten)]
    account: &'a Account,
    usage: UsageView,
    runtime: Option<RuntimeView>,
}

#[derive(Serialize)]
struct RuntimeView {
    #[serde(flatten)]
    runtime: codexpool_core::pool::AccountRuntime,
    source: Source,
}

#[derive(Serialize)]
struct UsageView {
    five_hour: Option<codexpool_core::usage::WindowReading>,
    weekly: Option<codexpool_core::usage::WindowReading>,
}

/// `account list`.
pub async fn list(ctx: &Ctx, pool: &Pool, f: &AccountFilterArgs) -> anyhow::Result<()> {
    let out = &ctx.out;
    let accounts = pool.accounts().list(&filter_of(f));
    let runtimes = Runtimes::load(ctx).await;
    let now = pool.now();
    if out.json {
        let views: Vec<AccountView<'_>> = accounts
            .iter()
            .map(|a| {
                let u = pool.usage().get(&a.id).unwrap_or_default();
                AccountView {
                    account: a,
                    usage: UsageView {
                        five_hour: u.five_hour,
                        weekly: u.weekly,
                    },
                    runtime: runtimes
                        .get(pool, &a.id)
                        .map(|(runtime, source)| RuntimeView { runtime, source }),
                }
            })
            .collect();
        out.json(&views)?;
        return Ok(());
    }
    if accounts.is_empty() {
        if pool.accounts().is_empty() {
            out.note(
                "No accounts yet. Sign in with `codexpool account login`, or import a Codex CLI \
                 sign-in with `codexpool account import ~/.codex/auth.json`.",
            );
        } else {
            out.note("No account matches these filters.");
        }
        return Ok(());
    }
    let mut t = out.table(&[
        "ID",
        "LABEL",
        "PLAN",
        "GROUP",
        "TAGS",
        "SORT",
        "STATUS",
        "5H",
        "WEEK",
        "LAST USED",
    ]);
    for a in &accounts {
        let u = pool.usage().get(&a.id).unwrap_or_default();
        let rt = runtimes.get(pool, &a.id).map(|(rt, _)| rt);
        let (status, paint) = usage::status_text(a, rt.as_ref(), now);
        let window = |w: Option<&codexpool_core::usage::WindowReading>| {
            let (text, paint) = usage::window_short(w, now);
            cell(text, paint)
        };
        t.add_row(vec![
            cell(&a.id, None),
            cell(&a.label, Some(Paint::Bold)),
            cell(a.plan_type.as_deref().unwrap_or(NONE), None),
            cell(a.group.as_deref().unwrap_or(NONE), None),
            cell(
                if a.tags.is_empty() {
                    NONE.to_string()
                } else {
                    a.tags.join(", ")
                },
                None,
            ),
            cell(a.sort, None),
            cell(status, Some(paint)),
            window(u.five_hour.as_ref()),
            window(u.weekly.as_ref()),
            cell(
                a.last_used_at
                    .map_or_else(|| "never".into(), |t| ago(now, t)),
                None,
            ),
        ]);
    }
    out.print_table(&t)?;
    Ok(())
}

/// `account update`.
pub async fn update(ctx: &Ctx, pool: &Pool, a: AccountUpdateArgs) -> anyhow::Result<()> {
    let mut p = AccountPatch::default();
    if let Some(l) = a.label {
        p = p.label(l);
    }
    if let Some(g) = a.group {
        p = p.group((!g.trim().is_empty()).then_some(g));
    }
    if !a.tags.is_empty() || a.clear_tags {
        p = p.tags(a.tags);
    }
    if let Some(n) = a.note {
        p = p.note((!n.trim().is_empty()).then_some(n));
    }
    if let Some(s) = a.sort {
        p = p.sort(s);
    }
    let account = pool.accounts().update(&a.id, p).await?;
    done(ctx, &account, "Updated")
}

/// `account enable`.
pub async fn enable(ctx: &Ctx, pool: &Pool, id: &str) -> anyhow::Result<()> {
    let before = pool.accounts().get(id).ok();
    let a = pool.accounts().enable(id).await?;
    done(ctx, &a, "Enabled")?;
    // A person may know better than the last failure, but a dead sign-in stays dead: say that
    // it is only tried again.
    if let Some(b) =
        before.filter(|b| matches!(b.status, AccountStatus::NeedsLogin | AccountStatus::Banned))
    {
        let why = b.status_reason.as_deref().unwrap_or(b.status.as_str());
        ctx.out.warn(format!(
            "it was {} ({}): requests try it again, and the next failure marks it so again; \
             `codexpool account login` signs it in anew",
            b.status.as_str(),
            visible(why)
        ));
    }
    Ok(())
}

/// `account disable`.
pub async fn disable(ctx: &Ctx, pool: &Pool, id: &str) -> anyhow::Result<()> {
    let a = pool.accounts().disable(id).await?;
    done(ctx, &a, "Disabled")
}

/// `account remove`.
pub async fn remove(ctx: &Ctx, pool: &Pool, id: &str) -> anyhow::Result<()> {
    let a = pool.accounts().remove(id).await?;
    done(ctx, &a, "Removed")
}

fn done(ctx: &Ctx, a: &Account, verb: &str) -> anyhow::Result<()> {
    let out = &ctx.out;
    if out.json {
        out.json(a)?;
        return Ok(());
    }
    out.line(format!("{verb} account {} {}", a.id, who(a)))?;
    if verb == "Updated" {
        let mut facts = vec![format!("sort {}", a.sort)];
        if let Some(g) = &a.group {
            facts.push(format!("group {g}"));
        }
        if !a.tags.is_empty() {
            facts.push(format!("tags {}", a.tags.join(", ")));
        }
        if let Some(n) = &a.note {
            facts.push(format!("note {n:?}"));
        }
        out.line(format!("  {}", visible(&facts.join(" · "))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_of_a_redirect_uri() {
        assert_eq!(
            super::path_of("http://localhost:1455/auth/callback"),
            "/auth/callback"
        );
        assert_eq!(super::path_of("http://localhost:1455"), "/");
    }

    #[test]
    fn port_of_a_redirect_uri() {
        assert_eq!(
            super::port_of("http://localhost:1455/auth/callback"),
            Some(1455)
        );
        assert_eq!(super::port_of("http://[::1]:1456/cb"), Some(1456));
        assert_eq!(super::port_of("http://[::1]/cb"), Some(80));
        assert_eq!(super::port_of("https://example.com"), Some(443));
        assert_eq!(super::port_of("localhost:1455"), None);
    }
}
