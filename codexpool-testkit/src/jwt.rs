//! Minting the fake's JSON Web Tokens (PROTOCOL.md §1): an `RS256` header, the claims a Codex
//! client reads (`sub`, `email`, `exp`, `iat` and the `https://api.openai.com/auth` object), and a
//! random signature part, since clients read the claims without verifying them. Also the inverse,
//! [`decode_claims`], for tests that want to look inside a token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::auth::FakeAccount;
use crate::state::random_bytes;

/// The claim that carries the ChatGPT account facts.
pub const AUTH_CLAIM: &str = "https://api.openai.com/auth";

/// The claim that carries the profile (email) in access tokens.
pub const PROFILE_CLAIM: &str = "https://api.openai.com/profile";

/// Which of the two JWTs of a sign-in to mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    Id,
    Access,
}

/// What varies between two tokens of the same account.
pub(crate) struct Mint<'a> {
    pub(crate) account: &'a FakeAccount,
    pub(crate) issuer: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) iat: i64,
    pub(crate) exp: i64,
    /// Unique per token, so that no two access tokens are ever equal.
    pub(crate) jti: String,
}

/// The claims object of a token.
pub(crate) fn claims(kind: TokenKind, m: &Mint<'_>) -> Value {
    let a = m.account;
    let auth = json!({
        "chatgpt_account_id": a.id,
        "chatgpt_plan_type": a.plan,
        "chatgpt_user_id": a.user_id,
        "user_id": a.user_id,
        "organizations": [
            {"id": a.org_id, "is_default": true, "role": "owner", "title": "Personal"}
        ],
    });
    let mut claims = json!({
        "iss": m.issuer,
        "sub": a.subject,
        "email": a.email,
        "email_verified": true,
        "iat": m.iat,
        "nbf": m.iat,
        "exp": m.exp,
        "jti": m.jti,
        AUTH_CLAIM: auth,
    });
    match kind {
        TokenKind::Id => {
            claims["aud"] = json!([m.client_id]);
            claims["auth_time"] = json!(m.iat);
        }
        TokenKind::Access => {
            claims["aud"] = json!(["https://api.openai.com/v1"]);
            claims["client_id"] = json!(m.client_id);
            claims["scp"] = json!(["openid", "profile", "email", "offline_access"]);
            claims[PROFILE_CLAIM] = json!({"email": a.email, "email_verified": true});
        }
    }
    claims
}

/// Encodes `claims` as a JWT with an `RS256` header and a random (unverifiable) signature.
pub(crate) fn encode(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = URL_SAFE_NO_PAD.encode(random_bytes::<64>());
    format!("{header}.{payload}.{signature}")
}

/// Mints one token.
pub(crate) fn mint(kind: TokenKind, m: &Mint<'_>) -> String {
    encode(&claims(kind, m))
}

/// Reads the claims of a JWT without verifying it, as Codex clients do. `None` when `token` is
/// not three dot-separated parts with a base64url JSON object in the middle.
///
/// ```
/// use codexpool_testkit::{FakeAccount, FakeOpenAi, decode_claims};
/// let fake = FakeOpenAi::start().unwrap();
/// let tokens = fake.add_account(FakeAccount::new("acct-1").plan("pro"));
/// let claims = decode_claims(&tokens.access_token).unwrap();
/// assert_eq!(claims["https://api.openai.com/auth"]["chatgpt_plan_type"], "pro");
/// ```
pub fn decode_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.is_object().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header() {
        let account = FakeAccount::new("acct-x").email("x@example.com");
        let m = Mint {
            account: &account,
            issuer: "http://127.0.0.1:1",
            client_id: "cid",
            iat: 100,
            exp: 200,
            jti: "j1".into(),
        };
        let token = mint(TokenKind::Access, &m);
        let header = token.split('.').next().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).unwrap(),
            br#"{"alg":"RS256","typ":"JWT"}"#
        );
        let c = decode_claims(&token).unwrap();
        assert_eq!(c["exp"], 200);
        assert_eq!(c["email"], "x@example.com");
        assert_eq!(c[AUTH_CLAIM]["chatgpt_account_id"], "acct-x");
        assert_eq!(c[AUTH_CLAIM]["organizations"][0]["is_default"], true);
        let id = decode_claims(&mint(TokenKind::Id, &m)).unwrap();
        assert_eq!(id["aud"][0], "cid");
        assert!(decode_claims("not-a-jwt").is_none());
        assert!(decode_claims("a.b.c.d").is_none());
    }
}
