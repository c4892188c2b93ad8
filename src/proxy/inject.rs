//! Steps 2–5 of the request path, one function a phase: [`choose`] the version, [`pick`] the
//! examples, [`render`] the prompt, [`inject`] it into the body.
//!
//! The body is rewritten at its top level only: the fields promptgate sets are written anew,
//! every other value — the client's messages included — is copied as the client wrote it.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::parse::{Body, PromptRef};
use super::request::Endpoint;
use crate::fewshot::{self, ModelSlot, PickError, Plan};
use crate::prompts::{Builtins, ExamplesFormat, Prompt, PromptSet, RenderError, Version};
use crate::select::{self, SelectError, Selection};

/// The body cannot take the prompt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InjectError {
    #[error("`messages` must be an array of messages")]
    MessagesNotArray,
}

/// The version chosen for a request.
#[derive(Debug, Clone, Copy)]
pub struct Chosen<'s> {
    pub prompt: &'s Prompt,
    pub version: &'s Version,
    pub selection: Selection,
}

/// Step 2: the prompt the request names, and the version that serves it.
pub fn choose<'s>(
    set: &'s PromptSet,
    reference: &PromptRef,
    key: Option<&str>,
) -> Result<Chosen<'s>, SelectError> {
    let prompt = select::find(set, &reference.name)?;
    let (version, selection) = select::choose(prompt, reference.version.as_ref(), key)?;
    Ok(Chosen {
        prompt,
        version,
        selection,
    })
}

/// The examples picked for a request, in the form the prompt places them.
#[derive(Debug, Default)]
pub struct Shots {
    /// `format: system`: the examples' text for the system prompt.
    pub block: String,
    /// `format: messages`: user/assistant pairs that go before the client's messages.
    pub messages: Vec<Value>,
    /// The strategy that picked them and the examples' indexes in `examples.jsonl`, for traces.
    pub picked: Option<(crate::prompts::Strategy, Vec<usize>)>,
}

/// The last user message, when the template or the examples' strategy reads it ("" else).
pub fn user_message_if_read(
    endpoint: Endpoint,
    body: &Body<'_>,
    chosen: &Chosen<'_>,
    plan: Option<&Plan>,
) -> String {
    if plan.is_some() || chosen.version.reads("user_message") {
        user_message(endpoint, body)
    } else {
        String::new()
    }
}

/// Step 3: the examples for this request.
pub async fn pick(
    model: &ModelSlot,
    chosen: &Chosen<'_>,
    plan: Option<&Plan>,
    user_message: &str,
) -> Result<Shots, PickError> {
    let Some(plan) = plan else {
        return Ok(Shots::default());
    };
    let picked = fewshot::pick(chosen.prompt, plan, user_message, model).await?;
    let (block, messages) = match plan.format {
        ExamplesFormat::System => (fewshot::block(chosen.prompt, &picked), Vec::new()),
        ExamplesFormat::Messages => (String::new(), fewshot::messages(chosen.prompt, &picked)),
    };
    Ok(Shots {
        block,
        messages,
        picked: Some((plan.strategy, picked)),
    })
}

/// Step 4: the system prompt. `today` and `now` are formatted only when the template reads
/// them.
pub fn render(
    set: &PromptSet,
    chosen: &Chosen<'_>,
    reference: &PromptRef,
    shots: &Shots,
    user_message: &str,
    now: DateTime<Utc>,
) -> Result<String, RenderError> {
    let version = chosen.version;
    let today = if version.reads("today") {
        now.format("%Y-%m-%d").to_string()
    } else {
        String::new()
    };
    let now_text = if version.reads("now") {
        now.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        String::new()
    };
    let mut system = set.render(
        chosen.prompt,
        version,
        &reference.variables,
        Builtins {
            today: &today,
            now: &now_text,
            user_message,
            examples: &shots.block,
        },
    )?;
    // The seed appends the block after the prompt, unless the template places it itself.
    if !shots.block.is_empty() && !version.places_examples() {
        system.push_str("\n\n");
        system.push_str(&shots.block);
    }
    Ok(system)
}

/// The upstream body, and what promptgate learnt writing it.
#[derive(Debug)]
pub struct Injected {
    pub body: Vec<u8>,
    /// The model the request names, after the version's override.
    pub model: Option<String>,
    pub strip_usage_chunk: bool,
}

/// Step 5: the body that goes upstream — the prompt placed, the version's settings applied,
/// the `prompt` field gone, everything else as the client wrote it.
pub fn inject(
    endpoint: Endpoint,
    body: &Body<'_>,
    chosen: &Chosen<'_>,
    system: &str,
    shots: &Shots,
) -> Result<Injected, InjectError> {
    let version = chosen.version;
    let mut set = Overrides::default();
    match endpoint {
        Endpoint::ChatCompletions => {
            let client = match body.get("messages") {
                None => None,
                Some(raw) if raw.get().starts_with('[') => Some(raw),
                Some(_) => return Err(InjectError::MessagesNotArray),
            };
            let items: Vec<&RawValue> = match client {
                Some(raw) => {
                    serde_json::from_str(raw.get()).map_err(|_| InjectError::MessagesNotArray)?
                }
                None => Vec::new(),
            };
            // The system message (the client's own merged in, or not, as the version says),
            // the client's system messages it keeps, the example pairs, the conversation.
            let head = super::system::plan(&items, system, version.client_system);
            let mut out =
                Vec::with_capacity(system.len() + 32 + client.map_or(0, |r| r.get().len()));
            out.extend_from_slice(br#"[{"role":"system","content":"#);
            super::json::write_str(&mut out, &head.system);
            out.push(b'}');
            for item in &items[head.kept] {
                out.push(b',');
                out.extend_from_slice(item.get().as_bytes());
            }
            for message in &shots.messages {
                out.push(b',');
                json_into(&mut out, message);
            }
            for item in &items[head.rest..] {
                out.push(b',');
                out.extend_from_slice(item.get().as_bytes());
            }
            out.push(b']');
            set.put("messages", out);
        }
        Endpoint::Responses => {
            // The client's own instructions: appended as written (escapes and all), moved to
            // the input, or dropped, as the version says.
            let own = super::system::instructions(body.get("instructions"), version.client_system);
            let mut out = Vec::with_capacity(system.len() + 16);
            super::json::write_str(&mut out, system);
            if let (super::system::Instructions::Merged, Some(own)) =
                (&own, body.get("instructions").map(RawValue::get))
            {
                out.pop();
                out.extend_from_slice(br"\n\n");
                out.extend_from_slice(&own.as_bytes()[1..]);
            }
            set.put("instructions", out);
            let apart = match own {
                super::system::Instructions::Apart(raw) => Some(raw),
                _ => None,
            };
            if !shots.messages.is_empty() || apart.is_some() {
                // The client's instructions (kept apart) and the example pairs go before the
                // client's input, which becomes a list if needed.
                let mut out = Vec::new();
                out.push(b'[');
                if let Some(raw) = apart {
                    out.extend_from_slice(br#"{"role":"developer","content":"#);
                    out.extend_from_slice(raw.get().as_bytes());
                    out.push(b'}');
                }
                for (i, message) in shots.messages.iter().enumerate() {
                    if i > 0 || apart.is_some() {
                        out.push(b',');
                    }
                    json_into(&mut out, message);
                }
                match body.get("input").map(RawValue::get) {
                    None => {}
                    Some(raw) if raw.starts_with('[') => {
                        if let Some(items) = array_items(raw) {
                            out.push(b',');
                            out.extend_from_slice(items.as_bytes());
                        }
                    }
                    Some(raw) if raw.starts_with('"') => {
                        out.extend_from_slice(br#",{"role":"user","content":"#);
                        out.extend_from_slice(raw.as_bytes());
                        out.push(b'}');
                    }
                    Some(raw) => {
                        out.push(b',');
                        out.extend_from_slice(raw.as_bytes());
                    }
                }
                out.push(b']');
                set.put("input", out);
            }
        }
    }
    if let Some(model) = &version.model {
        set.put("model", json(model));
    }
    if let Some(t) = version.temperature {
        set.put("temperature", json(&Value::from(t)));
    }
    if let Some(max) = version.max_tokens {
        let field = match endpoint {
            Endpoint::Responses => "max_output_tokens",
            // Newer models only take `max_completion_tokens`; respect the client's choice.
            Endpoint::ChatCompletions if body.contains("max_completion_tokens") => {
                "max_completion_tokens"
            }
            Endpoint::ChatCompletions => "max_tokens",
        };
        set.put(field, json(&max));
    }
    for (key, value) in &version.params {
        set.put(key, json(value));
    }
    // Token usage of a stream comes only when asked for; ask on the client's behalf and
    // remember to take the extra chunk out again.
    let mut strip_usage_chunk = false;
    let streams = || match set.get("stream") {
        Some(v) => v == b"true",
        None => body.get("stream").is_some_and(|r| r.get() == "true"),
    };
    if endpoint == Endpoint::ChatCompletions && streams() {
        let options = match set.get("stream_options") {
            Some(v) => serde_json::from_slice::<Value>(v).ok(),
            None => match body.get("stream_options") {
                None => Some(Value::Object(serde_json::Map::new())),
                Some(raw) => serde_json::from_str::<Value>(raw.get()).ok(),
            },
        };
        if let Some(Value::Object(mut options)) = options
            && options.get("include_usage") != Some(&Value::Bool(true))
        {
            options.insert("include_usage".to_owned(), Value::Bool(true));
            set.put("stream_options", json(&options));
            strip_usage_chunk = true;
        }
    }
    let model = match set.get("model") {
        Some(v) => serde_json::from_slice::<String>(v).ok(),
        None => body.read::<String>("model"),
    };
    Ok(Injected {
        body: write(body, &set.0),
        model,
        strip_usage_chunk,
    })
}

/// Top-level fields promptgate sets: the last value of a key wins, at its first place.
#[derive(Default)]
struct Overrides<'k>(Vec<(Cow<'k, str>, Vec<u8>)>);

impl<'k> Overrides<'k> {
    fn put(&mut self, key: &'k str, value: Vec<u8>) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((Cow::Borrowed(key), value)),
        }
    }

    fn get(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// Writes `body` without its `prompt` field, with `overrides` in place of (or after) the
/// client's fields. Every other value is copied as the client wrote it.
pub fn write(body: &Body<'_>, overrides: &[(Cow<'_, str>, Vec<u8>)]) -> Vec<u8> {
    let size = body
        .fields()
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum::<usize>()
        + overrides
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
    let mut out = Vec::with_capacity(size + 2);
    let mut written = vec![false; overrides.len()];
    out.push(b'{');
    let field = |out: &mut Vec<u8>, key: &str, value: &[u8]| {
        if out.len() > 1 {
            out.push(b',');
        }
        json_into(out, key);
        out.push(b':');
        out.extend_from_slice(value);
    };
    for (key, raw) in body.fields() {
        if key == "prompt" {
            continue;
        }
        match overrides.iter().position(|(k, _)| k == key) {
            Some(i) if written[i] => {}
            Some(i) => {
                written[i] = true;
                field(&mut out, key, &overrides[i].1);
            }
            None => field(&mut out, key, raw.get().as_bytes()),
        }
    }
    for ((key, value), done) in overrides.iter().zip(&written) {
        if !done {
            field(&mut out, key, value);
        }
    }
    out.push(b'}');
    out
}

/// The items of a JSON array's text, without the brackets; `None` when it is empty.
fn array_items(raw: &str) -> Option<&str> {
    let inner = raw.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
    (!inner.is_empty()).then_some(inner)
}

fn json(value: &(impl serde::Serialize + ?Sized)) -> Vec<u8> {
    let mut out = Vec::new();
    json_into(&mut out, value);
    out
}

fn json_into(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    // Serialising strings, numbers and JSON values into memory cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// The last user message's text ("" if none): a string content, or the text parts of an
/// array joined by newlines. Text that is not valid Unicode (half an emoji) is read with
/// U+FFFD in its place; the body itself is not changed.
pub fn user_message(endpoint: Endpoint, body: &Body<'_>) -> String {
    let items = match endpoint {
        Endpoint::ChatCompletions => body.get("messages"),
        Endpoint::Responses => match body.get("input") {
            Some(raw) if raw.get().starts_with('"') => return lossy(raw).unwrap_or_default(),
            other => other,
        },
    };
    let Some(items) = items.and_then(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok())
    else {
        return String::new();
    };
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        role: Option<Cow<'a, str>>,
        #[serde(borrow)]
        content: Option<&'a RawValue>,
    }
    items
        .iter()
        .rev()
        .filter_map(|item| serde_json::from_str::<Message<'_>>(item.get()).ok())
        .find(|m| m.role.as_deref() == Some("user"))
        .and_then(|m| m.content)
        .map(content_text)
        .unwrap_or_default()
}

fn content_text(content: &RawValue) -> String {
    if content.get().starts_with('"') {
        return lossy(content).unwrap_or_default();
    }
    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(borrow)]
        text: Option<&'a RawValue>,
    }
    let Ok(parts) = serde_json::from_str::<Vec<Part<'_>>>(content.get()) else {
        return String::new();
    };
    parts
        .iter()
        .filter_map(|p| p.text.filter(|t| t.get().starts_with('"')))
        .filter_map(lossy)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON string's text, lone surrogates replaced by U+FFFD.
fn lossy(raw: &RawValue) -> Option<String> {
    struct Lossy(String);
    impl<'de> Deserialize<'de> for Lossy {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Lossy;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a string")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Lossy, E> {
                    Ok(Lossy(String::from_utf8_lossy(v).into_owned()))
                }
                fn visit_str<E>(self, v: &str) -> Result<Lossy, E> {
                    Ok(Lossy(v.to_owned()))
                }
            }
            // Bytes, not str: serde_json then accepts a lone surrogate.
            d.deserialize_bytes(V)
        }
    }
    serde_json::from_str::<Lossy>(raw.get()).ok().map(|l| l.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Body<'_> {
        Body::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn user_message_reads_text_parts_and_responses_input() {
        let b = body(
            r#"{"messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}]}
        ]}"#,
        );
        assert_eq!(user_message(Endpoint::ChatCompletions, &b), "a\nb");
        let b = body(
            r#"{"input": [{"role": "user", "content": [{"type": "input_text", "text": "q"}]}]}"#,
        );
        assert_eq!(user_message(Endpoint::Responses, &b), "q");
        let b = body(r#"{"input": "plain"}"#);
        assert_eq!(user_message(Endpoint::Responses, &b), "plain");
        let b = body(r#"{"messages": [{"role": "user", "content": "a\ud83db"}]}"#);
        let text = user_message(Endpoint::ChatCompletions, &b);
        assert!(text.starts_with('a') && text.ends_with('b') && text.contains('\u{fffd}'));
    }

    #[test]
    fn write_keeps_other_values_as_written() {
        let b = body(r#"{"a": [1,  2], "prompt": {"id": "x"}, "m": "\ud800", "a2": 1}"#);
        let out = write(
            &b,
            &[
                (Cow::Borrowed("a2"), b"3".to_vec()),
                (Cow::Borrowed("new"), b"true".to_vec()),
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":[1,  2],"m":"\ud800","a2":3,"new":true}"#
        );
    }

    #[test]
    fn array_items_are_found() {
        assert_eq!(array_items(" [ ] "), None);
        assert_eq!(array_items("[1, 2]"), Some("1, 2"));
    }
}
