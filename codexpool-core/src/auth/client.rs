//! The one HTTP client codexpool-core uses to talk to OpenAI (the issuer and the usage
//! endpoint): connect and request timeouts, no redirects followed, and a Codex CLI `User-Agent`
//! (`codex_cli_rs/<version> (<os> <os version>; <arch>)`, PROTOCOL.md §4) so requests look like
//! the client the tokens were issued to.

use std::sync::OnceLock;
use std::time::Duration;

use super::AuthError;
use crate::Config;

/// The Codex CLI version codexpool presents itself as (`User-Agent` and `version` headers).
pub const CODEX_VERSION: &str = "0.171.0";

/// Longest wait for one request to the issuer or the usage endpoint, answer included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `codex_cli_rs/<version> (<os> <os version>; <arch>)`, computed once.
pub fn codex_user_agent() -> &'static str {
    static UA: OnceLock<String> = OnceLock::new();
    UA.get_or_init(|| {
        let os = os_name_and_version();
        let ua = format!(
            "codex_cli_rs/{CODEX_VERSION} ({os}; {})",
            std::env::consts::ARCH
        );
        // A header value must be visible ASCII.
        ua.chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    })
}

fn os_name_and_version() -> String {
    match std::env::consts::OS {
        "linux" => linux_release().unwrap_or_else(|| "Linux".into()),
        "macos" => "Mac OS".into(),
        "windows" => "Windows".into(),
        other => other.into(),
    }
}

/// `NAME VERSION_ID` from `/etc/os-release` (e.g. `Ubuntu 24.04`), as the Codex CLI reports.
fn linux_release() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    };
    let name = field("NAME")?;
    Some(match field("VERSION_ID") {
        Some(v) => format!("{name} {v}"),
        None => name,
    })
}

/// Builds the client.
pub(crate) fn build(config: &Config) -> Result<reqwest::Client, AuthError> {
    reqwest::Client::builder()
        .user_agent(codex_user_agent())
        .connect_timeout(config.upstream_connect_timeout)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| AuthError::transient(format!("cannot build the HTTP client: {e}")))
}

/// A short, printable excerpt of an answer body for an error message.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// Describes a transport failure without the URL's query (which may carry a code).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let host = e
        .url()
        .map(|u| format!("{}{}", u.host_str().unwrap_or(""), u.path()))
        .unwrap_or_default();
    let mut source = std::error::Error::source(e);
    let mut cause = String::new();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        format!("{what} ({host})")
    } else {
        format!("{what} ({host}): {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agent_looks_like_codex() {
        let ua = codex_user_agent();
        assert!(
            ua.starts_with(&format!("codex_cli_rs/{CODEX_VERSION} (")),
            "{ua}"
        );
        assert!(
            ua.ends_with(&format!("; {})", std::env::consts::ARCH)),
            "{ua}"
        );
        assert!(ua.is_ascii());
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt(b"  hi \n"), "hi");
        assert_eq!(excerpt(&[b'a'; 500]).chars().count(), 201);
    }
}
