//! Sign-in over real HTTP: authorize redirect, code exchange with PKCE, refresh rotation and reuse
//! detection, stale tokens, scripted refresh failures, device code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use codexpool_testkit::{
    AUTH_CLAIM, DEFAULT_CLIENT_ID, DeviceInterval, FakeAccount, FakeOpenAi, FakeRefreshFailure,
    decode_claims,
};
use common::{client, codex_body, pkce};
use serde_json::{Value, json};

const REDIRECT: &str = "http://localhost:1455/auth/callback";

fn authorize_url(fake: &FakeOpenAi, challenge: &str, state: &str) -> String {
    let mut url = url::Url::parse(&format!("{}/oauth/authorize", fake.issuer())).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", DEFAULT_CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "openid profile email offline_access")
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("id_token_add_organizations", "true")
        .append_pair("codex_cli_simplified_flow", "true")
        .append_pair("state", state)
        .append_pair("originator", "codex_cli_rs");
    url.to_string()
}

/// Follows the authorize step; the redirect's query.
async fn authorize(fake: &FakeOpenAi, challenge: &str, state: &str) -> BTreeMap<String, String> {
    let resp = client()
        .get(authorize_url(fake, challenge, state))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(REDIRECT), "{location}");
    url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn exchange(
    fake: &FakeOpenAi,
    code: &str,
    verifier: &str,
    redirect: &str,
) -> reqwest::Response {
    client()
        .post(format!("{}/oauth/token", fake.issuer()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect),
            ("client_id", DEFAULT_CLIENT_ID),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap()
}

async fn refresh(fake: &FakeOpenAi, refresh_token: &str) -> reqwest::Response {
    client()
        .post(format!("{}/oauth/token", fake.issuer()))
        .json(&json!({
            "client_id": DEFAULT_CLIENT_ID,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "scope": "openid profile email",
        }))
        .send()
        .await
        .unwrap()
}

async fn usage_status(fake: &FakeOpenAi, account: &str, token: &str) -> u16 {
    client()
        .get(format!("{}/backend-api/wham/usage", fake.usage_base_url()))
        .bearer_auth(token)
        .header("ChatGPT-Account-ID", account)
        .header("originator", "codex_cli_rs")
        .header("user-agent", "codex_cli_rs/0.171.0")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn authorization_code_with_pkce_signs_in() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    fake.add_account(
        FakeAccount::new("acct-2")
            .email("two@example.com")
            .plan("pro"),
    );
    fake.set_next_login("acct-2");
    let (verifier, challenge) = pkce();
    let q = authorize(&fake, &challenge, "state-123").await;
    assert_eq!(q["state"], "state-123");
    let code = q["code"].clone();

    // Every parameter the client sent is recorded, in order.
    let sent = fake.last_authorize_query().unwrap();
    let names: Vec<&str> = sent.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "code_challenge",
            "code_challenge_method",
            "id_token_add_organizations",
            "codex_cli_simplified_flow",
            "state",
            "originator"
        ]
    );
    let recorded = fake.last_request("/oauth/authorize").unwrap();
    assert_eq!(
        recorded.query_param("scope").unwrap(),
        "openid profile email offline_access"
    );

    let resp = exchange(&fake, &code, &verifier, REDIRECT).await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    for k in ["id_token", "access_token", "refresh_token"] {
        assert!(tokens[k].as_str().is_some_and(|s| !s.is_empty()), "{k}");
    }
    assert!(tokens["refresh_token"].as_str().unwrap().starts_with("rt_"));
    let claims = decode_claims(tokens["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["email"], "two@example.com");
    assert_eq!(claims[AUTH_CLAIM]["chatgpt_account_id"], "acct-2");
    assert_eq!(claims[AUTH_CLAIM]["chatgpt_plan_type"], "pro");
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(fake.current_tokens("acct-2").access_token, access);
    assert_eq!(usage_status(&fake, "acct-2", access).await, 200);
    let form = fake.last_request("/oauth/token").unwrap();
    assert_eq!(form.body_form()["grant_type"], "authorization_code");
    assert_eq!(form.account_id.as_deref(), Some("acct-2"));

    // A code is single use.
    let again = exchange(&fake, &code, &verifier, REDIRECT).await;
    assert_eq!(again.status(), 400);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn exchange_failures_are_invalid_grant() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    let (verifier, challenge) = pkce();

    let code = authorize(&fake, &challenge, "s").await["code"].clone();
    let wrong_verifier = exchange(&fake, &code, &"v".repeat(43), REDIRECT).await;
    assert_eq!(wrong_verifier.status(), 400);
    let body: Value = wrong_verifier.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"].as_str().unwrap().contains("PKCE"));
    // RFC 7636's shapes: a verifier too short or padded, a challenge that is no SHA-256.
    for bad in ["short-verifier".to_owned(), format!("{verifier}=")] {
        let code = authorize(&fake, &challenge, "s").await["code"].clone();
        let r = exchange(&fake, &code, &bad, REDIRECT).await;
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("43 to 128 unreserved"),
            "{bad}: {body}"
        );
    }
    let refused = client()
        .get(format!("{}/oauth/authorize", fake.issuer()))
        .query(&[
            ("response_type", "code"),
            ("client_id", DEFAULT_CLIENT_ID),
            ("redirect_uri", REDIRECT),
            ("code_challenge", "short"),
            ("code_challenge_method", "S256"),
            ("state", "s"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["error_description"],
        "code_challenge must be 43 base64url characters"
    );

    let code = authorize(&fake, &challenge, "s").await["code"].clone();
    let wrong_redirect = exchange(&fake, &code, &verifier, "http://localhost:1455/other").await;
    assert_eq!(wrong_redirect.status(), 400);

    let unknown = exchange(&fake, "ac_nope", &verifier, REDIRECT).await;
    assert_eq!(unknown.status(), 400);

    let code = authorize(&fake, &challenge, "s").await["code"].clone();
    let wrong_client = client()
        .post(format!("{}/oauth/token", fake.issuer()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("client_id", "someone-else"),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_client.status(), 401);

    // Each grant in its own encoding (PROTOCOL.md §1): a JSON exchange and a form refresh are
    // refused, and the code stays usable.
    let code = authorize(&fake, &challenge, "s").await["code"].clone();
    let as_json = client()
        .post(format!("{}/oauth/token", fake.issuer()))
        .json(
            &json!({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "client_id": DEFAULT_CLIENT_ID, "code_verifier": verifier}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(as_json.status(), 400);
    let body: Value = as_json.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    let tokens: Value = exchange(&fake, &code, &verifier, REDIRECT)
        .await
        .json()
        .await
        .unwrap();
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    let as_form = client()
        .post(format!("{}/oauth/token", fake.issuer()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", DEFAULT_CLIENT_ID),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(as_form.status(), 400);
    assert_eq!(refresh(&fake, refresh_token).await.status(), 200);
}

#[tokio::test]
async fn authorize_validates_and_scripts_errors() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    let (_, challenge) = pkce();
    let good = authorize_url(&fake, &challenge, "st");
    for (param, bad) in [
        ("code_challenge_method", "plain"),
        ("response_type", "token"),
        ("client_id", "nope"),
        ("state", ""),
    ] {
        let mut url = url::Url::parse(&good).unwrap();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .into_owned()
            .map(|(k, v)| {
                if k == param {
                    (k, bad.to_owned())
                } else {
                    (k, v)
                }
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        let resp = client().get(url.as_str()).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{param}={bad}");
    }

    fake.fail_next_authorize("missing_codex_entitlement", "No Codex for you");
    let q = authorize(&fake, &challenge, "st").await;
    assert_eq!(q["error"], "missing_codex_entitlement");
    assert_eq!(q["error_description"], "No Codex for you");
    assert_eq!(q["state"], "st");
    assert!(!q.contains_key("code"));
    // Only the next one fails.
    assert!(
        authorize(&fake, &challenge, "st")
            .await
            .contains_key("code")
    );
}

#[tokio::test]
async fn refresh_rotates_and_detects_reuse() {
    let fake = FakeOpenAi::start().unwrap();
    let first = fake.add_account(FakeAccount::new("acct-1"));

    let resp = refresh(&fake, &first.refresh_token).await;
    assert_eq!(resp.status(), 200);
    let second: Value = resp.json().await.unwrap();
    let new_access = second["access_token"].as_str().unwrap();
    let new_refresh = second["refresh_token"].as_str().unwrap();
    assert_ne!(new_access, first.access_token);
    assert_ne!(new_refresh, first.refresh_token);
    assert!(second["id_token"].is_string());
    assert_eq!(fake.current_tokens("acct-1").access_token, new_access);
    assert_eq!(
        fake.auth_json("acct-1")["tokens"]["refresh_token"],
        new_refresh
    );
    assert_eq!(fake.refresh_count("acct-1"), 1);

    // The old access token is stale everywhere; the new one works.
    assert_eq!(
        usage_status(&fake, "acct-1", &first.access_token).await,
        401
    );
    assert_eq!(usage_status(&fake, "acct-1", new_access).await, 200);
    let codex = common::codex_request(&fake, "acct-1", &first.access_token)
        .json(&codex_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(codex.status(), 401);

    // Using the old refresh token again: reuse, and the family is dead.
    let reused = refresh(&fake, &first.refresh_token).await;
    assert_eq!(reused.status(), 401);
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "refresh_token_reused");
    let after = refresh(&fake, new_refresh).await;
    assert_eq!(after.status(), 401);
    let body: Value = after.json().await.unwrap();
    assert_eq!(body["error"]["code"], "refresh_token_invalidated");

    let unknown = refresh(&fake, "rt_never_issued").await;
    assert_eq!(unknown.status(), 401);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "refresh_token_invalidated");
}

#[tokio::test]
async fn every_access_token_is_unique() {
    let fake = FakeOpenAi::start().unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut rt = fake.add_account(FakeAccount::new("acct-1")).refresh_token;
    seen.insert(fake.current_tokens("acct-1").access_token);
    for _ in 0..5 {
        let v: Value = refresh(&fake, &rt).await.json().await.unwrap();
        assert!(seen.insert(v["access_token"].as_str().unwrap().to_owned()));
        rt = v["refresh_token"].as_str().unwrap().to_owned();
    }
}

#[tokio::test]
async fn expired_access_token_answers_401_until_refresh() {
    let fake = FakeOpenAi::start().unwrap();
    let tokens = fake.add_account(FakeAccount::new("acct-1"));
    fake.expire_access_token("acct-1");
    assert_eq!(
        usage_status(&fake, "acct-1", &tokens.access_token).await,
        401
    );
    let v: Value = refresh(&fake, &tokens.refresh_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        usage_status(&fake, "acct-1", v["access_token"].as_str().unwrap()).await,
        200
    );

    // A zero TTL mints tokens whose `exp` has already passed.
    let t = fake.add_account(FakeAccount::new("acct-0").access_ttl(Duration::ZERO));
    assert_eq!(usage_status(&fake, "acct-0", &t.access_token).await, 401);

    fake.revoke_sessions("acct-1");
    let v2 = fake.current_tokens("acct-1");
    assert_eq!(usage_status(&fake, "acct-1", &v2.access_token).await, 401);
    let body: Value = refresh(&fake, &v2.refresh_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"]["code"], "refresh_token_invalidated");
}

#[tokio::test]
async fn scripted_refresh_failures() {
    let fake = FakeOpenAi::start().unwrap();
    let t = fake.add_account(FakeAccount::new("acct-1"));
    let cases = [
        (FakeRefreshFailure::Expired, 401, "refresh_token_expired"),
        (FakeRefreshFailure::Reused, 401, "refresh_token_reused"),
        (
            FakeRefreshFailure::Invalidated,
            401,
            "refresh_token_invalidated",
        ),
        (
            FakeRefreshFailure::SessionTerminated,
            401,
            "app_session_terminated",
        ),
        (FakeRefreshFailure::InvalidGrant, 400, "invalid_grant"),
        (FakeRefreshFailure::ServerError(503), 503, ""),
        (
            FakeRefreshFailure::Custom {
                status: 400,
                code: "weird".into(),
            },
            400,
            "weird",
        ),
    ];
    for (failure, status, code) in cases {
        fake.fail_next_refresh("acct-1", failure.clone());
        let resp = refresh(&fake, &t.refresh_token).await;
        assert_eq!(resp.status().as_u16(), status, "{failure:?}");
        let body: Value = resp.json().await.unwrap();
        let got = body["error"]["code"]
            .as_str()
            .or(body["error"].as_str())
            .unwrap_or_default();
        assert_eq!(got, code, "{failure:?}");
    }
    // The token was not consumed by the scripted failures.
    assert_eq!(refresh(&fake, &t.refresh_token).await.status(), 200);
    assert_eq!(fake.refresh_count("acct-1"), 8);
}

#[tokio::test]
async fn concurrent_refreshes_race_and_one_loses() {
    let fake = FakeOpenAi::start().unwrap();
    let t = fake.add_account(FakeAccount::new("acct-1"));
    fake.refresh_delay(Duration::from_millis(50));
    let (a, b) = tokio::join!(
        refresh(&fake, &t.refresh_token),
        refresh(&fake, &t.refresh_token)
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401]);
    assert_eq!(fake.refresh_count("acct-1"), 2);
    assert_eq!(fake.refreshes_held(), 2, "both waited out the delay");
    fake.refresh_delay(Duration::ZERO);
    let other = fake.add_account(FakeAccount::new("acct-2"));
    assert_eq!(refresh(&fake, &other.refresh_token).await.status(), 200);
    assert_eq!(
        fake.refreshes_held(),
        2,
        "a refresh without a delay is not held"
    );
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_token() {
    let fake = FakeOpenAi::start().unwrap();
    let t = fake.add_account(FakeAccount::new("acct-1"));
    fake.set_refresh_rotates(false);
    for _ in 0..2 {
        let v: Value = refresh(&fake, &t.refresh_token).await.json().await.unwrap();
        assert!(v.get("refresh_token").is_none());
        assert!(v["access_token"].is_string());
    }
}

#[tokio::test]
async fn device_code_pending_then_approved() {
    let fake = FakeOpenAi::start().unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    fake.add_account(FakeAccount::new("acct-2"));
    let http = client();
    let start: Value = http
        .post(format!(
            "{}/api/accounts/deviceauth/usercode",
            fake.issuer()
        ))
        .json(&json!({"client_id": DEFAULT_CLIENT_ID}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(start["interval"], "1");
    let poll_body =
        json!({"device_auth_id": start["device_auth_id"], "user_code": start["user_code"]});
    let poll = || async {
        http.post(format!("{}/api/accounts/deviceauth/token", fake.issuer()))
            .json(&poll_body)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(poll().await.status(), 403);
    let unknown = http
        .post(format!("{}/api/accounts/deviceauth/token", fake.issuer()))
        .json(&json!({"device_auth_id": "x", "user_code": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    assert_eq!(
        fake.latest_user_code().as_deref(),
        start["user_code"].as_str()
    );
    assert!(fake.approve_latest_device("acct-2"));
    let done = poll().await;
    assert_eq!(done.status(), 200);
    let done: Value = done.json().await.unwrap();
    let verifier = done["code_verifier"].as_str().unwrap();
    assert_eq!(
        codexpool_testkit::pkce_challenge(verifier),
        done["code_challenge"].as_str().unwrap()
    );
    let resp = exchange(
        &fake,
        done["authorization_code"].as_str().unwrap(),
        verifier,
        &fake.device_redirect_uri(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let tokens: Value = resp.json().await.unwrap();
    let claims = decode_claims(tokens["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims[AUTH_CLAIM]["chatgpt_account_id"], "acct-2");
}

#[tokio::test]
async fn device_code_auto_approve_and_numeric_interval() {
    let fake = FakeOpenAi::builder()
        .device_interval(DeviceInterval::Number(0))
        .start()
        .unwrap();
    fake.add_account(FakeAccount::new("acct-1"));
    fake.auto_approve_device(2, "acct-1");
    let http = client();
    let start: Value = http
        .post(format!(
            "{}/api/accounts/deviceauth/usercode",
            fake.issuer()
        ))
        .json(&json!({"client_id": DEFAULT_CLIENT_ID}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(start["interval"], 0);
    let body = json!({"device_auth_id": start["device_auth_id"], "user_code": start["user_code"]});
    let url = format!("{}/api/accounts/deviceauth/token", fake.issuer());
    assert_eq!(
        http.post(&url).json(&body).send().await.unwrap().status(),
        403
    );
    assert_eq!(
        http.post(&url).json(&body).send().await.unwrap().status(),
        200
    );
}

#[test]
fn auth_json_is_the_codex_cli_shape() {
    let fake = FakeOpenAi::start().unwrap();
    let t = fake.add_account(FakeAccount::new("acct-9"));
    let doc = fake.auth_json("acct-9");
    assert_eq!(doc["OPENAI_API_KEY"], Value::Null);
    assert_eq!(doc["tokens"]["id_token"], t.id_token.as_str());
    assert_eq!(doc["tokens"]["access_token"], t.access_token.as_str());
    assert_eq!(doc["tokens"]["refresh_token"], t.refresh_token.as_str());
    assert_eq!(doc["tokens"]["account_id"], "acct-9");
    let last = doc["last_refresh"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(last, &time::format_description::well_known::Rfc3339).is_ok(),
        "{last}"
    );
}

#[test]
#[should_panic(expected = "unknown account `ghost`")]
fn unknown_accounts_panic_with_their_name() {
    let fake = FakeOpenAi::start().unwrap();
    fake.push_reply("ghost", codexpool_testkit::Reply::Overloaded);
}
