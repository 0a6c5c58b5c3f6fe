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
    let mut builder = reqwest::Client::builder()
        .user_agent(codex_user_agent())
        .connect_timeout(config.upstream_connect_timeout)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    // A proxy elsewhere could not reach an issuer and usage endpoint on this machine.
    if crate::config::is_loopback_url(&config.issuer)
        && crate::config::is_loopback_url(&config.usage_base_url)
    {
        builder = builder.no_proxy();
    }
    builder
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

/// Describes a transport failure, naming where it went as `scheme://host:port/path`: never the
/// URL's query (which may carry a code) nor its user info.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let host = e.url().map(endpoint).unwrap_or_default();
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

/// `scheme://host:port/path` of a URL: the port always shown (a connection failure is often the
/// wrong one), the query, fragment and user info never.
fn endpoint(u: &reqwest::Url) -> String {
    let host = u.host_str().unwrap_or("");
    match u.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}{}", u.scheme(), u.path()),
        None => format!("{}://{host}{}", u.scheme(), u.path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_show_scheme_host_and_port_but_no_secret() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(
            endpoint(&u(
                "https://auth.openai.com/oauth/token?code=ac_secret#frag"
            )),
            "https://auth.openai.com:443/oauth/token"
        );
        assert_eq!(
            endpoint(&u(
                "http://user:pw@127.0.0.1:8080/backend-api/wham/usage?x=1"
            )),
            "http://127.0.0.1:8080/backend-api/wham/usage"
        );
        assert_eq!(
            endpoint(&u("http://[::1]/backend-api")),
            "http://[::1]:80/backend-api"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_port_and_not_the_query() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = build(&Config::default()).unwrap();
        let e = client
            .get(format!(
                "http://127.0.0.1:{port}/backend-api/wham/usage?code=ac_secret"
            ))
            .send()
            .await
            .unwrap_err();
        let text = describe(&e);
        assert!(
            text.starts_with(&format!(
                "could not connect (http://127.0.0.1:{port}/backend-api/wham/usage)"
            )),
            "{text}"
        );
        assert!(!text.contains("ac_secret"), "{text}");
    }

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
