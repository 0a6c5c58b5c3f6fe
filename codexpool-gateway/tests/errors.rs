//! Bad input at the gateway's door: keys, bodies, routes. Each gets a clear OpenAI-shaped error
//! and nothing reaches the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use codexpool_core::keys::NewKey;
use common::{chat, harness};
use serde_json::json;

fn raw(path: &str, key: Option<&str>, ct: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut r = Request::post(path);
    if let Some(k) = key {
        r = r.header("authorization", format!("Bearer {k}"));
    }
    if let Some(c) = ct {
        r = r.header("content-type", c);
    }
    r.body(body.into()).unwrap()
}

#[tokio::test]
async fn keys_are_checked_with_distinct_answers() {
    let h = harness(1, &[]).await;
    let disabled = h.pool.keys().create(NewKey::named("off")).await.unwrap();
    h.pool.keys().disable(&disabled.key.id).await.unwrap();
    let bound = h
        .pool
        .keys()
        .create(NewKey::named("only-a").allow_model("model-a"))
        .await
        .unwrap();
    let body = chat(false).to_string();
    let cases = [
        (None, StatusCode::UNAUTHORIZED, "missing_api_key"),
        (
            Some("sk-cp-nope"),
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            Some(disabled.secret.expose()),
            StatusCode::FORBIDDEN,
            "api_key_disabled",
        ),
        (
            Some(bound.secret.expose()),
            StatusCode::FORBIDDEN,
            "model_not_allowed",
        ),
    ];
    for (key, status, code) in cases {
        let (s, v) = h
            .json(raw(
                "/v1/chat/completions",
                key,
                Some("application/json"),
                body.clone(),
            ))
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{v}"
        );
        assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string());
    }
    let (_, v) = h
        .json(raw(
            "/v1/chat/completions",
            Some(bound.secret.expose()),
            Some("application/json"),
            body,
        ))
        .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-5-codex"),
        "the refused model is named"
    );
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 0);
    // Every refusal has its log row, the secret nowhere in it.
    let log = h.log().await;
    let codes: Vec<_> = log
        .iter()
        .rev()
        .map(|r| r.error_class.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        codes,
        [
            "missing_api_key",
            "invalid_api_key",
            "api_key_disabled",
            "model_not_allowed",
            "model_not_allowed"
        ]
    );
    assert!(
        log.iter()
            .all(|r| r.status >= 401 && r.route == "/v1/chat/completions")
    );
    assert!(!serde_json::to_string(&log).unwrap().contains("sk-cp-"));
    // The path of a refused request is the client's to choose: its row keeps the first 200
    // characters (an id 20,000 long is not stored 20,000 long for every refused try).
    let long = format!("/v1/responses/{}/cancel", "r".repeat(20_000));
    let (s, _) = h.json(raw(&long, None, None, Body::empty())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let row = h.log().await.remove(0);
    assert_eq!(row.route.chars().count(), 201, "{}", row.route);
    assert!(row.route.starts_with("/v1/responses/rrr") && row.route.ends_with('…'));
    // A known key is named in its refusal's row (who still uses a revoked key?).
    let keys: Vec<_> = log.iter().rev().map(|r| r.key_id.as_deref()).collect();
    assert_eq!(
        keys,
        [
            None,
            None,
            Some(disabled.key.id.as_str()),
            Some(bound.key.id.as_str()),
            Some(bound.key.id.as_str())
        ]
    );
}

#[tokio::test]
async fn bodies_are_checked() {
    let h = harness(1, &[("FRONT_PROXY_MAX_BODY_BYTES", "1000")]).await;
    let k = Some(h.key.as_str());
    let json_ct = Some("application/json");
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            raw("/v1/chat/completions", k, json_ct, "{not json"),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            raw("/v1/responses", k, json_ct, ""),
            StatusCode::BAD_REQUEST,
            "request body is empty",
        ),
        (
            raw("/v1/chat/completions", k, json_ct, "[1,2]"),
            StatusCode::BAD_REQUEST,
            "JSON object",
        ),
        (
            raw(
                "/v1/chat/completions",
                k,
                json_ct,
                json!({"model": "m"}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "messages",
        ),
        (
            raw(
                "/v1/chat/completions",
                k,
                json_ct,
                json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "messages[0].role",
        ),
        (
            raw(
                "/v1/chat/completions",
                k,
                json_ct,
                json!({"model": 5, "messages": []}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "model",
        ),
        (
            raw(
                "/v1/responses",
                k,
                json_ct,
                json!({"model": "m", "input": 5}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "input",
        ),
        (
            raw("/v1/chat/completions", k, Some("text/plain"), "hi"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            {
                let mut r = raw("/v1/chat/completions", k, json_ct, &b"\x1f\x8b\x08\x00"[..]);
                r.headers_mut()
                    .insert("content-encoding", "gzip".parse().unwrap());
                r
            },
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding \"gzip\"",
        ),
        (
            raw("/v1/chat/completions", k, json_ct, "x".repeat(5000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "FRONT_PROXY_MAX_BODY_BYTES",
        ),
    ];
    for (req, status, needle) in cases {
        let (s, v) = h.json(req).await;
        assert_eq!(s, status, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{needle}: {v}"
        );
    }
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 0);
    // Refusals are logged too.
    assert!(
        h.log()
            .await
            .iter()
            .all(|r| r.status >= 400 && r.error_class.is_some())
    );
    assert_eq!(h.total_inflight(), 0);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let h = harness(0, &[]).await;
    let (s, v) = h
        .json(Request::get("/v2/nothing").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v2/nothing")
    );
    let (s, v) = h
        .json(
            Request::get("/v1/chat/completions")
                .header("authorization", format!("Bearer {}", h.key))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn models_health_and_metrics() {
    let h = harness(1, &[]).await;
    let req = Request::get("/v1/models")
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::empty())
        .unwrap();
    let (s, v) = h.json(req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["object"], "list");
    assert!(v["data"].as_array().unwrap().len() > 1);
    assert_eq!(
        h.fake.count("/backend-api/codex/models"),
        1,
        "from the upstream catalogue"
    );
    let bound = h
        .pool
        .keys()
        .create(NewKey::named("b").model("gpt-5-codex"))
        .await
        .unwrap();
    let req = Request::get("/v1/models")
        .header("authorization", format!("Bearer {}", bound.secret.expose()))
        .body(Body::empty())
        .unwrap();
    let (_, v) = h.json(req).await;
    assert_eq!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["gpt-5-codex"]
    );
    let (s, v) = h
        .json(Request::get("/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["accounts"].as_u64(), v["usable_accounts"].as_u64()),
        (Some(1), Some(1))
    );
    let (_, _, _) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    let (s, _, text) = h
        .call(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains("codexpool_requests_total{route=\"chat_completions\",status=\"2xx\",protocol=\"openai_chat\"} 1"), "{text}");
    assert!(text.contains("codexpool_upstream_attempts_total{outcome=\"ok\"} 1"));
    assert!(text.contains(&format!(
        "codexpool_account_inflight{{account=\"{}\"}} 0",
        h.ids[0]
    )));
    assert!(text.contains("codexpool_gateway_overhead_seconds_count 1"));
    // Nothing else in flight: the scrape does not count itself.
    assert!(text.contains("\ncodexpool_active_requests 0\n"), "{text}");
}

#[tokio::test]
async fn secrets_never_reach_the_request_log() {
    let h = harness(1, &[("TRACE_BODY_PREVIEW_MAX_BYTES", "4096")]).await;
    let mut body = chat(false);
    body["metadata"] = json!({"api_key": "sk-live-123", "note": "visible"});
    // Pasted into a message: a key (this gateway's own too) and an OAuth token, in a sentence.
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEyMyJ9.c2lnbmF0dXJlLXBhcnQ";
    let pasted = format!(
        "Why is {} refused? Also sk-proj-AbCdEfGhIjKlMnOpQrStUv and Bearer {jwt}. Thanks",
        h.key
    );
    body["messages"][0]["content"] = json!(pasted);
    // And a whole auth.json pasted as a message: its refresh token is no JWT.
    let auth = json!({"tokens": {"refresh_token": "rt_opaque_refresh_value", "account_id": "a"}});
    body["messages"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "user", "content": auth.to_string()}));
    let (s, _) = h.json(h.post("/v1/chat/completions", body)).await;
    assert_eq!(s, StatusCode::OK);
    let row = &h.log().await[0];
    let all = serde_json::to_string(row).unwrap();
    assert!(
        !all.contains("sk-live-123") && !all.contains(&h.key),
        "{all}"
    );
    assert!(!all.contains("sk-proj-") && !all.contains(jwt), "{all}");
    assert!(!all.contains("rt_opaque_refresh_value"), "{all}");
    let preview = row.body_preview.as_deref().unwrap();
    assert!(preview.contains("visible"), "{preview}");
    assert!(
        preview.contains("Why is ***** refused? Also ***** and Bearer *****. Thanks"),
        "{preview}"
    );
    let token = h
        .pool
        .accounts()
        .get(&h.ids[0])
        .unwrap()
        .tokens
        .access_token;
    assert!(!all.contains(token.expose()));
}

#[tokio::test]
async fn nested_under_a_prefix_errors_name_the_full_path() {
    let h = harness(0, &[]).await;
    let app = axum::Router::new().nest_service("/llm", h.gateway.router());
    use tower::ServiceExt;
    let res = app
        .oneshot(Request::get("/llm/nope").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("/llm/nope"),
        "{v}"
    );
}

#[tokio::test]
async fn metrics_follow_the_prometheus_text_format() {
    let h = harness(2, &[]).await;
    let (_, _, _) = h.call(h.post("/v1/chat/completions", chat(false))).await;
    let (s, _, text) = h
        .call(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    // Every sample belongs to the family of the last TYPE line, and a family is declared once.
    let mut declared = std::collections::HashSet::new();
    let mut family = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest.split(' ').next().unwrap().to_string();
            assert!(declared.insert(family.clone()), "{family} declared twice");
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| *b == family)
                .unwrap_or(name);
            assert_eq!(base, family, "sample out of its group: {line}");
        }
    }
    assert!(declared.contains("codexpool_account_usable"));
}

#[tokio::test]
async fn a_model_can_be_retrieved_by_id() {
    let h = harness(1, &[]).await;
    let get = |key: &str, path: &str| {
        Request::get(path)
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap()
    };
    let (s, v) = h.json(get(&h.key, "/v1/models")).await;
    assert_eq!(s, StatusCode::OK);
    let first = v["data"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = h.json(get(&h.key, &format!("/v1/models/{first}"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"id": first, "object": "model", "created": 0, "owned_by": "openai"})
    );
    let (s, v) = h.json(get(&h.key, "/v1/models/no-such-model")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "model_not_found");
    // A key bound to other models does not see this one.
    let bound = h
        .pool
        .keys()
        .create(NewKey::named("only-a").allow_model("model-a"))
        .await
        .unwrap();
    let secret = bound.secret.expose();
    assert_eq!(
        h.json(get(secret, "/v1/models/model-a")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        h.json(get(secret, &format!("/v1/models/{first}"))).await.0,
        StatusCode::NOT_FOUND
    );
    // And the route is behind the key check like the others.
    assert_eq!(
        h.json(get("sk-cp-nope", "/v1/models/model-a")).await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// A web page may call the API only from an origin `CORS_ALLOW_ORIGINS` names: its preflight
/// is answered before the key check (it carries no key), its answers (errors included) say it
/// may read them, and nothing changes for other origins, other routes, or by default.
#[tokio::test]
async fn browsers_may_call_the_api_from_allowed_origins_only() {
    let preflight = |origin: &str| {
        Request::options("/v1/chat/completions")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let from = |mut req: Request<Body>, origin: &str| {
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    let allowed = |res: &axum::http::Response<Body>| {
        res.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };

    // By default: no CORS at all.
    let h = harness(1, &[]).await;
    let res = h.send(preflight("http://localhost:3000")).await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(allowed(&res), None);
    let res = h
        .send(from(
            h.post("/v1/chat/completions", chat(false)),
            "http://localhost:3000",
        ))
        .await;
    assert_eq!((res.status(), allowed(&res)), (StatusCode::OK, None));

    let h = harness(1, &[("CORS_ALLOW_ORIGINS", "http://localhost:3000")]).await;
    let res = h.send(preflight("http://localhost:3000")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(allowed(&res).as_deref(), Some("http://localhost:3000"));
    let methods = res.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 0);
    let res = h.send(preflight("https://evil.example")).await;
    assert_eq!(allowed(&res), None);
    // The answer, and a refusal, can be read by the page, with the gateway's own headers.
    let res = h
        .send(from(
            h.post("/v1/chat/completions", chat(false)),
            "http://localhost:3000",
        ))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(allowed(&res).as_deref(), Some("http://localhost:3000"));
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    let res = h
        .send(from(
            raw("/v1/chat/completions", None, Some("application/json"), "{}"),
            "http://localhost:3000",
        ))
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(allowed(&res).as_deref(), Some("http://localhost:3000"));
    // An unknown API path's 404 too (the page can read why its call failed).
    let unknown = Request::get("/v1/nope").body(Body::empty()).unwrap();
    let res = h.send(from(unknown, "http://localhost:3000")).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(allowed(&res).as_deref(), Some("http://localhost:3000"));
    // Not the other routes.
    let health = Request::get("/health").body(Body::empty()).unwrap();
    let res = h.send(from(health, "http://localhost:3000")).await;
    assert_eq!(allowed(&res), None);

    let h = harness(1, &[("CORS_ALLOW_ORIGINS", "*")]).await;
    let res = h.send(preflight("https://any.example")).await;
    assert_eq!(allowed(&res).as_deref(), Some("*"));
}

/// A body that stops arriving part-way is a 408 once nothing more came for the idle time; a slow
/// one whose parts keep coming is read whole.
#[tokio::test]
async fn a_body_that_stops_arriving_is_a_408() {
    use futures_util::StreamExt;
    let idle = std::time::Duration::from_secs(1);
    let h = common::harness_with(1, &[], |b| b.body_idle_timeout(idle)).await;
    let whole = chat(false).to_string();
    let request = |body: Body| {
        Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {}", h.key))
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    };
    let (first, _) = whole.split_at(10);
    let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(first.to_string())])
        .chain(futures_util::stream::pending());
    let started = std::time::Instant::now();
    let (status, _, body) = h.call(request(Body::from_stream(stalled))).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert!(started.elapsed() >= idle);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    let row = &h.log().await[0];
    assert_eq!(
        (row.status, row.error_class.as_deref()),
        (408, Some("request_timeout"))
    );
    assert_eq!(h.fake.count("/backend-api/codex/responses"), 0);

    // Parts 300 ms apart, longer together than the idle time: read whole.
    let parts: Vec<String> = whole
        .as_bytes()
        .chunks(whole.len() / 5 + 1)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let slow = futures_util::stream::iter(parts).then(|p| async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        Ok::<_, std::io::Error>(p)
    });
    let (status, _, body) = h.call(request(Body::from_stream(slow))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
