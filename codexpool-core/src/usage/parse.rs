//! Parsers for the three places usage figures come from (PROTOCOL.md §3): the `wham/usage`
//! JSON, the `x-codex-*` response headers and the 429 `usage_limit_reached` body.
//!
//! Upstream data is not trusted: numbers may arrive as strings, fields may be missing, values
//! out of range. Each parser returns what it could read and lists what it ignored; none panics.

use std::time::Duration;

use serde_json::Value;

use super::window::{Credits, ReadingSource, UsageSnapshot, WindowKind, WindowReading};
use crate::time::Timestamp;

/// A number, or a string holding one.
fn num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

fn boolean(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => parse_bool_text(s),
        Value::Number(n) => n.as_f64().map(|x| x != 0.0),
        _ => None,
    }
}

fn parse_bool_text(s: &str) -> Option<bool> {
    let s = s.trim();
    let is = |words: [&str; 3]| words.iter().any(|w| s.eq_ignore_ascii_case(w));
    if is(["true", "1", "yes"]) {
        Some(true)
    } else if is(["false", "0", "no"]) {
        Some(false)
    } else {
        None
    }
}

/// Builds a reading from raw figures, or says why not.
fn window(
    slot: &str,
    used: Option<f64>,
    minutes: Option<f64>,
    resets_at: Option<Timestamp>,
    source: ReadingSource,
    now: Timestamp,
) -> Result<WindowReading, String> {
    let used = used.ok_or_else(|| format!("{slot}: used percent missing or not a number"))?;
    if used < 0.0 {
        return Err(format!("{slot}: used percent {used} is negative"));
    }
    let minutes =
        minutes.ok_or_else(|| format!("{slot}: window length missing or not a number"))?;
    if minutes <= 0.0 || minutes > f64::from(u32::MAX) {
        return Err(format!(
            "{slot}: window length {minutes} minutes is out of range"
        ));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let minutes = minutes.round() as u32;
    Ok(WindowReading {
        kind: WindowKind::from_minutes(minutes),
        // Over 100 % still means "used up": keep that signal, clamped.
        used_percent: used.min(100.0),
        window_minutes: minutes,
        resets_at: resets_at.map(|r| within_window(r, now, minutes)),
        source,
        observed_at: now,
    })
}

fn push_window(snap: &mut UsageSnapshot, w: Result<WindowReading, String>) {
    match w {
        Ok(w) if snap.windows.iter().any(|x| x.kind == w.kind) => {
            snap.problems
                .push(format!("a second {} window was ignored", w.kind.as_str()));
        }
        Ok(w) => snap.windows.push(w),
        Err(p) => snap.problems.push(p),
    }
}

/// A window resets at most its length from now (plus a day for clocks that disagree): a
/// reset named further out (a reset time in milliseconds read as seconds, a garbled number)
/// would keep the account out of use for years, and be stored.
fn within_window(resets_at: Timestamp, now: Timestamp, minutes: u32) -> Timestamp {
    resets_at.min(now.plus(Duration::from_secs(u64::from(minutes) * 60 + 86_400)))
}

#[allow(clippy::cast_possible_truncation)]
fn secs_to_ts(secs: f64) -> Option<Timestamp> {
    (secs > 0.0 && secs < 1e13).then(|| Timestamp::from_millis((secs * 1000.0) as i64))
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn after(now: Timestamp, secs: f64) -> Option<Timestamp> {
    (0.0..1e10)
        .contains(&secs)
        .then(|| now.plus(Duration::from_millis((secs * 1000.0) as u64)))
}

/// When a window resets, from an answer that may give it both ways: "in N seconds" first,
/// counted from our own clock, so a clock that is off (a VM's drift) cannot make the reset lie
/// in the past on arrival; else the absolute time.
fn reset_time(now: Timestamp, at_secs: Option<f64>, in_secs: Option<f64>) -> Option<Timestamp> {
    in_secs
        .and_then(|s| after(now, s))
        .or_else(|| at_secs.and_then(secs_to_ts))
}

/// Parses the JSON of `GET /backend-api/wham/usage`.
///
/// Fails only when the document is not JSON or not an object; otherwise returns the windows it
/// could read (possibly none) with the problems listed.
pub fn parse_usage_json(body: &[u8], now: Timestamp) -> Result<UsageSnapshot, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("usage response is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("usage response is not a JSON object")?;
    let mut snap = UsageSnapshot {
        plan_type: obj
            .get("plan_type")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..Default::default()
    };
    match obj.get("rate_limit") {
        Some(Value::Object(rl)) => {
            for slot in ["primary_window", "secondary_window"] {
                match rl.get(slot) {
                    Some(Value::Object(w)) => {
                        let resets_at = reset_time(
                            now,
                            num(w.get("reset_at")),
                            num(w.get("reset_after_seconds")),
                        );
                        let minutes = num(w.get("limit_window_seconds")).map(|s| s / 60.0);
                        push_window(
                            &mut snap,
                            window(
                                slot,
                                num(w.get("used_percent")),
                                minutes,
                                resets_at,
                                ReadingSource::Poll,
                                now,
                            ),
                        );
                    }
                    None | Some(Value::Null) => {}
                    Some(_) => snap.problems.push(format!("{slot} is not an object")),
                }
            }
            // The backend refuses before 100 % on some plans and says so: the window closest
            // to its limit is the one that binds, exhausted until its reset.
            let refused = boolean(rl.get("limit_reached")) == Some(true)
                || boolean(rl.get("allowed")) == Some(false);
            if refused
                && let Some(binding) = snap
                    .windows
                    .iter_mut()
                    .max_by(|a, b| a.used_percent.total_cmp(&b.used_percent))
            {
                binding.used_percent = 100.0;
            }
        }
        None | Some(Value::Null) => snap
            .problems
            .push("no rate_limit in the usage response".into()),
        Some(_) => snap.problems.push("rate_limit is not an object".into()),
    }
    if let Some(Value::Object(c)) = obj.get("credits") {
        snap.credits = Some(Credits {
            balance: num(c.get("balance")),
            has_credits: boolean(c.get("has_credits")),
            unlimited: boolean(c.get("unlimited")),
        });
    }
    Ok(snap)
}

/// Parses the `x-codex-*` headers of a backend response. `None` when none of them is about
/// usage (`x-codex-turn-state` is not).
///
/// Header names are matched case-insensitively; values that are not UTF-8 or not numbers are
/// listed as problems.
pub fn parse_usage_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    now: Timestamp,
) -> Option<UsageSnapshot> {
    #[derive(Default)]
    struct Raw {
        used: Option<f64>,
        minutes: Option<f64>,
        reset_after: Option<f64>,
        reset_at: Option<f64>,
    }
    let mut slots = [Raw::default(), Raw::default()];
    let mut credits = Credits::default();
    let mut any = false;
    let mut problems = Vec::new();
    for (name, value) in headers {
        let Some(rest) = strip_prefix_ci(name, "x-codex-") else {
            continue;
        };
        let text = std::str::from_utf8(value).ok().map(str::trim);
        let number = text
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|x| x.is_finite());
        // Matched without allocating: this runs for every header of every upstream answer.
        let (slot, field) = if let Some(f) = strip_prefix_ci(rest, "primary-") {
            (Some(0), f)
        } else if let Some(f) = strip_prefix_ci(rest, "secondary-") {
            (Some(1), f)
        } else {
            (None, rest)
        };
        let is = |name: &str| field.eq_ignore_ascii_case(name);
        let is_flag = is("credits-has-credits") || is("credits-unlimited");
        match slot {
            Some(i) if is("used-percent") => slots[i].used = number,
            Some(i) if is("window-minutes") => slots[i].minutes = number,
            Some(i) if is("reset-after-seconds") => slots[i].reset_after = number,
            Some(i) if is("reset-at") => slots[i].reset_at = number,
            None if is("credits-balance") => credits.balance = number,
            None if is("credits-has-credits") => {
                credits.has_credits = text.and_then(parse_bool_text);
            }
            None if is("credits-unlimited") => credits.unlimited = text.and_then(parse_bool_text),
            _ => continue,
        }
        any = true;
        if number.is_none() && !is_flag {
            problems.push(format!(
                "header x-codex-{} is not a number",
                rest.to_ascii_lowercase()
            ));
        }
    }
    if !any {
        return None;
    }
    let mut snap = UsageSnapshot {
        problems,
        ..Default::default()
    };
    for (i, raw) in slots.iter().enumerate() {
        if raw.used.is_none() && raw.minutes.is_none() {
            continue;
        }
        let name = if i == 0 { "primary" } else { "secondary" };
        let resets_at = reset_time(now, raw.reset_at, raw.reset_after);
        push_window(
            &mut snap,
            window(
                name,
                raw.used,
                raw.minutes,
                resets_at,
                ReadingSource::Headers,
                now,
            ),
        );
    }
    if credits != Credits::default() {
        snap.credits = Some(credits);
    }
    Some(snap)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes()))
    .then(|| &s[prefix.len()..])
}

/// What a 429 `usage_limit_reached` body says.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageLimit {
    /// When the limit lifts, if the body says.
    pub resets_at: Option<Timestamp>,
    /// The plan, if the body says.
    pub plan_type: Option<String>,
}

impl UsageLimit {
    /// The window the limit most likely belongs to: a reset more than 5 hours away is the
    /// weekly window's.
    pub fn kind(&self, now: Timestamp) -> WindowKind {
        match self.resets_at {
            Some(r) if r.since(now) > Duration::from_secs(5 * 3600) => WindowKind::Weekly,
            _ => WindowKind::FiveHour,
        }
    }

    /// The reading this limit amounts to: the window at 100 % until the reset (at most the
    /// window's length away).
    pub fn to_reading(&self, now: Timestamp) -> WindowReading {
        let kind = self.kind(now);
        let window_minutes = match kind {
            WindowKind::FiveHour => 300,
            WindowKind::Weekly => 10080,
        };
        WindowReading {
            kind,
            used_percent: 100.0,
            window_minutes,
            resets_at: self
                .resets_at
                .map(|r| within_window(r, now, window_minutes)),
            source: ReadingSource::RateLimit,
            observed_at: now,
        }
    }
}

/// Parses a 429 body. `None` unless it is a `usage_limit_reached` error (other 429s are
/// short, transient rate limits).
pub fn parse_usage_limit(body: &[u8], now: Timestamp) -> Option<UsageLimit> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let err = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
    let ty = err
        .get("type")
        .and_then(Value::as_str)
        .or_else(|| err.get("code").and_then(Value::as_str))?;
    if ty != "usage_limit_reached" {
        return None;
    }
    let resets_at = reset_time(
        now,
        num(err.get("resets_at")),
        num(err.get("resets_in_seconds")),
    );
    Some(UsageLimit {
        resets_at,
        plan_type: err
            .get("plan_type")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_secs(1_730_940_000);

    #[test]
    fn parses_the_documented_usage_shape() {
        let body = br#"{"plan_type":"plus","rate_limit":{"allowed":true,"limit_reached":false,
            "primary_window":{"used_percent":25.0,"limit_window_seconds":18000,"reset_at":1730947200},
            "secondary_window":{"used_percent":80.0,"limit_window_seconds":604800,"reset_at":1731552000}},
            "credits":{"balance":12.5}, "additional_rate_limits":[]}"#;
        let s = parse_usage_json(body, NOW).unwrap();
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.plan_type.as_deref(), Some("plus"));
        assert_eq!(s.windows.len(), 2);
        let five = s
            .windows
            .iter()
            .find(|w| w.kind == WindowKind::FiveHour)
            .unwrap();
        assert_eq!(five.used_percent, 25.0);
        assert_eq!(five.window_minutes, 300);
        assert_eq!(five.resets_at, Some(Timestamp::from_secs(1_730_947_200)));
        assert_eq!(five.source, ReadingSource::Poll);
        let week = s
            .windows
            .iter()
            .find(|w| w.kind == WindowKind::Weekly)
            .unwrap();
        assert_eq!(week.window_minutes, 10080);
        assert_eq!(s.credits.unwrap().balance, Some(12.5));
    }

    #[test]
    fn a_single_weekly_window_in_the_primary_slot_is_weekly() {
        let body = br#"{"plan_type":"free","rate_limit":{"primary_window":{"used_percent":"40","limit_window_seconds":"604800","reset_after_seconds":3600}}}"#;
        let s = parse_usage_json(body, NOW).unwrap();
        assert_eq!(s.windows.len(), 1);
        assert_eq!(s.windows[0].kind, WindowKind::Weekly);
        assert_eq!(
            s.windows[0].used_percent, 40.0,
            "numbers as strings are read"
        );
        assert_eq!(
            s.windows[0].resets_at,
            Some(NOW.plus(Duration::from_secs(3600)))
        );
    }

    #[test]
    fn malformed_usage_gives_an_error_or_a_partial_reading() {
        assert!(parse_usage_json(b"<html>challenge</html>", NOW).is_err());
        assert!(parse_usage_json(b"[1,2]", NOW).is_err());
        assert!(parse_usage_json(b"", NOW).is_err());
        let s = parse_usage_json(
            br#"{"rate_limit":{"primary_window":{"used_percent":-3,"limit_window_seconds":18000},
            "secondary_window":{"used_percent":150,"limit_window_seconds":604800}}}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(s.windows.len(), 1, "the negative window is dropped");
        assert_eq!(s.windows[0].used_percent, 100.0, "over 100 is clamped");
        assert_eq!(s.problems.len(), 1);
        let s = parse_usage_json(
            br#"{"rate_limit":{"primary_window":{"used_percent":true}}}"#,
            NOW,
        )
        .unwrap();
        assert!(s.windows.is_empty());
        assert!(!s.problems.is_empty());
        let s = parse_usage_json(br#"{"rate_limit":"nope","credits":7}"#, NOW).unwrap();
        assert!(s.windows.is_empty() && s.credits.is_none());
        let s = parse_usage_json(
            br#"{"rate_limit":{"primary_window":{"used_percent":1,"limit_window_seconds":-60}}}"#,
            NOW,
        )
        .unwrap();
        assert!(s.windows.is_empty());
    }

    #[test]
    fn parses_headers_case_insensitively() {
        let h: Vec<(&str, &[u8])> = vec![
            ("X-Codex-Primary-Used-Percent", b"12.5"),
            ("x-codex-primary-window-minutes", b"300"),
            ("x-codex-primary-reset-after-seconds", b"600"),
            ("x-codex-secondary-used-percent", b"55"),
            ("x-codex-secondary-window-minutes", b"10080"),
            ("x-codex-secondary-reset-at", b"1731552000"),
            ("x-codex-credits-has-credits", b"False"),
            ("x-codex-credits-balance", b"3.5"),
            ("X-CODEX-CREDITS-UNLIMITED", b" Yes "),
            ("content-type", b"text/event-stream"),
        ];
        let s = parse_usage_headers(h, NOW).unwrap();
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let five = s
            .windows
            .iter()
            .find(|w| w.kind == WindowKind::FiveHour)
            .unwrap();
        assert_eq!(five.used_percent, 12.5);
        assert_eq!(five.resets_at, Some(NOW.plus(Duration::from_secs(600))));
        assert_eq!(five.source, ReadingSource::Headers);
        let week = s
            .windows
            .iter()
            .find(|w| w.kind == WindowKind::Weekly)
            .unwrap();
        assert_eq!(week.resets_at, Some(Timestamp::from_secs(1_731_552_000)));
        let c = s.credits.unwrap();
        assert_eq!(
            (c.balance, c.has_credits, c.unlimited),
            (Some(3.5), Some(false), Some(true))
        );
    }

    #[test]
    fn headers_absent_or_garbage() {
        assert!(parse_usage_headers(vec![("content-type", b"x".as_slice())], NOW).is_none());
        let turn = vec![("x-codex-turn-state", b"abc".as_slice())];
        assert!(parse_usage_headers(turn, NOW).is_none(), "no usage in it");
        let h: Vec<(&str, &[u8])> = vec![
            ("x-codex-primary-used-percent", b"lots"),
            ("x-codex-primary-window-minutes", &[0xff, 0xfe]),
        ];
        let s = parse_usage_headers(h, NOW).unwrap();
        assert!(s.windows.is_empty());
        assert!(s.problems.len() >= 2);
    }

    #[test]
    fn parses_usage_limit_bodies() {
        let l = parse_usage_limit(
            br#"{"error":{"type":"usage_limit_reached","message":"x","resets_at":1730947200,"resets_in_seconds":7200,"plan_type":"plus"}}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(l.resets_at, Some(Timestamp::from_secs(1_730_947_200)));
        assert_eq!(l.kind(NOW), WindowKind::FiveHour);
        let l = parse_usage_limit(
            br#"{"error":{"type":"usage_limit_reached","resets_in_seconds":"86400"}}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(l.resets_at, Some(NOW.plus(Duration::from_secs(86400))));
        assert_eq!(l.kind(NOW), WindowKind::Weekly);
        assert_eq!(l.to_reading(NOW).used_percent, 100.0);
        // A clock ahead of the server's: the absolute reset lies in the past here, the relative
        // one still says how long to wait.
        let skewed = format!(
            r#"{{"error":{{"type":"usage_limit_reached","resets_at":{},"resets_in_seconds":600}}}}"#,
            NOW.as_secs() - 60
        );
        let l = parse_usage_limit(skewed.as_bytes(), NOW).unwrap();
        assert_eq!(l.resets_at, Some(NOW.plus(Duration::from_secs(600))));
        assert!(l.to_reading(NOW).is_exhausted(NOW));
        // A reset beyond any window (milliseconds read as seconds, a garbled number) is held
        // to the window's length (and a day): it would otherwise bench the account for years.
        for body in [
            r#"{"error":{"type":"usage_limit_reached","resets_in_seconds":99999999}}"#.to_string(),
            format!(
                r#"{{"error":{{"type":"usage_limit_reached","resets_at":{}}}}}"#,
                NOW.as_millis()
            ),
        ] {
            let r = parse_usage_limit(body.as_bytes(), NOW)
                .unwrap()
                .to_reading(NOW);
            let week = NOW.plus(Duration::from_secs(8 * 86400));
            assert_eq!(
                (r.kind, r.resets_at),
                (WindowKind::Weekly, Some(week)),
                "{body}"
            );
        }
        let h: Vec<(&str, &[u8])> = vec![
            ("x-codex-primary-used-percent", b"100"),
            ("x-codex-primary-window-minutes", b"300"),
            ("x-codex-primary-reset-after-seconds", b"999999999"),
        ];
        let s = parse_usage_headers(h, NOW).unwrap();
        let five = NOW.plus(Duration::from_secs(300 * 60 + 86400));
        assert_eq!(s.windows[0].resets_at, Some(five));
        assert!(parse_usage_limit(br#"{"error":{"type":"rate_limit_exceeded"}}"#, NOW).is_none());
        assert!(parse_usage_limit(b"Too Many Requests", NOW).is_none());
        assert!(
            parse_usage_limit(
                br#"{"error":{"type":"usage_limit_reached","resets_at":"soon"}}"#,
                NOW
            )
            .unwrap()
            .resets_at
            .is_none()
        );
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_usage_json(&bytes, NOW);
            let _ = parse_usage_limit(&bytes, NOW);
            let _ = parse_usage_headers(vec![("x-codex-primary-used-percent", bytes.as_slice()), ("x-codex-primary-window-minutes", bytes.as_slice())], NOW);
        }

        #[test]
        fn usage_json_never_panics_on_json(v in arb_json()) {
            let body = serde_json::to_vec(&serde_json::json!({"rate_limit": {"primary_window": v.clone(), "secondary_window": {"used_percent": v.clone(), "limit_window_seconds": v}}})).unwrap();
            let _ = parse_usage_json(&body, NOW);
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            any::<i64>().prop_map(|i| Value::Number(i.into())),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::hash_map("[a-z_]{1,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
