//! The `Host` names the open routes (`/health`, `/metrics`: no key asked) answer to.
//!
//! A web page can read them through DNS rebinding: its own name made to resolve to 127.0.0.1,
//! its script's requests reach the gateway as same-origin ones, with the page's name in `Host`.
//! Such a name is refused, as dev servers do (Vite's `allowedHosts`): `localhost` and its
//! subdomains, IP addresses (never rebinding: no name to rebind), this machine's own name and
//! the names in `ALLOWED_HOSTS` pass; so does a request without a `Host` (no browser sends one).
//! The model routes need no such check: a page that rebinds has no platform key.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header, uri::Authority};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use crate::error::ApiError;

/// The names allowed besides `localhost` and IP addresses.
pub(crate) struct OpenHosts {
    /// `ALLOWED_HOSTS` is `*`.
    any: bool,
    /// `ALLOWED_HOSTS` and this machine's name, lower case, without a trailing dot.
    names: Vec<String>,
}

impl OpenHosts {
    /// `allowed` as read by the config (lower case; `*` alone for any) and this machine's name.
    pub fn new(allowed: &[String]) -> Self {
        let mut names: Vec<String> = allowed.to_vec();
        names.extend(machine_name());
        Self {
            any: allowed.iter().any(|h| h == "*"),
            names,
        }
    }

    /// Whether a request that named `host` (a `Host` header or an HTTP/2 authority) is answered.
    fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        // A `Host` is a name and a port: no user (which `Authority` would take).
        let Ok(authority) = host.parse::<Authority>() else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        // A trailing dot names the same host (`localhost.`, `127.0.0.1.`).
        let name = authority.host().trim_end_matches('.');
        // `[::1]` in a URL is the address `::1`.
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if bare.parse::<std::net::IpAddr>().is_ok() {
            return true;
        }
        let name = name.to_ascii_lowercase();
        name == "localhost" || name.ends_with(".localhost") || self.names.contains(&name)
    }
}

/// This machine's name (lower case), as a LAN client or a scraper may know it.
fn machine_name() -> Option<String> {
    #[cfg(unix)]
    {
        let uname = rustix::system::uname();
        let name = uname.nodename().to_str().ok()?.trim_end_matches('.');
        (!name.is_empty()).then(|| name.to_ascii_lowercase())
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The layer's function on the open routes: a 403 for a `Host` they do not answer to.
pub(crate) async fn guard(
    State(hosts): State<Arc<OpenHosts>>,
    req: Request,
    next: Next,
) -> Response {
    let named = match req.headers().get(header::HOST) {
        Some(v) => Some(v.to_str().unwrap_or("")),
        None => req.uri().authority().map(Authority::as_str),
    };
    match named {
        Some(host) if !hosts.allows(host) => {
            let shown: String = host.chars().take(100).collect();
            ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "host_not_allowed",
                format!(
                    "{} does not answer to the host `{shown}` (a web page may pose as it by DNS \
                     rebinding); name it in CODEXPOOL_ALLOWED_HOSTS to allow it",
                    req.uri().path()
                ),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::OpenHosts;

    #[test]
    fn loopback_addresses_and_named_hosts_pass_other_names_do_not() {
        let hosts = OpenHosts {
            any: false,
            names: vec!["gateway.lan".into()],
        };
        for ok in [
            "localhost",
            "localhost:48760",
            "LOCALHOST.:1",
            "app.localhost:3000",
            "127.0.0.1:48760",
            "127.0.0.1.:48760",
            "10.0.0.5",
            "[::1]:48760",
            "[fe80::1]",
            "gateway.lan",
            "Gateway.LAN.:8080",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for refused in [
            "attacker.example",
            "attacker.example:48760",
            "localhost.attacker.example",
            "gateway.lan.attacker.example",
            "127.0.0.1.nip.io",
            "",
            "a b",
            "user@localhost",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
        let any = OpenHosts {
            any: true,
            names: vec!["*".into()],
        };
        assert!(any.allows("attacker.example"));
    }
}
