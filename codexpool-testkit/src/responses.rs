//! Rendering a scripted answer in the OpenAI Responses dialect that the Codex backend streams
//! (PROTOCOL.md §4): the SSE events in the order the real backend sends them, with ids `resp_…`,
//! `msg_…`, `rs_…`, `fc_…`, sequence numbers and the final `response` object with its usage.
//! Shared by the Codex backend and the plain `/v1/responses` endpoint.

use serde_json::{Value, json};

use crate::reply::{Ending, FakeTokenUsage, OutputItem, Script};
use crate::state::{now_secs, random_hex};
use crate::stream::{Step, cut_steps};

/// What varies per answer.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) model: String,
    pub(crate) response_id: String,
    pub(crate) created_at: i64,
    /// Whether the request asked for `reasoning.encrypted_content`.
    pub(crate) encrypted_reasoning: bool,
    /// The account whose key encrypts reasoning (only it can read it back).
    pub(crate) owner: String,
    pub(crate) usage: FakeTokenUsage,
    /// Whether frames carry an `event:` line besides `data:` (PROTOCOL.md §4: optional).
    pub(crate) event_lines: bool,
}

impl Ctx {
    pub(crate) fn new(model: &str, encrypted_reasoning: bool, usage: FakeTokenUsage) -> Self {
        Ctx {
            model: model.to_owned(),
            response_id: format!("resp_{}", random_hex::<16>()),
            created_at: now_secs(),
            encrypted_reasoning,
            owner: String::new(),
            usage,
            event_lines: true,
        }
    }

    /// Reasoning is encrypted for `account`.
    pub(crate) fn owned_by(mut self, account: &str) -> Self {
        self.owner = account.to_owned();
        self
    }

    /// Frames with (`true`) or without an `event:` line.
    pub(crate) fn event_lines(mut self, on: bool) -> Self {
        self.event_lines = on;
        self
    }
}

/// Encrypted reasoning as the fake mints it: opaque to clients, readable only by the account
/// that made it (PROTOCOL.md: it belongs to that account).
pub(crate) fn mint_encrypted(owner: &str) -> String {
    let owner_hex: String = owner.bytes().map(|b| format!("{b:02x}")).collect();
    format!("gAAAAB{owner_hex}.{}", random_hex::<32>())
}

/// The account a piece of encrypted reasoning minted by [`mint_encrypted`] belongs to; `None`
/// for content in another shape (then the fake cannot tell, and accepts it).
pub(crate) fn encrypted_owner(content: &str) -> Option<String> {
    let (owner_hex, _) = content.strip_prefix("gAAAAB")?.split_once('.')?;
    let bytes = (0..owner_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(owner_hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// The `usage` object of `response.completed`.
pub(crate) fn usage_json(u: &FakeTokenUsage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens(),
    })
}

/// The `response` object.
fn response_object(ctx: &Ctx, status: &str, output: Vec<Value>, usage: Value) -> Value {
    json!({
        "id": ctx.response_id,
        "object": "response",
        "created_at": ctx.created_at,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "model": ctx.model,
        "output": output,
        "parallel_tool_calls": true,
        "store": false,
        "usage": usage,
    })
}

/// Ids of the output items, one per item.
fn item_ids(items: &[OutputItem]) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            let prefix = match item {
                OutputItem::Text { .. } | OutputItem::Refusal { .. } => "msg",
                OutputItem::Reasoning { .. } => "rs",
                OutputItem::ToolCall { .. } => "fc",
            };
            format!("{prefix}_{}", random_hex::<16>())
        })
        .collect()
}

/// An output item in its final (`output_item.done`) form.
fn item_done(item: &OutputItem, id: &str, ctx: &Ctx) -> Value {
    match item {
        OutputItem::Text { deltas } => json!({
            "id": id, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": deltas.concat()}],
        }),
        OutputItem::Refusal { deltas } => json!({
            "id": id, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "refusal", "refusal": deltas.concat()}],
        }),
        OutputItem::Reasoning { deltas } => {
            let mut item = json!({
                "id": id, "type": "reasoning",
                "summary": [{"type": "summary_text", "text": deltas.concat()}],
            });
            if ctx.encrypted_reasoning {
                item["encrypted_content"] = json!(mint_encrypted(&ctx.owner));
            }
            item
        }
        OutputItem::ToolCall {
            call_id,
            name,
            arguments_chunks,
        } => json!({
            "id": id, "type": "function_call", "status": "completed",
            "arguments": arguments_chunks.concat(), "call_id": call_id, "name": name,
        }),
    }
}

/// The final `response` object of a script (also the non-streamed `/v1/responses` answer).
pub(crate) fn final_response(script: &Script, ctx: &Ctx) -> Value {
    let ids = item_ids(&script.items);
    let output: Vec<Value> = script
        .items
        .iter()
        .zip(&ids)
        .map(|(item, id)| item_done(item, id, ctx))
        .collect();
    finish_object(&script.ending, ctx, output)
}

fn finish_object(ending: &Ending, ctx: &Ctx, output: Vec<Value>) -> Value {
    match ending {
        Ending::Failed { code, message } => {
            let mut r = response_object(ctx, "failed", output, Value::Null);
            r["error"] = json!({"code": code, "message": message});
            r
        }
        Ending::Incomplete { reason } => {
            let mut r = response_object(ctx, "incomplete", output, usage_json(&ctx.usage));
            r["incomplete_details"] = json!({"reason": reason});
            r
        }
        Ending::Completed | Ending::Cut | Ending::Stall => {
            response_object(ctx, "completed", output, usage_json(&ctx.usage))
        }
    }
}

/// Accumulates SSE frames with sequence numbers.
struct Writer {
    seq: u64,
    steps: Vec<Step>,
    event_lines: bool,
}

impl Writer {
    /// One event, its keys laid out as the backend writes them: `type` first, then
    /// `sequence_number`, then the rest (gateways read both from the front of the payload).
    fn event(&mut self, ty: &str, data: Value) {
        let mut json = format!("{{\"type\":{},\"sequence_number\":{}", json!(ty), self.seq);
        if let Value::Object(fields) = data {
            for (k, v) in fields {
                if k != "type" && k != "sequence_number" {
                    json.push_str(&format!(",{}:{v}", Value::String(k)));
                }
            }
        }
        json.push('}');
        self.seq += 1;
        self.steps.push(Step::text(if self.event_lines {
            format!("event: {ty}\ndata: {json}\n\n")
        } else {
            format!("data: {json}\n\n")
        }));
    }
}

/// The SSE events of a script.
pub(crate) fn render_stream(script: &Script, ctx: &Ctx) -> Vec<Step> {
    let mut w = Writer {
        seq: 0,
        steps: Vec::new(),
        event_lines: ctx.event_lines,
    };
    let start = response_object(ctx, "in_progress", Vec::new(), Value::Null);
    w.event("response.created", json!({ "response": start }));
    w.event("response.in_progress", json!({ "response": start }));
    let stops_early = matches!(script.ending, Ending::Cut | Ending::Stall);
    let ids = item_ids(&script.items);
    let mut output = Vec::new();
    let last = script.items.len().checked_sub(1);
    for (index, (item, id)) in script.items.iter().zip(&ids).enumerate() {
        let stop_here = stops_early && Some(index) == last;
        let done = item_done(item, id, ctx);
        if render_item(&mut w, item, id, index, stop_here, &done) {
            output.push(done);
        }
    }
    match &script.ending {
        Ending::Cut => w.steps.extend(cut_steps()),
        Ending::Stall => w.steps.push(Step::Hang),
        Ending::Completed => {
            let output = if script.empty_final_output {
                Vec::new()
            } else {
                output
            };
            let r = finish_object(&script.ending, ctx, output);
            w.event("response.completed", json!({ "response": r }));
        }
        Ending::Failed { .. } => {
            let r = finish_object(&script.ending, ctx, output);
            w.event("response.failed", json!({ "response": r }));
        }
        Ending::Incomplete { .. } => {
            let output = if script.empty_final_output {
                Vec::new()
            } else {
                output
            };
            let r = finish_object(&script.ending, ctx, output);
            w.event("response.incomplete", json!({ "response": r }));
        }
    }
    w.steps
}

/// The events of one item; `false` when the stream stops inside it (after its deltas).
fn render_item(
    w: &mut Writer,
    item: &OutputItem,
    id: &str,
    index: usize,
    stop_after_deltas: bool,
    done: &Value,
) -> bool {
    match item {
        OutputItem::Text { deltas } => {
            w.event(
                "response.output_item.added",
                json!({"output_index": index, "item": {
                    "id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []
                }}),
            );
            let part = |text: &str| json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text});
            w.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part("")}),
            );
            for delta in deltas {
                w.event(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
                );
            }
            if stop_after_deltas {
                return false;
            }
            let text = deltas.concat();
            w.event(
                "response.output_text.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
            );
            w.event(
                "response.content_part.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part(&text)}),
            );
        }
        OutputItem::Refusal { deltas } => {
            w.event(
                "response.output_item.added",
                json!({"output_index": index, "item": {
                    "id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []
                }}),
            );
            let part = |refusal: &str| json!({"type": "refusal", "refusal": refusal});
            w.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part("")}),
            );
            for delta in deltas {
                w.event(
                    "response.refusal.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta}),
                );
            }
            if stop_after_deltas {
                return false;
            }
            let refusal = deltas.concat();
            w.event(
                "response.refusal.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "refusal": refusal}),
            );
            w.event(
                "response.content_part.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part(&refusal)}),
            );
        }
        OutputItem::Reasoning { deltas } => {
            w.event(
                "response.output_item.added",
                json!({"output_index": index, "item": {"id": id, "type": "reasoning", "summary": []}}),
            );
            let part = |text: &str| json!({"type": "summary_text", "text": text});
            w.event(
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part("")}),
            );
            for delta in deltas {
                w.event(
                    "response.reasoning_summary_text.delta",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": delta}),
                );
            }
            if stop_after_deltas {
                return false;
            }
            let text = deltas.concat();
            w.event(
                "response.reasoning_summary_text.done",
                json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text}),
            );
            w.event(
                "response.reasoning_summary_part.done",
                json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part(&text)}),
            );
        }
        OutputItem::ToolCall {
            call_id,
            name,
            arguments_chunks,
        } => {
            w.event(
                "response.output_item.added",
                json!({"output_index": index, "item": {
                    "id": id, "type": "function_call", "status": "in_progress",
                    "arguments": "", "call_id": call_id, "name": name
                }}),
            );
            for delta in arguments_chunks {
                w.event(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": index, "delta": delta}),
                );
            }
            if stop_after_deltas {
                return false;
            }
            w.event(
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "arguments": arguments_chunks.concat()}),
            );
        }
    }
    w.event(
        "response.output_item.done",
        json!({"output_index": index, "item": done}),
    );
    true
}
