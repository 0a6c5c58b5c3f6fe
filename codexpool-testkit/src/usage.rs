//! The chatgpt.com usage part of the fake (PROTOCOL.md §3): per-account usage windows
//! ([`FakeUsage`], [`FakeWindow`]), the `GET /backend-api/wham/usage` endpoint with its scripted
//! Cloudflare challenge and forced statuses, and the `x-codex-*` headers every Codex backend answer
//! carries, rendered from the same numbers so that polling and headers always agree.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::{bearer, header_str};
use crate::reply::LimitHit;
use crate::state::{Shared, now_secs};

/// Window length that PROTOCOL.md §3 calls "5 hours", in minutes.
pub const FIVE_HOURS_MINUTES: u64 = 300;
/// Window length that PROTOCOL.md §3 calls "7 days", in minutes.
pub const WEEK_MINUTES: u64 = 10_080;

/// The HTML Cloudflare serves instead of data when it wants a browser check.
pub(crate) const CHALLENGE_HTML: &str = "<!DOCTYPE html><html lang=\"en-US\"><head>\
<title>Just a moment...</title><meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\">\
</head><body><div class=\"main-wrapper\" role=\"main\"><div class=\"main-content\">\
<noscript>Enable JavaScript and cookies to continue</noscript></div></div>\
<script>window._cf_chl_opt={cType: 'managed'};</script></body></html>";

/// One usage window.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FakeWindow {
    /// Percent of the window used, 0–100.
    pub used_percent: f64,
    /// Window length in minutes (`limit_window_seconds` is this × 60).
    pub window_minutes: u64,
    /// When the window resets, Unix seconds.
    pub reset_at: i64,
}

impl FakeWindow {
    /// A window of `window_minutes` with `used_percent` used, resetting one full window from now.
    pub fn new(used_percent: f64, window_minutes: u64) -> Self {
        let len = i64::try_from(window_minutes.saturating_mul(60)).unwrap_or(i64::MAX);
        Self {
            used_percent,
            window_minutes,
            reset_at: now_secs().saturating_add(len),
        }
    }

    /// The 5-hour window (300 minutes).
    pub fn five_hour(used_percent: f64) -> Self {
        Self::new(used_percent, FIVE_HOURS_MINUTES)
    }

    /// The 7-day window (10 080 minutes).
    pub fn weekly(used_percent: f64) -> Self {
        Self::new(used_percent, WEEK_MINUTES)
    }

    /// Sets the reset time (Unix seconds).
    pub fn reset_at(mut self, epoch_secs: i64) -> Self {
        self.reset_at = epoch_secs;
        self
    }

    /// Sets the reset time to `in_` from now.
    pub fn resets_in(mut self, in_: Duration) -> Self {
        let secs = i64::try_from(in_.as_secs()).unwrap_or(i64::MAX);
        self.reset_at = now_secs().saturating_add(secs);
        self
    }

    /// Seconds until the reset, never negative.
    pub fn reset_after_seconds(&self) -> i64 {
        (self.reset_at - now_secs()).max(0)
    }

    fn to_json(&self) -> Value {
        json!({
            "used_percent": self.used_percent,
            "limit_window_seconds": self.window_minutes.saturating_mul(60),
            "reset_after_seconds": self.reset_after_seconds(),
            "reset_at": self.reset_at,
        })
    }

    fn is_weekly(&self) -> bool {
        self.window_minutes > 1443
    }

    /// Past its reset a window starts again (PROTOCOL.md §3: a reading is stale then): nothing
    /// used, resetting a whole window after the reset that passed.
    fn roll(&mut self, now: i64) {
        if self.reset_at > now {
            return;
        }
        let len = i64::try_from(self.window_minutes.saturating_mul(60))
            .unwrap_or(i64::MAX)
            .max(1);
        let periods = (now - self.reset_at) / len + 1;
        self.reset_at = self.reset_at.saturating_add(periods.saturating_mul(len));
        self.used_percent = 0.0;
    }
}

/// The usage of one account, as the usage endpoint and the `x-codex-*` headers report it.
///
/// The default is a `plus`-style pair: a 5-hour primary and a 7-day secondary window, both at
/// 0 %, no credits.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FakeUsage {
    /// `plan_type`; `None` reports the account's plan.
    pub plan_type: Option<String>,
    /// The primary slot (normally the 5-hour window).
    pub primary: Option<FakeWindow>,
    /// The secondary slot (normally the 7-day window).
    pub secondary: Option<FakeWindow>,
    /// `credits.balance`; `has_credits` is `balance > 0`.
    pub credits_balance: f64,
    /// Forces `rate_limit.limit_reached` (it is also true when any window is at 100 %).
    pub limit_reached: bool,
}

impl Default for FakeUsage {
    fn default() -> Self {
        Self::new(0.0, 0.0)
    }
}

impl FakeUsage {
    /// A 5-hour primary window and a 7-day secondary window with these used percentages.
    pub fn new(primary_used: f64, secondary_used: f64) -> Self {
        Self {
            plan_type: None,
            primary: Some(FakeWindow::five_hour(primary_used)),
            secondary: Some(FakeWindow::weekly(secondary_used)),
            credits_balance: 0.0,
            limit_reached: false,
        }
    }

    /// The free-plan shape: ONE 7-day window, sent in the primary slot, and no secondary window.
    /// Sets `plan_type` to `free`.
    pub fn weekly_only(used_percent: f64) -> Self {
        Self {
            plan_type: Some("free".to_owned()),
            primary: Some(FakeWindow::weekly(used_percent)),
            secondary: None,
            credits_balance: 0.0,
            limit_reached: false,
        }
    }

    /// Sets `plan_type`.
    pub fn plan(mut self, plan: impl Into<String>) -> Self {
        self.plan_type = Some(plan.into());
        self
    }

    /// Sets the primary window.
    pub fn primary(mut self, window: impl Into<Option<FakeWindow>>) -> Self {
        self.primary = window.into();
        self
    }

    /// Sets the secondary window.
    pub fn secondary(mut self, window: impl Into<Option<FakeWindow>>) -> Self {
        self.secondary = window.into();
        self
    }

    /// Sets the credits balance.
    pub fn credits(mut self, balance: f64) -> Self {
        self.credits_balance = balance;
        self
    }

    /// Forces `limit_reached`.
    pub fn limit_reached(mut self, reached: bool) -> Self {
        self.limit_reached = reached;
        self
    }

    /// Starts the windows whose reset has passed again (see [`FakeWindow`]); what the
    /// endpoints do before they report.
    pub(crate) fn roll(&mut self) {
        let now = now_secs();
        for w in [&mut self.primary, &mut self.secondary]
            .into_iter()
            .flatten()
        {
            w.roll(now);
        }
    }

    /// Seconds until the account can be served again: the latest reset of its exhausted
    /// windows, else (a forced `limit_reached`) the current window's.
    pub(crate) fn exhausted_resets_in(&self) -> u64 {
        [&self.primary, &self.secondary]
            .into_iter()
            .flatten()
            .filter(|w| w.used_percent >= 100.0)
            .map(FakeWindow::reset_after_seconds)
            .max()
            .and_then(|secs| u64::try_from(secs).ok())
            .unwrap_or_else(|| self.current_resets_in())
    }

    /// Whether the account is out of quota (forced, or a window at 100 %).
    pub fn is_limit_reached(&self) -> bool {
        self.limit_reached
            || [&self.primary, &self.secondary]
                .into_iter()
                .flatten()
                .any(|w| w.used_percent >= 100.0)
    }

    /// What a `usage_limit_reached` 429 implies: the window that resets in `resets_in_secs` (the
    /// 5-hour one for up to 5 hours, else the weekly one) is at 100 % until then.
    pub(crate) fn exhaust(&mut self, resets_in_secs: u64) {
        let resets_at = now_secs().saturating_add(i64::try_from(resets_in_secs).unwrap_or(0));
        let want_weekly = resets_in_secs > FIVE_HOURS_MINUTES * 60;
        let slot = if self
            .primary
            .as_ref()
            .is_some_and(|w| w.is_weekly() == want_weekly)
        {
            &mut self.primary
        } else if self
            .secondary
            .as_ref()
            .is_some_and(|w| w.is_weekly() == want_weekly)
        {
            &mut self.secondary
        } else {
            &mut self.primary
        };
        let window = slot.get_or_insert_with(|| FakeWindow::five_hour(0.0));
        window.used_percent = 100.0;
        window.reset_at = resets_at;
    }

    /// What an answer saying "usage limit reached" implies (see [`LimitHit`]): the window it
    /// names is at 100 % until its reset.
    pub(crate) fn hit(&mut self, hit: LimitHit) {
        let resets_in_secs = match hit {
            LimitHit::ResetsIn(secs) => secs,
            LimitHit::CurrentWindow => self.current_resets_in(),
        };
        self.exhaust(resets_in_secs);
    }

    /// Seconds until the window that runs out first resets: the 5-hour one, else the primary
    /// slot; 5 hours when there is none or its reset has passed.
    fn current_resets_in(&self) -> u64 {
        [&self.primary, &self.secondary]
            .into_iter()
            .flatten()
            .find(|w| !w.is_weekly())
            .or(self.primary.as_ref())
            .map(FakeWindow::reset_after_seconds)
            .and_then(|secs| u64::try_from(secs).ok())
            .filter(|secs| *secs > 0)
            .unwrap_or(FIVE_HOURS_MINUTES * 60)
    }

    /// The usage endpoint's JSON (PROTOCOL.md §3).
    pub(crate) fn to_json(&self, account_plan: &str, account_id: &str, email: &str) -> Value {
        let reached = self.is_limit_reached();
        json!({
            "user_id": null,
            "account_id": account_id,
            "email": email,
            "plan_type": self.plan_or(account_plan),
            "rate_limit": {
                "allowed": !reached,
                "limit_reached": reached,
                "primary_window": self.primary.as_ref().map(FakeWindow::to_json),
                "secondary_window": self.secondary.as_ref().map(FakeWindow::to_json),
            },
            "credits": {
                "has_credits": self.credits_balance > 0.0,
                "unlimited": false,
                "balance": self.credits_balance,
            },
            "additional_rate_limits": [],
        })
    }

    pub(crate) fn plan_or<'a>(&'a self, account_plan: &'a str) -> &'a str {
        self.plan_type.as_deref().unwrap_or(account_plan)
    }

    /// The `x-codex-*` headers. A slot without a window sends none of its headers.
    pub(crate) fn headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                map.insert(HeaderName::from_static(name), v);
            }
        };
        let slots = [
            (
                &self.primary,
                [
                    "x-codex-primary-used-percent",
                    "x-codex-primary-window-minutes",
                    "x-codex-primary-reset-after-seconds",
                    "x-codex-primary-reset-at",
                ],
            ),
            (
                &self.secondary,
                [
                    "x-codex-secondary-used-percent",
                    "x-codex-secondary-window-minutes",
                    "x-codex-secondary-reset-after-seconds",
                    "x-codex-secondary-reset-at",
                ],
            ),
        ];
        for (window, [used, minutes, after, at]) in slots {
            if let Some(w) = window {
                put(used, format_percent(w.used_percent));
                put(minutes, w.window_minutes.to_string());
                put(after, w.reset_after_seconds().to_string());
                put(at, w.reset_at.to_string());
            }
        }
        put(
            "x-codex-credits-has-credits",
            (self.credits_balance > 0.0).to_string(),
        );
        put("x-codex-credits-unlimited", "false".to_owned());
        put(
            "x-codex-credits-balance",
            format_percent(self.credits_balance),
        );
        map
    }
}

/// `25.0`, `12.5`: always with a decimal point, like the JSON numbers.
fn format_percent(v: f64) -> String {
    format!("{v:?}")
}

/// `GET /backend-api/wham/usage`.
pub(crate) async fn usage(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    // PROTOCOL.md §3: the Codex CLI's `originator` and `User-Agent` come with the token.
    if shared.config.strict
        && let Some(missing) = ["originator", "user-agent"]
            .into_iter()
            .find(|name| header_str(&headers, name).is_none_or(|v| v.trim().is_empty()))
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"detail": format!("Missing required header: {missing}")})),
        )
            .into_response();
    }
    // Read under the lock, then (with it released) held back by `usage_delay`.
    let (body, delay) = {
        let mut inner = shared.inner();
        let idx = match inner
            .check_access(bearer(&headers), header_str(&headers, "chatgpt-account-id"))
        {
            Ok(idx) => idx,
            Err(denied) => return denied.into_response(),
        };
        let delay = inner.usage_delay;
        let state = &mut inner.accounts[idx];
        state.usage.roll();
        let forced = state.usage_status_once.pop_front().or(state.usage_status);
        if let Some(status) = forced {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (
                status,
                axum::Json(json!({"detail": format!("Scripted status {}", status.as_u16())})),
            )
                .into_response();
        }
        if let Some(status) = state.usage_challenge {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut page = (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
                CHALLENGE_HTML,
            )
                .into_response();
            if status == StatusCode::FORBIDDEN {
                page.headers_mut().insert(
                    "cf-mitigated",
                    header::HeaderValue::from_static("challenge"),
                );
            }
            return page;
        }
        let body =
            state
                .usage
                .to_json(&state.account.plan, &state.account.id, &state.account.email);
        (body, delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaust_picks_the_window_by_length() {
        let mut u = FakeUsage::new(10.0, 20.0);
        u.exhaust(600);
        assert_eq!(u.primary.as_ref().unwrap().used_percent, 100.0);
        assert_eq!(u.secondary.as_ref().unwrap().used_percent, 20.0);
        let mut u = FakeUsage::new(10.0, 20.0);
        u.exhaust(3 * 24 * 3600);
        assert_eq!(u.primary.as_ref().unwrap().used_percent, 10.0);
        assert_eq!(u.secondary.as_ref().unwrap().used_percent, 100.0);
        let mut u = FakeUsage::weekly_only(50.0);
        u.exhaust(600);
        assert_eq!(u.primary.as_ref().unwrap().used_percent, 100.0);
        assert!(u.is_limit_reached());
    }

    #[test]
    fn an_unnamed_limit_uses_up_the_window_that_runs_out_first() {
        let five = FakeWindow::five_hour(40.0).resets_in(Duration::from_secs(1000));
        let reset_at = five.reset_at;
        let mut u = FakeUsage::new(0.0, 30.0).primary(five);
        u.hit(LimitHit::CurrentWindow);
        let p = u.primary.as_ref().unwrap();
        assert_eq!(p.used_percent, 100.0);
        assert!((reset_at - 1..=reset_at + 1).contains(&p.reset_at));
        assert_eq!(u.secondary.as_ref().unwrap().used_percent, 30.0);
        assert!(u.is_limit_reached());

        let mut u = FakeUsage::weekly_only(50.0);
        let weekly_reset = u.primary.as_ref().unwrap().reset_at;
        u.hit(LimitHit::CurrentWindow);
        let p = u.primary.as_ref().unwrap();
        assert_eq!(p.used_percent, 100.0);
        assert!((weekly_reset - 1..=weekly_reset + 1).contains(&p.reset_at));

        // A reset in the past: the window starts over, used up for 5 hours.
        let mut u = FakeUsage::new(0.0, 0.0).primary(FakeWindow::five_hour(1.0).reset_at(0));
        u.hit(LimitHit::CurrentWindow);
        let after = u.primary.as_ref().unwrap().reset_after_seconds();
        assert!((17_990..=18_000).contains(&after), "{after}");

        let mut u = FakeUsage::new(0.0, 0.0);
        u.hit(LimitHit::ResetsIn(120));
        assert!(u.primary.as_ref().unwrap().reset_after_seconds() <= 120);
    }

    #[test]
    fn headers_follow_the_windows() {
        let h = FakeUsage::new(25.0, 80.0).credits(12.5).headers();
        assert_eq!(h["x-codex-primary-used-percent"], "25.0");
        assert_eq!(h["x-codex-primary-window-minutes"], "300");
        assert_eq!(h["x-codex-secondary-window-minutes"], "10080");
        assert_eq!(h["x-codex-credits-balance"], "12.5");
        assert_eq!(h["x-codex-credits-has-credits"], "true");
        let h = FakeUsage::weekly_only(5.0).headers();
        assert_eq!(h["x-codex-primary-window-minutes"], "10080");
        assert!(h.get("x-codex-secondary-used-percent").is_none());
    }
}
