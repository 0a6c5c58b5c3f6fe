//! Reading the claims of OpenAI's id and access tokens. Signatures are not verified: the tokens
//! came over TLS from the issuer, and we only read who the account is (PROTOCOL.md §1).

use base64::Engine;
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

/// Decodes the claims of a JWT (`header.payload.signature`, base64url). The payload must be a
/// JSON object; a claim of an unexpected type (`organizations: null`, a numeric `sub`) is read
/// as absent rather than making the whole token unreadable.
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
    let raw: Value = serde_json::from_slice(&bytes)
        .map_err(|e| AuthError::InvalidToken(format!("payload is not JSON: {e}")))?;
    if !raw.is_object() {
        return Err(AuthError::InvalidToken(
            "payload is not a JSON object".into(),
        ));
    }
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let auth = raw.get(OPENAI_AUTH_CLAIM).filter(|a| a.is_object());
    let auth_text = |key: &str| auth.and_then(|a| text(a, key));
    // (id, is_default) of each organization that has an id.
    let mut organizations = auth
        .and_then(|a| a.get("organizations"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|o| {
            Some((
                text(o, "id")?,
                o.get("is_default") == Some(&Value::Bool(true)),
            ))
        });
    let default_organization = organizations
        .clone()
        .find(|(_, default)| *default)
        .or_else(|| organizations.next())
        .map(|(id, _)| id);
    Ok(Claims {
        sub: text(&raw, "sub"),
        email: text(&raw, "email").or_else(|| {
            raw.get("https://api.openai.com/profile")
                .and_then(|p| text(p, "email"))
        }),
        expires_at: raw
            .get("exp")
            .and_then(Value::as_i64)
            .map(Timestamp::from_secs),
        chatgpt_account_id: auth_text("chatgpt_account_id"),
        chatgpt_plan_type: auth_text("chatgpt_plan_type"),
        chatgpt_user_id: auth_text("chatgpt_user_id").or_else(|| auth_text("user_id")),
        default_organization,
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
        assert!(decode_claims(&jwt(&serde_json::json!(["sub"]))).is_err());
        let c = decode_claims(&jwt(&serde_json::json!({"sub": "x"}))).unwrap();
        assert_eq!(c.chatgpt_account_id, None);
    }

    #[test]
    fn a_claim_of_another_type_is_absent_not_fatal() {
        let t = jwt(&serde_json::json!({
            "sub": 7, "email": null, "exp": "soon",
            "https://api.openai.com/profile": {"email": "a@b.c"},
            "https://api.openai.com/auth": {
                "chatgpt_account_id": "acct-1", "chatgpt_plan_type": ["plus"],
                "organizations": null
            }
        }));
        let c = decode_claims(&t).unwrap();
        assert_eq!(c.chatgpt_account_id.as_deref(), Some("acct-1"));
        assert_eq!(
            (c.sub, c.chatgpt_plan_type, c.expires_at),
            (None, None, None)
        );
        assert_eq!(c.email.as_deref(), Some("a@b.c"));
        assert_eq!(c.default_organization, None);
        let t = jwt(&serde_json::json!({
            "https://api.openai.com/auth": {"organizations": [7, {"id": "org-a"}]}
        }));
        // Without a default, the first one with an id.
        let c = decode_claims(&t).unwrap();
        assert_eq!(c.default_organization.as_deref(), Some("org-a"));
    }
}
