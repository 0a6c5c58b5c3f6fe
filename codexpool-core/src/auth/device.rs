//! The device-code sign-in (PROTOCOL.md §1), for machines without a browser: ask the issuer for
//! a user code, show `{issuer}/codex/device` and the code, poll until the user approved it (403
//! and 404 mean "not yet"; give up after 15 minutes), then exchange the authorization code it
//! yields with `redirect_uri = {issuer}/deviceauth/callback`.
//!
//! A device sign-in is a login session in the store like a browser one, so its status can be
//! read and it can be cancelled from another process.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use super::client::{describe, excerpt};
use super::login::{LOGIN_SESSION_TTL, LoginCompleted, LoginOptions, error_fields};
use super::pkce::random_state;
use super::{Auth, AuthError};
use crate::secret::Secret;
use crate::store::{LoginKind, LoginSession, LoginStatus};
use crate::time::Timestamp;

/// Poll interval when the issuer names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Longest poll interval accepted from the issuer.
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// A started device-code sign-in: show `verification_url` and `user_code` to the user, then
/// call [`DeviceLogin::wait`] (or [`Auth::device_wait`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeviceLogin {
    /// The page where the user types the code: `{issuer}/codex/device`.
    pub verification_url: String,
    /// The code to type.
    pub user_code: String,
    /// Seconds between polls.
    pub interval_secs: u64,
    /// The login session's name (for `login_status` / `login_cancel`).
    pub state: String,
    /// When the code stops being polled.
    pub expires_at: Timestamp,
    #[serde(skip)]
    device_auth_id: Secret,
    #[serde(skip)]
    auth: Option<Auth>,
}

impl DeviceLogin {
    /// Polls until the user approved the code, then signs the account in.
    pub async fn wait(&self) -> Result<LoginCompleted, AuthError> {
        match &self.auth {
            Some(a) => a.device_wait(self).await,
            None => Err(AuthError::UnknownState),
        }
    }
}

/// `interval` as a number or a numeric string (PROTOCOL.md §1).
fn parse_interval(v: Option<&Value>) -> Duration {
    let secs = match v {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match secs {
        Some(s) if s.is_finite() && s >= 1.0 => {
            Duration::from_secs_f64(s.min(MAX_INTERVAL.as_secs_f64()))
        }
        Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs(1),
        _ => DEFAULT_INTERVAL,
    }
}

/// Whole seconds, rounded up: a poll never comes sooner than the issuer asked (2.5 s is 3).
fn secs_rounded_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Auth {
    /// Starts a device-code sign-in: asks the issuer for a user code and stores a login session
    /// carrying the account fields of `opts` (`listen` and `open_browser` are ignored).
    pub async fn device_start(&self, opts: LoginOptions) -> Result<DeviceLogin, AuthError> {
        let meta = opts.normalized()?;
        let config = self.config();
        let resp = self
            .http()?
            .post(format!(
                "{}/api/accounts/deviceauth/usercode",
                config.issuer
            ))
            .json(&json!({ "client_id": config.client_id }))
            .send()
            .await
            .map_err(|e| AuthError::transient(describe(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| AuthError::transient(describe(&e)))?;
        if !(200..300).contains(&status) {
            if status >= 500 {
                return Err(AuthError::transient(format!(
                    "the device-code endpoint answered HTTP {status}"
                )));
            }
            let message = match error_fields(&bytes) {
                (_, Some(m)) => m,
                (Some(c), None) => c,
                (None, None) => excerpt(&bytes),
            };
            return Err(AuthError::Device { status, message });
        }
        let invalid = |m: &str| AuthError::Device {
            status,
            message: m.to_string(),
        };
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|_| invalid("the answer is not JSON"))?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let device_auth_id = text("device_auth_id").ok_or_else(|| invalid("no device_auth_id"))?;
        let user_code = text("user_code")
            .or_else(|| text("usercode"))
            .ok_or_else(|| invalid("no user_code"))?;
        let interval = parse_interval(v.get("interval"));

        let now = self.now();
        let session = LoginSession {
            state: random_state(),
            kind: LoginKind::Device,
            // The verifier comes with the approval.
            code_verifier: Secret::new(""),
            redirect_uri: format!("{}/deviceauth/callback", config.issuer),
            label: meta.label,
            group: meta.group,
            tags: meta.tags,
            note: meta.note,
            created_at: now,
            expires_at: now.plus(LOGIN_SESSION_TTL),
            status: LoginStatus::Pending,
        };
        self.pool
            .shared
            .store
            .insert_login_session(&session)
            .await?;
        Ok(DeviceLogin {
            verification_url: format!("{}/codex/device", config.issuer),
            user_code: user_code.to_string(),
            interval_secs: secs_rounded_up(interval).max(1),
            state: session.state,
            expires_at: session.expires_at,
            device_auth_id: Secret::new(device_auth_id),
            auth: Some(self.clone()),
        })
    }

    /// Polls every `interval` until the user approved the code (403/404 = not yet; network
    /// errors and 5xx are retried), gives up after 15 minutes with
    /// [`AuthError::DeviceExpired`], then exchanges the code and creates or updates the account.
    pub async fn device_wait(&self, login: &DeviceLogin) -> Result<LoginCompleted, AuthError> {
        let config = self.config().clone();
        let store = self.pool.shared.store.clone();
        let mut interval = Duration::from_secs(login.interval_secs.max(1));
        let (code, verifier) = loop {
            // Woken early when this process cancels the login.
            let changed = self.pool.shared.auth.login_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let s = store
                .get_login_session(&login.state)
                .await?
                .ok_or(AuthError::UnknownState)?;
            match s.status {
                LoginStatus::Pending => {}
                _ => return Err(self.why_unclaimable(&login.state).await),
            }
            if self.now() >= s.expires_at {
                return Err(AuthError::DeviceExpired);
            }
            let sent = self
                .http()?
                .post(format!("{}/api/accounts/deviceauth/token", config.issuer))
                .json(&json!({
                    "device_auth_id": login.device_auth_id.expose(),
                    "user_code": login.user_code,
                }))
                .send()
                .await;
            match sent {
                Err(e) => {
                    tracing::debug!(error = %describe(&e), "device-code poll failed; retrying")
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    match status {
                        200..=299 => {
                            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            let text = |k: &str| {
                                v.get(k)
                                    .and_then(Value::as_str)
                                    .filter(|s| !s.is_empty())
                                    .map(Secret::new)
                            };
                            match (text("authorization_code"), text("code_verifier")) {
                                (Some(c), Some(v)) => break (c, v),
                                _ => {
                                    tracing::debug!(
                                        "device-code approval lacks authorization_code or code_verifier; retrying"
                                    )
                                }
                            }
                        }
                        403 | 404 => {}
                        // Polled too fast (RFC 8628's slow_down, said as HTTP): slower, not over.
                        429 => {
                            interval = (interval * 2).min(MAX_INTERVAL);
                            tracing::debug!(
                                ?interval,
                                "device-code poll: rate limited; polling slower"
                            );
                        }
                        s if s >= 500 => {
                            tracing::debug!(status = s, "device-code poll: server error; retrying")
                        }
                        _ => {
                            let message = match error_fields(&bytes) {
                                (_, Some(m)) => m,
                                (Some(c), None) => c,
                                (None, None) => excerpt(&bytes),
                            };
                            let e = AuthError::Device { status, message };
                            if store
                                .claim_login_session(&login.state, self.now())
                                .await?
                                .is_some()
                            {
                                return Err(self.fail_session(&login.state, e).await);
                            }
                            return Err(e);
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = changed => {}
            }
        };
        // In its own task: a caller that goes away cannot leave the session half-done.
        let (auth, state) = (self.clone(), login.state.clone());
        tokio::spawn(async move {
            let Some(session) = store.claim_login_session(&state, auth.now()).await? else {
                return Err(auth.why_unclaimable(&state).await);
            };
            auth.login_changed();
            let redirect_uri = format!("{}/deviceauth/callback", config.issuer);
            match auth
                .exchange_code(code.expose(), &redirect_uri, verifier.expose())
                .await
            {
                Ok(signed_in) => auth.finish_signin(&session, signed_in).await,
                Err(e) => Err(auth.fail_session(&state, e).await),
            }
        })
        .await
        .unwrap_or_else(|e| {
            Err(AuthError::transient(format!(
                "the sign-in task failed: {e}"
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_a_number_or_a_numeric_string() {
        assert_eq!(parse_interval(Some(&json!(5))), Duration::from_secs(5));
        assert_eq!(parse_interval(Some(&json!("7"))), Duration::from_secs(7));
        assert_eq!(parse_interval(Some(&json!(" 2 "))), Duration::from_secs(2));
        assert_eq!(parse_interval(Some(&json!("soon"))), DEFAULT_INTERVAL);
        assert_eq!(parse_interval(None), DEFAULT_INTERVAL);
        assert_eq!(parse_interval(Some(&json!(0))), Duration::from_secs(1));
        assert_eq!(parse_interval(Some(&json!(3600))), MAX_INTERVAL);
        // A fraction is waited whole: never sooner than asked.
        let fraction = parse_interval(Some(&json!("2.5")));
        assert_eq!(secs_rounded_up(fraction), 3);
        assert_eq!(secs_rounded_up(Duration::from_secs(2)), 2);
    }
}
