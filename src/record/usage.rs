//! Reading token usage from the upstream's answer as it passes, without changing what the
//! client receives — except for the one usage-only chunk promptgate asked for on a stream whose
//! client did not.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

use super::answer::{Answer, Details, UsageFields};
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
    /// its final `status`), for traces.
    pub finish_reasons: Vec<String>,
}

/// Finish reasons kept per answer at most: one per choice in any real answer; an upstream that
/// sends a finish reason in every chunk of a long stream does not grow the list without end.
const MAX_FINISH_REASONS: usize = 128;

impl Answer<'_> {
    /// Notes the answer's id (the first seen) and finish reasons (chat choices, or a final
    /// Responses API status).
    fn observe_ending(&self, observed: &mut Observed) {
        let id = self.response.as_ref().map_or(&self.id, |r| &r.id);
        if observed.id.is_none() {
            observed.id = id.as_deref().map(str::to_owned);
        }
        for choice in self.choices.iter().flatten() {
            if let Some(reason) = &choice.finish_reason
                && observed.finish_reasons.len() < MAX_FINISH_REASONS
            {
                observed.finish_reasons.push(reason.clone().into_owned());
            }
        }
        let status = self.response.as_ref().and_then(|r| r.status.as_deref());
        if let Some(status @ ("completed" | "incomplete" | "failed" | "cancelled")) = status {
            observed.finish_reasons = vec![status.to_owned()];
        }
    }
}

impl UsageFields {
    fn usage(&self) -> Option<Usage> {
        let cached = |d: &Option<Details>| d.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0);
        if let (Some(p), Some(c)) = (self.prompt_tokens, self.completion_tokens) {
            return Some(Usage {
                prompt_tokens: p,
                completion_tokens: c,
                cached_tokens: cached(&self.prompt_tokens_details),
            });
        }
        if let (Some(p), Some(c)) = (self.input_tokens, self.output_tokens) {
            return Some(Usage {
                prompt_tokens: p,
                completion_tokens: c,
                cached_tokens: cached(&self.input_tokens_details),
            });
        }
        None
    }
}

/// Reads usage and model from a JSON answer or one event's data: the public entry point for
/// what upstream sends (fuzzing too). `None` when the text is not such an object.
pub fn read_answer(data: &[u8]) -> Option<Observed> {
    read(data, true)
}

/// [`read_answer`]; the id and finish reasons (for traces) only with `ending`.
fn read(data: &[u8], ending: bool) -> Option<Observed> {
    let answer = parse_answer(data)?;
    let (model, usage) = match &answer.response {
        Some(inner) => (inner.model.as_deref(), inner.usage.as_ref()),
        None => (answer.model.as_deref(), answer.usage.as_ref()),
    };
    let mut observed = Observed {
        usage: usage.and_then(UsageFields::usage),
        model: model.map(str::to_owned),
        ..Observed::default()
    };
    if !ending {
        return Some(observed);
    }
    answer.observe_ending(&mut observed);
    if let Some(status) = &answer.status
        && matches!(
            &**status,
            "completed" | "incomplete" | "failed" | "cancelled"
        )
    {
        observed.finish_reasons = vec![status.clone().into_owned()];
    }
    Some(observed)
}

fn parse_answer(data: &[u8]) -> Option<Answer<'_>> {
    // `usage` of another type than an object (or null) makes the typed read fail; such an
    // answer simply has no usage.
    super::answer::parse(data)
}

enum Mode {
    /// A JSON body: kept (up to [`MAX_JSON`]) and read at the end — the chunk itself when it
    /// came whole, else a copy of the chunks.
    Json {
        whole: Option<Bytes>,
        copy: BytesMut,
        overflow: bool,
    },
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
    /// Whether the answer's id and finish reasons are wanted (they are for traces only).
    ending: bool,
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
                whole: None,
                copy: BytesMut::new(),
                overflow: false,
            }
        } else {
            Mode::Other
        };
        UsageTap {
            mode,
            observed: Observed::default(),
            ending: true,
        }
    }

    /// Leaves out the answer's id and finish reasons, which only traces use: the tap then
    /// copies nothing but the model.
    pub fn without_ending(mut self) -> Self {
        self.ending = false;
        self
    }

    /// Takes a chunk from upstream and returns what goes to the client. Unless a usage chunk
    /// has to be removed, that is the very same bytes, at once.
    pub fn pass(&mut self, chunk: Bytes) -> Bytes {
        match &mut self.mode {
            Mode::Other => chunk,
            Mode::Json {
                whole,
                copy,
                overflow,
            } => {
                if *overflow {
                    return chunk;
                }
                let kept = whole.as_ref().map_or(copy.len(), Bytes::len);
                if kept + chunk.len() > MAX_JSON {
                    *overflow = true;
                    *whole = None;
                    *copy = BytesMut::new();
                } else if kept == 0 {
                    // Most bodies come in one chunk: keep it, shared, rather than copy it.
                    *whole = Some(chunk.clone());
                } else {
                    if let Some(first) = whole.take() {
                        copy.extend_from_slice(&first);
                    }
                    copy.extend_from_slice(&chunk);
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
        if let Mode::Json {
            whole,
            copy,
            overflow: false,
        } = &self.mode
        {
            let body = whole.as_deref().unwrap_or(copy);
            if let Some(observed) = read(body, self.ending) {
                self.observed = observed;
            }
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
///
/// Only the first event that names a model, and those that carry a usage object, are parsed —
/// not every chunk of the stream.
fn observe_event(event: &[u8], observed: &mut Observed) -> bool {
    let data = event_data(event);
    if data.is_empty() || &data[..] == b"[DONE]" {
        return false;
    }
    let has_usage = carries_usage(&data);
    // The chunk that ends a choice says why (for traces); it is one chunk a choice.
    let ends = memchr::memmem::find(&data, b"\"finish_reason\":\"").is_some()
        || memchr::memmem::find(&data, b"\"finish_reason\": \"").is_some();
    if !has_usage
        && !ends
        && (observed.model.is_some() || memchr::memmem::find(&data, b"\"model\"").is_none())
    {
        return false;
    }
    let Some(answer) = parse_answer(&data) else {
        return false;
    };
    let (model, usage) = match &answer.response {
        Some(inner) => (inner.model.as_deref(), inner.usage.as_ref()),
        None => (answer.model.as_deref(), answer.usage.as_ref()),
    };
    if let Some(model) = model {
        observed.model = Some(model.to_owned());
    }
    answer.observe_ending(observed);
    match usage.and_then(UsageFields::usage) {
        Some(usage) => {
            observed.usage = Some(usage);
            answer.choices.as_ref().is_some_and(Vec::is_empty)
        }
        None => false,
    }
}

/// The `data:` lines of an event, joined by newlines (borrowed when there is one).
fn event_data(event: &[u8]) -> Cow<'_, [u8]> {
    let mut lines = event
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter_map(|l| l.strip_prefix(b"data:"))
        .map(|d| d.strip_prefix(b" ").unwrap_or(d));
    let Some(first) = lines.next() else {
        return Cow::Borrowed(&[]);
    };
    match lines.next() {
        None => Cow::Borrowed(first),
        Some(second) => {
            let mut all = first.to_vec();
            for line in std::iter::once(second).chain(lines) {
                all.push(b'\n');
                all.extend_from_slice(line);
            }
            Cow::Owned(all)
        }
    }
}

/// Does the data hold `"usage"` followed by an object (not `null`)?
fn carries_usage(data: &[u8]) -> bool {
    memchr::memmem::find_iter(data, b"\"usage\"").any(|at| {
        let mut rest = data[at + 7..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    })
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
    fn a_body_in_one_chunk_is_read_without_a_copy_and_the_ending_only_when_wanted() {
        let body = r#"{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
        let mut tap = UsageTap::new(Some("application/json"), false);
        assert_eq!(run(&mut tap, &["", body]), body);
        let observed = tap.finish();
        assert_eq!(observed.usage.unwrap().completion_tokens, 3);
        assert_eq!(observed.id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(observed.finish_reasons, ["stop"]);

        let mut tap = UsageTap::new(Some("application/json"), false).without_ending();
        run(&mut tap, &[body]);
        let observed = tap.finish();
        assert_eq!(observed.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(observed.usage.unwrap().prompt_tokens, 7);
        assert_eq!((observed.id, observed.finish_reasons.len()), (None, 0));
    }

    #[test]
    fn finish_reasons_in_every_chunk_of_a_stream_are_kept_to_a_bound() {
        let chunk =
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"finish_reason\":\"stop\"}]}\n\n";
        let chunks = vec![chunk; 1000];
        let mut tap = UsageTap::new(Some("text/event-stream"), false);
        run(&mut tap, &chunks);
        let observed = tap.finish();
        assert_eq!(observed.finish_reasons.len(), MAX_FINISH_REASONS);
    }

    #[test]
    fn only_chunks_with_a_usage_object_are_read_for_usage() {
        assert!(carries_usage(br#"{"usage": {"prompt_tokens": 1}}"#));
        assert!(!carries_usage(br#"{"usage":null,"x":"usage"}"#));
        let observed = read_answer(br#"{"model":"m","usage":"odd"}"#);
        assert_eq!(observed, None, "a usage of another type is no usage");
        let observed = read_answer(br#"{"model":"m","usage":null}"#).unwrap();
        assert_eq!(observed.model.as_deref(), Some("m"));
        assert_eq!(observed.usage, None);
    }

    #[test]
    fn crlf_events_are_split_too() {
        let mut pending = BytesMut::from("data: a\r\n\r\ndata: b\n\n");
        assert_eq!(&next_event(&mut pending).unwrap()[..], b"data: a\r\n\r\n");
        assert_eq!(&next_event(&mut pending).unwrap()[..], b"data: b\n\n");
        assert!(next_event(&mut pending).is_none());
    }
}
