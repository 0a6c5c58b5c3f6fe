//! The sign-in callback listener: a tiny HTTP/1.1 server on `LOGIN_ADDR` that answers
//! `GET <redirect path>?code=…&state=…` by completing the login and rendering a page that says
//! what happened. It reads only the request line (and skips the headers), answers every
//! connection with one HTML page and closes it, gives a client 10 seconds to send its request
//! and 10 to take the page, serves at most 32 connections at once, and stops once
//! its login has ended (completed, failed, cancelled or expired, here or in another process):
//! at once for a change made in this process, within half a second otherwise.
//!
//! Deliberately not a general HTTP server (core never depends on hyper or axum): browsers send
//! one small GET, and anything else gets a 400/404/405 page.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::login::{LoginCompleted, is_loopback_host, parse_redirect};
use super::{Auth, AuthError};
use crate::Config;
use crate::store::LoginStatus;

/// How long one connection may take to send its request and receive the page.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// How often the listener checks whether its login ended elsewhere.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// A rendered callback answer, for front-ends that serve `/auth/callback` themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallbackPage {
    /// HTTP status.
    pub status: u16,
    /// A complete HTML document.
    pub html: String,
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: u16, title: &str, body: &str) -> CallbackPage {
    CallbackPage {
        status,
        html: format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · codexpool\
             </title><style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;\
             padding:0 1em;line-height:1.5}}</style></head><body><h1>{title}</h1>{body}</body></html>",
            title = escape(title)
        ),
    }
}

/// The page for the outcome of a callback: "signed in, you can close this window", or why not.
pub fn render_callback_page(result: &Result<LoginCompleted, AuthError>) -> CallbackPage {
    match result {
        Ok(done) => {
            let a = &done.account;
            let who = match &a.email {
                Some(e) if *e != a.label => format!("{} ({})", escape(&a.label), escape(e)),
                _ => escape(&a.label),
            };
            let plan = a
                .plan_type
                .as_deref()
                .map(|p| format!(", plan {}", escape(p)))
                .unwrap_or_default();
            let verb = if done.created { "added" } else { "updated" };
            page(
                200,
                "Signed in",
                &format!(
                    "<p>codexpool {verb} <strong>{who}</strong>{plan}.</p>\
                     <p>You can close this window.</p>"
                ),
            )
        }
        Err(e) => {
            let status = match e {
                AuthError::Store { .. } => 500,
                AuthError::Transient { .. } | AuthError::Exchange { status: None, .. } => 502,
                _ => 400,
            };
            page(
                status,
                "Sign-in failed",
                &format!(
                    "<p>{}</p><p>You can close this window and start the sign-in again.</p>",
                    escape(&e.to_string())
                ),
            )
        }
    }
}

/// Binds the listener on `LOGIN_ADDR` (loopback only unless allowed).
pub(crate) async fn bind(config: &Config) -> Result<(TcpListener, SocketAddr), AuthError> {
    let addr = config.login_addr.trim().to_string();
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| AuthError::Listen {
        addr: addr.clone(),
        message: "expected host:port".into(),
    })?;
    if !is_loopback_host(host) && !config.allow_non_loopback_login_addr {
        return Err(AuthError::NonLoopback { addr });
    }
    // `localhost` means IPv4 loopback, as for the Codex CLI: browsers fall back to it.
    let target = if host.eq_ignore_ascii_case("localhost") {
        format!("127.0.0.1:{port}")
    } else {
        addr.clone()
    };
    let listener = TcpListener::bind(&target).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            AuthError::AddrInUse {
                addr: addr.clone(),
                setting: "LOGIN_ADDR",
            }
        } else {
            AuthError::Listen {
                addr: addr.clone(),
                message: e.to_string(),
            }
        }
    })?;
    let local = listener.local_addr().map_err(|e| AuthError::Listen {
        addr: addr.clone(),
        message: e.to_string(),
    })?;
    Ok((listener, local))
}

/// Serves callbacks until the login named `state` has ended; the receiver turns `true` once the
/// listener has stopped and its last page is sent.
pub(crate) fn spawn(
    auth: Auth,
    listener: TcpListener,
    state: String,
    path: String,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        serve(auth, listener, state, path).await;
        let _ = tx.send(true);
    });
    rx
}

async fn serve(auth: Auth, listener: TcpListener, state: String, path: String) {
    let ours_done = Arc::new(tokio::sync::Notify::new());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Held (shared) by each connection from its request to its page being written, so that the
    // listener reports itself stopped only once the browser that completed the login has its
    // page (a CLI exits then).
    let answering = Arc::new(tokio::sync::RwLock::new(()));
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A sign-in changed in this process (a cancel, a pasted URL) wakes the loop at once;
        // other processes' changes, and any missed between two turns, wait for the check.
        let changed = auth.pool.shared.auth.login_changed.notified();
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
                    let (auth, state, path, done, answering) = (
                        auth.clone(),
                        state.clone(),
                        path.clone(),
                        ours_done.clone(),
                        answering.clone(),
                    );
                    tokio::spawn(async move {
                        let _permit = permit;
                        let served = handle(stream, &auth, &path, &answering).await;
                        if served.is_some_and(|s| s == state) {
                            done.notify_one();
                        }
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "sign-in listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // A completion that failed before it claimed the sign-in (a database error) leaves
            // it pending: the listener stays for the browser's reload.
            _ = ours_done.notified() => if login_ended(&auth, &state).await { break },
            _ = changed => if login_ended(&auth, &state).await { break },
            _ = check.tick() => if login_ended(&auth, &state).await { break },
        }
    }
    drop(listener);
    // Connections still reading their request asked nothing yet; the others get their page.
    let _ = answering.write().await;
    tracing::debug!("sign-in listener stopped");
}

pub(crate) async fn login_ended(auth: &Auth, state: &str) -> bool {
    match auth.pool.shared.store.get_login_session(state).await {
        Ok(None) => true,
        Ok(Some(s)) => match s.status {
            LoginStatus::Pending | LoginStatus::Claimed => auth.now() >= s.expires_at,
            _ => true,
        },
        Err(_) => false,
    }
}

/// Serves one connection; the state of the login it completed (or tried to), if any. Reading
/// the request and writing the page each get [`CONNECTION_TIMEOUT`]; the completion in between
/// runs to its end regardless (see [`Auth::complete_params`]). Holds `answering` from the
/// request on.
async fn handle(
    mut stream: TcpStream,
    auth: &Auth,
    path: &str,
    answering: &tokio::sync::RwLock<()>,
) -> Option<String> {
    let head = tokio::time::timeout(CONNECTION_TIMEOUT, read_head(&mut stream))
        .await
        .ok()?;
    // Refused once the listener is stopping (it waits for the write lock).
    let _answering = answering.try_read().ok()?;
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let mut state = None;
    let page = match (method, target, version) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => {
            // Not HEAD either: a link checker's or a prefetcher's HEAD would spend the code.
            if m != "GET" {
                page(405, "Method not allowed", "<p>Only GET is served here.</p>")
            } else if t.split('?').next() != Some(path) {
                page(
                    404,
                    "Not found",
                    "<p>This is codexpool's sign-in listener.</p>",
                )
            } else {
                match parse_redirect(t) {
                    Err(e) => render_callback_page(&Err(e)),
                    Ok(p) => {
                        state = p.state.clone();
                        render_callback_page(&auth.complete_params(p).await)
                    }
                }
            }
        }
        _ => page(400, "Bad request", "<p>That was not an HTTP request.</p>"),
    };
    let (reason, allow) = match page.status {
        200 => ("OK", ""),
        404 => ("Not Found", ""),
        405 => ("Method Not Allowed", "Allow: GET\r\n"),
        500 => ("Internal Server Error", ""),
        502 => ("Bad Gateway", ""),
        _ => ("Bad Request", ""),
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\n{allow}Content-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\n\
         Connection: close\r\n\r\n",
        page.status,
        page.html.len()
    )
    .into_bytes();
    if method != Some("HEAD") {
        out.extend_from_slice(page.html.as_bytes());
    }
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, async {
        if stream.write_all(&out).await.is_ok() {
            let _ = stream.shutdown().await;
        }
    })
    .await;
    state
}

/// Reads until the end of the request head, EOF or [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() >= MAX_HEAD
            || buf.windows(4).any(|w| w == b"\r\n\r\n")
            || buf.windows(2).any(|w| w == b"\n\n")
        {
            return buf;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_escape_and_explain() {
        let p = render_callback_page(&Err(AuthError::Denied {
            error: "access_denied".into(),
            description: Some("<script>".into()),
        }));
        assert_eq!(p.status, 400);
        assert!(p.html.contains("&lt;script&gt;"));
        assert!(!p.html.contains("<script>"));
        let p = render_callback_page(&Err(AuthError::MissingEntitlement));
        assert!(p.html.contains("no Codex access"), "{}", p.html);
    }
}
