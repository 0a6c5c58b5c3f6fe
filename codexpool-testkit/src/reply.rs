//! Reply scripts: the [`Reply`] a test queues for the next model call, and its reduction to a
//! protocol-neutral plan ([`Flat`]: timing wrappers peeled off, the output items and how the
//! answer ends) that the Codex/Responses and Chat Completions renderers turn into bytes. Also the
//! deterministic token accounting ([`FakeTokenUsage`]).

use std::time::Duration;

/// One output item of a scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputItem {
    /// A `reasoning` item whose summary arrives in these deltas.
    Reasoning {
        /// `response.reasoning_summary_text.delta` deltas.
        deltas: Vec<String>,
    },
    /// An assistant `message` whose text arrives in these deltas.
    Text {
        /// `response.output_text.delta` deltas.
        deltas: Vec<String>,
    },
    /// An assistant `message` in which the model declines: one `refusal` content part
    /// (`{"type":"refusal","refusal":…}`) streamed as `response.refusal.delta` events and closed
    /// by `response.refusal.done` (on `/v1/chat/completions`: `delta.refusal` /
    /// `message.refusal` with `content: null`).
    Refusal {
        /// `response.refusal.delta` deltas.
        deltas: Vec<String>,
    },
    /// A `function_call` item.
    ToolCall {
        /// `call_id`.
        call_id: String,
        /// Function name.
        name: String,
        /// `response.function_call_arguments.delta` deltas; they concatenate to the arguments.
        arguments_chunks: Vec<String>,
    },
}

impl OutputItem {
    /// A message item with `text` split into word deltas.
    pub fn text(text: &str) -> Self {
        OutputItem::Text {
            deltas: split_words(text),
        }
    }

    /// A refusal message with `refusal` split into word deltas.
    pub fn refusal(refusal: &str) -> Self {
        OutputItem::Refusal {
            deltas: split_words(refusal),
        }
    }

    /// A reasoning item with `summary` split into word deltas.
    pub fn reasoning(summary: &str) -> Self {
        OutputItem::Reasoning {
            deltas: split_words(summary),
        }
    }

    /// A function call whose `arguments` (JSON text) arrive in up to three chunks.
    pub fn tool_call(call_id: impl Into<String>, name: impl Into<String>, arguments: &str) -> Self {
        OutputItem::ToolCall {
            call_id: call_id.into(),
            name: name.into(),
            arguments_chunks: split_chunks(arguments, 3),
        }
    }

    pub(crate) fn delta_count(&self) -> usize {
        match self {
            OutputItem::Reasoning { deltas }
            | OutputItem::Text { deltas }
            | OutputItem::Refusal { deltas } => deltas.len(),
            OutputItem::ToolCall {
                arguments_chunks, ..
            } => arguments_chunks.len(),
        }
    }
}

/// Token counts to report instead of the derived ones (see [`Reply::WithUsage`]).
///
/// Without an override the fake derives them deterministically:
/// `input_tokens` = request body bytes / 4 (at least 1); `cached_tokens` = the `input_tokens` of
/// the previous request of the same account with the same `prompt_cache_key` (else `session_id`
/// header), capped at the current `input_tokens`, 0 for a first request; `output_tokens` = the
/// number of delta events (text, refusal, reasoning and argument deltas; one delta is one token);
/// `reasoning_tokens` = the number of reasoning deltas; `total_tokens` = input + output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FakeTokenUsage {
    /// `input_tokens` / `prompt_tokens`.
    pub input_tokens: u64,
    /// `input_tokens_details.cached_tokens`.
    pub cached_tokens: u64,
    /// `output_tokens` / `completion_tokens` (includes reasoning tokens).
    pub output_tokens: u64,
    /// `output_tokens_details.reasoning_tokens`.
    pub reasoning_tokens: u64,
}

impl FakeTokenUsage {
    /// `input_tokens + output_tokens`.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// What the fake answers to one model call. Queue them with [`crate::FakeOpenAi::push_reply`]
/// (Codex backend) or [`crate::FakeOpenAi::push_openai_reply`] (plain OpenAI API).
///
/// The wrappers (`SlowFirstByte`, `SlowAfterHeaders`, `Paced`, `WithUsage`,
/// `EmptyFinalOutput`) nest around any other reply; the builder-style methods
/// ([`Reply::slow_first_byte`], …) build them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// An assistant message streamed in these deltas.
    Text {
        /// The text deltas.
        deltas: Vec<String>,
    },
    /// A reasoning item (summary deltas) followed by an assistant message.
    ReasoningThenText {
        /// Reasoning summary deltas.
        reasoning: Vec<String>,
        /// Text deltas.
        text: Vec<String>,
    },
    /// One `function_call` output item.
    ToolCall {
        /// `call_id`.
        call_id: String,
        /// Function name.
        name: String,
        /// Argument deltas.
        arguments_chunks: Vec<String>,
    },
    /// Any sequence of output items (e.g. reasoning, text and parallel tool calls).
    Items {
        /// The items, in output order.
        items: Vec<OutputItem>,
    },
    /// HTTP 429 `usage_limit_reached` (PROTOCOL.md §3); on the Codex backend the account's
    /// window is also set to 100 % until the reset, so usage polls and headers agree.
    UsageLimit429 {
        /// `resets_in_seconds`.
        resets_in_secs: u64,
    },
    /// HTTP 429 `rate_limit_exceeded` with `retry-after: 1` (short and transient).
    RateLimit429,
    /// 200 stream: `response.created`, `response.in_progress`, then `response.failed` with
    /// `response.error {code, message}` and no output. With code `usage_limit_reached` the Codex
    /// backend also sets the account's 5-hour window (the only window on a weekly-only plan) to
    /// 100 % until its scripted reset (5 hours from now when that has passed), as for
    /// [`Reply::UsageLimit429`]; the same holds for [`Reply::FailedAfterText`].
    FailedInStream {
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
    },
    /// 200 stream: text deltas, then `response.failed` (a failure after output has started).
    FailedAfterText {
        /// Text deltas sent before the failure.
        deltas: Vec<String>,
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
    },
    /// 200 stream: text deltas, then `response.incomplete` with `incomplete_details.reason`.
    Incomplete {
        /// Text deltas.
        deltas: Vec<String>,
        /// `incomplete_details.reason`, e.g. `max_output_tokens`.
        reason: String,
    },
    /// 200 stream whose `response.failed` has code `server_is_overloaded`.
    Overloaded,
    /// 200 stream whose first text delta is "You've hit your usage limit. …" (naming a wait of
    /// 4 hours 59 minutes). On the Codex backend the account's 5-hour window is also set to
    /// 100 % until then, so usage polls and the `x-codex-*` headers of this very answer agree.
    UsageLimitText,
    /// Any status and body.
    Status {
        /// HTTP status.
        status: u16,
        /// Body.
        body: String,
        /// `content-type`.
        content_type: String,
    },
    /// 403 with a Cloudflare HTML page and `cf-mitigated: challenge`.
    ChallengeHtml,
    /// 401 with an OpenAI-shaped JSON error.
    Unauthorized,
    /// 403 with `{"error":{"code":"account_deactivated",…}}`.
    Deactivated,
    /// 403 with `{"error":{"code":"workspace_deactivated",…}}`: the ChatGPT workspace (team,
    /// business) the account signed in to is gone.
    WorkspaceDeactivated,
    /// Waits `delay` before sending anything (not even the status line).
    SlowFirstByte {
        /// The wait.
        delay: Duration,
        /// What comes after.
        then: Box<Reply>,
    },
    /// Sends the head and one `: keep-alive` comment at once, then nothing for `delay`, then the
    /// events of `then` (for stream idle-timeout tests).
    SlowAfterHeaders {
        /// The silence.
        delay: Duration,
        /// What comes after.
        then: Box<Reply>,
    },
    /// Waits `interval` between consecutive events of `then`.
    Paced {
        /// The pause between events.
        interval: Duration,
        /// The reply to pace.
        then: Box<Reply>,
    },
    /// Sends `after_deltas` text deltas, then drops the connection without `response.completed`.
    CutMidStream {
        /// Deltas before the cut.
        after_deltas: usize,
    },
    /// Sends `after_deltas` text deltas, then nothing until the client goes away (for tests of
    /// upstream cancellation on client disconnect).
    StallMidStream {
        /// Deltas before the stall.
        after_deltas: usize,
    },
    /// 200 `text/event-stream` whose bytes are neither SSE nor JSON.
    Garbage,
    /// Sends the head, then nothing until the client goes away.
    HangForever,
    /// 200 `text/event-stream` with exactly this body (e.g. new or unusual event types).
    RawSse {
        /// The body.
        body: String,
    },
    /// Reports these token counts in the final usage instead of the derived ones.
    WithUsage {
        /// The counts.
        usage: FakeTokenUsage,
        /// The reply.
        then: Box<Reply>,
    },
    /// The stream of `then`, but its final `response.completed` / `response.incomplete` carries
    /// `output: []`: the items come only as `response.output_item.done` events, as the backend
    /// sometimes sends them. Only the streamed Responses dialect changes (a non-streamed
    /// `/v1/responses` answer and chat answers are whole).
    EmptyFinalOutput {
        /// The reply.
        then: Box<Reply>,
    },
    /// The reply with one more response header (e.g. `cf-mitigated: challenge` on an answer
    /// that is otherwise ordinary: PROTOCOL.md §4 names the header as a sign by itself).
    WithHeader {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
        /// The reply.
        then: Box<Reply>,
    },
}

impl Reply {
    /// A text answer, split into word deltas (`"Hello there"` → `["Hello", " there"]`).
    pub fn text(text: &str) -> Self {
        Reply::Text {
            deltas: split_words(text),
        }
    }

    /// A text answer with exactly these deltas.
    pub fn deltas<I, S>(deltas: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Reply::Text {
            deltas: deltas.into_iter().map(Into::into).collect(),
        }
    }

    /// Reasoning summary then text, both split into word deltas.
    pub fn reasoning_then_text(reasoning: &str, text: &str) -> Self {
        Reply::ReasoningThenText {
            reasoning: split_words(reasoning),
            text: split_words(text),
        }
    }

    /// A function call whose `arguments` (JSON text) arrive in up to three chunks.
    pub fn tool_call(call_id: impl Into<String>, name: impl Into<String>, arguments: &str) -> Self {
        Reply::ToolCall {
            call_id: call_id.into(),
            name: name.into(),
            arguments_chunks: split_chunks(arguments, 3),
        }
    }

    /// A refusal (the model declines), split into word deltas: one message item with a
    /// `refusal` part; see [`OutputItem::Refusal`].
    pub fn refusal(refusal: &str) -> Self {
        Reply::Items {
            items: vec![OutputItem::refusal(refusal)],
        }
    }

    /// Several output items.
    pub fn items(items: impl IntoIterator<Item = OutputItem>) -> Self {
        Reply::Items {
            items: items.into_iter().collect(),
        }
    }

    /// A `response.failed` with this code and message, before any output.
    pub fn failed(code: impl Into<String>, message: impl Into<String>) -> Self {
        Reply::FailedInStream {
            code: code.into(),
            message: message.into(),
        }
    }

    /// Any status with a JSON body.
    pub fn status_json(status: u16, body: serde_json::Value) -> Self {
        Reply::Status {
            status,
            body: body.to_string(),
            content_type: "application/json".to_owned(),
        }
    }

    /// Waits `delay` before the response head.
    pub fn slow_first_byte(self, delay: Duration) -> Self {
        Reply::SlowFirstByte {
            delay,
            then: Box::new(self),
        }
    }

    /// Sends the head, then is silent for `delay` before the first event.
    pub fn slow_after_headers(self, delay: Duration) -> Self {
        Reply::SlowAfterHeaders {
            delay,
            then: Box::new(self),
        }
    }

    /// Pauses `interval` between events.
    pub fn paced(self, interval: Duration) -> Self {
        Reply::Paced {
            interval,
            then: Box::new(self),
        }
    }

    /// Reports these token counts.
    pub fn with_usage(self, usage: FakeTokenUsage) -> Self {
        Reply::WithUsage {
            usage,
            then: Box::new(self),
        }
    }

    /// Ends the stream with `output: []` in `response.completed` / `response.incomplete` (the
    /// items only as `response.output_item.done` events); see [`Reply::EmptyFinalOutput`].
    pub fn empty_final_output(self) -> Self {
        Reply::EmptyFinalOutput {
            then: Box::new(self),
        }
    }

    /// Adds a response header; see [`Reply::WithHeader`].
    pub fn with_header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        Reply::WithHeader {
            name: name.into(),
            value: value.into(),
            then: Box::new(self),
        }
    }
}

/// `"Hello there world"` → `["Hello", " there", " world"]` (they concatenate back).
pub(crate) fn split_words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if ch == ' ' && !current.trim().is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Splits `s` into at most `n` non-empty pieces on character boundaries.
pub(crate) fn split_chunks(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    let size = chars.len().div_ceil(n.max(1));
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// How the backend words a usage limit inside a 200 stream (PROTOCOL.md §4).
pub(crate) const USAGE_LIMIT_TEXT: &str = "You've hit your usage limit";

/// The wait [`Reply::UsageLimitText`] names: "try again in 4 hours 59 minutes".
pub(crate) const USAGE_LIMIT_TEXT_RESETS_IN_SECS: u64 = 4 * 3600 + 59 * 60;

/// The `response.failed` code of a usage limit reached inside a 200 stream.
pub(crate) const USAGE_LIMIT_CODE: &str = "usage_limit_reached";

/// How an answer says the account is out of quota (see [`Flat::usage_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// The answer names the wait, in seconds (a 429's `resets_in_seconds`, the text's "try again
    /// in …").
    ResetsIn(u64),
    /// A `response.failed` with `usage_limit_reached`: no wait named; the window that runs out
    /// first (the 5-hour one, else the only one) is used up until its reset.
    CurrentWindow,
}

/// How a scripted stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    Completed,
    Failed {
        code: String,
        message: String,
    },
    Incomplete {
        reason: String,
    },
    /// Drop the connection right after the last delta.
    Cut,
    /// Send nothing more after the last delta.
    Stall,
}

/// An answer that is a stream of output items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Script {
    pub(crate) items: Vec<OutputItem>,
    pub(crate) ending: Ending,
    /// The streamed final event has `output: []` ([`Reply::EmptyFinalOutput`]).
    pub(crate) empty_final_output: bool,
}

impl Script {
    pub(crate) fn completed(items: Vec<OutputItem>) -> Self {
        Script::ending(items, Ending::Completed)
    }

    pub(crate) fn ending(items: Vec<OutputItem>, ending: Ending) -> Self {
        Script {
            items,
            ending,
            empty_final_output: false,
        }
    }

    /// The deterministic output-side token counts.
    pub(crate) fn output_tokens(&self) -> (u64, u64) {
        let count = |f: fn(&OutputItem) -> bool| -> u64 {
            self.items
                .iter()
                .filter(|i| f(i))
                .map(|i| i.delta_count() as u64)
                .sum()
        };
        (
            count(|_| true),
            count(|i| matches!(i, OutputItem::Reasoning { .. })),
        )
    }
}

/// The leaf of a reply, after the wrappers are peeled off.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Core {
    Script(Script),
    UsageLimit {
        resets_in_secs: u64,
    },
    RateLimit,
    Status {
        status: u16,
        body: String,
        content_type: String,
    },
    Challenge,
    Unauthorized,
    /// The `code` of the deactivation.
    Deactivated(&'static str),
    Garbage,
    Raw(String),
    Hang,
}

/// A reply reduced to timing + leaf.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Flat {
    pub(crate) head_delay: Duration,
    pub(crate) after_headers: Option<Duration>,
    pub(crate) pace: Option<Duration>,
    pub(crate) usage: Option<FakeTokenUsage>,
    /// Added response headers.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) core: Core,
}

impl Flat {
    /// Whether this answer tells the client that the account is out of quota: a 429
    /// `usage_limit_reached`, a `response.failed` with that code, or a stream whose first text
    /// says "You've hit your usage limit" (the fake takes its own words at face value).
    pub(crate) fn usage_limit(&self) -> Option<LimitHit> {
        match &self.core {
            Core::UsageLimit { resets_in_secs } => Some(LimitHit::ResetsIn(*resets_in_secs)),
            Core::Script(script) => {
                if matches!(&script.ending, Ending::Failed { code, .. } if code == USAGE_LIMIT_CODE)
                {
                    return Some(LimitHit::CurrentWindow);
                }
                let first_text = script.items.iter().find_map(|item| match item {
                    OutputItem::Text { deltas } => Some(deltas.concat()),
                    _ => None,
                })?;
                first_text
                    .starts_with(USAGE_LIMIT_TEXT)
                    .then_some(LimitHit::ResetsIn(USAGE_LIMIT_TEXT_RESETS_IN_SECS))
            }
            _ => None,
        }
    }
}

/// The deltas "Part 0. ", "Part 1. ", … of cut and stalled streams.
fn numbered_deltas(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("Part {i}. ")).collect()
}

/// Peels the wrappers off a reply.
pub(crate) fn flatten(reply: Reply) -> Flat {
    let mut flat = Flat {
        head_delay: Duration::ZERO,
        after_headers: None,
        pace: None,
        usage: None,
        headers: Vec::new(),
        core: Core::Hang,
    };
    let mut empty_final_output = false;
    let mut reply = reply;
    loop {
        let core = match reply {
            Reply::SlowFirstByte { delay, then } => {
                flat.head_delay += delay;
                reply = *then;
                continue;
            }
            Reply::SlowAfterHeaders { delay, then } => {
                flat.after_headers = Some(flat.after_headers.unwrap_or_default() + delay);
                reply = *then;
                continue;
            }
            Reply::Paced { interval, then } => {
                flat.pace = Some(interval);
                reply = *then;
                continue;
            }
            Reply::WithUsage { usage, then } => {
                flat.usage = Some(usage);
                reply = *then;
                continue;
            }
            Reply::EmptyFinalOutput { then } => {
                empty_final_output = true;
                reply = *then;
                continue;
            }
            Reply::WithHeader { name, value, then } => {
                flat.headers.push((name, value));
                reply = *then;
                continue;
            }
            Reply::Text { deltas } => {
                Core::Script(Script::completed(vec![OutputItem::Text { deltas }]))
            }
            Reply::ReasoningThenText { reasoning, text } => Core::Script(Script::completed(vec![
                OutputItem::Reasoning { deltas: reasoning },
                OutputItem::Text { deltas: text },
            ])),
            Reply::ToolCall {
                call_id,
                name,
                arguments_chunks,
            } => Core::Script(Script::completed(vec![OutputItem::ToolCall {
                call_id,
                name,
                arguments_chunks,
            }])),
            Reply::Items { items } => Core::Script(Script::completed(items)),
            Reply::UsageLimit429 { resets_in_secs } => Core::UsageLimit { resets_in_secs },
            Reply::RateLimit429 => Core::RateLimit,
            Reply::FailedInStream { code, message } => {
                Core::Script(Script::ending(Vec::new(), Ending::Failed { code, message }))
            }
            Reply::FailedAfterText {
                deltas,
                code,
                message,
            } => Core::Script(Script::ending(
                vec![OutputItem::Text { deltas }],
                Ending::Failed { code, message },
            )),
            Reply::Incomplete { deltas, reason } => Core::Script(Script::ending(
                vec![OutputItem::Text { deltas }],
                Ending::Incomplete { reason },
            )),
            Reply::Overloaded => Core::Script(Script::ending(
                Vec::new(),
                Ending::Failed {
                    code: "server_is_overloaded".to_owned(),
                    message: "Our servers are currently overloaded. Please try again later."
                        .to_owned(),
                },
            )),
            Reply::UsageLimitText => Core::Script(Script::completed(vec![OutputItem::Text {
                deltas: vec![
                    format!("{USAGE_LIMIT_TEXT}. "),
                    "Upgrade to Pro (https://chatgpt.com/explore/pro), ".to_owned(),
                    "or try again in 4 hours 59 minutes.".to_owned(),
                ],
            }])),
            Reply::Status {
                status,
                body,
                content_type,
            } => Core::Status {
                status,
                body,
                content_type,
            },
            Reply::ChallengeHtml => Core::Challenge,
            Reply::Unauthorized => Core::Unauthorized,
            Reply::Deactivated => Core::Deactivated("account_deactivated"),
            Reply::WorkspaceDeactivated => Core::Deactivated("workspace_deactivated"),
            Reply::CutMidStream { after_deltas } => Core::Script(Script::ending(
                vec![OutputItem::Text {
                    deltas: numbered_deltas(after_deltas),
                }],
                Ending::Cut,
            )),
            Reply::StallMidStream { after_deltas } => Core::Script(Script::ending(
                vec![OutputItem::Text {
                    deltas: numbered_deltas(after_deltas),
                }],
                Ending::Stall,
            )),
            Reply::Garbage => Core::Garbage,
            Reply::HangForever => Core::Hang,
            Reply::RawSse { body } => Core::Raw(body),
        };
        flat.core = match core {
            Core::Script(script) => Core::Script(Script {
                empty_final_output,
                ..script
            }),
            other => other,
        };
        return flat;
    }
}

/// The bytes of [`Reply::Garbage`]: binary noise, a broken frame, invalid JSON.
pub(crate) const GARBAGE: &[u8] =
    b"\x00\x9f\xff\xfegarbage{{{\r\n\r\ndata: {\"type\": \"response.created\", \"respo\n\n\xc3\x28not json at all\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        let w = split_words("Hello from acct-1.");
        assert_eq!(w, vec!["Hello", " from", " acct-1."]);
        assert_eq!(w.concat(), "Hello from acct-1.");
        assert_eq!(split_words("  a  b").concat(), "  a  b");
    }

    #[test]
    fn chunks_round_trip() {
        let c = split_chunks(r#"{"cmd":"ls -la"}"#, 3);
        assert_eq!(c.len(), 3);
        assert_eq!(c.concat(), r#"{"cmd":"ls -la"}"#);
        assert_eq!(split_chunks("", 3), vec![""]);
    }

    #[test]
    fn wrappers_peel() {
        let flat = flatten(
            Reply::text("hi")
                .paced(Duration::from_millis(5))
                .slow_first_byte(Duration::from_millis(7))
                .slow_after_headers(Duration::from_millis(9)),
        );
        assert_eq!(flat.head_delay, Duration::from_millis(7));
        assert_eq!(flat.after_headers, Some(Duration::from_millis(9)));
        assert_eq!(flat.pace, Some(Duration::from_millis(5)));
        assert!(matches!(flat.core, Core::Script(_)));
        let flat = flatten(Reply::refusal("No.").with_usage(FakeTokenUsage::default()));
        let Core::Script(script) = flat.core else {
            panic!()
        };
        assert!(!script.empty_final_output);
        assert_eq!(script.output_tokens(), (1, 0), "a refusal delta is a token");
        let flat = flatten(Reply::text("hi").empty_final_output().paced(Duration::ZERO));
        assert!(matches!(flat.core, Core::Script(s) if s.empty_final_output));
    }

    #[test]
    fn usage_limit_answers_are_recognised() {
        let hit = |r: Reply| flatten(r).usage_limit();
        assert_eq!(
            hit(Reply::UsageLimit429 { resets_in_secs: 60 }),
            Some(LimitHit::ResetsIn(60))
        );
        assert_eq!(
            hit(Reply::UsageLimitText.paced(Duration::ZERO)),
            Some(LimitHit::ResetsIn(USAGE_LIMIT_TEXT_RESETS_IN_SECS))
        );
        assert_eq!(
            hit(Reply::failed(USAGE_LIMIT_CODE, "limit")),
            Some(LimitHit::CurrentWindow)
        );
        assert_eq!(
            hit(Reply::FailedAfterText {
                deltas: vec!["a".into()],
                code: USAGE_LIMIT_CODE.into(),
                message: "limit".into(),
            }),
            Some(LimitHit::CurrentWindow)
        );
        assert_eq!(hit(Reply::Overloaded), None);
        assert_eq!(hit(Reply::RateLimit429), None);
        assert_eq!(hit(Reply::text("Hello there")), None);
    }
}
