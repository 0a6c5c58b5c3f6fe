//! Wire facts of the Codex backend the gateway must honour (PROTOCOL.md §4): challenges that come
//! with a 200, the headers the Codex CLI needs back, the model catalogue request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use codexpool_testkit::Reply;
use common::{chat, harness};

#[tokio::test]
async fn a_challenge_page_with_status_200_is_a_challenge() {
    let h = harness(2, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::Status {
            status: 200,
            body: "<!DOCTYPE html><html><title>Just a moment...</title></html>".into(),
            content_type: "text/html; charset=UTF-8".into(),
        },
    );
    let (status, v) = h.json(h.post("/v1/chat/completions", chat(false))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let row = &h.log().await[0];
    assert_eq!(row.accounts_tried, [h.ids[0].clone(), h.ids[1].clone()]);
    // A challenge cools the account briefly (6 s), not as a broken stream would (30 s).
    let until = h
        .pool
        .accounts()
        .runtime(&h.ids[0])
        .unwrap()
        .cooldown_until
        .unwrap();
    assert!(
        until <= h.pool.now().plus(Duration::from_secs(6)),
        "{until:?}"
    );
    assert_eq!(h.attempts("challenge").await, 1);
}
