//! Reading the claims of OpenAI's id and access tokens. Signatures are not verified: the tokens
//! came over TLS from the issuer, and we only read who the account is (PROTOCOL.md §1).

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::AuthError;
use crate::time::Timestamp;

/// The claim object OpenAI nests its account facts in.
pub const OPENAI_AUTH_CLAIM: &str = "https://api.openai.com/auth";

/// What a token says about its account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claims {
    /// The subject (user).
    pub sub: Option<String>,
    /// The email.
    pub email: Option<String>,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
    /// OpenAI account (workspace) id.
    pub chatgpt_account_id: Option<String>,
    /// The plan.
    pub chatgpt_plan_type: Option<String>,
    /// OpenAI user id.
    pub chatgpt_user_id: Option<String>,
    /// The default organization, if any.
    pub default_organization: Option<String>,
}

impl Claims {
    /// The user part of the account identity: `chatgpt_user_id`, else `sub`.
    pub fn user_id(&self) -> Option<&str> {
        self.chatgpt_user_id.as_deref().or(self.sub.as_deref())
    }
}

#[derive(Deserialize)]
struct Raw {
    sub: Option<String>,
    email: Option<String>,
    exp: Option<Value>,
    #[serde(rename = "https://api.openai.com/auth")]
    auth: Option<RawAuth>,
    #[serde(rename = "https://api.openai.com/profile")]
    profile: Option<RawProfile>,
}

#[derive(Deserialize)]
struct RawAuth {
    chatgpt_account_id: Option<String>,
    chatgpt_plan_type: Option<String>,
    chatgpt_user_id: Option<String>,
    user_id: Option<String>,
    #[serde(default)]
    organizations: Vec<RawOrg>,
}

#[derive(Deserialize)]
struct RawOrg {
    id: Option<String>,
    #[serde(default)]
    is_default: bool,
}

#[derive(Deserialize)]
struct RawProfile {
    email: Option<String>,
}

/// Decodes the claims of a JWT (`header.payload.signature`, base64url).
pub fn decode_claims(jwt: &str) -> Result<Claims, AuthError> {
    let mut parts = jwt.trim().split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::InvalidToken(
            "not a JWT (expected three dot-separated parts)".into(),
        ));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| AuthError::InvalidToken(format!("payload is not base64url: {e}")))?;
    let raw: Raw = serde_json::from_slice(&bytes)
        .map_err(|e| AuthError::InvalidToken(format!("payload is not the expected JSON: {e}")))?;
    let expires_at = match raw.exp {
        Some(Value::Number(n)) => n.as_i64().map(Timestamp::from_secs),
        _ => None,
    };
    let auth = raw.auth;
    Ok(Claims {
        sub: raw.sub,
        email: raw.email.or(raw.profile.and_then(|p| p.email)),
        expires_at,
        chatgpt_account_id: auth.as_ref().and_then(|a| a.chatgpt_account_id.clone()),
        chatgpt_plan_type: auth.as_ref().and_then(|a| a.chatgpt_plan_type.clone()),
        chatgpt_user_id: auth
            .as_ref()
            .and_then(|a| a.chatgpt_user_id.clone().or(a.user_id.clone())),
        default_organization: auth.as_ref().and_then(|a| {
            a.organizations
                .iter()
                .find(|o| o.is_default)
                .or(a.organizations.first())
                .and_then(|o| o.id.clone())
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &Value) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"RS256"}"#),
            e.encode(payload.to_string())
        )
    }

    #[test]
    fn reads_openai_claims() {
        let t = jwt(&serde_json::json!({
            "sub": "auth0|u1", "email": "a@b.c", "exp": 1_900_000_000,
            "https://api.openai.com/auth": {
                "chatgpt_account_id": "acct-1", "chatgpt_plan_type": "plus", "chatgpt_user_id": "user-1",
                "organizations": [{"id": "org-a", "is_default": false}, {"id": "org-b", "is_default": true}]
            }
        }));
        let c = decode_claims(&t).unwrap();
        assert_eq!(c.chatgpt_account_id.as_deref(), Some("acct-1"));
        assert_eq!(c.chatgpt_plan_type.as_deref(), Some("plus"));
        assert_eq!(c.user_id(), Some("user-1"));
        assert_eq!(c.email.as_deref(), Some("a@b.c"));
        assert_eq!(c.expires_at, Some(Timestamp::from_secs(1_900_000_000)));
        assert_eq!(c.default_organization.as_deref(), Some("org-b"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_claims("").is_err());
        assert!(decode_claims("a.b").is_err());
        assert!(decode_claims("a.!!!.c").is_err());
        assert!(decode_claims("a.bm90IGpzb24.c").is_err());
        let c = decode_claims(&jwt(&serde_json::json!({"sub": "x"}))).unwrap();
        assert_eq!(c.chatgpt_account_id, None);
    }
}
