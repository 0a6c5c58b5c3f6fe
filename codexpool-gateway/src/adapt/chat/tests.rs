use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::answer::{Scan, StopMatcher, scan, truncated_failure};
use super::request::{Item, MessageFields, Part, Text};
use super::*;
use crate::adapt::{
    AssembleError, DEFAULT_INSTRUCTIONS, Overrides, UpstreamRequest, parse_object_with,
};
use crate::sse::{DONE_FRAME, SseEvent, SseItem, SseParser};

fn convert(body: Value) -> (Value, UpstreamRequest, ChatOptions) {
    let (req, options) =
        chat_to_responses(&serde_json::to_vec(&body).unwrap(), &Overrides::default()).unwrap();
    (serde_json::from_slice(&req.body).unwrap(), req, options)
}

fn convert_err(body: Value) -> String {
    chat_to_responses(&serde_json::to_vec(&body).unwrap(), &Overrides::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn items_are_written_as_serde_writes_them() {
    let raw = |json: &'static str| -> &'static RawValue {
        Box::leak(RawValue::from_string(json.to_owned()).unwrap())
    };
    let items = [
        Item::Message {
            role: "user",
            content: vec![
                Part::InputText {
                    text: Text::Literal(raw(r#""say \"hi\"\n\u00e9""#)),
                },
                Part::InputImage {
                    image_url: "data:image/png;base64,AAAA".into(),
                    detail: "auto".into(),
                },
                Part::InputText {
                    text: Text::Made("two\nparts \"joined\" \u{1}".into()),
                },
            ],
        },
        Item::Message {
            role: "assistant",
            content: vec![Part::OutputText {
                text: Text::Literal(raw(r#""""#)),
            }],
        },
        Item::Message {
            role: "developer",
            content: Vec::new(),
        },
        Item::FunctionCall {
            call_id: "call_1".into(),
            name: "f".into(),
            arguments: "{\"a\":1}".into(),
        },
        Item::FunctionCallOutput {
            call_id: "call_1".into(),
            output: Text::Literal(raw(r#""ok""#)),
        },
    ];
    for item in &items {
        let mut ours = Vec::new();
        item.write(&mut ours);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(item).unwrap()
        );
    }
}

#[test]
fn maps_a_full_chat_request() {
    let (body, req, options) = convert(json!({
        "model": "gpt-5",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "image_url", "image_url": "https://x/y.png"},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "a cat"}]},
            {"role": "assistant", "content": "A cat."},
            {"role": "system", "content": "Later rule."},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "look", "description": "Look", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "noop", "strict": true}}],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object"}, "strict": true}},
        "reasoning_effort": "high",
        "verbosity": "low",
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 0.5,
        "max_tokens": 10,
        "max_completion_tokens": 10,
        "stop": ["x"],
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "logprobs": false,
        "user": "u",
        "seed": 1,
        "metadata": {},
        "n": 1,
        "top_p": null,
    }));
    assert_eq!(
        body,
        json!({
            "model": "gpt-5",
            "instructions": "Be brief.\n\nUse tools.",
            "input": [
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "What is in this image?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"},
                ]},
                {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": "{\"q\":1}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Later rule."}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks"}]},
            ],
            "tools": [
                {"type": "function", "name": "look", "description": "Look",
                 "parameters": {"type": "object"}, "strict": false},
                {"type": "function", "name": "noop",
                 "parameters": {"type": "object", "properties": {}, "required": [],
                    "additionalProperties": false}, "strict": true},
            ],
            "tool_choice": {"type": "function", "name": "look"},
            "parallel_tool_calls": false,
            "reasoning": {"effort": "high", "summary": "auto"},
            "store": false,
            "stream": true,
            "include": ["reasoning.encrypted_content"],
            "text": {"format": {"type": "json_schema", "name": "answer",
                                "schema": {"type": "object"}, "strict": true},
                     "verbosity": "low"},
        })
    );
    // (`json!` sorts keys, so the body arrived in alphabetical order.)
    assert_eq!(
        req.dropped,
        [
            "frequency_penalty",
            "logprobs",
            "max_completion_tokens",
            "max_tokens",
            "metadata",
            "presence_penalty",
            "seed",
            "temperature",
            "user"
        ]
    );
    assert_eq!(
        options,
        ChatOptions {
            model: "gpt-5".into(),
            stream: true,
            include_usage: true,
            stop: vec!["x".to_owned()],
            legacy_functions: false,
        }
    );
}

#[test]
fn one_pass_reading_and_field_by_field_reading_agree() {
    // Read in one pass: the last `messages` counts, other fields are kept (and dropped).
    let body = br#"{"model":"m","messages":[{"role":"user","content":"first"}],
            "temperature":1,"messages":[{"role":"user","content":"last \"q\""}]}"#;
    let (obj, messages) = parse_object_with::<Vec<MessageFields<'_>>>(body, "messages").unwrap();
    assert_eq!(messages.unwrap().len(), 1);
    assert!(obj.get("messages").is_none() && obj.get("temperature").is_some());
    let (req, _) = chat_to_responses(body, &Overrides::default()).unwrap();
    let v: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(v["input"][0]["content"][0]["text"], "last \"q\"");
    assert_eq!(v["input"].as_array().unwrap().len(), 1);
    assert_eq!(req.dropped, ["temperature"]);
    // What does not read in one pass is read field by field: the same errors, in the same
    // order (the model is checked before the messages), as without the one-pass reading.
    for (body, error) in [
        (
            &br#"{"model":"m","messages":[{"role":"user","content":"x"},5]}"#[..],
            "messages[1]: ",
        ),
        (br#"{"messages":[5]}"#, "model: required"),
        (br#"{"model":"m","messages":null}"#, "messages: required"),
        (br#"{"model":"m"}"#, "messages: required"),
        (
            br#"{"model":"m","messages":{}}"#,
            "messages: must be an array",
        ),
        (
            br#"{"model":"m","messages":[]}"#,
            "messages: must not be empty",
        ),
        (br#"[{"model":"m"}]"#, "must be a JSON object"),
        (br#"{"model":"m","messages":[]} x"#, "not valid JSON"),
        (b"{\"model\":\"m\xff\",\"messages\":[]}", "not valid JSON"),
    ] {
        let split = parse_object_with::<Vec<MessageFields<'_>>>(body, "messages");
        assert!(split.is_none_or(|(_, m)| m.is_none_or(|m| m.is_empty())));
        let e = chat_to_responses(body, &Overrides::default()).unwrap_err();
        assert!(
            e.to_string().contains(error),
            "{e} for {}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn message_texts_go_upstream_as_their_client_literals() {
    // Escapes as a client may write them; serde_json would write `é` and `😀` unescaped.
    let body = br#"{"model":"m","messages":[
            {"role":"system","content":"Rule: say \"hi\"\u00e9"},
            {"role":"user","content":"line\none \u00e9 \ud83d\ude00 \"q\" \\"},
            {"role":"assistant","content":[{"type":"text","text":"A\tB"}]},
            {"role":"assistant","content":[{"type":"text","text":"x\u00e9"},{"type":"text","text":"y"}]},
            {"role":"tool","tool_call_id":"c","content":"out\/put"}]}"#;
    let (req, _) = chat_to_responses(body, &Overrides::default()).unwrap();
    let text = std::str::from_utf8(&req.body).unwrap();
    // Single texts are copied byte for byte ...
    for literal in [
        r#""line\none \u00e9 \ud83d\ude00 \"q\" \\""#,
        r#""A\tB""#,
        r#""out\/put""#,
    ] {
        assert!(text.contains(literal), "{literal} not verbatim in {text}");
    }
    // ... and mean what they meant; joined and instruction texts are decoded and re-encoded.
    let v: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(v["instructions"], "Rule: say \"hi\"é");
    assert_eq!(
        v["input"][0]["content"][0]["text"],
        "line\none é 😀 \"q\" \\"
    );
    assert_eq!(v["input"][1]["content"][0]["text"], "A\tB");
    assert_eq!(v["input"][2]["content"][0]["text"], "xé\ny");
    assert_eq!(v["input"][3]["output"], "out/put");
    // Text that must be decoded and does not decode is refused, naming the field.
    let lone = br#"{"model":"m","messages":[{"role":"system","content":"\ud800"},{"role":"user","content":"x"}]}"#;
    let err = chat_to_responses(lone, &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("messages[0].content"), "{err}");
    // A text that is not a string is still refused, naming the field.
    let bad = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":5}]}]}"#;
    let err = chat_to_responses(bad, &Overrides::default()).unwrap_err();
    assert!(
        err.to_string().contains("messages[0].content[0].text"),
        "{err}"
    );
}

#[test]
fn minimal_request_and_overrides() {
    let (body, req, options) = convert(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"}, "tool_choice": "auto"}));
    assert_eq!(body["instructions"], DEFAULT_INSTRUCTIONS);
    assert_eq!(body["text"], json!({"format": {"type": "json_object"}}));
    assert_eq!(body["tool_choice"], "auto");
    assert!(body.get("reasoning").is_none() && body.get("include").is_none());
    assert!(req.dropped.is_empty() && !options.stream && !options.include_usage);

    let overrides = Overrides {
        model: Some("forced"),
        reasoning_effort: Some("low"),
    };
    let (req, options) = chat_to_responses(
        br#"{"messages":[{"role":"user","content":"hi"}],"reasoning_effort":"high"}"#,
        &overrides,
    )
    .unwrap();
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["model"], "forced");
    assert_eq!(options.model, "forced");
    assert_eq!(body["reasoning"]["effort"], "low");
}

#[test]
fn request_errors_name_the_field() {
    let user = json!({"role": "user", "content": "hi"});
    let cases = [
        (json!({"messages": [user]}), "model: required"),
        (json!({"model": "m"}), "messages: required"),
        (
            json!({"model": "m", "messages": {}}),
            "messages: must be an array",
        ),
        (
            json!({"model": "m", "messages": []}),
            "messages: must not be empty",
        ),
        (
            json!({"model": "m", "messages": [user, user, {"role": "foo"}]}),
            "messages[2].role: unknown role \"foo\"",
        ),
        (
            json!({"model": "m", "messages": [{"content": "x"}]}),
            "messages[0].role: required",
        ),
        (
            json!({"model": "m", "messages": [5]}),
            "messages[0]: must be an object",
        ),
        (
            json!({"model": "m", "messages": [user, user, "hello"]}),
            "messages[2]: must be an object",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user"}]}),
            "messages[0].content: required",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            "messages[0].content[0].type: unsupported content part \"input_audio\"",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
            "messages[0].content[0].image_url.url: required",
        ),
        (
            json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].tool_call_id: required",
        ),
        (
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}]}),
            "messages[0].tool_calls[0].function.name: required",
        ),
        (
            json!({"model": "m", "messages": [user], "n": 2}),
            "n: only n=1 is supported",
        ),
        (
            json!({"model": "m", "messages": [user], "tools": [{"type": "custom"}]}),
            "tools[0].type: unsupported tool type \"custom\"",
        ),
        (
            json!({"model": "m", "messages": [user], "tools": [{"type": "function", "function": {}}]}),
            "tools[0].function.name: required",
        ),
        (
            json!({"model": "m", "messages": [user], "tool_choice": "sometimes"}),
            "tool_choice: unsupported value \"sometimes\"",
        ),
        (
            json!({"model": "m", "messages": [user], "response_format": {"type": "yaml"}}),
            "response_format.type: unsupported format \"yaml\"",
        ),
        (
            json!({"model": "m", "messages": [user], "stream": "yes"}),
            "stream: must be a boolean",
        ),
        (
            json!({"model": "m", "messages": [user], "stream_options": {"include_usage": 1}}),
            "stream_options.include_usage: must be a boolean",
        ),
        (
            json!({"model": "m", "messages": [user], "stream_options": {"include_usage": true}}),
            "stream_options: only allowed when stream is true",
        ),
        (
            json!({"model": "m", "messages": [user], "stream": false, "stream_options": {}}),
            "stream_options: only allowed when stream is true",
        ),
        (
            json!({"model": "m", "messages": [user], "reasoning_effort": 3}),
            "reasoning_effort: must be a string",
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(convert_err(body.clone()), expected, "{body}");
    }
}

/// `tool_choice: allowed_tools` limits the model to some of the tools, in the Responses
/// API's own form; a malformed one is refused naming its field.
#[test]
fn allowed_tools_go_upstream_in_the_responses_form() {
    let user = json!({"role": "user", "content": "Hi"});
    let tools = json!([
        {"type": "function", "function": {"name": "f"}},
        {"type": "function", "function": {"name": "g"}},
    ]);
    let choice = |allowed: Value| json!({"type": "allowed_tools", "allowed_tools": allowed});
    let (body, ..) = convert(json!({"model": "m", "messages": [user], "tools": tools,
        "tool_choice": choice(json!({"mode": "required",
            "tools": [{"type": "function", "function": {"name": "g"}}]}))}));
    assert_eq!(
        body["tool_choice"],
        json!({"type": "allowed_tools", "mode": "required",
            "tools": [{"type": "function", "name": "g"}]})
    );
    for (allowed, expected) in [
        (Value::Null, "tool_choice.allowed_tools: required"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "g"}}]}),
            "tool_choice.allowed_tools.mode: required",
        ),
        (
            json!({"mode": "none", "tools": []}),
            "tool_choice.allowed_tools.mode: must be \"auto\" or \"required\", not \"none\"",
        ),
        (
            json!({"mode": "auto", "tools": []}),
            "tool_choice.allowed_tools.tools: must not be empty",
        ),
        (
            json!({"mode": "auto", "tools": [{"type": "custom", "custom": {"name": "p"}}]}),
            "tool_choice.allowed_tools.tools[0].type: unsupported tool type \"custom\"",
        ),
        (
            json!({"mode": "auto", "tools": [{"type": "function", "function": {}}]}),
            "tool_choice.allowed_tools.tools[0].function.name: required",
        ),
    ] {
        let body = json!({"model": "m", "messages": [user], "tools": tools,
            "tool_choice": choice(allowed.clone())});
        assert_eq!(convert_err(body), expected, "{allowed}");
    }
}

/// Runs events through a [`ChatStream`] and returns the frames' payloads as JSON
/// (`"[DONE]"` as a string).
fn stream_frames(options: &ChatOptions, events: &[Value], finish: bool) -> Vec<Value> {
    let mut chat = ChatStream::new(options, 42);
    let mut out = BytesMut::new();
    for event in events {
        let sse = SseEvent::new(serde_json::to_vec(event).unwrap());
        chat.push(&sse, &mut out).unwrap();
    }
    if finish {
        chat.finish(&mut out);
    }
    let mut parser = SseParser::new();
    parser.push(out.freeze());
    let mut frames = Vec::new();
    while let Some(item) = parser.next_item().unwrap() {
        let SseItem::Event(event) = item else {
            panic!("comment")
        };
        frames.push(if event.is_done_marker() {
            json!("[DONE]")
        } else {
            serde_json::from_slice(event.data()).unwrap()
        });
    }
    parser.finish().unwrap();
    frames
}

/// A realistic Codex stream: reasoning summary, text, a tool call with streamed arguments.
fn codex_stream() -> Vec<Value> {
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": "resp_abc", "object": "response", "created_at": 1_700_000_000,
                   "status": status, "model": "gpt-5-codex", "output": output, "usage": usage})
    };
    let message = json!({"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "text": "Hello, world"}]});
    let call = json!({"id": "fc_1", "type": "function_call", "status": "completed",
            "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"});
    let reasoning = json!({"id": "rs_1", "type": "reasoning", "encrypted_content": "gAAAA",
            "summary": [{"type": "summary_text", "text": "Thinking about it"}]});
    vec![
        json!({"type": "response.created", "sequence_number": 0,
                   "response": response("in_progress", json!([]), Value::Null)}),
        json!({"type": "response.in_progress", "sequence_number": 1,
                   "response": response("in_progress", json!([]), Value::Null)}),
        json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
                   "item": {"id": "rs_1", "type": "reasoning", "summary": []}}),
        json!({"type": "response.reasoning_summary_part.added", "sequence_number": 3,
                   "item_id": "rs_1", "output_index": 0, "summary_index": 0,
                   "part": {"type": "summary_text", "text": ""}}),
        json!({"type": "response.reasoning_summary_text.delta", "sequence_number": 4,
                   "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": "Thinking"}),
        json!({"type": "response.reasoning_summary_text.delta", "sequence_number": 5,
                   "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": " about it"}),
        json!({"type": "response.reasoning_summary_text.done", "sequence_number": 6,
                   "item_id": "rs_1", "output_index": 0, "summary_index": 0, "text": "Thinking about it"}),
        json!({"type": "response.output_item.done", "sequence_number": 7, "output_index": 0,
                   "item": reasoning}),
        json!({"type": "response.output_item.added", "sequence_number": 8, "output_index": 1,
                   "item": {"id": "msg_1", "type": "message", "status": "in_progress",
                            "role": "assistant", "content": []}}),
        json!({"type": "response.content_part.added", "sequence_number": 9, "item_id": "msg_1",
                   "output_index": 1, "content_index": 0,
                   "part": {"type": "output_text", "annotations": [], "text": ""}}),
        json!({"type": "response.output_text.delta", "sequence_number": 10, "item_id": "msg_1",
                   "output_index": 1, "content_index": 0, "delta": "Hello", "logprobs": []}),
        json!({"type": "response.output_text.delta", "sequence_number": 11, "item_id": "msg_1",
                   "output_index": 1, "content_index": 0, "delta": ", world", "logprobs": []}),
        json!({"type": "response.output_text.done", "sequence_number": 12, "item_id": "msg_1",
                   "output_index": 1, "content_index": 0, "text": "Hello, world"}),
        json!({"type": "response.content_part.done", "sequence_number": 13, "item_id": "msg_1",
                   "output_index": 1, "content_index": 0,
                   "part": {"type": "output_text", "annotations": [], "text": "Hello, world"}}),
        json!({"type": "response.output_item.done", "sequence_number": 14, "output_index": 1,
                   "item": message}),
        json!({"type": "response.output_item.added", "sequence_number": 15, "output_index": 2,
                   "item": {"id": "fc_1", "type": "function_call", "status": "in_progress",
                            "call_id": "call_1", "name": "get_weather", "arguments": ""}}),
        json!({"type": "response.function_call_arguments.delta", "sequence_number": 16,
                   "item_id": "fc_1", "output_index": 2, "delta": "{\"city\":"}),
        json!({"type": "response.function_call_arguments.delta", "sequence_number": 17,
                   "item_id": "fc_1", "output_index": 2, "delta": "\"Paris\"}"}),
        json!({"type": "response.function_call_arguments.done", "sequence_number": 18,
                   "item_id": "fc_1", "output_index": 2, "arguments": "{\"city\":\"Paris\"}"}),
        json!({"type": "response.output_item.done", "sequence_number": 19, "output_index": 2,
                   "item": call}),
        json!({"type": "response.some_future_event", "sequence_number": 20, "payload": [1, 2]}),
        json!({"type": "response.completed", "sequence_number": 21,
                   "response": response("completed", json!([reasoning, message, call]),
                       json!({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 64},
                              "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 16},
                              "total_tokens": 140}))}),
    ]
}

/// A chunk of a stream that asked for usage: `usage` is null but in the usage chunk.
fn chunk(delta: Value, finish: Value) -> Value {
    json!({"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "gpt-5-codex",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
               "usage": null})
}

#[test]
fn full_codex_stream_becomes_the_exact_chunk_sequence() {
    let options = ChatOptions {
        model: "client-model".into(),
        stream: true,
        include_usage: true,
        stop: Vec::new(),
        legacy_functions: false,
    };
    let frames = stream_frames(&options, &codex_stream(), false);
    let expected = vec![
        // Reasoning first does not tell whether text follows: no `content` yet.
        chunk(json!({"role": "assistant"}), Value::Null),
        chunk(json!({"reasoning_content": "Thinking"}), Value::Null),
        chunk(json!({"reasoning_content": " about it"}), Value::Null),
        chunk(json!({"content": "Hello"}), Value::Null),
        chunk(json!({"content": ", world"}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        usage_frame(),
        json!("[DONE]"),
    ];
    assert_eq!(frames, expected);
    // Without include_usage: no usage chunk; finish() after the end adds nothing.
    let options = ChatOptions {
        include_usage: false,
        ..options
    };
    let frames = stream_frames(&options, &codex_stream(), true);
    assert_eq!(frames.len(), expected.len() - 1);
    assert_eq!(frames.last(), Some(&json!("[DONE]")));
    assert!(
        frames.iter().all(|f| f.get("usage").is_none()),
        "{frames:?}"
    );
}

#[test]
fn non_streaming_assembly_matches() {
    let options = ChatOptions {
        model: "m".into(),
        stream: false,
        include_usage: false,
        stop: Vec::new(),
        legacy_functions: false,
    };
    let mut assembler = ChatAssembler::new(&options, 42);
    let mut done = false;
    for event in codex_stream() {
        done = assembler
            .push(&SseEvent::new(serde_json::to_vec(&event).unwrap()))
            .unwrap();
    }
    assert!(done);
    assert_eq!(assembler.usage().map(|u| u.total_tokens), Some(140));
    let out: Value = serde_json::from_slice(&assembler.finish().unwrap()).unwrap();
    assert_eq!(
        out,
        json!({
            "id": "chatcmpl-abc", "object": "chat.completion", "created": 1_700_000_000,
            "model": "gpt-5-codex",
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "refusal": null, "content": "Hello, world",
                "reasoning_content": "Thinking about it",
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
                      "prompt_tokens_details": {"cached_tokens": 64},
                      "completion_tokens_details": {"reasoning_tokens": 16}}
        })
    );
}

fn assemble(events: &[Value]) -> Result<Value, AssembleError> {
    let options = ChatOptions {
        model: "m".into(),
        stream: false,
        include_usage: false,
        stop: Vec::new(),
        legacy_functions: false,
    };
    let mut assembler = ChatAssembler::new(&options, 42);
    for event in events {
        assembler.push(&SseEvent::new(serde_json::to_vec(event).unwrap()))?;
    }
    assembler
        .finish()
        .map(|b| serde_json::from_slice(&b).unwrap())
}

/// An assembled answer takes a message's text from its `output_item.done`, which repeats it
/// whole (its deltas are not read: a garbled one does no harm), and from the deltas when the
/// item does not carry it or never comes; a stop sequence in deltas still drops a later call.
#[test]
fn assembled_text_comes_whole_from_the_done_item_or_else_from_the_deltas() {
    let delta = |text: Value| {
        json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
               "content_index": 0, "delta": text})
    };
    let done = |content: Value| {
        json!({"type": "response.output_item.done", "output_index": 0,
               "item": {"id": "msg_1", "type": "message", "role": "assistant", "content": content}})
    };
    let response = json!({"id": "resp_1", "model": "m", "output": []});
    let completed = json!({"type": "response.completed", "response": response});
    let incomplete = json!({"type": "response.incomplete", "response":
        {"id": "resp_1", "model": "m", "output": [], "incomplete_details": {"reason": "max_output_tokens"}}});
    let whole = json!([{"type": "output_text", "text": "Hello, world"}]);
    let content = |out: &Value| out["choices"][0]["message"]["content"].clone();

    let out = assemble(&[
        delta(json!("Hel")),
        delta(json!(5)),
        done(whole),
        completed.clone(),
    ]);
    assert_eq!(content(&out.unwrap()), json!("Hello, world"));

    let deltas = [delta(json!("Hello")), delta(json!(", world"))];
    let out = assemble(&[
        deltas[0].clone(),
        deltas[1].clone(),
        done(json!([])),
        completed.clone(),
    ]);
    assert_eq!(content(&out.unwrap()), json!("Hello, world"));
    let out = assemble(&[deltas[0].clone(), deltas[1].clone(), incomplete]).unwrap();
    assert_eq!(content(&out), json!("Hello, world"));
    assert_eq!(out["choices"][0]["finish_reason"], json!("length"));
    // A long answer's deltas are read as they come once they hold 64 KB (not held to the
    // end): the done item's text is not taken then (here it differs, to tell them apart).
    let mut long: Vec<Value> = (0..1000).map(|_| delta(json!("x"))).collect();
    long.push(done(json!([{"type": "output_text", "text": "the whole"}])));
    long.push(completed.clone());
    assert_eq!(content(&assemble(&long).unwrap()), json!("x".repeat(1000)));
    long.drain(..900);
    assert_eq!(content(&assemble(&long).unwrap()), json!("the whole"));
    // A garbled delta the done item does not stand in for is an error, as before.
    let out = assemble(&[delta(json!("Hel")), delta(json!(5)), completed.clone()]);
    assert!(matches!(out, Err(AssembleError::Event(_))), "{out:?}");

    let options = ChatOptions {
        model: "m".into(),
        stream: false,
        include_usage: false,
        stop: vec!["STOP".into()],
        legacy_functions: false,
    };
    let call = json!({"type": "response.output_item.added", "output_index": 1,
        "item": {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""}});
    let out = assemble_with(
        &options,
        &[delta(json!("Hi STOP there")), call, completed.clone()],
    );
    assert_eq!(content(&out), json!("Hi "));
    assert_eq!(
        out["choices"][0]["message"].get("tool_calls"),
        None,
        "{out}"
    );
    assert_eq!(out["choices"][0]["finish_reason"], json!("stop"));
    // Nor a refusal in the done item of the message whose deltas said it.
    let refusal = done(json!([{"type": "refusal", "refusal": "No."}]));
    let out = assemble_with(
        &options,
        &[delta(json!("Hi STOP there")), refusal, completed],
    );
    assert_eq!(content(&out), json!("Hi "));
    assert_eq!(
        out["choices"][0]["message"].get("refusal"),
        Some(&Value::Null),
        "{out}"
    );
}

/// An answer cut at a stop sequence is whole: what the upstream does after the cut (fail,
/// break off) does not turn it into an error, streamed or assembled; it ends with `stop`, and
/// without usage, which only the final event tells (`usage: null` in the usage chunk).
#[test]
fn after_a_stop_sequence_an_upstream_failure_does_not_spoil_the_answer() {
    let options = ChatOptions {
        model: "m".into(),
        stream: true,
        include_usage: true,
        stop: vec!["\nObservation:".into()],
        legacy_functions: false,
    };
    let delta = |text: &str| json!({"type": "response.output_text.delta", "output_index": 0, "delta": text});
    let failed = json!({"type": "response.failed", "response": {"id": "resp_1",
        "error": {"code": "server_is_overloaded", "message": "busy"}}});
    let events = [
        delta("Go\nObserv"),
        delta("ation: x"),
        delta(" and more"),
        failed.clone(),
    ];
    for finish in [false, true] {
        // Failed after the cut, or (without the failure) broken off after it.
        let events = if finish { &events[..3] } else { &events[..] };
        let frames = stream_frames(&options, events, finish);
        let deltas: Vec<&Value> = frames.iter().map(|f| &f["choices"][0]["delta"]).collect();
        assert_eq!(deltas[1], &json!({"content": "Go"}), "{frames:?}");
        assert_eq!(
            frames[2]["choices"][0]["finish_reason"], "stop",
            "{frames:?}"
        );
        assert_eq!(frames[3]["usage"], Value::Null, "{frames:?}");
        assert_eq!(frames[4], json!("[DONE]"));
        assert_eq!(frames.len(), 5, "no error chunk: {frames:?}");
    }
    let assembled = ChatOptions {
        stream: false,
        include_usage: false,
        ..options.clone()
    };
    let mut assembler = ChatAssembler::new(&assembled, 42);
    for event in &events {
        let whole = assembler.push(&SseEvent::new(serde_json::to_vec(event).unwrap()));
        assert!(whole.is_ok(), "{whole:?}");
    }
    // The answer is whole; the account's failure is still one.
    let failure = assembler
        .failed_after_stop()
        .map(|f| f.error_code().to_string());
    assert_eq!(failure.as_deref(), Some("server_is_overloaded"));
    let out: Value = serde_json::from_slice(&assembler.finish().unwrap()).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "Go");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    // Broken off after the cut, assembled: the held deltas are read, and the answer is whole.
    let mut assembler = ChatAssembler::new(&assembled, 42);
    for event in &events[..3] {
        assembler
            .push(&SseEvent::new(serde_json::to_vec(event).unwrap()))
            .unwrap();
    }
    assert!(assembler.end_at_stop());
    let out: Value = serde_json::from_slice(&assembler.finish().unwrap()).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "Go");
    // Without a stop sequence in the text, a failure is still one.
    let mut assembler = ChatAssembler::new(&assembled, 42);
    assembler
        .push(&SseEvent::new(serde_json::to_vec(&delta("Go on")).unwrap()))
        .unwrap();
    assert!(!assembler.end_at_stop());
    let failed = SseEvent::new(serde_json::to_vec(&failed).unwrap());
    assert!(matches!(
        assembler.push(&failed),
        Err(AssembleError::Failed(_))
    ));
}

/// `response.in_progress` repeats `response.created` and is skipped after it (even a
/// garbled one), but names the response when no `response.created` came.
#[test]
fn in_progress_names_the_response_only_without_created() {
    let delta = json!({"type": "response.output_text.delta", "output_index": 0, "delta": "hi"});
    let done = json!({"type": "response.completed", "response": {"output": []}});
    let out = assemble(&[
        json!({"type": "response.created", "response": {"id": "resp_a", "model": "m-a"}}),
        json!({"type": "response.in_progress", "response": "not an object"}),
        delta.clone(),
        done.clone(),
    ])
    .unwrap();
    assert_eq!(out["id"], "chatcmpl-a");
    assert_eq!(out["model"], "m-a");
    let out = assemble(&[
        json!({"type": "response.in_progress", "response": {"id": "resp_b", "model": "m-b"}}),
        delta,
        done,
    ])
    .unwrap();
    assert_eq!(out["id"], "chatcmpl-b");
    assert_eq!(out["model"], "m-b");
    assert_eq!(out["choices"][0]["message"]["content"], "hi");
}

#[test]
fn tool_only_answer_has_null_content_and_items_without_deltas_count() {
    // No deltas at all: text and tool call only in output_item.done.
    let out = assemble(&[
            json!({"type": "response.output_item.done", "output_index": 0, "item": {
                "type": "function_call", "id": "fc", "call_id": "c1", "name": "f", "arguments": "{}"}}),
            json!({"type": "response.completed", "response": {"output": []}}),
        ])
        .unwrap();
    let message = &out["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{}");
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(out["id"], "chatcmpl-codexpool");
    assert_eq!(out["created"], 42);
    assert_eq!(out["model"], "m");
    assert!(out.get("usage").is_none());

    let out = assemble(&[
        json!({"type": "response.output_item.done", "output_index": 0, "item": {
                "type": "message", "content": [{"type": "output_text", "text": "only done"}]}}),
        json!({"type": "response.incomplete", "response": {
                "incomplete_details": {"reason": "max_output_tokens"}}}),
    ])
    .unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "only done");
    assert_eq!(out["choices"][0]["finish_reason"], "length");
    let out = assemble(&[json!({"type": "response.incomplete", "response": {
            "incomplete_details": {"reason": "content_filter"}}})])
    .unwrap();
    assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(out["choices"][0]["message"]["content"], "");
}

#[test]
fn failures_after_output_become_an_error_chunk() {
    let options = ChatOptions {
        model: "m".into(),
        stream: true,
        include_usage: true,
        stop: Vec::new(),
        legacy_functions: false,
    };
    let events = [
        json!({"type": "response.output_text.delta", "output_index": 0, "delta": "Hi"}),
        json!({"type": "response.failed", "response": {"error": {
                "code": "server_is_overloaded", "message": "Our servers are busy"}}}),
        json!({"type": "response.output_text.delta", "delta": "ignored after the end"}),
    ];
    let frames = stream_frames(&options, &events, true);
    assert_eq!(frames.len(), 4, "{frames:?}");
    assert_eq!(frames[1]["choices"][0]["delta"]["content"], "Hi");
    // In the words and shape of every other error the gateway sends.
    assert_eq!(
        frames[2],
        json!({"error": {"message": "upstream: Our servers are busy", "type": "server_error",
                             "code": "server_is_overloaded", "param": null}})
    );
    assert_eq!(frames[3], json!("[DONE]"));

    // A stream that just stops is not a silent end either.
    let frames = stream_frames(&options, &events[..1], true);
    assert_eq!(frames[2]["error"]["code"], "stream_truncated");
    assert_eq!(frames[3], json!("[DONE]"));

    // The `error` event, and the assembler's view of failures.
    let error = json!({"type": "error", "code": "rate_limit_exceeded", "message": "slow"});
    let frames = stream_frames(&options, std::slice::from_ref(&error), false);
    assert_eq!(frames[0]["error"]["type"], "rate_limit_error");
    assert!(matches!(
        assemble(&[events[0].clone(), error]),
        Err(AssembleError::Failed(f)) if f.code.as_deref() == Some("rate_limit_exceeded")
    ));
    assert!(matches!(
        assemble(&events[..1]),
        Err(AssembleError::Truncated)
    ));
}

#[test]
fn reasoning_parts_are_separated_and_escapes_survive() {
    let options = ChatOptions {
        model: "m".into(),
        stream: true,
        include_usage: false,
        stop: Vec::new(),
        legacy_functions: false,
    };
    let events = [
        json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "delta": "A"}),
        json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 1, "delta": "B"}),
        json!({"type": "response.output_text.delta", "output_index": 1, "delta": "quote \" nl \n uni \u{e9} \u{1F600}"}),
        json!({"type": "response.completed", "response": {"id": "resp_\"x"}}),
    ];
    let frames = stream_frames(&options, &events, true);
    assert_eq!(frames[1]["choices"][0]["delta"]["reasoning_content"], "A");
    assert_eq!(
        frames[2]["choices"][0]["delta"]["reasoning_content"],
        "\n\nB"
    );
    assert_eq!(
        frames[3]["choices"][0]["delta"]["content"],
        "quote \" nl \n uni \u{e9} \u{1F600}"
    );
    assert_eq!(frames[4]["choices"][0]["finish_reason"], "stop");
    // The id was fixed by the first chunk (no response.created came before).
    assert_eq!(frames[4]["id"], "chatcmpl-codexpool");
}

#[test]
fn malformed_known_events_are_errors_unknown_ones_are_ignored() {
    let options = ChatOptions {
        model: "m".into(),
        stream: true,
        include_usage: false,
        stop: Vec::new(),
        legacy_functions: false,
    };
    let mut chat = ChatStream::new(&options, 1);
    let mut out = BytesMut::new();
    chat.push(&SseEvent::new(&b"not json at all"[..]), &mut out)
        .unwrap();
    chat.push(
        &SseEvent::new(&br#"{"type":"response.new","x":"#[..]),
        &mut out,
    )
    .unwrap();
    assert!(out.is_empty());
    assert!(
        chat.push(
            &SseEvent::new(&br#"{"type":"response.output_text.delta"}"#[..]),
            &mut out
        )
        .is_err()
    );
    chat.fail(&truncated_failure(), &mut out);
    assert!(chat.is_done());
    assert!(out.ends_with(DONE_FRAME));
}

#[test]
fn refusals_become_refusal_not_content() {
    let options = ChatOptions {
        model: "m".into(),
        stream: true,
        include_usage: false,
        stop: Vec::new(),
        legacy_functions: false,
    };
    let item = json!({"type": "message", "role": "assistant",
            "content": [{"type": "refusal", "refusal": "I can't help with that."}]});
    let streamed = [
        json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "content": []}}),
        json!({"type": "response.content_part.added", "output_index": 0, "content_index": 0, "part": {"type": "refusal", "refusal": ""}}),
        json!({"type": "response.refusal.delta", "output_index": 0, "content_index": 0, "delta": "I can't"}),
        json!({"type": "response.refusal.delta", "output_index": 0, "content_index": 0, "delta": " help with that."}),
        json!({"type": "response.refusal.done", "output_index": 0, "content_index": 0, "refusal": "I can't help with that."}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": {"output": [item]}}),
    ];
    let frames = stream_frames(&options, &streamed, true);
    // No text before the refusal: `content` null, as the assembled message has it.
    assert_eq!(
        frames[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": null})
    );
    let deltas: Vec<&Value> = frames[1..frames.len() - 1]
        .iter()
        .map(|f| &f["choices"][0]["delta"])
        .collect();
    assert_eq!(
        deltas,
        [
            &json!({"refusal": "I can't"}),
            &json!({"refusal": " help with that."}),
            &json!({})
        ],
        "the deltas once, not again from output_item.done: {frames:?}"
    );
    assert_eq!(
        frames[frames.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );

    for events in [&streamed[..], &streamed[5..]] {
        let out = assemble(events).unwrap();
        assert_eq!(
            out["choices"][0],
            json!({"index": 0, "logprobs": null, "finish_reason": "stop", "message": {
                    "role": "assistant", "refusal": null, "content": null, "refusal": "I can't help with that."}}),
            "{events:?}"
        );
    }
    // Only in output_item.done (no deltas): streamed whole, once, after a `content: null`
    // opening as above.
    let frames = stream_frames(&options, &streamed[5..], true);
    assert_eq!(
        frames[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": null})
    );
    assert_eq!(
        frames[1]["choices"][0]["delta"],
        json!({"refusal": "I can't help with that."})
    );
    // Text next to a refusal stays content.
    let mixed = json!({"type": "message", "content": [
            {"type": "output_text", "text": "Partly: "}, {"type": "refusal", "refusal": "no."}]});
    let out = assemble(&[
        json!({"type": "response.output_item.done", "output_index": 0, "item": mixed}),
        json!({"type": "response.completed", "response": {}}),
    ])
    .unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "Partly: ");
    assert_eq!(out["choices"][0]["message"]["refusal"], "no.");
}

#[test]
fn stop_is_read_and_no_longer_dropped() {
    let user = json!({"role": "user", "content": "hi"});
    let cases = [
        (json!("\nObservation:"), vec!["\nObservation:"]),
        (json!(["a", "", "b\u{e9}"]), vec!["a", "b\u{e9}"]),
        (json!(["", ""]), vec![]),
        (json!([]), vec![]),
        (json!(""), vec![]),
        (Value::Null, vec![]),
        (json!(["1", "2", "3", "4"]), vec!["1", "2", "3", "4"]),
    ];
    for (stop, expected) in cases {
        let (body, req, options) = convert(json!({"model": "m", "messages": [user], "stop": stop}));
        assert_eq!(options.stop, expected, "{stop}");
        assert!(req.dropped.is_empty(), "{stop}: {:?}", req.dropped);
        assert!(body.get("stop").is_none(), "the backend has no `stop`");
    }
}

#[test]
fn bad_stop_values_are_refused_naming_stop() {
    let user = json!({"role": "user", "content": "hi"});
    let shape = "stop: must be a string or an array of strings";
    let cases = [
        (json!(5), shape),
        (json!({"seq": "x"}), shape),
        (json!(true), shape),
        (json!(["ok", 5]), shape),
        (json!(["ok", null]), shape),
        (json!([["nested"]]), shape),
        (
            json!(["1", "2", "3", "4", "5"]),
            "stop: at most 4 sequences are allowed, got 5",
        ),
    ];
    for (stop, expected) in cases {
        let body = json!({"model": "m", "messages": [user], "stop": stop});
        let err = chat_to_responses(&serde_json::to_vec(&body).unwrap(), &Overrides::default())
            .unwrap_err();
        assert_eq!(err.to_string(), expected, "{stop}");
        assert_eq!(err.param(), Some("stop"), "{stop}");
    }
}

fn stop_options(stream: bool, stop: &[&str]) -> ChatOptions {
    ChatOptions {
        model: "m".into(),
        stream,
        include_usage: stream,
        stop: stop.iter().map(|s| (*s).to_owned()).collect(),
        legacy_functions: false,
    }
}

/// The backend's final event, with its usage (the whole generation's).
fn completed() -> Value {
    json!({"type": "response.completed", "response": {"id": "resp_s", "usage":
            {"input_tokens": 10, "output_tokens": 7, "total_tokens": 17}}})
}

/// A text answer in these deltas, then [`completed`].
fn text_events(deltas: &[&str]) -> Vec<Value> {
    let mut events = vec![json!({"type": "response.created", "response": {"id": "resp_s"}})];
    events.extend(
        deltas
            .iter()
            .map(|d| json!({"type": "response.output_text.delta", "output_index": 0, "delta": d})),
    );
    events.push(completed());
    events
}

/// The `delta.content` of each streamed chunk that has one (the role chunk's `""` left out),
/// and the finish reasons.
fn streamed_content(stop: &[&str], events: &[Value]) -> (Vec<String>, Vec<String>) {
    let frames = stream_frames(&stop_options(true, stop), events, true);
    assert_eq!(frames.last(), Some(&json!("[DONE]")), "{frames:?}");
    let content = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let finish = frames
        .iter()
        .filter_map(|f| f["choices"][0]["finish_reason"].as_str())
        .map(str::to_owned)
        .collect();
    (content, finish)
}

fn assembled_with_stop(stop: &[&str], events: &[Value]) -> Value {
    assemble_with(&stop_options(false, stop), events)
}

#[test]
fn a_stop_split_across_deltas_is_caught() {
    let stop = ["\nObservation:"];
    let events = text_events(&["Thought: look", " it up\nObs", "ervation: 42", "\nmore"]);
    let frames = stream_frames(&stop_options(true, &stop), &events, true);
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 42,
                   "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                   "usage": null})
    };
    assert_eq!(
        frames,
        [
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Thought: look"}), Value::Null),
            // "\nObs" held back: it could be (and is) the start of the stop sequence.
            chunk(json!({"content": " it up"}), Value::Null),
            chunk(json!({}), json!("stop")),
            // The usage of the whole generation, which ran to its end upstream.
            json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 42,
                       "model": "m", "choices": [], "usage": {
                           "prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17,
                           "prompt_tokens_details": {"cached_tokens": 0},
                           "completion_tokens_details": {"reasoning_tokens": 0}}}),
            json!("[DONE]"),
        ]
    );
    let out = assembled_with_stop(&stop, &events);
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "Thought: look it up"
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(out["usage"]["completion_tokens"], 7);
    // The same text without `stop` goes out whole, delta by delta.
    let (content, _) = streamed_content(&[], &events);
    assert_eq!(
        content.concat(),
        "Thought: look it up\nObservation: 42\nmore"
    );
    assert_eq!(content.len(), 4);
}

#[test]
fn the_earliest_stop_wins() {
    let cases: [(&[&str], &[&str], &str); 6] = [
        (&["world", "o"], &["Hello world"], "Hell"),
        (&["o", "world"], &["Hello", " world"], "Hell"),
        // A tie: the cut is at the position, whichever sequence matched there.
        (&["ab", "abc"], &["zabc"], "z"),
        (&["abc", "ab"], &["za", "bc"], "z"),
        // "tion" is complete first, but "\nObservation:" starts earlier and completes later
        // (or does not, and "tion" was the earliest after all).
        (&["tion", "\nObservation:"], &["x\nObservation", ": y"], "x"),
        (
            &["tion", "\nObservation:"],
            &["x\nObservation", "; y"],
            "x\nObserva",
        ),
    ];
    for (stop, deltas, expected) in cases {
        let events = text_events(deltas);
        let (content, finish) = streamed_content(stop, &events);
        assert_eq!(content.concat(), expected, "{stop:?} {deltas:?}");
        assert_eq!(finish, ["stop"]);
        let out = assembled_with_stop(stop, &events);
        assert_eq!(
            out["choices"][0]["message"]["content"], expected,
            "{stop:?} {deltas:?}"
        );
    }
}

#[test]
fn a_stop_at_the_very_start_leaves_empty_content() {
    let events = text_events(&["STOP", " and the rest"]);
    let frames = stream_frames(&stop_options(true, &["STOP"]), &events, true);
    let deltas: Vec<&Value> = frames[..frames.len() - 2]
        .iter()
        .map(|f| &f["choices"][0]["delta"])
        .collect();
    assert_eq!(
        deltas,
        [&json!({"role": "assistant", "content": ""}), &json!({})],
        "{frames:?}"
    );
    assert_eq!(frames[1]["choices"][0]["finish_reason"], "stop");
    assert_eq!(frames[2]["usage"]["completion_tokens"], 7);
    let out = assembled_with_stop(&["STOP"], &events);
    assert_eq!(out["choices"][0]["message"]["content"], "");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
}

#[test]
fn without_a_match_the_held_text_is_flushed_once() {
    let stop = ["\nObservation:"];
    // Held and then let go when the next delta shows it is no stop sequence ...
    let (content, finish) = streamed_content(&stop, &text_events(&["Hello\nObs", "erv", "ing"]));
    assert_eq!(content, ["Hello", "\nObserving"]);
    assert_eq!(finish, ["stop"]);
    // ... or held to the end, and sent before the final chunk.
    let events = text_events(&["Hello", " \nObs"]);
    let frames = stream_frames(&stop_options(true, &stop), &events, true);
    let tail: Vec<&Value> = frames[frames.len() - 4..frames.len() - 2]
        .iter()
        .map(|f| &f["choices"][0])
        .collect();
    assert_eq!(
        tail,
        [
            &json!({"index": 0, "delta": {"content": "\nObs"}, "finish_reason": null}),
            &json!({"index": 0, "delta": {}, "finish_reason": "stop"}),
        ]
    );
    let (content, _) = streamed_content(&stop, &events);
    assert_eq!(content.concat(), "Hello \nObs");
    let out = assembled_with_stop(&stop, &events);
    assert_eq!(out["choices"][0]["message"]["content"], "Hello \nObs");
    // An answer cut short keeps its finish reason.
    let incomplete = [
        json!({"type": "response.output_text.delta", "delta": "Hello \nObs"}),
        json!({"type": "response.incomplete", "response": {
                "incomplete_details": {"reason": "max_output_tokens"}}}),
    ];
    let (content, finish) = streamed_content(&stop, &incomplete);
    assert_eq!(
        (content.concat().as_str(), finish.as_slice()),
        ("Hello \nObs", &["length".to_owned()][..])
    );
    // A failure: the held text goes out before the error, nothing is lost.
    let failed = [
        json!({"type": "response.output_text.delta", "delta": "Half \nObs"}),
        json!({"type": "response.failed", "response": {"error": {
                "code": "server_is_overloaded", "message": "busy"}}}),
    ];
    let frames = stream_frames(&stop_options(true, &stop), &failed, true);
    assert_eq!(frames[2]["choices"][0]["delta"]["content"], "\nObs");
    assert_eq!(frames[3]["error"]["code"], "server_is_overloaded");
}

/// Feeds `pieces` to a matcher for `stop`; what went out, piece by piece, and whether a
/// sequence matched.
fn match_pieces(stop: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
    let stops: Vec<String> = stop.iter().map(|s| (*s).to_owned()).collect();
    let mut matcher = StopMatcher::new(&stops).unwrap();
    let mut out = Vec::new();
    for piece in pieces {
        matcher.push(piece, |t| out.push(t.to_owned()));
    }
    matcher.flush(|t| out.push(t.to_owned()));
    (out, matcher.matched)
}

#[test]
fn multi_byte_characters_around_the_hold_back() {
    /// Stop sequences, the text's pieces, what goes out piece by piece, whether it matched.
    type Case = (
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
        bool,
    );
    let cases: [Case; 6] = [
        // The held tail is a whole emoji (4 bytes), let go with the next text.
        (
            &["\u{1F600}\u{1F600}"],
            &["a\u{1F600}", "b"],
            &["a", "\u{1F600}b"],
            false,
        ),
        (
            &["\u{1F600}\u{1F600}"],
            &["a\u{1F600}", "\u{1F600}b"],
            &["a"],
            true,
        ),
        (&["日本語"], &["これは日本", "語です"], &["これは"], true),
        (
            &["日本語"],
            &["これは日本", "人です"],
            &["これは", "日本人です"],
            false,
        ),
        // A one-character sequence of two bytes holds nothing back.
        (&["é"], &["caf", "fé!"], &["caf", "f"], true),
        // Around multi-byte text the tail starts on a character boundary.
        (&["ab"], &["éa", "éb"], &["é", "aéb"], false),
    ];
    for (stop, pieces, expected, matched) in cases {
        let (out, m) = match_pieces(stop, pieces);
        assert_eq!(out, expected, "{stop:?} {pieces:?}");
        assert_eq!(m, matched, "{stop:?} {pieces:?}");
    }
    assert_eq!(
        scan(
            "xé\u{1F600}",
            &["\u{1F600}!".to_owned(), "é\u{1F600}?".to_owned()]
        ),
        Scan::Hold(1)
    );
    assert_eq!(scan("xé", &["éa".to_owned()]), Scan::Hold(1));
    assert_eq!(scan("xéa", &["éa".to_owned()]), Scan::Stop(1));
}

#[test]
fn output_after_the_stop_is_not_returned() {
    let stop = ["\nObservation:"];
    let call_added = json!({"type": "response.output_item.added", "output_index": 1,
            "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f"}});
    let call_args =
        json!({"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "{}"});
    let call_done = json!({"type": "response.output_item.done", "output_index": 1, "item": {
            "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}});
    let reasoning = json!({"type": "response.reasoning_summary_text.delta", "output_index": 0,
            "summary_index": 0, "delta": "plan: say \nObservation: then stop"});
    let text = |index: u64, delta: &str| json!({"type": "response.output_text.delta", "output_index": index, "delta": delta});
    // Reasoning first (never searched for stops), then text with the stop, then a tool call
    // and more text: the answer is the text before the stop, nothing else.
    let after = [
        reasoning.clone(),
        text(0, "Answer: 4\nObservation: late"),
        call_added.clone(),
        call_args.clone(),
        call_done.clone(),
        text(2, " and more"),
        json!({"type": "response.output_item.done", "output_index": 2, "item": {
                "type": "message", "content": [{"type": "output_text", "text": "never sent"}]}}),
        json!({"type": "response.refusal.delta", "output_index": 3, "delta": "no"}),
        completed(),
    ];
    let frames = stream_frames(&stop_options(true, &stop), &after, true);
    assert_eq!(
        frames[1]["choices"][0]["delta"]["reasoning_content"],
        "plan: say \nObservation: then stop"
    );
    assert_eq!(frames[2]["choices"][0]["delta"]["content"], "Answer: 4");
    assert_eq!(
        frames[3]["choices"][0]["finish_reason"], "stop",
        "{frames:?}"
    );
    assert_eq!(frames[4]["usage"]["total_tokens"], 17);
    assert_eq!(frames.len(), 6, "{frames:?}");
    let out = assembled_with_stop(&stop, &after);
    assert_eq!(
        out["choices"][0],
        json!({"index": 0, "logprobs": null, "finish_reason": "stop", "message": {"role": "assistant",
                "refusal": null, "content": "Answer: 4", "reasoning_content": "plan: say \nObservation: then stop"}})
    );
    assert_eq!(out["usage"]["total_tokens"], 17);

    // A tool call before the cut text is part of the answer; the finish reason is the stop.
    let before = [
        call_added,
        call_args,
        call_done,
        text(2, "Calling.\nObs"),
        text(2, "ervation: x"),
        completed(),
    ];
    let out = assembled_with_stop(&stop, &before);
    let message = &out["choices"][0]["message"];
    assert_eq!(message["content"], "Calling.");
    assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{}");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    let (content, finish) = streamed_content(&stop, &before);
    assert_eq!(
        (content, finish),
        (vec!["Calling.".to_owned()], vec!["stop".to_owned()])
    );

    // A tool call interrupts the text: what was held goes out before the call, and a
    // sequence cannot span the call.
    let settled = [
        text(0, "See \nObs"),
        json!({"type": "response.output_item.added", "output_index": 1,
                "item": {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "g"}}),
        text(2, "ervation:"),
        completed(),
    ];
    let out = assembled_with_stop(&stop, &settled);
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "See \nObservation:"
    );
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let only_done = [
        json!({"type": "response.output_item.done", "output_index": 0, "item": {
                "type": "message", "content": [{"type": "output_text", "text": "Done.\nObservation: x"}]}}),
        completed(),
    ];
    let out = assembled_with_stop(&stop, &only_done);
    assert_eq!(out["choices"][0]["message"]["content"], "Done.");
}

#[test]
fn legacy_functions_translate_like_tools() {
    let user = json!({"role": "user", "content": "hi"});
    let declared = json!([
        {"name": "look", "description": "Look", "parameters": {"type": "object"}},
        {"name": "noop", "strict": true},
    ]);
    let tools: Vec<Value> = declared
        .as_array()
        .unwrap()
        .iter()
        .map(|f| json!({"type": "function", "function": f}))
        .collect();
    let choices = [
        (json!("auto"), json!("auto")),
        (json!("none"), json!("none")),
        (
            json!({"name": "look"}),
            json!({"type": "function", "function": {"name": "look"}}),
        ),
    ];
    for (legacy, modern) in choices {
        let (body, req, options) = convert(json!({"model": "m", "messages": [user],
                "functions": declared, "function_call": legacy}));
        let (expected, _, modern_options) = convert(json!({"model": "m", "messages": [user],
                "tools": tools, "tool_choice": modern}));
        assert_eq!(body["tools"], expected["tools"], "{legacy}");
        assert_eq!(body["tool_choice"], expected["tool_choice"], "{legacy}");
        assert!(req.dropped.is_empty(), "{legacy}: {:?}", req.dropped);
        assert!(options.legacy_functions && !modern_options.legacy_functions);
        // The legacy answer holds one call: the model is asked for one at a time.
        assert_eq!(body["parallel_tool_calls"], false);
        assert!(expected.get("parallel_tool_calls").is_none());
    }
    let (body, _, _) = convert(json!({"model": "m", "messages": [user], "functions": declared}));
    assert_eq!(
        body["tools"],
        json!([
            {"type": "function", "name": "look", "description": "Look",
             "parameters": {"type": "object"}, "strict": false},
            {"type": "function", "name": "noop",
             "parameters": {"type": "object", "properties": {}, "required": [],
                    "additionalProperties": false}, "strict": true},
        ])
    );
    assert!(body.get("tool_choice").is_none());
    // The client's own parallel_tool_calls stands.
    let (body, _, _) = convert(json!({"model": "m", "messages": [user],
            "functions": declared, "parallel_tool_calls": true}));
    assert_eq!(body["parallel_tool_calls"], true);
    // Null is absent: no legacy form, nothing dropped, and no conflict with the tools.
    let (body, req, options) = convert(json!({"model": "m", "messages": [user],
            "functions": null, "function_call": null, "tools": tools, "tool_choice": "auto"}));
    assert_eq!(body["tools"].as_array().map(Vec::len), Some(2));
    assert!(req.dropped.is_empty() && !options.legacy_functions);
    // And the other way round.
    let (body, req, options) = convert(json!({"model": "m", "messages": [user],
            "tools": null, "tool_choice": null, "functions": declared}));
    assert_eq!(body["tools"].as_array().map(Vec::len), Some(2));
    assert!(req.dropped.is_empty() && options.legacy_functions);
}

#[test]
fn legacy_function_messages_become_paired_items() {
    let call = |name: &str, arguments: Value| {
        json!({"role": "assistant", "content": null,
                   "function_call": {"name": name, "arguments": arguments}})
    };
    let result = |name: &str, content: Value| -> Value {
        json!({"role": "function", "name": name, "content": content})
    };
    let (body, req, options) = convert(json!({"model": "m", "messages": [
        {"role": "user", "content": "Weather in Paris and Rome, and the time?"},
        call("weather", json!("{\"city\":\"Paris\"}")),
        result("weather", json!("sunny")),
        {"role": "assistant", "content": "Now Rome.",
         "function_call": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}},
        call("time", json!({"tz": "CET"})),
        result("time", json!("noon")),
        result("weather", json!([{"type": "text", "text": "rainy"}])),
        {"role": "assistant", "content": null, "function_call": {"name": "weather"}},
        {"role": "assistant", "content": null, "function_call": {"name": "weather"}},
        result("weather", json!("cloudy")),
        result("weather", json!(null)),
        {"role": "user", "content": "Thanks"},
    ]}));
    let call_item = |id: &str, name: &str, arguments: &str| -> Value {
        json!({"type": "function_call", "call_id": id, "name": name, "arguments": arguments})
    };
    let output = |id: &str, output: &str| -> Value {
        json!({"type": "function_call_output", "call_id": id, "output": output})
    };
    assert_eq!(
        body["input"],
        json!([
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Weather in Paris and Rome, and the time?"}]},
            // Ids made from the assistant message's position: `call_fn_<index>`.
            call_item("call_fn_1", "weather", "{\"city\":\"Paris\"}"),
            output("call_fn_1", "sunny"),
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "Now Rome."}]},
            call_item("call_fn_3", "weather", "{\"city\":\"Rome\"}"),
            call_item("call_fn_4", "time", "{\"tz\":\"CET\"}"),
            // A result answers the latest unanswered call of its name.
            output("call_fn_4", "noon"),
            output("call_fn_3", "rainy"),
            call_item("call_fn_7", "weather", "{}"),
            call_item("call_fn_8", "weather", "{}"),
            output("call_fn_8", "cloudy"),
            output("call_fn_7", ""),
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Thanks"}]},
        ])
    );
    // Legacy messages alone do not make the answer legacy (the tools decide that).
    assert!(req.dropped.is_empty() && !options.legacy_functions);
    // A history with both forms keeps both.
    let (body, _, _) = convert(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            call("f", json!("{}")),
            result("f", json!("a")),
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_x", "content": "b"},
        ], "tools": [{"type": "function", "function": {"name": "f"}}]}));
    let ids: Vec<&Value> = body["input"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("call_id"))
        .collect();
    assert_eq!(ids, ["call_fn_1", "call_fn_1", "call_x", "call_x"]);
}

#[test]
fn legacy_function_errors_name_the_field() {
    let user = json!({"role": "user", "content": "hi"});
    let functions = json!([{"name": "f"}]);
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let call = |name: &str| {
        json!({"role": "assistant", "content": null,
                   "function_call": {"name": name, "arguments": "{}"}})
    };
    let with = |extra: Value| {
        let mut body = json!({"model": "m", "messages": [user]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let messages = |messages: Value| json!({"model": "m", "messages": messages});
    let cases = [
        (
            with(json!({"functions": functions, "tools": tools})),
            "functions: cannot be used together with tools",
        ),
        (
            with(json!({"function_call": "auto", "tool_choice": "auto"})),
            "function_call: cannot be used together with tool_choice",
        ),
        (
            with(json!({"functions": functions, "tool_choice": "none"})),
            "functions: cannot be used together with tool_choice",
        ),
        (
            with(json!({"function_call": {"name": "f"}, "tools": tools})),
            "function_call: cannot be used together with tools",
        ),
        (
            with(json!({"functions": "x"})),
            "functions: must be an array",
        ),
        (
            with(json!({"functions": [{"description": "no name"}]})),
            "functions[0].name: required",
        ),
        (
            with(json!({"functions": [{"name": "f"}, 5]})),
            "functions[1]: must be an object",
        ),
        (
            with(json!({"functions": [{"name": 5}]})),
            "functions[0].name: must be a string",
        ),
        (
            with(json!({"function_call": 5})),
            "function_call: must be \"auto\", \"none\" or an object with a name",
        ),
        (
            with(json!({"function_call": "required"})),
            "function_call: unsupported value \"required\"",
        ),
        (
            with(json!({"function_call": {}})),
            "function_call.name: required",
        ),
        (
            with(json!({"function_call": "auto"})),
            "function_call: only allowed when functions are given",
        ),
        (
            with(json!({"functions": []})),
            "functions: must not be empty",
        ),
        (
            messages(json!([user, call("f"), {"role": "function", "content": "x"}])),
            "messages[2].name: required",
        ),
        (
            messages(json!([user, {"role": "assistant", "function_call": {"arguments": "{}"}}])),
            "messages[1].function_call.name: required",
        ),
        (
            messages(json!([user, {"role": "assistant", "function_call": "f"}])),
            "messages[1].function_call: must be an object",
        ),
    ];
    for (body, expected) in cases {
        let err = chat_to_responses(&serde_json::to_vec(&body).unwrap(), &Overrides::default())
            .unwrap_err();
        assert_eq!(err.to_string(), expected, "{body}");
        let param = expected.split(": ").next();
        assert_eq!(err.param(), param, "{body}");
    }
}

#[test]
fn a_legacy_function_result_without_a_call_gets_one() {
    // Retrieved text put in as a function result, with no function declared or called.
    let (body, _, options) = convert(json!({"model": "m", "messages": [
        {"role": "user", "content": "Where does Bob live?"},
        {"role": "function", "name": "get_context", "content": "Bob lives in Paris"},
        {"role": "assistant", "content": null,
         "function_call": {"name": "get_context", "arguments": "{}"}},
        {"role": "function", "name": "get_context", "content": "He moved to Rome"},
        {"role": "function", "name": "get_context", "content": "In 2024"},
    ]}));
    assert!(!options.legacy_functions, "no functions declared");
    let call = |id: &str| -> Value {
        json!({"type": "function_call", "call_id": id, "name": "get_context",
                   "arguments": "{}"})
    };
    let output = |id: &str, text: &str| -> Value {
        json!({"type": "function_call_output", "call_id": id, "output": text})
    };
    assert_eq!(
        body["input"].as_array().unwrap()[1..],
        [
            call("call_fn_1"),
            output("call_fn_1", "Bob lives in Paris"),
            call("call_fn_2"),
            output("call_fn_2", "He moved to Rome"),
            call("call_fn_4"),
            output("call_fn_4", "In 2024"),
        ]
    );
}

/// The usage chunk [`codex_stream`] ends with.
fn usage_frame() -> Value {
    json!({"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "gpt-5-codex", "choices": [],
               "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
                         "prompt_tokens_details": {"cached_tokens": 64},
                         "completion_tokens_details": {"reasoning_tokens": 16}}})
}

fn legacy_options(stream: bool) -> ChatOptions {
    ChatOptions {
        model: "m".into(),
        stream,
        include_usage: stream,
        stop: Vec::new(),
        legacy_functions: true,
    }
}

fn assemble_with(options: &ChatOptions, events: &[Value]) -> Value {
    let mut assembler = ChatAssembler::new(options, 42);
    for event in events {
        assembler
            .push(&SseEvent::new(serde_json::to_vec(event).unwrap()))
            .unwrap();
    }
    serde_json::from_slice(&assembler.finish().unwrap()).unwrap()
}

#[test]
fn a_legacy_answer_has_one_function_call() {
    let frames = stream_frames(&legacy_options(true), &codex_stream(), false);
    let expected = vec![
        chunk(json!({"role": "assistant"}), Value::Null),
        chunk(json!({"reasoning_content": "Thinking"}), Value::Null),
        chunk(json!({"reasoning_content": " about it"}), Value::Null),
        chunk(json!({"content": "Hello"}), Value::Null),
        chunk(json!({"content": ", world"}), Value::Null),
        chunk(
            json!({"function_call": {"name": "get_weather", "arguments": ""}}),
            Value::Null,
        ),
        chunk(
            json!({"function_call": {"arguments": "{\"city\":"}}),
            Value::Null,
        ),
        chunk(
            json!({"function_call": {"arguments": "\"Paris\"}"}}),
            Value::Null,
        ),
        chunk(json!({}), json!("function_call")),
        usage_frame(),
        json!("[DONE]"),
    ];
    assert_eq!(frames, expected);

    let out = assemble_with(&legacy_options(false), &codex_stream());
    assert_eq!(
        out["choices"],
        json!([{"index": 0, "logprobs": null, "finish_reason": "function_call", "message": {
                "role": "assistant", "refusal": null, "content": "Hello, world",
                "reasoning_content": "Thinking about it",
                "function_call": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}}])
    );
    assert_eq!(out["usage"]["total_tokens"], 140);

    // A call that only arrives whole, in output_item.done; no text: `content: null`.
    let done_only = [
        json!({"type": "response.output_item.done", "output_index": 0, "item": {
                "type": "function_call", "id": "fc", "call_id": "c1", "name": "f", "arguments": "{}"}}),
        json!({"type": "response.completed", "response": {"id": "resp_abc"}}),
    ];
    let out = assemble_with(&legacy_options(false), &done_only);
    assert_eq!(
        out["choices"][0],
        json!({"index": 0, "logprobs": null, "finish_reason": "function_call", "message": {
                "role": "assistant", "refusal": null, "content": null,
                "function_call": {"name": "f", "arguments": "{}"}}})
    );
    let frames = stream_frames(&legacy_options(true), &done_only, false);
    let deltas: Vec<&Value> = frames[..3].iter().map(|f| &f["choices"][0]).collect();
    assert_eq!(
        deltas,
        [
            // A call first: `content` null, as in the assembled message.
            &json!({"index": 0, "delta": {"role": "assistant", "content": null}, "finish_reason": null}),
            &json!({"index": 0, "delta": {"function_call": {"name": "f", "arguments": ""}}, "finish_reason": null}),
            &json!({"index": 0, "delta": {"function_call": {"arguments": "{}"}}, "finish_reason": null}),
        ]
    );
    assert_eq!(frames[3]["choices"][0]["finish_reason"], "function_call");
}

#[test]
fn a_legacy_answer_keeps_the_first_of_several_calls() {
    let added = |index: u64, name: &str| {
        json!({"type": "response.output_item.added", "output_index": index, "item": {
                "type": "function_call", "id": format!("fc_{index}"), "call_id": format!("call_{index}"),
                "name": name, "arguments": ""}})
    };
    let args = |index: u64, delta: &str| {
        json!({"type": "response.function_call_arguments.delta", "output_index": index,
                   "item_id": format!("fc_{index}"), "delta": delta})
    };
    let done = |index: u64, name: &str, arguments: &str| {
        json!({"type": "response.output_item.done", "output_index": index, "item": {
                "type": "function_call", "id": format!("fc_{index}"), "call_id": format!("call_{index}"),
                "name": name, "arguments": arguments}})
    };
    let events = [
        added(0, "first"),
        args(0, "{\"a\":"),
        added(1, "second"),
        args(1, "{\"b\":2}"),
        args(0, "1}"),
        done(0, "first", "{\"a\":1}"),
        done(1, "second", "{\"b\":2}"),
        // One that never was announced, only done: dropped as well.
        done(2, "third", "{\"c\":3}"),
        completed(),
    ];
    let out = assemble_with(&legacy_options(false), &events);
    assert_eq!(
        out["choices"][0],
        json!({"index": 0, "logprobs": null, "finish_reason": "function_call", "message": {
                "role": "assistant", "refusal": null, "content": null,
                "function_call": {"name": "first", "arguments": "{\"a\":1}"}}})
    );
    let frames = stream_frames(&legacy_options(true), &events, false);
    let deltas: Vec<&Value> = frames
        .iter()
        .filter(|f| f.get("choices").is_some_and(|c| c[0].is_object()))
        .map(|f| &f["choices"][0]["delta"])
        .collect();
    assert_eq!(
        deltas,
        [
            &json!({"role": "assistant", "content": null}),
            &json!({"function_call": {"name": "first", "arguments": ""}}),
            &json!({"function_call": {"arguments": "{\"a\":"}}),
            &json!({"function_call": {"arguments": "1}"}}),
            &json!({}),
        ],
        "{frames:?}"
    );
    // The modern form returns all three, each with its own arguments (interleaved as they
    // came), at its own index.
    let modern = ChatOptions {
        legacy_functions: false,
        ..legacy_options(false)
    };
    let out = assemble_with(&modern, &events);
    let call = |id: &str, name: &str, args: &str| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}});
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"],
        json!([
            call("call_0", "first", "{\"a\":1}"),
            call("call_1", "second", "{\"b\":2}"),
            call("call_2", "third", "{\"c\":3}")
        ])
    );
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    let frames = stream_frames(
        &ChatOptions {
            stream: true,
            ..modern
        },
        &events,
        false,
    );
    let mut streamed: Vec<(u64, String, String)> = Vec::new();
    for f in &frames {
        for c in f["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = c["index"].as_u64().unwrap();
            let args = c["function"]["arguments"].as_str().unwrap_or("");
            match c["function"]["name"].as_str() {
                Some(name) => {
                    assert_eq!(index as usize, streamed.len(), "{frames:?}");
                    streamed.push((index, name.to_owned(), args.to_owned()));
                }
                None => streamed[index as usize].2.push_str(args),
            }
        }
    }
    assert_eq!(
        streamed,
        [
            (0, "first".to_owned(), "{\"a\":1}".to_owned()),
            (1, "second".to_owned(), "{\"b\":2}".to_owned()),
            (2, "third".to_owned(), "{\"c\":3}".to_owned())
        ]
    );
}

#[test]
fn the_legacy_flag_keeps_stop_refusals_reasoning_and_usage() {
    // Answers without a function call are the same in both forms.
    let refusal = json!({"type": "message", "content": [{"type": "refusal", "refusal": "No."}]});
    let answers = [
        text_events(&["Thought: x", "\nObservation: y"]),
        vec![
            json!({"type": "response.reasoning_summary_text.delta", "output_index": 0,
                       "summary_index": 0, "delta": "hmm"}),
            json!({"type": "response.refusal.delta", "output_index": 1, "delta": "No."}),
            json!({"type": "response.output_item.done", "output_index": 1, "item": refusal}),
            completed(),
        ],
    ];
    for stop in [&[][..], &["\nObservation:"][..]] {
        for events in &answers {
            for stream in [true, false] {
                let modern = stop_options(stream, stop);
                let legacy = ChatOptions {
                    legacy_functions: true,
                    ..modern.clone()
                };
                if stream {
                    assert_eq!(
                        stream_frames(&legacy, events, true),
                        stream_frames(&modern, events, true),
                        "{stop:?} {events:?}"
                    );
                } else {
                    assert_eq!(
                        assemble_with(&legacy, events),
                        assemble_with(&modern, events),
                        "{stop:?} {events:?}"
                    );
                }
            }
        }
    }
    // A stop sequence before the call: the call is not part of the answer.
    let stop = ["\nObservation:"];
    let legacy = |stream| ChatOptions {
        legacy_functions: true,
        ..stop_options(stream, &stop)
    };
    let call_done = json!({"type": "response.output_item.done", "output_index": 1, "item": {
            "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}});
    let text = |index: u64, delta: &str| json!({"type": "response.output_text.delta", "output_index": index, "delta": delta});
    let cut_first = [
        text(0, "Go\nObservation: x"),
        call_done.clone(),
        completed(),
    ];
    let out = assemble_with(&legacy(false), &cut_first);
    assert_eq!(
        out["choices"][0],
        json!({"index": 0, "logprobs": null, "finish_reason": "stop", "message": {"role": "assistant", "refusal": null, "content": "Go"}})
    );
    // A call before the cut text stays; the finish reason is the stop.
    let call_first = [call_done, text(2, "Done\nObservation: x"), completed()];
    let out = assemble_with(&legacy(false), &call_first);
    assert_eq!(
        out["choices"][0],
        json!({"index": 0, "logprobs": null, "finish_reason": "stop", "message": {"role": "assistant",
                "refusal": null, "content": "Done", "function_call": {"name": "f", "arguments": "{}"}}})
    );
    let frames = stream_frames(&legacy(true), &call_first, false);
    let deltas: Vec<&Value> = frames[1..4]
        .iter()
        .map(|f| &f["choices"][0]["delta"])
        .collect();
    assert_eq!(
        deltas,
        [
            &json!({"function_call": {"name": "f", "arguments": ""}}),
            &json!({"function_call": {"arguments": "{}"}}),
            &json!({"content": "Done"}),
        ]
    );
    assert_eq!(frames[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(frames[5]["usage"]["total_tokens"], 17);
}

proptest! {
    /// The cut is where the earliest sequence starts in the whole text, whatever the deltas;
    /// what goes out is a prefix of the text, in non-empty pieces.
    #[test]
    fn the_cut_does_not_depend_on_the_deltas(
        chars in proptest::collection::vec(prop::sample::select(vec!['a', 'b', 'é', '\u{1F600}', '\n']), 0..24),
        stops in proptest::collection::vec(
            proptest::collection::vec(prop::sample::select(vec!['a', 'b', 'é', '\u{1F600}', '\n']), 0..5), 1..5),
        cuts in proptest::collection::vec(0usize..24, 0..6),
    ) {
        let text: String = chars.iter().collect();
        let stops: Vec<String> = stops.iter().map(|s| s.iter().collect()).collect();
        let mut bounds: Vec<usize> = cuts.iter().filter_map(|&c| text.char_indices().nth(c).map(|(i, _)| i)).collect();
        bounds.sort_unstable();
        bounds.dedup();
        let mut pieces = Vec::new();
        let mut last = 0;
        for b in bounds.into_iter().chain([text.len()]) {
            pieces.push(&text[last..b]);
            last = b;
        }
        let expected_end = stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
        let Some(mut matcher) = StopMatcher::new(&stops) else {
            prop_assert!(stops.iter().all(String::is_empty));
            return Ok(());
        };
        let mut out = Vec::new();
        for piece in &pieces {
            matcher.push(piece, |t| out.push(t.to_owned()));
        }
        matcher.flush(|t| out.push(t.to_owned()));
        prop_assert!(out.iter().all(|p| !p.is_empty()));
        prop_assert_eq!(out.concat(), &text[..expected_end.unwrap_or(text.len())]);
        prop_assert_eq!(matcher.matched, expected_end.is_some());
    }
}

proptest! {
    #[test]
    fn chat_request_adapter_never_panics(value in crate::adapt::testing::arb_json(),
                                         message in crate::adapt::testing::arb_json()) {
        let bodies = [
            value.clone(),
            json!({"model": "m", "messages": value.clone()}),
            json!({"model": "m", "messages": [message.clone(), value.clone()], "tools": value.clone(),
                   "tool_choice": message.clone(), "response_format": value.clone()}),
            json!({"model": "m", "messages": [{"role": "user", "content": value.clone()},
                                             {"role": "assistant", "tool_calls": value.clone(), "content": message.clone()},
                                             {"role": "tool", "tool_call_id": "x", "content": value.clone()}]}),
            json!({"model": "m", "functions": value.clone(), "function_call": message.clone(),
                   "messages": [{"role": "assistant", "function_call": value.clone(), "content": message.clone()},
                                {"role": "function", "name": message.clone(), "content": value.clone()},
                                {"role": "assistant", "function_call": {"name": "f", "arguments": value.clone()}},
                                {"role": "function", "name": "f", "content": message.clone()}]}),
        ];
        for body in bodies {
            let bytes = serde_json::to_vec(&body).unwrap();
            if let Ok((req, _)) = chat_to_responses(&bytes, &Overrides::default()) {
                let out: Value = serde_json::from_slice(&req.body).unwrap();
                prop_assert_eq!(&out["stream"], &json!(true));
            }
        }
    }

    #[test]
    fn translator_never_panics(values in proptest::collection::vec(crate::adapt::testing::arb_json(), 0..12),
                               kinds in proptest::collection::vec(prop::sample::select(vec![
                                   "response.created", "response.output_item.added",
                                   "response.output_text.delta", "response.reasoning_summary_text.delta",
                                   "response.function_call_arguments.delta", "response.output_item.done",
                                   "response.completed", "response.failed", "response.incomplete", "error",
                               ]), 12),
                               garbage in proptest::collection::vec(any::<u8>(), 0..64)) {
        let options = ChatOptions { model: "m".into(), stream: true, include_usage: true, stop: Vec::new(), legacy_functions: false };
        let mut chat = ChatStream::new(&options, 0);
        let mut assembler = ChatAssembler::new(&options, 0);
        let with_stop = ChatOptions { stop: vec!["a".into(), "\n\u{e9}".into()], ..options.clone() };
        let mut stopping = ChatStream::new(&with_stop, 0);
        let legacy = ChatOptions { legacy_functions: true, ..with_stop.clone() };
        let mut legacy_chat = ChatStream::new(&legacy, 0);
        let mut legacy_assembler = ChatAssembler::new(&legacy, 0);
        let mut out = BytesMut::new();
        let mut stopped_out = BytesMut::new();
        let mut legacy_out = BytesMut::new();
        for (value, kind) in values.iter().zip(&kinds) {
            let mut object = serde_json::Map::new();
            object.insert("type".into(), (*kind).into());
            for key in ["response", "item", "delta", "output_index", "summary_index", "item_id", "code"] {
                object.insert(key.into(), value.clone());
            }
            let event = SseEvent::new(serde_json::to_vec(&object).unwrap());
            let _ = chat.push(&event, &mut out);
            let _ = stopping.push(&event, &mut stopped_out);
            let _ = legacy_chat.push(&event, &mut legacy_out);
            let _ = assembler.push(&event);
            let _ = legacy_assembler.push(&event);
            let junk = SseEvent::new(garbage.clone()).with_event(*kind);
            let _ = chat.push(&junk, &mut out);
            let _ = stopping.push(&junk, &mut stopped_out);
            let _ = legacy_chat.push(&junk, &mut legacy_out);
            let _ = assembler.push(&junk);
            let _ = legacy_assembler.push(&junk);
        }
        chat.finish(&mut out);
        stopping.finish(&mut stopped_out);
        legacy_chat.finish(&mut legacy_out);
        let _ = assembler.finish();
        let _ = legacy_assembler.finish();
        // Whatever came in, the output is well-formed SSE ending in [DONE].
        for out in [out, stopped_out, legacy_out] {
            prop_assert!(out.ends_with(DONE_FRAME));
            let mut parser = SseParser::new();
            parser.push(out.freeze());
            while let Some(item) = parser.next_item().unwrap() {
                if let SseItem::Event(e) = item
                    && !e.is_done_marker()
                {
                    let _: Value = serde_json::from_slice(e.data()).unwrap();
                }
            }
            prop_assert!(parser.finish().is_ok());
        }
    }
}

/// A refusal the client got back (openai-python appends `choice.message` as is) stays in the
/// history as the assistant's turn, after any text of it.
#[test]
fn an_assistant_refusal_stays_in_the_history() {
    let (v, req, _) = convert(json!({"model": "m", "messages": [
        {"role": "user", "content": "Write ransomware"},
        {"role": "assistant", "content": null, "refusal": "I can't help with that."},
        {"role": "assistant", "content": "Partly: ", "refusal": "no."},
        {"role": "user", "content": "Then explain what it is."}]}));
    assert_eq!(
        v["input"][1],
        json!({"type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": "I can't help with that."}]})
    );
    assert_eq!(
        v["input"][2]["content"],
        json!([{"type": "output_text", "text": "Partly: "}, {"type": "output_text", "text": "no."}])
    );
    assert_eq!(v["input"].as_array().unwrap().len(), 4);
    assert!(req.dropped.is_empty());
    assert!(
        convert_err(json!({"model": "m", "messages": [
            {"role": "assistant", "content": null, "refusal": 5}]}))
        .contains("messages[0].refusal")
    );
}

/// Responses input has no participant names: a message's `name` is reported as dropped, not
/// lost silently (a `function` message's and a `tool` message's name are read or redundant).
#[test]
fn participant_names_are_reported_as_dropped() {
    let (_, req, _) = convert(json!({"model": "m", "messages": [
        {"role": "user", "name": "alice", "content": "I vote A."},
        {"role": "user", "name": "bob", "content": "I vote B."},
        {"role": "user", "content": "Who voted B?"}]}));
    assert_eq!(req.dropped, ["messages[].name"]);
    let (_, req, _) = convert(json!({"model": "m", "messages": [
        {"role": "user", "name": null, "content": "Q"},
        {"role": "assistant", "content": null,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "name": "f", "tool_call_id": "c1", "content": "ok"}]}));
    assert!(req.dropped.is_empty(), "{:?}", req.dropped);
}

/// JSON mode with "JSON" only in the system prompt: the backend looks for the word in the input
/// messages, so it is said there too, second (the first item and the turn-to-turn prefix stay).
#[test]
fn json_mode_asked_in_the_system_prompt_is_said_in_the_input() {
    let directive = json!({"type": "message", "role": "developer",
        "content": [{"type": "input_text", "text": "Respond in JSON."}]});
    let body = |messages: Value| {
        json!({"model": "m", "messages": messages,
        "response_format": {"type": "json_object"}})
    };
    let (v, _, _) = convert(body(json!([
        {"role": "system", "content": "Extract people. Answer in JSON."},
        {"role": "user", "content": "Alice met Bob."},
        {"role": "assistant", "content": "{}"},
        {"role": "user", "content": "And Carol?"}])));
    assert_eq!(v["instructions"], "Extract people. Answer in JSON.");
    let input = v["input"].as_array().unwrap();
    assert_eq!(input.len(), 4);
    assert_eq!(input[0]["content"][0]["text"], "Alice met Bob.");
    assert_eq!(input[1], directive);
    // Said already in the input (any case), or asked nowhere: nothing added.
    for messages in [
        json!([{"role": "system", "content": "Use JSON."}, {"role": "user", "content": "as json please"}]),
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
    ] {
        let (v, _, _) = convert(body(messages));
        assert_eq!(v["input"].as_array().unwrap().len(), 1, "{v}");
    }
    // Only the system prompt: the directive is the whole input.
    let (v, _, _) = convert(body(
        json!([{"role": "system", "content": "Reply with JSON."}]),
    ));
    assert_eq!(v["input"], json!([directive]));
    // Another format: left alone.
    let (v, _, _) = convert(json!({"model": "m", "response_format": {"type": "text"},
        "messages": [{"role": "system", "content": "JSON"}, {"role": "user", "content": "Hi"}]}));
    assert_eq!(v["input"].as_array().unwrap().len(), 1);
}

/// Dropped parameters are named up to a bound, each name cut short: a body of many unknown
/// keys costs neither a search over all the earlier ones per key nor a header of megabytes.
#[test]
fn dropped_parameters_are_named_up_to_a_bound() {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
    let long = "k".repeat(500);
    body[&long] = json!(1);
    for i in 0..10_000 {
        body[format!("unknown_{i:05}")] = json!(i);
    }
    let (_, req, _) = convert(body.clone());
    assert_eq!(req.dropped.len(), 33);
    assert_eq!(req.dropped.last().map(String::as_str), Some("..."));
    assert!(
        req.dropped.iter().all(|d| d.len() <= 64),
        "{:?}",
        req.dropped
    );
    let header = req.dropped_params_header().unwrap();
    assert!(header.len() < 33 * 66, "{}", header.len());

    let responses = json!({"model": "m", "input": "Hi", "a": 1, "b": null, "c": 2});
    let req = crate::adapt::apply_body_rules(
        &serde_json::to_vec(&responses).unwrap(),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(req.dropped, ["a", "c"]);
}
