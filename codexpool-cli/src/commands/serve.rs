//! `codexpool serve`: runs the gateway with its admin API and background tasks until SIGINT or
//! SIGTERM, then stops gracefully (open streams get up to 30 s, queued records are written).
//!
//! With `--json`, the banner is one JSON line: `{"url", "base_url", "addr", "db_path" (absolute),
//! "rpc_token_file" (null when CODEXPOOL_RPC_TOKEN is set), "accounts": {"usable", "total"},
//! "keys", "usable_keys" (enabled and not expired), "warnings": [..]}`.

use std::net::SocketAddr;

use codexpool_core::config::Source;
use codexpool_core::{AccountFilter, Config, Pool};
use codexpool_gateway::admin::AdminClient;
use codexpool_gateway::{DEFAULT_SHUTDOWN_GRACE, RunningServer, Server, ServerError};

use super::Ctx;
use crate::Failure;
use crate::args::ServeArgs;
use crate::output::Paint;

/// `serve`.
pub async fn serve(ctx: &Ctx, a: ServeArgs) -> anyhow::Result<()> {
    let out = &ctx.out;
    let mut config = ctx.config.clone();
    if let Some(addr) = a.addr {
        config.set("SERVICE_ADDR", &addr.to_string())?;
    }
    let origin = addr_origin(&config, a.addr.is_some());
    // The server checks and binds once it has a pool; a refused or taken address must fail
    // before the pool creates the database file, so both are tried here first. (Port 0 is
    // never taken.)
    let addr = config.service_addr;
    if !addr.ip().is_loopback() && !config.allow_non_loopback_service_addr {
        return Err(ServerError::NonLoopback { addr }.into());
    }
    if config.service_addr.port() != 0 {
        std::net::TcpListener::bind(config.service_addr)
            .map_err(|e| bind_failure(config.service_addr, &e, &origin))?;
    }
    // Servers already running on this database (each will have its own requests in flight,
    // cooldowns and kept responses): said in the banner.
    let mut others = Vec::new();
    for client in AdminClient::find_all(&config) {
        if client.verify().await.is_ok() {
            others.push(match client.pid() {
                Some(pid) => format!("{} (pid {pid})", client.url()),
                None => client.url().to_string(),
            });
        }
    }
    // The default watcher stays on: the server follows changes other processes make.
    let pool = Pool::open(config.clone()).await?;
    let running = match Server::new(pool.clone())
        .addr(config.service_addr)
        .start()
        .await
    {
        Ok(r) => r,
        // The gateway names the setting; this says where the address came from.
        Err(ServerError::Bind { addr, source, .. }) => {
            return Err(bind_failure(addr, &source, &origin).into());
        }
        Err(e) => return Err(e.into()),
    };
    let mut signals = super::Signals::new()?;
    // The banner is for whoever watches; a closed stdout (a pager that quit, a supervisor that
    // drops output) must not stop the server.
    if let Err(e) = banner(ctx, &pool, &running, &others) {
        tracing::debug!(error = %e, "the banner could not be printed");
    }
    let signal = signals.recv().await;
    let first = std::time::Instant::now();
    out.note(format!(
        "{signal}: stopping; open requests have up to {} s to finish (Ctrl-C again to quit now).",
        DEFAULT_SHUTDOWN_GRACE.as_secs()
    ));
    let stop = running.stop();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => break r?,
            _ = signals.recv() => {
                // The same stop asked twice at once (`timeout` signals the server and then its
                // process group; so do some supervisors): not a person's second Ctrl-C.
                if first.elapsed() < SAME_STOP {
                    continue;
                }
                return Err(Failure::new(
                    "stopped before the graceful stop finished",
                    "requests still open were cut and queued request-log rows may be lost; let \
                     the graceful stop finish next time",
                )
                .into());
            }
        }
    }
    out.note("Stopped.");
    Ok(())
}

/// A second signal this soon after the first asks for the same stop.
const SAME_STOP: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the listen address came from: the flag, the variable (and env file) that set it, or
/// the default.
fn addr_origin(config: &Config, flag: bool) -> String {
    if flag {
        return "--addr".into();
    }
    match config.source_of("SERVICE_ADDR") {
        Source::Env(var) => var,
        Source::EnvFile { path, var } => format!("{var} in {}", path.display()),
        _ => "the default address".into(),
    }
}

fn bind_failure(addr: SocketAddr, e: &std::io::Error, origin: &str) -> Failure {
    Failure::new(
        format!("cannot listen on {addr} ({origin}): {e}"),
        bind_hint(e),
    )
}

/// What to do when the listen address cannot be bound.
pub fn bind_hint(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        "is another codexpool running? Pick another address with --addr or \
         CODEXPOOL_SERVICE_ADDR"
            .into()
    } else {
        "listen on an address of this machine, e.g. --addr 127.0.0.1:48760".into()
    }
}

fn banner(
    ctx: &Ctx,
    pool: &Pool,
    running: &RunningServer,
    others: &[String],
) -> anyhow::Result<()> {
    let out = &ctx.out;
    let accounts = pool.accounts().list(&AccountFilter::default());
    let usable = accounts
        .iter()
        .filter(|a| pool.accounts().runtime(&a.id).is_ok_and(|r| r.usable))
        .count();
    let all_keys = pool.keys().list();
    let keys = all_keys.len();
    // Enabled and not expired: the ones a client can use now.
    let now = pool.now();
    let usable_keys = all_keys
        .iter()
        .filter(|k| k.enabled && k.expires_at.is_none_or(|t| t > now))
        .count();
    let url = running.url();
    let base_url = format!("{url}/v1");
    // Absolute: a script reads it from another directory.
    let db_path = &pool.config().db_path;
    let db = std::path::absolute(db_path)
        .unwrap_or_else(|_| db_path.clone())
        .display()
        .to_string();
    let mut warnings = pool.config().warnings.clone();
    if accounts.is_empty() {
        warnings.push(
            "no accounts yet: sign in with `codexpool account login` (in another terminal; the \
             server picks it up)"
                .into(),
        );
    } else if usable == 0 {
        warnings.push("no account can serve right now: see `codexpool usage`".into());
    }
    if keys == 0 {
        warnings.push("no API keys yet: create one with `codexpool key create --name NAME`".into());
    } else if usable_keys == 0 {
        warnings.push(
            "no API key can be used (each is disabled or expired): see `codexpool key list`".into(),
        );
    }
    if !others.is_empty() {
        warnings.push(format!(
            "another server already runs on this database: {}; each keeps its own requests in \
             flight, cooldowns and kept responses (a conversation that moves between them loses \
             its previous_response_id)",
            others.join(", ")
        ));
    }
    let bound = running.local_addr();
    if !bound.ip().is_loopback() {
        warnings.push(format!(
            "listening on {bound}: other machines can reach the gateway (over plain HTTP; keys \
             travel in the clear unless a TLS proxy is in front); the admin API answers this \
             machine only"
        ));
    }
    if out.json {
        out.json_line(&serde_json::json!({
            "url": url,
            "base_url": base_url,
            "addr": running.local_addr(),
            "db_path": db,
            "rpc_token_file": running.rpc_token_file(),
            "accounts": {"usable": usable, "total": accounts.len()},
            "keys": keys,
            "usable_keys": usable_keys,
            "warnings": warnings,
        }))?;
        return Ok(());
    }
    if out.quiet {
        // What a script cannot find otherwise (a port the system picked): the base URL alone.
        out.data(&base_url)?;
        return Ok(());
    }
    let rpc = match running.rpc_token_file() {
        Some(p) => format!("POST {url}/rpc, token in {}", p.display()),
        None => format!(
            "POST {url}/rpc, token from {}",
            pool.config().source_of("RPC_TOKEN")
        ),
    };
    out.line(format!(
        "{} {} listening on {}",
        out.paint("codexpool", Paint::Bold),
        env!("CARGO_PKG_VERSION"),
        out.paint(&url, Paint::Cyan)
    ))?;
    out.line("")?;
    let rows = [
        ("database", db),
        ("accounts", format!("{usable} usable of {}", accounts.len())),
        ("keys", format!("{usable_keys} usable of {keys}")),
        ("admin", rpc),
        (
            "base_url",
            format!(
                "{}   (give this to OpenAI clients)",
                out.paint(&base_url, Paint::Green)
            ),
        ),
    ];
    for (k, v) in rows {
        out.line(format!("  {k:<9} {v}"))?;
    }
    out.line("")?;
    out.line(format!(
        "  try: curl {base_url}/chat/completions -H \"Authorization: Bearer $OPENAI_API_KEY\" \
         -H 'Content-Type: application/json' -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'",
        codexpool_gateway::BUILTIN_MODELS.first().copied().unwrap_or("gpt-5-codex")
    ))?;
    out.line("")?;
    for w in &warnings {
        out.warn(w);
    }
    out.note("Ctrl-C stops the server.");
    Ok(())
}
