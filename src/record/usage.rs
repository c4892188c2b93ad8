//! Reading token usage from the upstream's answer as it passes, without changing what the
//! client receives — except for the one usage-only chunk promptgate asked for on a stream whose
//! client did not.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::pricing::Usage;

/// The largest JSON body kept aside to read its usage; larger answers go unread.
const MAX_JSON: usize = 4 * 1024 * 1024;

/// What the tap found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub usage: Option<Usage>,
    /// The model the upstream says answered.
    pub model: Option<String>,
    /// The answer's id (`chatcmpl-…`, `resp_…`), for traces.
    pub id: Option<String>,
    /// Why the answer ended, per choice (`stop`, `length`, `tool_calls`; on the Responses API
    /// its `status`), for traces.
    pub finish_reasons: Vec<String>,
}

/// The answer's id and finish reasons, from a chat completion (or chunk) or a response.
fn observe_ending(value: &Value, observed: &mut Observed) {
    if observed.id.is_none()
        && let Some(id) = value.get("id").and_then(Value::as_str)
    {
        observed.id = Some(id.to_owned());
    }
    match value.get("choices").and_then(Value::as_array) {
        Some(choices) => observed.finish_reasons.extend(
            choices
                .iter()
                .filter_map(|c| c.get("finish_reason").and_then(Value::as_str))
                .map(str::to_owned),
        ),
        None => {
            if let Some(status) = value.get("status").and_then(Value::as_str)
                && matches!(status, "completed" | "incomplete" | "failed" | "cancelled")
            {
                observed.finish_reasons = vec![status.to_owned()];
            }
        }
    }
}

/// Usage from an OpenAI `usage` object, chat (`prompt_tokens`) or responses (`input_tokens`).
pub fn usage_of(value: &Value) -> Option<Usage> {
    let usage = value.get("usage").filter(|u| u.is_object())?;
    let n = |key: &str| usage.get(key).and_then(Value::as_u64);
    let cached = |details: &str| {
        usage
            .get(details)
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    if let (Some(p), Some(c)) = (n("prompt_tokens"), n("completion_tokens")) {
        return Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached("prompt_tokens_details"),
        });
    }
    if let (Some(p), Some(c)) = (n("input_tokens"), n("output_tokens")) {
        return Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached("input_tokens_details"),
        });
    }
    None
}

enum Mode {
    /// A JSON body: a copy is kept (up to [`MAX_JSON`]) and read at the end.
    Json { copy: BytesMut, overflow: bool },
    /// Server-sent events, read event by event.
    Sse {
        pending: BytesMut,
        strip_usage_chunk: bool,
    },
    /// Anything else: not read.
    Other,
}

/// Watches a response body go by.
pub struct UsageTap {
    mode: Mode,
    observed: Observed,
}

impl UsageTap {
    /// `content_type` of the response; `strip_usage_chunk` when promptgate added
    /// `stream_options.include_usage` for a client that had not asked for it.
    pub fn new(content_type: Option<&str>, strip_usage_chunk: bool) -> Self {
        let ct = content_type.unwrap_or_default();
        let mode = if ct.starts_with("text/event-stream") {
            Mode::Sse {
                pending: BytesMut::new(),
                strip_usage_chunk,
            }
        } else if ct.starts_with("application/json") {
            Mode::Json {
                copy: BytesMut::new(),
                overflow: false,
            }
        } else {
            Mode::Other
        };
        UsageTap {
            mode,
            observed: Observed::default(),
        }
    }

    /// Takes a chunk from upstream and returns what goes to the client. Unless a usage chunk
    /// has to be removed, that is the very same bytes, at once.
    pub fn pass(&mut self, chunk: Bytes) -> Bytes {
        match &mut self.mode {
            Mode::Other => chunk,
            Mode::Json { copy, overflow } => {
                if !*overflow {
                    if copy.len() + chunk.len() > MAX_JSON {
                        *overflow = true;
                        *copy = BytesMut::new();
                    } else {
                        copy.extend_from_slice(&chunk);
                    }
                }
                chunk
            }
            Mode::Sse {
                pending,
                strip_usage_chunk,
            } => {
                let strip = *strip_usage_chunk;
                if !strip {
                    // Pass the bytes on untouched; read a copy.
                    pending.extend_from_slice(&chunk);
                    while let Some(event) = next_event(pending) {
                        observe_event(&event, &mut self.observed);
                    }
                    return chunk;
                }
                // Whole events only, so one can be left out. Upstreams send whole events per
                // chunk, so in practice nothing waits.
                pending.extend_from_slice(&chunk);
                let mut out = BytesMut::with_capacity(chunk.len());
                while let Some(event) = next_event(pending) {
                    let usage_only = observe_event(&event, &mut self.observed);
                    if !usage_only {
                        out.extend_from_slice(&event);
                    }
                }
                out.freeze()
            }
        }
    }

    /// What is left at the end of the stream (an unterminated last event) — to be sent on.
    pub fn remainder(&mut self) -> Option<Bytes> {
        match &mut self.mode {
            Mode::Sse {
                pending,
                strip_usage_chunk: true,
            } if !pending.is_empty() => Some(pending.split().freeze()),
            _ => None,
        }
    }

    /// The usage and model seen.
    pub fn finish(mut self) -> Observed {
        if let Mode::Json { copy, overflow } = &self.mode
            && !*overflow
            && let Ok(value) = serde_json::from_slice::<Value>(copy)
        {
            self.observed.usage = usage_of(&value);
            observe_ending(&value, &mut self.observed);
            self.observed.model = value
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        self.observed
    }
}

/// Splits one complete event (with its terminating blank line) off the front of `pending`.
fn next_event(pending: &mut BytesMut) -> Option<BytesMut> {
    let lf = memchr::memmem::find(pending, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(pending, b"\r\n\r\n").map(|i| i + 4);
    let end = match (lf, crlf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(pending.split_to(end))
}

/// Reads an event's `data:` JSON for usage and model. True when the event is a chat chunk that
/// carries only usage (no choices): the chunk `include_usage` adds.
fn observe_event(event: &[u8], observed: &mut Observed) -> bool {
    let text = String::from_utf8_lossy(event);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    if data.is_empty() || data == "[DONE]" || !data.contains("usage") && !data.contains("model") {
        return false;
    }
    let Ok(value) = serde_json::from_str::<Value>(&data) else {
        return false;
    };
    // Responses API streams carry the final response, usage included, in `response`.
    let carrier = value
        .get("response")
        .filter(|r| r.is_object())
        .unwrap_or(&value);
    if let Some(model) = carrier.get("model").and_then(Value::as_str) {
        observed.model = Some(model.to_owned());
    }
    observe_ending(carrier, observed);
    match usage_of(carrier) {
        Some(usage) => {
            observed.usage = Some(usage);
            value
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(content: &str) -> String {
        format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}],\"usage\":null}}\n\n"
        )
    }

    const USAGE: &str = "data: {\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"total_tokens\":17,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n";

    fn run(tap: &mut UsageTap, chunks: &[&str]) -> String {
        let mut out = String::new();
        for c in chunks {
            out.push_str(std::str::from_utf8(&tap.pass(Bytes::from(c.to_string()))).unwrap());
        }
        if let Some(rest) = tap.remainder() {
            out.push_str(std::str::from_utf8(&rest).unwrap());
        }
        out
    }

    #[test]
    fn usage_chunk_is_removed_when_promptgate_asked_for_it() {
        let mut tap = UsageTap::new(Some("text/event-stream"), true);
        let (a, b) = (chunk("Hel"), chunk("lo"));
        let out = run(&mut tap, &[&a, &b, USAGE, "data: [DONE]\n\n"]);
        assert_eq!(out, format!("{a}{b}data: [DONE]\n\n"));
        let observed = tap.finish();
        assert_eq!(
            observed.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5,
                cached_tokens: 4
            })
        );
        assert_eq!(observed.model.as_deref(), Some("gpt-4o-2024-08-06"));
    }

    #[test]
    fn usage_chunk_stays_when_the_client_asked() {
        let mut tap = UsageTap::new(Some("text/event-stream"), false);
        let a = chunk("Hi");
        let out = run(&mut tap, &[&a, USAGE, "data: [DONE]\n\n"]);
        assert_eq!(out, format!("{a}{USAGE}data: [DONE]\n\n"));
        assert_eq!(tap.finish().usage.unwrap().prompt_tokens, 12);
    }

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut tap = UsageTap::new(Some("text/event-stream"), true);
        let a = chunk("Hi");
        let (u1, u2) = USAGE.split_at(30);
        let (a1, a2) = a.split_at(10);
        let out = run(&mut tap, &[a1, a2, u1, u2, "data: [DONE]\n\n"]);
        assert_eq!(out, format!("{a}data: [DONE]\n\n"));
        assert_eq!(tap.finish().usage.unwrap().completion_tokens, 5);
    }

    #[test]
    fn json_bodies_and_responses_api_usage_are_read() {
        let mut tap = UsageTap::new(Some("application/json"), false);
        let body = r#"{"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
        let (x, y) = body.split_at(20);
        assert_eq!(run(&mut tap, &[x, y]), body);
        let observed = tap.finish();
        assert_eq!(observed.usage.unwrap().prompt_tokens, 7);
        assert_eq!(observed.model.as_deref(), Some("gpt-4o-mini"));

        let mut tap = UsageTap::new(Some("text/event-stream"), false);
        let done = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":9,\"output_tokens\":2,\"input_tokens_details\":{\"cached_tokens\":1}}}}\n\n";
        run(&mut tap, &[done]);
        let observed = tap.finish();
        assert_eq!(
            observed.usage,
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 2,
                cached_tokens: 1
            })
        );
        assert_eq!(observed.model.as_deref(), Some("gpt-4.1"));
    }

    #[test]
    fn crlf_events_are_split_too() {
        let mut pending = BytesMut::from("data: a\r\n\r\ndata: b\n\n");
        assert_eq!(&next_event(&mut pending).unwrap()[..], b"data: a\r\n\r\n");
        assert_eq!(&next_event(&mut pending).unwrap()[..], b"data: b\n\n");
        assert!(next_event(&mut pending).is_none());
    }
}
