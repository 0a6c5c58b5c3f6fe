//! The Codex backend part of the fake (PROTOCOL.md §4): `POST /backend-api/codex/responses` with
//! its authentication, request checks, reply selection (per-account queue, shared queue,
//! per-account default, global default, built-in default) and Codex-dialect rendering of every
//! [`Reply`] with the `x-codex-*` headers; `POST …/responses/compact`; and
//! `GET /backend-api/codex/models` with the model list ([`FakeModel`]).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::auth::{AccessDenied, bearer, header_str};
use crate::record::Seq;
use crate::reply::{Core, FakeTokenUsage, Flat, GARBAGE, Reply, Script, flatten, split_words};
use crate::responses::{Ctx, render_stream};
use crate::state::{Inner, Shared, now_secs};
use crate::stream::{Outcome, OutcomeBody, Step, StreamGuard, deliver, with_timing};
use crate::usage::CHALLENGE_HTML;

/// One entry of the model list (`GET /backend-api/codex/models`, `GET /v1/models`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FakeModel {
    /// `slug` (the `model` value clients send).
    pub slug: String,
    /// `display_name`. Default: the slug.
    pub display_name: String,
    /// `description`.
    pub description: String,
    /// `context_window` in tokens. Default 272 000.
    pub context_window: u64,
    /// `default_reasoning_level`. Default `medium`.
    pub default_reasoning_level: String,
}

impl FakeModel {
    /// A model with defaults for everything but the slug.
    pub fn new(slug: impl Into<String>) -> Self {
        let slug = slug.into();
        Self {
            display_name: slug.clone(),
            description: format!("{slug} (FakeOpenAi)"),
            context_window: 272_000,
            default_reasoning_level: "medium".to_owned(),
            slug,
        }
    }

    /// Sets `display_name`.
    pub fn display_name(mut self, name: impl Into<String>) -> Self {
        self.display_name = name.into();
        self
    }

    /// Sets `context_window`.
    pub fn context_window(mut self, tokens: u64) -> Self {
        self.context_window = tokens;
        self
    }

    /// The default list: `gpt-5.1-codex`, `gpt-5.1-codex-mini`, `gpt-5-codex`, `gpt-5`.
    pub fn defaults() -> Vec<FakeModel> {
        vec![
            FakeModel::new("gpt-5.1-codex").display_name("GPT-5.1 Codex"),
            FakeModel::new("gpt-5.1-codex-mini").display_name("GPT-5.1 Codex Mini"),
            FakeModel::new("gpt-5-codex").display_name("GPT-5 Codex"),
            FakeModel::new("gpt-5").display_name("GPT-5"),
        ]
    }

    fn to_codex_json(&self, priority: usize) -> Value {
        let level =
            |effort: &str, description: &str| json!({"effort": effort, "description": description});
        json!({
            "slug": self.slug,
            "display_name": self.display_name,
            "description": self.description,
            "context_window": self.context_window,
            "default_reasoning_level": self.default_reasoning_level,
            "supported_reasoning_levels": [
                level("low", "Fast responses with lighter reasoning"),
                level("medium", "Balances speed and reasoning depth"),
                level("high", "Greater reasoning depth for complex problems"),
            ],
            "shell_type": "shell_command",
            "visibility": "list",
            "supported_in_api": true,
            "priority": priority,
        })
    }

    pub(crate) fn to_openai_json(&self) -> Value {
        json!({"id": self.slug, "object": "model", "created": 1_700_000_000, "owned_by": "openai"})
    }
}

/// What the fake needs to know about a model request.
#[derive(Debug, Clone)]
pub(crate) struct RequestFacts {
    pub(crate) model: String,
    pub(crate) encrypted_reasoning: bool,
    pub(crate) input_tokens: u64,
    pub(crate) cache_key: Option<String>,
    /// The output of the last input item when that item is a tool result.
    pub(crate) last_tool_output: Option<String>,
}

impl RequestFacts {
    /// Reads a Responses-API request body.
    pub(crate) fn from_responses(body: &Value, body_len: usize, headers: &HeaderMap) -> Self {
        let last_tool_output = body
            .get("input")
            .and_then(Value::as_array)
            .and_then(|items| items.last())
            .filter(|item| item.get("type").and_then(Value::as_str) == Some("function_call_output"))
            .map(|item| output_text(item.get("output").unwrap_or(&Value::Null)));
        let cache_key = body
            .get("prompt_cache_key")
            .and_then(Value::as_str)
            .or_else(|| header_str(headers, "session_id"))
            .or_else(|| header_str(headers, "session-id"))
            .map(str::to_owned);
        let encrypted_reasoning = body
            .get("include")
            .and_then(Value::as_array)
            .is_some_and(|inc| inc.iter().any(|v| v == "reasoning.encrypted_content"));
        RequestFacts {
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("gpt-5-codex")
                .to_owned(),
            encrypted_reasoning,
            input_tokens: input_tokens(body_len),
            cache_key,
            last_tool_output,
        }
    }

    /// The token counts of an answer with these output-side counts.
    pub(crate) fn usage(&self, cached: u64, output: (u64, u64)) -> FakeTokenUsage {
        FakeTokenUsage {
            input_tokens: self.input_tokens,
            cached_tokens: cached,
            output_tokens: output.0,
            reasoning_tokens: output.1,
        }
    }
}

/// Request body bytes / 4, at least 1.
pub(crate) fn input_tokens(body_len: usize) -> u64 {
    (body_len as u64 / 4).max(1)
}

/// A tool output as text: a string as is, content parts joined, anything else as JSON.
pub(crate) fn output_text(output: &Value) -> String {
    match output {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .concat(),
        other => other.to_string(),
    }
}

/// The built-in default answer: a greeting, or a quote of a tool result so tool round trips end.
pub(crate) fn builtin_reply(greeting_name: &str, last_tool_output: Option<&str>) -> Reply {
    match last_tool_output {
        Some(output) => Reply::Text {
            deltas: vec!["The tool returned: ".to_owned(), output.to_owned()],
        },
        None => Reply::Text {
            deltas: split_words(&format!("Hello from {greeting_name}.")),
        },
    }
}

impl Inner {
    /// Cached tokens for this request, and remembers its input for the next one.
    pub(crate) fn cached_tokens(&mut self, scope: &str, facts: &RequestFacts) -> u64 {
        let Some(key) = &facts.cache_key else {
            return 0;
        };
        let previous = self
            .prompt_cache
            .insert((scope.to_owned(), key.clone()), facts.input_tokens);
        previous.map_or(0, |p| p.min(facts.input_tokens))
    }

    /// What answering with `flat` does to the account: whatever way it says "usage limit
    /// reached", the usage endpoint and the `x-codex-*` headers of this very answer say the
    /// same, unless the backend refuses before 100 % (see `set_limit_before_full`). The plan
    /// and those headers.
    fn answering(&mut self, idx: usize, flat: Option<&Flat>) -> (String, HeaderMap) {
        let limit_before_full = self.limit_before_full;
        let state = &mut self.accounts[idx];
        if let Some(hit) = flat
            .and_then(Flat::usage_limit)
            .filter(|_| !limit_before_full)
        {
            state.usage.hit(hit);
        }
        let plan = state.usage.plan_or(&state.account.plan).to_owned();
        (plan, state.usage.headers())
    }

    /// The next Codex reply for an account.
    fn next_codex_reply(&mut self, idx: usize, facts: &RequestFacts) -> Reply {
        if let Some(r) = self.accounts[idx].replies.pop_front() {
            return r;
        }
        if let Some(r) = self.any_replies.pop_front() {
            return r;
        }
        // Unscripted, an account whose quota is used up is refused as the backend refuses it.
        let usage = &mut self.accounts[idx].usage;
        usage.roll();
        if usage.is_limit_reached() {
            return Reply::UsageLimit429 {
                resets_in_secs: usage.exhausted_resets_in(),
            };
        }
        if let Some(r) = &self.accounts[idx].default_reply {
            return r.clone();
        }
        if let Some(r) = &self.global_default {
            return r.clone();
        }
        builtin_reply(
            &self.accounts[idx].account.id,
            facts.last_tool_output.as_deref(),
        )
    }
}

/// 400 `invalid_encrypted_content`: reasoning another account encrypted.
fn invalid_encrypted_content(item: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {
            "message": format!("The encrypted content for item {item} could not be verified."),
            "type": "invalid_request_error",
            "param": null,
            "code": "invalid_encrypted_content",
        }})),
    )
        .into_response()
}

/// `{"detail": …}`, how chatgpt.com rejects a malformed request.
fn detail(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "detail": message }))).into_response()
}

/// The id of the first reasoning item in `input` whose encrypted content another account made
/// (the backend cannot decrypt it: 400 `invalid_encrypted_content`).
fn foreign_reasoning(body: &Value, account: &str) -> Option<String> {
    body.get("input")?.as_array()?.iter().find_map(|item| {
        let owner = item
            .get("encrypted_content")
            .and_then(Value::as_str)
            .and_then(crate::responses::encrypted_owner)?;
        (item.get("type")? == "reasoning" && owner != account).then(|| {
            item.get("id")
                .and_then(Value::as_str)
                .unwrap_or("(no id)")
                .to_owned()
        })
    })
}

/// The id of the first input item that refers to a stored item: an `item_reference`, or a
/// `reasoning` item with an `id` but no `encrypted_content`. Nothing is stored under
/// `store: false`, so the backend cannot resolve them (404).
fn stored_reference(body: &Value) -> Option<String> {
    body.get("input")?.as_array()?.iter().find_map(|item| {
        let id = || {
            item.get("id")
                .and_then(Value::as_str)
                .unwrap_or("(no id)")
                .to_owned()
        };
        match item.get("type").and_then(Value::as_str)? {
            "item_reference" => Some(id()),
            "reasoning"
                if item.get("id").is_some_and(|i| !i.is_null())
                    && item.get("encrypted_content").is_none_or(Value::is_null) =>
            {
                Some(id())
            }
            _ => None,
        }
    })
}

/// The backend's 404 for an input item that refers to a stored item (see [`stored_reference`]).
fn item_not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": {
            "message": format!(
                "Item with id '{id}' not found. Items are not persisted when `store` is set to \
                 false. Try again with `store` set to true, or remove this item from your input."
            ),
            "type": "invalid_request_error",
            "param": "input",
            "code": null,
        }})),
    )
        .into_response()
}

/// The top-level body fields the backend accepts (PROTOCOL.md §4 body rules); any other one is
/// refused as an unsupported parameter.
const ACCEPTED_FIELDS: &[&str] = &[
    "model",
    "instructions",
    "input",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "store",
    "stream",
    "include",
    "prompt_cache_key",
    "text",
    "service_tier",
    "client_metadata",
];

/// The checks the real backend applies to a request body (PROTOCOL.md §4 body rules); `cli`:
/// the Codex CLI's own request, which carries its system prompt in `input` instead of
/// `instructions`.
fn check_body(body: &Value, cli: bool) -> Result<(), String> {
    let Some(fields) = body.as_object() else {
        return Err("Request body must be a JSON object".to_owned());
    };
    if !body.get("model").is_some_and(Value::is_string) {
        return Err("Model is required".to_owned());
    }
    if body.get("stream") != Some(&Value::Bool(true)) {
        return Err("Stream must be set to true".to_owned());
    }
    // A missing `store` means `true` to the backend.
    if body.get("store") != Some(&Value::Bool(false)) {
        return Err("Store must be set to false".to_owned());
    }
    if body.get("instructions").is_some_and(|i| !i.is_string()) {
        return Err("Instructions must be a string".to_owned());
    }
    // None at all is how the Codex CLI sends it (its system prompt is a developer message);
    // from anyone else, and empty from anyone, it is refused (PROTOCOL.md §4).
    match body["instructions"].as_str() {
        None if !cli => return Err("Instructions are required".to_owned()),
        Some(i) if i.trim().is_empty() => {
            return Err("Instructions must not be empty".to_owned());
        }
        _ => {}
    }
    if !body.get("input").is_some_and(Value::is_array) {
        return Err("Input must be a list".to_owned());
    }
    if let Some(field) = fields
        .keys()
        .find(|k| !ACCEPTED_FIELDS.contains(&k.as_str()))
    {
        return Err(format!("Unsupported parameter: {field}"));
    }
    let messages = || {
        body["input"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|item| item.get("role").is_some())
    };
    // The system prompt is `instructions`; input messages are user, assistant or developer.
    if messages().any(|m| m["role"] == "system") {
        return Err("System messages are not allowed".to_owned());
    }
    // As OpenAI's Responses API: JSON mode needs the word in an input message (the
    // instructions do not count).
    if body.pointer("/text/format/type") == Some(&json!("json_object"))
        && !messages().any(|m| message_text(m).to_ascii_lowercase().contains("json"))
    {
        return Err(
            "Response input messages must contain the word 'json' in some form to use \
                    'text.format' of type 'json_object'."
                .to_owned(),
        );
    }
    check_shapes(body)
}

/// The shapes of what the Responses API takes (PROTOCOL.md §4, §5), where the Chat Completions
/// shape of the same thing is refused: message parts by role, function calls and their outputs
/// (an output answers a call in the same input: with `store: false` there is no other), tools
/// and `tool_choice` with a top-level `name`, a JSON schema format with its `name` and `schema`
/// at the top of `text.format`.
fn check_shapes(body: &Value) -> Result<(), String> {
    let is_str = |v: &Value, key: &str| v.get(key).is_some_and(Value::is_string);
    let input = body["input"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let calls: Vec<&str> = input
        .iter()
        .filter(|i| i["type"] != "function_call_output")
        .filter_map(|i| i["call_id"].as_str())
        .collect();
    for (n, item) in input.iter().enumerate() {
        let kind = item["type"].as_str().unwrap_or("message");
        match kind {
            "message" => {
                let role = item["role"].as_str().unwrap_or_default();
                let allowed: &[&str] = match role {
                    "assistant" => &["output_text", "refusal"],
                    "user" | "developer" => &["input_text", "input_image", "input_file"],
                    _ => return Err(format!("Invalid value for 'input[{n}].role': {role:?}")),
                };
                if let Some(parts) = item["content"].as_array()
                    && let Some(bad) = parts
                        .iter()
                        .map(|p| p["type"].as_str().unwrap_or_default())
                        .find(|t| !allowed.contains(t))
                {
                    return Err(format!(
                        "Invalid value: '{bad}'. Supported values for a {role} message's \
                         content are: {}.",
                        allowed.join(", ")
                    ));
                }
            }
            "function_call"
                if !["call_id", "name", "arguments"]
                    .iter()
                    .all(|k| is_str(item, k)) =>
            {
                return Err(format!(
                    "input[{n}]: a function_call needs call_id, name and arguments"
                ));
            }
            "function_call_output" => {
                let Some(id) = item["call_id"].as_str() else {
                    return Err(format!("Missing required parameter: 'input[{n}].call_id'."));
                };
                if item.get("output").is_none() {
                    return Err(format!("Missing required parameter: 'input[{n}].output'."));
                }
                if !calls.contains(&id) {
                    return Err(format!(
                        "No tool call found for function call output with call_id {id}."
                    ));
                }
            }
            _ => {}
        }
    }
    for (n, tool) in body["tools"].as_array().into_iter().flatten().enumerate() {
        if tool["type"] == "function" && (!is_str(tool, "name") || tool.get("function").is_some()) {
            return Err(format!("Missing required parameter: 'tools[{n}].name'."));
        }
    }
    if body["tool_choice"]["type"] == "function" && !is_str(&body["tool_choice"], "name") {
        return Err("Missing required parameter: 'tool_choice.name'.".to_owned());
    }
    let format = &body["text"]["format"];
    if format["type"] == "json_schema" && !(is_str(format, "name") && format["schema"].is_object())
    {
        return Err(
            "Missing required parameter: 'text.format.name' or 'text.format.schema'.".to_owned(),
        );
    }
    Ok(())
}

/// A message's text: its string content, or its parts' texts joined.
fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The request headers a client of the backend sends (PROTOCOL.md §4), checked in strict mode:
/// `Accept: text/event-stream`, `originator`, `ChatGPT-Account-ID`, a session id (`session_id`,
/// or `session-id` as the Codex CLI spells it), then a `User-Agent`, `version` and `OpenAI-Beta:
/// responses=experimental` but from the Codex CLI's own requests (any `x-codex-*` header), which
/// a gateway forwards as sent: the CLI adds the last two only for its built-in provider, not for
/// a custom `base_url` like a gateway's (its user agent is its own business).
fn check_headers(headers: &HeaderMap) -> Result<(), String> {
    let present = |name: &str| header_str(headers, name).is_some_and(|v| !v.trim().is_empty());
    let accept = header_str(headers, "accept").unwrap_or_default();
    if !accept.contains("text/event-stream") {
        return Err(format!(
            "Accept must include text/event-stream (got {accept:?})"
        ));
    }
    for name in ["originator", "chatgpt-account-id"] {
        if !present(name) {
            return Err(format!("Missing required header: {name}"));
        }
    }
    let content_type = header_str(headers, "content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(format!(
            "Content-Type must be application/json (got {content_type:?})"
        ));
    }
    // PROTOCOL.md §4: a client's own credentials never reach the backend.
    if headers.contains_key("x-api-key") {
        return Err("a client's x-api-key was forwarded".to_owned());
    }
    if !present("session_id") && !present("session-id") {
        return Err("Missing required header: session_id".to_owned());
    }
    if !codex_cli(headers) {
        if !present("user-agent") {
            return Err("Missing required header: user-agent".to_owned());
        }
        if !present("version") {
            return Err("Missing required header: version".to_owned());
        }
        let beta = header_str(headers, "openai-beta").unwrap_or_default();
        if !beta.contains("responses=experimental") {
            return Err(format!(
                "OpenAI-Beta must include responses=experimental (got {beta:?})"
            ));
        }
    }
    Ok(())
}

/// The Codex CLI's own request, forwarded as sent (any `x-codex-*` header): it has no
/// `version`, `OpenAI-Beta` or top-level `instructions`.
fn codex_cli(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| name.as_str().starts_with("x-codex-"))
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

pub(crate) fn sse_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h
}

fn json_outcome(status: StatusCode, body: &Value) -> Outcome {
    Outcome {
        status,
        headers: json_headers(),
        body: OutcomeBody::Full(Bytes::from(body.to_string())),
    }
}

/// How one API renders the replies whose bodies differ between the Codex backend and the plain
/// OpenAI API; [`render`] does the rest, which is the same for both.
pub(crate) trait Dialect {
    /// A stream (or, for non-streaming clients, the assembled object) of output items.
    fn script(&self, script: &Script, usage: Option<FakeTokenUsage>) -> Outcome;
    /// The quota is used up.
    fn usage_limit(&self, resets_in_secs: u64) -> Outcome;
    /// A short, transient rate limit.
    fn rate_limit(&self) -> Outcome;
    /// The credentials were refused.
    fn unauthorized(&self) -> Outcome;
}

/// Renders a flattened reply: the dialect's bodies, the shared transport-level scripts, and the
/// timing wrappers.
pub(crate) fn render(flat: &Flat, dialect: &impl Dialect) -> Outcome {
    let sse = |steps: Vec<Step>| Outcome {
        status: StatusCode::OK,
        headers: sse_headers(),
        body: OutcomeBody::Steps(steps),
    };
    let outcome = match &flat.core {
        Core::Script(script) => dialect.script(script, flat.usage),
        Core::UsageLimit { resets_in_secs } => dialect.usage_limit(*resets_in_secs),
        Core::RateLimit => dialect.rate_limit(),
        Core::Unauthorized => dialect.unauthorized(),
        Core::Status {
            status,
            body,
            content_type,
        } => {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(content_type) {
                headers.insert(header::CONTENT_TYPE, v);
            }
            Outcome {
                status: StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                headers,
                body: OutcomeBody::Full(Bytes::from(body.clone())),
            }
        }
        Core::Challenge => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=UTF-8"),
            );
            headers.insert(
                HeaderName::from_static("cf-mitigated"),
                HeaderValue::from_static("challenge"),
            );
            Outcome {
                status: StatusCode::FORBIDDEN,
                headers,
                body: OutcomeBody::Full(Bytes::from_static(CHALLENGE_HTML.as_bytes())),
            }
        }
        Core::Garbage => sse(vec![Step::Bytes(Bytes::from_static(GARBAGE))]),
        Core::Raw(body) => sse(vec![Step::text(body.clone())]),
        Core::Hang => sse(vec![Step::Hang]),
        Core::Deactivated(code) => json_outcome(
            StatusCode::FORBIDDEN,
            &json!({"error": {
                "message": if *code == "account_deactivated" {
                    "Your OpenAI account has been deactivated, please check your email for more information."
                } else {
                    "This workspace has been deactivated."
                },
                "type": "invalid_request_error", "param": null, "code": code
            }}),
        ),
    };
    let mut outcome = outcome;
    for (name, value) in &flat.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            outcome.headers.insert(name, value);
        }
    }
    with_timing(outcome, flat.after_headers, flat.pace)
}

/// The Codex backend's dialect.
struct Codex<'a> {
    facts: &'a RequestFacts,
    cached: u64,
    plan: &'a str,
    /// The account answering.
    account: &'a str,
    event_lines: bool,
}

impl Dialect for Codex<'_> {
    fn script(&self, script: &Script, usage: Option<FakeTokenUsage>) -> Outcome {
        let usage = usage.unwrap_or_else(|| self.facts.usage(self.cached, script.output_tokens()));
        let ctx = Ctx::new(&self.facts.model, self.facts.encrypted_reasoning, usage)
            .owned_by(self.account)
            .event_lines(self.event_lines);
        Outcome {
            status: StatusCode::OK,
            headers: sse_headers(),
            body: OutcomeBody::Steps(render_stream(script, &ctx)),
        }
    }

    fn usage_limit(&self, resets_in_secs: u64) -> Outcome {
        json_outcome(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"error": {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": self.plan,
                "resets_at": now_secs().saturating_add(i64::try_from(resets_in_secs).unwrap_or(0)),
                "resets_in_seconds": resets_in_secs,
            }}),
        )
    }

    fn rate_limit(&self) -> Outcome {
        let mut o = json_outcome(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"error": {
                "type": "rate_limit_exceeded", "code": "rate_limit_exceeded",
                "message": "Rate limit reached. Please try again in 1s.",
            }}),
        );
        o.headers
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        o
    }

    fn unauthorized(&self) -> Outcome {
        json_outcome(
            StatusCode::UNAUTHORIZED,
            &json!({"error": {
                "message": "Provided authentication token is expired. Please try signing in again.",
                "type": "invalid_request_error", "param": null, "code": "token_expired"
            }}),
        )
    }
}

/// Authenticates a secondary backend request (any bearer is fine in instant mode).
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), AccessDenied> {
    let inner = shared.inner();
    match inner.check_access(bearer(headers), header_str(headers, "chatgpt-account-id")) {
        Ok(_) => Ok(()),
        Err(_) if shared.config.instant => Ok(()),
        Err(denied) => Err(denied),
    }
}

/// `POST /backend-api/codex/responses`.
pub(crate) async fn responses(
    State(shared): State<Arc<Shared>>,
    Extension(seq): Extension<Seq>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Before authentication, so that a missing `ChatGPT-Account-ID` is named as such rather
    // than reported as a token that does not match it.
    if shared.config.strict
        && let Err(why) = check_headers(&headers)
    {
        return detail(StatusCode::BAD_REQUEST, &why);
    }
    let checked = shared
        .inner()
        .check_access(bearer(&headers), header_str(&headers, "chatgpt-account-id"));
    let idx = match checked {
        Ok(idx) => idx,
        Err(denied) => return denied.into_response(),
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return detail(
                StatusCode::BAD_REQUEST,
                "Could not parse the request body as JSON",
            );
        }
    };
    if shared.config.strict
        && let Err(why) = check_body(&value, codex_cli(&headers))
    {
        return detail(StatusCode::BAD_REQUEST, &why);
    }
    if let Some(id) = stored_reference(&value) {
        return item_not_found(&id);
    }
    let account = shared.inner().accounts[idx].account.id.clone();
    if let Some(item) = foreign_reasoning(&value, &account) {
        return invalid_encrypted_content(&item);
    }
    let facts = RequestFacts::from_responses(&value, body.len(), &headers);
    let (flat, cached, plan, usage_headers, event_lines) = {
        let mut inner = shared.inner();
        let flat = flatten(inner.next_codex_reply(idx, &facts));
        let account_id = inner.accounts[idx].account.id.clone();
        let cached = inner.cached_tokens(&account_id, &facts);
        let (plan, usage_headers) = inner.answering(idx, Some(&flat));
        (flat, cached, plan, usage_headers, inner.event_lines)
    };
    let dialect = Codex {
        facts: &facts,
        cached,
        plan: &plan,
        account: &account,
        event_lines,
    };
    let mut outcome = render(&flat, &dialect);
    // A challenge page comes from Cloudflare's edge: no backend header on it.
    if flat.core != Core::Challenge {
        outcome.headers.extend(usage_headers);
        // The turn's sticky-routing token the Codex CLI replays on the turn's next requests;
        // it names the account that issued it.
        if let Ok(v) = HeaderValue::from_str(&format!("turn-{account}")) {
            outcome.headers.insert("x-codex-turn-state", v);
        }
    }
    deliver(
        outcome,
        flat.head_delay,
        StreamGuard::new(&shared, Some(seq.0)).of_account(&account),
    )
    .await
}

/// `POST /backend-api/codex/responses/compact`: the history, compacted to one summary message
/// that names the account that made it. Bound to accounts as `/responses` is (another account's
/// encrypted reasoning is a 400, a stored item a 404), with the account's `x-codex-*` headers;
/// a reply queued with [`crate::FakeOpenAi::push_compact_reply`] (a 429, a status) answers
/// instead. In instant mode any bearer is served, by no account.
pub(crate) async fn compact(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let checked = shared
        .inner()
        .check_access(bearer(&headers), header_str(&headers, "chatgpt-account-id"));
    let idx = match checked {
        Ok(idx) => Some(idx),
        Err(_) if shared.config.instant => None,
        Err(denied) => return denied.into_response(),
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return detail(
                StatusCode::BAD_REQUEST,
                "Could not parse the request body as JSON",
            );
        }
    };
    if let Some(id) = stored_reference(&value) {
        return item_not_found(&id);
    }
    let items = value
        .get("input")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let summary = |by: &str| {
        json!({"output": [{
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": format!("Summary of {items} earlier items{by}.")}],
        }]})
    };
    let Some(idx) = idx else {
        return (StatusCode::OK, axum::Json(summary(""))).into_response();
    };
    let account = shared.inner().accounts[idx].account.id.clone();
    if let Some(item) = foreign_reasoning(&value, &account) {
        return invalid_encrypted_content(&item);
    }
    let (queued, usage_headers, plan) = {
        let mut inner = shared.inner();
        let queued = inner.accounts[idx].compact_replies.pop_front().map(flatten);
        let (plan, usage_headers) = inner.answering(idx, queued.as_ref());
        (queued, usage_headers, plan)
    };
    let (mut outcome, head_delay, backend) = match queued {
        Some(flat) => {
            let facts = RequestFacts::from_responses(&value, body.len(), &headers);
            let dialect = Codex {
                facts: &facts,
                cached: 0,
                plan: &plan,
                account: &account,
                event_lines: false,
            };
            // A challenge page comes from Cloudflare's edge: no backend header on it.
            (
                render(&flat, &dialect),
                flat.head_delay,
                flat.core != Core::Challenge,
            )
        }
        None => {
            let summary = summary(&format!(" by {account}"));
            (
                json_outcome(StatusCode::OK, &summary),
                Default::default(),
                true,
            )
        }
    };
    if backend {
        outcome.headers.extend(usage_headers);
    }
    deliver(outcome, head_delay, StreamGuard::new(&shared, None)).await
}

/// `GET /backend-api/codex/models?client_version=<ver>` (PROTOCOL.md §4: strict mode wants
/// the version).
pub(crate) async fn models(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = authenticate(&shared, &headers) {
        return denied.into_response();
    }
    let versioned = uri.query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == "client_version" && !v.is_empty())
    });
    if shared.config.strict && !versioned {
        return detail(
            StatusCode::BAD_REQUEST,
            "Missing required query parameter: client_version",
        );
    }
    let models: Vec<Value> = shared
        .inner()
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| m.to_codex_json(i))
        .collect();
    (StatusCode::OK, axum::Json(json!({ "models": models }))).into_response()
}
