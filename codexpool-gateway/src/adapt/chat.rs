//! OpenAI Chat Completions on top of the Codex Responses backend (PROTOCOL.md §5).
//!
//! [`chat_to_responses`] (in `request`) maps a chat request to a Responses body that already
//! satisfies the body rules (messages to input items, tools flattened, `response_format` to
//! `text.format`, unsupported sampling parameters dropped and named). On the way back (in
//! `answer`), one state machine turns Responses events into chat output and feeds one of two
//! sinks: [`ChatStream`] writes `chat.completion.chunk` SSE frames straight into a
//! [`BytesMut`](bytes::BytesMut) (the constant head of every chunk is serialized once per stream,
//! only the delta text is escaped per event), and [`ChatAssembler`] accumulates one
//! `chat.completion` for `stream: false` clients. Sharing the state machine keeps both answers
//! identical: same tool-call indices, same `finish_reason`, same handling of streams that only
//! announce text in `output_item.done`. A refusal (a `refusal` content part, streamed as
//! `response.refusal.delta`) becomes `refusal`, never `content`:
//! openai-python's `chat.completions.parse` reads `message.refusal` to tell a declined request
//! from an answer.
//!
//! The legacy function API (2023, deprecated but still accepted by OpenAI and still sent by
//! older clients such as LangChain's `create_openai_functions_agent`) is translated too:
//! `functions` become the same tools as `tools`, `function_call` the same tool choice as
//! `tool_choice`, and its messages (an assistant `function_call`, a `function` message with the
//! result) become `function_call` / `function_call_output` items. Those messages carry no call
//! ids, so the gateway makes them from the assistant message's position (`call_fn_<index>`) and
//! gives a `function` message the id of the latest unanswered call of its name (a result with
//! no call, e.g. retrieved text put in as one, gets a call of its own). A request that
//! used the legacy form ([`ChatOptions::legacy_functions`]) is answered in it: the state machine
//! announces a call as `function_call` (`delta.function_call`, `message.function_call`) instead
//! of `tool_calls`, ends with `finish_reason: "function_call"`, and passes on only the model's
//! first call, as that API returns one.
//!
//! The backend has no `stop`, so the client's stop sequences ([`ChatOptions::stop`], which ReAct
//! agents rely on) are applied here, in the shared state machine, on the way back. The answer text
//! is cut before the earliest sequence, wherever the deltas split it: a streamed answer holds back
//! only a tail that could still be the start of one, and lets it go as soon as the next text (or
//! a tool call, or the end) shows it is not. After the cut nothing more is sent (text, refusal,
//! reasoning, tool calls) and the finish reason is `stop`. The generation itself still runs to
//! its end upstream: the stream is read to `response.completed`, so the usage the client gets and
//! the request log records is everything generated, not only what was kept. Reasoning text is
//! not searched for stop sequences. Without `stop` nothing is held back or searched.

mod answer;
mod request;
#[cfg(test)]
mod tests;

pub use answer::{ChatAssembler, ChatStream};
pub use request::chat_to_responses;

/// What the route needs to answer a chat client, decided from its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatOptions {
    /// The model asked for (after [`Overrides::model`](super::Overrides::model)); reported when
    /// the upstream names none.
    pub model: String,
    /// `stream`: answer with chunks (else one `chat.completion`).
    pub stream: bool,
    /// `stream_options.include_usage`: send a last chunk with `usage` before `[DONE]`.
    pub include_usage: bool,
    /// `stop`: the answer ends before the first of these sequences (at most [`MAX_STOPS`], none
    /// empty). The backend has no such field, so the gateway cuts the text on the way back;
    /// empty means no cutting at all.
    pub stop: Vec<String>,
    /// The request used the legacy `functions` / `function_call` API: a function call is
    /// answered in that form (`message.function_call`, `delta.function_call`, `finish_reason:
    /// "function_call"`), and only the first one the model makes, as that API returns one.
    pub legacy_functions: bool,
}

/// The most `stop` sequences a request may give (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
