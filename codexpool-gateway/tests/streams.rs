//! Streamed `/v1/responses` answers as clients read them: a final `response.completed` /
//! `response.incomplete` whose `output` the backend left empty reaches ordinary clients with the
//! streamed items in it (openai-python's `responses.stream()` and openai-agents take the final
//! response from that event), while the Codex CLI gets every byte as the backend sent it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use codexpool_testkit::{OutputItem, Reply};
use common::{Harness, data_frames, harness, harness_with, json_frames};
use serde_json::{Value, json};

fn stream_request(h: &Harness) -> Request<Body> {
    h.post(
        "/v1/responses",
        json!({"model": "gpt-5-codex", "input": "Hi", "stream": true}),
    )
}

/// A streamed request as the Codex CLI sends it (its `originator`, `session-id` and `x-codex-*`
/// headers).
fn codex_request(h: &Harness) -> Request<Body> {
    let body = json!({
        "model": "gpt-5-codex", "instructions": "You are Codex.", "stream": true, "store": false,
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
    });
    h.codex_post(&body, Some("w"))
}

fn of_type<'f>(frames: &'f [Value], kind: &str) -> Vec<&'f Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}

#[tokio::test]
async fn an_empty_final_output_reaches_responses_clients_with_the_streamed_items() {
    let h = harness(1, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::items([
            OutputItem::reasoning("Plan"),
            OutputItem::text("All done"),
            OutputItem::tool_call("call_1", "f", r#"{"x":1}"#),
        ])
        .empty_final_output(),
    );
    let (status, _, body) = h.call(stream_request(&h)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let frames = json_frames(&body);
    let items: Vec<&Value> = of_type(&frames, "response.output_item.done")
        .into_iter()
        .map(|f| &f["item"])
        .collect();
    assert_eq!(items.len(), 3);
    let completed = of_type(&frames, "response.completed");
    assert_eq!(completed.len(), 1);
    let output: Vec<&Value> = completed[0]["response"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(output, items, "the streamed items, in output order");
    assert_eq!(output[1]["content"][0]["text"], "All done");
    // The rest of the final event is the backend's.
    assert_eq!(completed[0]["response"]["status"], "completed");
    assert!(
        completed[0]["response"]["usage"]["output_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(body.contains("event: response.completed\n"));
    assert!(h.log().await[0].tokens.is_some());
}

#[tokio::test]
async fn a_slow_upstream_does_not_lose_the_refill() {
    // The headers go out before the upstream answers (keep-alives first): same rewrite.
    let h = harness_with(1, &[], |b| {
        b.keepalive_interval(std::time::Duration::from_millis(50))
    })
    .await;
    h.fake.push_reply(
        "acct-0",
        Reply::text("Slow but sure")
            .empty_final_output()
            .slow_first_byte(std::time::Duration::from_millis(300)),
    );
    let (status, _, body) = h.call(stream_request(&h)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(": keep-alive\n\n"), "{body}");
    let frames = json_frames(&body);
    let output = &of_type(&frames, "response.completed")[0]["response"]["output"];
    assert_eq!(output[0]["content"][0]["text"], "Slow but sure", "{body}");
}

/// A backend stream with an empty final `output`, items out of `output_index` order, and frames
/// in the backend's exact spelling (an `event:` line, keys in its order).
const RAW_EMPTY_OUTPUT: &str = concat!(
    "event: response.created\n",
    r#"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","status":"in_progress","output":[]}}"#,
    "\n\n",
    "event: response.output_item.done\n",
    r#"data: {"type":"response.output_item.done","sequence_number":1,"output_index":1,"item":{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"output_text","text":"Hi \u00e9"}]}}"#,
    "\n\n",
    "event: response.output_item.done\n",
    r#"data: {"type":"response.output_item.done","sequence_number":2,"output_index":0,"item":{"id":"rs_1","type":"reasoning","summary":[]}}"#,
    "\n\n",
    "event: response.completed\n",
    r#"data: {"type":"response.completed","sequence_number":3,"response":{"id":"resp_1","status":"completed","output":[],"usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}}"#,
    "\n\n",
);

#[tokio::test]
async fn only_the_final_event_is_rewritten() {
    let h = harness(1, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::RawSse {
            body: RAW_EMPTY_OUTPUT.into(),
        },
    );
    let (status, _, body) = h.call(stream_request(&h)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent: Vec<&str> = RAW_EMPTY_OUTPUT.split_inclusive("\n\n").collect();
    let got: Vec<&str> = body.split_inclusive("\n\n").collect();
    assert_eq!(got.len(), sent.len(), "{body}");
    assert_eq!(got[..3], sent[..3], "every other event byte for byte");
    assert_eq!(
        got[3],
        concat!(
            "event: response.completed\n",
            r#"data: {"type":"response.completed","sequence_number":3,"response":{"id":"resp_1","status":"completed","output":[{"id":"rs_1","type":"reasoning","summary":[]},{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"output_text","text":"Hi \u00e9"}]}],"usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}}"#,
            "\n\n",
        ),
        "the items as the backend spelled them, in output_index order"
    );
    assert_eq!(h.log().await[0].tokens.unwrap().output_tokens, 2);

    // `response.incomplete` too; a final event that has its output is left alone.
    let incomplete = RAW_EMPTY_OUTPUT
        .replace("response.completed", "response.incomplete")
        .replace(r#""status":"completed""#, r#""status":"incomplete""#);
    let full = RAW_EMPTY_OUTPUT.replace(
        r#""status":"completed","output":[]"#,
        r#""status":"completed","output":[{"id":"msg_1"}]"#,
    );
    for (raw, refilled) in [(incomplete, true), (full, false)] {
        h.fake
            .push_reply("acct-0", Reply::RawSse { body: raw.clone() });
        let (_, _, body) = h.call(stream_request(&h)).await;
        if refilled {
            let last = json_frames(&body).pop().unwrap();
            assert_eq!(last["type"], "response.incomplete");
            assert_eq!(last["response"]["output"][1]["id"], "msg_1");
        } else {
            assert_eq!(body, raw);
        }
    }
}

#[tokio::test]
async fn the_codex_cli_gets_the_final_event_as_sent() {
    let h = harness(1, &[]).await;
    h.fake.push_reply(
        "acct-0",
        Reply::RawSse {
            body: RAW_EMPTY_OUTPUT.into(),
        },
    );
    let (status, _, body) = h.call(codex_request(&h)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, RAW_EMPTY_OUTPUT, "every byte as the backend sent it");

    h.fake
        .push_reply("acct-0", Reply::text("All done").empty_final_output());
    let (_, _, body) = h.call(codex_request(&h)).await;
    let frames = json_frames(&body);
    let completed = of_type(&frames, "response.completed");
    assert_eq!(completed[0]["response"]["output"], json!([]));
    assert_eq!(of_type(&frames, "response.output_item.done").len(), 1);
    assert!(data_frames(&body).len() > 3);
}

/// Keep-alive comments while the backend has not yet answered anything are one signal, not a
/// pile: the gateway holds what comes before the first output, and passes one comment on.
#[tokio::test]
async fn comments_before_the_first_output_are_not_piled_up() {
    let h = harness(1, &[]).await;
    let mut raw = String::from(concat!(
        "event: response.created\n",
        r#"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","status":"in_progress","output":[]}}"#,
        "\n\n",
    ));
    raw.push_str(&": keep-alive\n\n".repeat(500));
    raw.push_str(
        RAW_EMPTY_OUTPUT
            .split_inclusive("\n\n")
            .skip(1)
            .collect::<String>()
            .as_str(),
    );
    h.fake
        .push_reply("acct-0", Reply::RawSse { body: raw.clone() });
    let (status, _, body) = h.call(stream_request(&h)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.matches(": keep-alive").count(), 1, "{body}");
    assert_eq!(
        json_frames(&body).last().unwrap()["type"],
        "response.completed"
    );
}
