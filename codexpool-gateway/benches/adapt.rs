//! Throughput of the per-byte hot paths: SSE parsing and SSE → chat chunk translation of a
//! realistic Codex answer (~1 KB of text streamed in ~20 events, plus the created/added/done/
//! completed envelope, fed in network-sized chunks), and the translation of a long conversation
//! (~230 KB, 300 messages) into the upstream body, sent as a chat request and as Responses input.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use codexpool_gateway::adapt::{
    ChatOptions, ChatStream, EventKind, Overrides, apply_body_rules, chat_to_responses,
};
use codexpool_gateway::sse::{SseItem, SseParser};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A Codex SSE body: created, in_progress, item added, 20 text deltas of ~50 bytes, done, completed.
fn codex_body() -> Vec<u8> {
    let mut body = String::new();
    let mut frame = |json: String| {
        body.push_str("event: ");
        let kind_start = json.find("\"type\":\"").map_or(0, |i| i + 8);
        let kind_end = json[kind_start..]
            .find('"')
            .map_or(kind_start, |i| kind_start + i);
        body.push_str(&json[kind_start..kind_end]);
        body.push_str("\ndata: ");
        body.push_str(&json);
        body.push_str("\n\n");
    };
    let response = |status: &str, output: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_0a1b2c3d4e5f","object":"response","created_at":1700000000,"status":"{status}","model":"gpt-5-codex","output":{output},"usage":{usage}}}"#
        )
    };
    frame(format!(
        r#"{{"type":"response.created","sequence_number":0,"response":{}}}"#,
        response("in_progress", "[]", "null")
    ));
    frame(format!(
        r#"{{"type":"response.in_progress","sequence_number":1,"response":{}}}"#,
        response("in_progress", "[]", "null")
    ));
    frame(r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_0a1b2c3d","type":"message","status":"in_progress","role":"assistant","content":[]}}"#.to_owned());
    frame(r#"{"type":"response.content_part.added","sequence_number":3,"item_id":"msg_0a1b2c3d","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"text":""}}"#.to_owned());
    let words = "The quick brown fox jumps over the lazy dog; \"quoted\" text\nand a new line. ";
    let mut text = String::new();
    for i in 0..20 {
        let delta = &words[..40 + (i % 3) * 5];
        text.push_str(delta);
        frame(format!(
            r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"msg_0a1b2c3d","output_index":0,"content_index":0,"delta":{},"logprobs":[],"obfuscation":"x1y2"}}"#,
            4 + i,
            serde_json::to_string(delta).unwrap_or_default()
        ));
    }
    let text_json = serde_json::to_string(&text).unwrap_or_default();
    frame(format!(
        r#"{{"type":"response.output_text.done","sequence_number":24,"item_id":"msg_0a1b2c3d","output_index":0,"content_index":0,"text":{text_json}}}"#
    ));
    let item = format!(
        r#"{{"id":"msg_0a1b2c3d","type":"message","status":"completed","role":"assistant","content":[{{"type":"output_text","annotations":[],"text":{text_json}}}]}}"#
    );
    frame(format!(
        r#"{{"type":"response.output_item.done","sequence_number":25,"output_index":0,"item":{item}}}"#
    ));
    frame(format!(
        r#"{{"type":"response.completed","sequence_number":26,"response":{}}}"#,
        response(
            "completed",
            &format!("[{item}]"),
            r#"{"input_tokens":1200,"input_tokens_details":{"cached_tokens":1024},"output_tokens":230,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":1430}"#
        )
    ));
    body.into_bytes()
}

/// The body cut into chunks the way a TLS/HTTP2 reader might deliver them.
fn chunks(body: &[u8], size: usize) -> Vec<Bytes> {
    body.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn bench(c: &mut Criterion) {
    let body = codex_body();
    let chunks = chunks(&body, 1024);
    let options = ChatOptions {
        model: "gpt-5-codex".to_owned(),
        stream: true,
        include_usage: true,
        stop: Vec::new(),
        legacy_functions: false,
    };

    let events = body.windows(2).filter(|w| w == b"\n\n").count();
    eprintln!(
        "input: {} bytes, {events} SSE events, 1 KiB chunks",
        body.len()
    );

    let mut group = c.benchmark_group("adapt");
    group.throughput(Throughput::Bytes(body.len() as u64));

    group.bench_function("sse_parse", |b| {
        b.iter(|| {
            let mut parser = SseParser::new();
            let mut events = 0usize;
            for chunk in &chunks {
                parser.push(chunk.clone());
                while let Ok(Some(item)) = parser.next_item() {
                    if let SseItem::Event(event) = item {
                        events += event.data().len();
                    }
                }
            }
            black_box(events)
        });
    });

    group.bench_function("sse_parse_and_peek_type", |b| {
        b.iter(|| {
            let mut parser = SseParser::new();
            let mut terminal = 0usize;
            for chunk in &chunks {
                parser.push(chunk.clone());
                while let Ok(Some(item)) = parser.next_item() {
                    if let SseItem::Event(event) = item {
                        terminal += usize::from(EventKind::of(&event).is_terminal());
                    }
                }
            }
            black_box(terminal)
        });
    });

    group.bench_function("sse_to_chat_chunks", |b| {
        let mut out = BytesMut::with_capacity(8 * 1024);
        b.iter(|| {
            let mut parser = SseParser::new();
            let mut chat = ChatStream::new(&options, 1_700_000_000);
            let mut written = 0usize;
            for chunk in &chunks {
                parser.push(chunk.clone());
                while let Ok(Some(item)) = parser.next_item() {
                    if let SseItem::Event(event) = item {
                        let _ = chat.push(&event, &mut out);
                    }
                }
                // What the route hands to hyper after each upstream chunk.
                written += out.split().freeze().len();
            }
            chat.finish(&mut out);
            written += out.split().len();
            black_box(written)
        });
    });
    group.finish();

    let request = long_chat_request();
    eprintln!("request: {} bytes, 302 messages", request.len());
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Bytes(request.len() as u64));
    group.bench_function("chat_to_responses_long", |b| {
        b.iter(|| {
            let (up, _) = chat_to_responses(black_box(&request), &Overrides::default())
                .unwrap_or_else(|e| panic!("the bench request is valid: {e}"));
            black_box(up.body.len())
        });
    });
    let responses = long_responses_request();
    eprintln!("request: {} bytes, 301 input items", responses.len());
    group.throughput(Throughput::Bytes(responses.len() as u64));
    group.bench_function("responses_body_rules_long", |b| {
        b.iter(|| {
            let up = apply_body_rules(black_box(&responses), &Overrides::default())
                .unwrap_or_else(|e| panic!("the bench request is valid: {e}"));
            black_box(up.body.len())
        });
    });
    group.finish();
}

/// A chat request as a client with a long history sends it every turn: a system prompt and 150
/// user/assistant exchanges with quotes and newlines to escape.
fn long_chat_request() -> Vec<u8> {
    let mut messages = vec![serde_json::json!({"role": "system", "content": "You are terse."})];
    for i in 0..150 {
        messages.push(serde_json::json!({"role": "user", "content":
            format!("Question {i}: {}", "explain the \"borrow checker\" in detail.\n".repeat(15))}));
        messages.push(serde_json::json!({"role": "assistant", "content":
            format!("Answer {i}: {}", "It enforces aliasing XOR mutability: `&mut T`.\n".repeat(15))}));
    }
    messages.push(serde_json::json!({"role": "user", "content": "Thanks."}));
    serde_json::to_vec(&serde_json::json!({"model": "gpt-5", "messages": messages}))
        .unwrap_or_default()
}

/// The same conversation as a Responses client sends it (`input` items, no `store`).
fn long_responses_request() -> Vec<u8> {
    let message = |role: &str, kind: &str, text: String| {
        serde_json::json!({"type": "message", "role": role,
            "content": [{"type": kind, "text": text}]})
    };
    let mut input = Vec::new();
    for i in 0..150 {
        input.push(message(
            "user",
            "input_text",
            format!(
                "Question {i}: {}",
                "explain the \"borrow checker\" in detail.\n".repeat(15)
            ),
        ));
        input.push(message(
            "assistant",
            "output_text",
            format!(
                "Answer {i}: {}",
                "It enforces aliasing XOR mutability: `&mut T`.\n".repeat(15)
            ),
        ));
    }
    input.push(message("user", "input_text", "Thanks.".to_owned()));
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-5", "instructions": "You are terse.", "input": input, "stream": true
    }))
    .unwrap_or_default()
}

criterion_group!(benches, bench);
criterion_main!(benches);
