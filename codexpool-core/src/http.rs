//! What an HTTP answer's shape says, shared by the usage poller and the gateway: both meet the
//! same Cloudflare pages where JSON or an event stream belongs.

/// Whether Cloudflare says it answered with a challenge (`cf-mitigated: challenge`), whatever
/// the status and body.
pub fn is_cloudflare_challenge(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get("cf-mitigated")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"challenge"))
}

/// Whether an answer is an HTML page: its content type says so, or its body starts like one
/// (a doctype, `<html>`, `<head>`, `<body>` or a comment, after any whitespace; an answer
/// labelled JSON that is a page all the same).
pub fn is_html_page(content_type: Option<&str>, body: &[u8]) -> bool {
    if content_type.is_some_and(|ct| ct.to_ascii_lowercase().contains("text/html")) {
        return true;
    }
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&[][..], |i| &body[i..]);
    let head = &start[..start.len().min(15)];
    [
        &b"<!doctype html"[..],
        b"<html",
        b"<head",
        b"<body",
        b"<!--",
    ]
    .iter()
    .any(|tag| head.len() >= tag.len() && head[..tag.len()].eq_ignore_ascii_case(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_by_cloudflares_header() {
        let with = |value: &'static str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                "cf-mitigated",
                reqwest::header::HeaderValue::from_static(value),
            );
            is_cloudflare_challenge(&h)
        };
        assert!(with("challenge") && with("Challenge"));
        assert!(!with("managed") && !is_cloudflare_challenge(&Default::default()));
    }

    #[test]
    fn pages_by_type_or_by_their_start() {
        assert!(is_html_page(Some("text/html; charset=UTF-8"), b"{}"));
        assert!(is_html_page(Some("Text/HTML"), b""));
        assert!(is_html_page(None, b"  \n<!DOCTYPE html><html>"));
        assert!(is_html_page(
            Some("application/json"),
            b"<html><body>502</body></html>"
        ));
        assert!(is_html_page(None, b"<!-- cf -->"));
        assert!(!is_html_page(Some("application/json"), b"{\"a\":1}"));
        assert!(!is_html_page(None, b"<?xml version=\"1.0\"?><error/>"));
        assert!(!is_html_page(None, b"<"));
        assert!(!is_html_page(None, b""));
    }
}
