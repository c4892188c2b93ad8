//! Steps 2–5 of the request path, one function a phase: [`choose`] the version, [`pick`] the
//! examples, [`render`] the prompt, [`inject`] it into the body.
//!
//! The body is rewritten at its top level only: the fields promptgate sets are written anew,
//! every other value — the client's messages included — is copied as the client wrote it.

use std::borrow::Cow;
use std::cell::OnceCell;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use serde_json::ser::{CompactFormatter, Formatter as _};
use serde_json::value::RawValue;

use super::parse::{Body, PromptRef};
use super::request::Endpoint;
use crate::fewshot::{self, ModelSlot, PickError, Plan};
use crate::prompts::template::{self, Clock, Context};
use crate::prompts::variables::Text;
use crate::prompts::{ExamplesFormat, Prompt, PromptSet, RenderError, Variables, Version};
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

/// A chat request's `messages`, split into items once for every phase that reads them.
#[derive(Debug, Default)]
pub struct Messages<'b> {
    /// The field as the client wrote it.
    raw: Option<&'b RawValue>,
    /// Its items; `None` when it is not an array.
    items: Option<Vec<Item<'b>>>,
}

impl Messages<'_> {
    /// How many of the client's messages lead with a `system` or `developer` role.
    fn leading(&self) -> usize {
        self.items.as_deref().map_or(0, |items| {
            items
                .iter()
                .take_while(|item| matches!(item.role().as_deref(), Some("system" | "developer")))
                .count()
        })
    }
}

/// One message (or input item) as the client wrote it, and its `role` and `content`, read
/// once for every phase that asks (the last user message, then the system message's plan).
#[derive(Debug)]
pub struct Item<'b> {
    raw: &'b RawValue,
    read: OnceCell<Option<MessageFields<'b>>>,
}

#[derive(Debug, Deserialize)]
struct MessageFields<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Item<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Item {
            raw: <&RawValue>::deserialize(d)?,
            read: OnceCell::new(),
        })
    }
}

impl<'b> Item<'b> {
    /// Its `role` and `content`; `None` when it is not such an object.
    fn fields(&self) -> Option<&MessageFields<'b>> {
        self.read
            .get_or_init(|| serde_json::from_str(self.raw.get()).ok())
            .as_ref()
    }

    /// Its `role`, as [`super::system`] reads it: an item whose `content` the typed read
    /// refuses (given twice, say) still has a role.
    fn role(&self) -> Option<Cow<'b, str>> {
        // Only an object: serde also reads a struct from an array (`["system", "x"]`), which
        // the role's own read refuses.
        if !self.raw.get().starts_with('{') {
            return super::system::role(self.raw);
        }
        match self.fields() {
            Some(fields) => fields.role.clone(),
            None => super::system::role(self.raw),
        }
    }
}

impl<'b> Messages<'b> {
    /// The `messages` of a chat request (none for other endpoints).
    pub fn of(endpoint: Endpoint, body: &Body<'b>) -> Self {
        let raw = match endpoint {
            Endpoint::ChatCompletions => body.get("messages"),
            Endpoint::Responses => None,
        };
        Messages {
            raw,
            items: raw.and_then(|raw| serde_json::from_str(raw.get()).ok()),
        }
    }
}

/// The last user message, when the template or the examples' strategy reads it ("" else).
pub fn user_message_if_read<'b>(
    endpoint: Endpoint,
    body: &Body<'b>,
    messages: &Messages<'b>,
    chosen: &Chosen<'_>,
    plan: Option<&Plan>,
) -> Cow<'b, str> {
    if plan.is_some() || chosen.version.reads("user_message") {
        user_message_in(endpoint, body, messages)
    } else {
        Cow::Borrowed("")
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

/// What a version renders to for one request.
#[derive(Debug, Default)]
pub struct Rendered<'v> {
    /// The system prompt: a plain template's text, or a chat template's leading `system`
    /// message. It meets the client's own system message as `client_system` says.
    pub system: Option<String>,
    /// A chat template's other messages before the conversation, as JSON.
    pub before: Vec<Cow<'v, [u8]>>,
    /// A chat template's messages after the conversation, as JSON.
    pub after: Vec<Cow<'v, [u8]>>,
}

/// Step 4: the system prompt (and a chat template's other messages). Templates read the
/// request's variables and the built-ins through one [`Context`] that looks each name up when
/// read (`today` and `now` are formatted only then). Variables get the `input_schema`'s
/// defaults and are checked against it first.
pub fn render<'v>(
    set: &PromptSet,
    chosen: &Chosen<'v>,
    reference: &PromptRef,
    shots: &Shots,
    user_message: &str,
    now: DateTime<Utc>,
) -> Result<Rendered<'v>, RenderError> {
    let version = chosen.version;
    let variables = match &version.input_schema {
        None => reference.variables.clone(),
        Some(schema) => schema
            .apply(&reference.variables.to_json())
            .map(Variables::from)
            .map_err(|problems| RenderError::InvalidVariables {
                prompt: chosen.prompt.name.clone(),
                version: version.version,
                problems,
            })?,
    };
    // Declared variables are required up front, even by constant messages. Without a
    // declaration the template decides while rendering: a variable read under `is defined` or
    // through `default(...)` is optional.
    template::check_declared(
        &chosen.prompt.name,
        version.version,
        version.declared.as_deref(),
        &variables,
    )?;
    let context = Context::new(
        &chosen.prompt.name,
        version.version,
        variables,
        Clock::At(now),
        minijinja::Value::from(user_message),
        minijinja::Value::from(shots.block.as_str()),
    );
    // The seed appends the block after the prompt, unless the template places it itself.
    // (A one-template version keeps the separator even after an empty render, as it always
    // has; a chat template's system message does not start with one.)
    let append_block = |system: &mut String, chat: bool| {
        if !shots.block.is_empty() && !version.places_examples() {
            if !(chat && system.is_empty()) {
                system.push_str("\n\n");
            }
            system.push_str(&shots.block);
        }
    };
    let Some(chat) = &version.chat else {
        let mut system = set.render(version, &version.key, &context)?;
        append_block(&mut system, false);
        return Ok(Rendered {
            system: Some(system),
            ..Rendered::default()
        });
    };
    let mut out = Rendered::default();
    let system_first = chat.system_first();
    for (i, message) in chat.messages.iter().enumerate() {
        if i == 0 && system_first {
            let mut system = match &message.constant {
                Some(_) => message.text.clone(),
                None => set.render(version, &message.key, &context)?,
            };
            append_block(&mut system, true);
            out.system = Some(system);
            continue;
        }
        let json = match &message.constant {
            Some(bytes) => Cow::Borrowed(&**bytes),
            None => {
                let text = set.render(version, &message.key, &context)?;
                Cow::Owned(crate::prompts::chat::message_json(message.role, &text))
            }
        };
        if i < chat.marker {
            out.before.push(json);
        } else {
            out.after.push(json);
        }
    }
    if out.system.is_none() && !shots.block.is_empty() && !version.places_examples() {
        // No system message of its own: the examples' block becomes one.
        out.system = Some(shots.block.clone());
    }
    Ok(out)
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
    messages: &Messages<'_>,
    chosen: &Chosen<'_>,
    rendered: &Rendered<'_>,
    shots: &Shots,
) -> Result<Injected, InjectError> {
    let version = chosen.version;
    let mut set = Overrides::default();
    let system = rendered.system.as_deref();
    match endpoint {
        Endpoint::ChatCompletions => {
            let client = match messages.raw {
                None => None,
                Some(raw) if raw.get().starts_with('[') => Some(raw),
                Some(_) => return Err(InjectError::MessagesNotArray),
            };
            let items: &[Item<'_>] = match client {
                Some(_) => messages
                    .items
                    .as_deref()
                    .ok_or(InjectError::MessagesNotArray)?,
                None => &[],
            };
            // The system message (the client's own merged in, or not, as the version says),
            // the client's system messages it keeps, the template's messages before the
            // conversation, the example pairs, the conversation, the template's messages
            // after it.
            let leading = messages.leading();
            let (head_system, kept, rest) = match system {
                Some(system) => {
                    let head = super::system::plan(
                        items[..leading].iter().map(|item| item.raw),
                        system,
                        version.client_system,
                    );
                    (Some(head.system), head.kept, head.rest)
                }
                None => {
                    let (kept, rest) =
                        super::system::plan_without_prompt(leading, version.client_system);
                    (None, kept, rest)
                }
            };
            let extra: usize = rendered
                .before
                .iter()
                .chain(&rendered.after)
                .map(|m| m.len() + 1)
                .sum();
            // Room for the system message's escapes too (a newline a line, say): the body is
            // not copied again as it grows.
            let system_len = system.map_or(0, |s| s.len() + s.len() / 8 + 64);
            let mut out =
                Vec::with_capacity(system_len + extra + 32 + client.map_or(0, |r| r.get().len()));
            out.push(b'[');
            if let Some(system) = &head_system {
                out.extend_from_slice(br#"{"role":"system","content":"#);
                super::json::write_str(&mut out, system);
                out.push(b'}');
            }
            for item in &items[kept] {
                item_into(&mut out, item.raw.get().as_bytes());
            }
            for message in &rendered.before {
                item_into(&mut out, message);
            }
            for message in &shots.messages {
                item_sep(&mut out);
                json_into(&mut out, message);
            }
            for item in &items[rest..] {
                item_into(&mut out, item.raw.get().as_bytes());
            }
            for message in &rendered.after {
                item_into(&mut out, message);
            }
            out.push(b']');
            set.put("messages", out);
        }
        Endpoint::Responses => {
            // The client's own instructions: appended as written (escapes and all), moved to
            // the input, or dropped, as the version says. A chat template without a leading
            // system message leaves them as they are (dropped with `replace`).
            let own_raw = body.get("instructions");
            let own = match system {
                Some(_) => super::system::instructions(own_raw, version.client_system),
                None => super::system::Instructions::Alone,
            };
            if let Some(system) = system {
                let mut out = Vec::with_capacity(system.len() + 16);
                super::json::write_str(&mut out, system);
                if let (super::system::Instructions::Merged, Some(own)) =
                    (&own, own_raw.map(RawValue::get))
                {
                    out.pop();
                    out.extend_from_slice(br"\n\n");
                    out.extend_from_slice(&own.as_bytes()[1..]);
                }
                set.put("instructions", out);
            } else if version.client_system == crate::prompts::ClientSystem::Replace
                && own_raw.is_some()
            {
                set.remove("instructions");
            }
            let apart = match own {
                super::system::Instructions::Apart(raw) => Some(raw),
                _ => None,
            };
            if !shots.messages.is_empty()
                || apart.is_some()
                || !rendered.before.is_empty()
                || !rendered.after.is_empty()
            {
                // The client's instructions (kept apart), the template's messages before the
                // conversation and the example pairs go before the client's input, which
                // becomes a list if needed; the template's later messages go after it.
                let mut out = Vec::new();
                out.push(b'[');
                if let Some(raw) = apart {
                    out.extend_from_slice(br#"{"role":"developer","content":"#);
                    out.extend_from_slice(raw.get().as_bytes());
                    out.push(b'}');
                }
                for message in &rendered.before {
                    item_into(&mut out, message);
                }
                for message in &shots.messages {
                    item_sep(&mut out);
                    json_into(&mut out, message);
                }
                match body.get("input").map(RawValue::get) {
                    None => {}
                    Some(raw) if raw.starts_with('[') => {
                        if let Some(items) = array_items(raw) {
                            item_into(&mut out, items.as_bytes());
                        }
                    }
                    Some(raw) if raw.starts_with('"') => {
                        item_sep(&mut out);
                        out.extend_from_slice(br#"{"role":"user","content":"#);
                        out.extend_from_slice(raw.as_bytes());
                        out.push(b'}');
                    }
                    Some(raw) => item_into(&mut out, raw.as_bytes()),
                }
                for message in &rendered.after {
                    item_into(&mut out, message);
                }
                out.push(b']');
                set.put("input", out);
            }
        }
    }
    outputs_into(endpoint, body, version, &mut set);
    if let Some(model) = &version.model {
        set.put("model", json(model));
    }
    if let Some(t) = version.temperature {
        // As `Value::from(t)` writes it: a number, or `null` when not finite.
        let mut out = Vec::with_capacity(24);
        if t.is_finite() {
            let _ = CompactFormatter.write_f64(&mut out, t);
        } else {
            out.extend_from_slice(b"null");
        }
        set.put("temperature", out);
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
        None => body.get("model").and_then(|raw| match unescaped(raw) {
            Some(text) => Some(text.to_owned()),
            None => serde_json::from_str::<String>(raw.get()).ok(),
        }),
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

    /// Takes the client's field out of the body.
    fn remove(&mut self, key: &'k str) {
        self.put(key, Vec::new());
    }

    fn get(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// The version's `tools` and `response_format`, in the endpoint's shape, unless the client
/// sent its own: the client's win whole (SPEC §2).
fn outputs_into<'k>(
    endpoint: Endpoint,
    body: &Body<'_>,
    version: &Version,
    set: &mut Overrides<'k>,
) {
    if let Some(tools) = &version.tools
        && !body.contains("tools")
    {
        let bytes = match endpoint {
            Endpoint::ChatCompletions => &tools.chat,
            Endpoint::Responses => &tools.responses,
        };
        set.put("tools", bytes.to_vec());
    }
    let Some(format) = &version.response_format else {
        return;
    };
    match endpoint {
        Endpoint::ChatCompletions => {
            if !body.contains("response_format") {
                set.put("response_format", format.chat.to_vec());
            }
        }
        Endpoint::Responses => {
            let text = match body.get("text") {
                None => {
                    let mut out = Vec::with_capacity(format.text_format.len() + 12);
                    out.extend_from_slice(br#"{"format":"#);
                    out.extend_from_slice(&format.text_format);
                    out.push(b'}');
                    out
                }
                // The client's `text` without a `format` (a `verbosity`, say) gets the
                // version's; one with a `format` is the client's choice.
                Some(raw) => match Body::parse(raw.get().as_bytes()) {
                    Ok(own) if !own.contains("format") => {
                        let fields = [(Cow::Borrowed("format"), format.text_format.to_vec())];
                        write(&own, &fields)
                    }
                    _ => return,
                },
            };
            set.put("text", text);
        }
    }
}

/// Writes `body` without its `prompt` field, with `overrides` in place of (or after) the
/// client's fields (an empty override takes the client's field out). Every other value is
/// copied as the client wrote it.
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
    // Which overrides are written; on the stack for the usual few.
    let mut few = [false; 16];
    let mut many = Vec::new();
    let written = match few.get_mut(..overrides.len()) {
        Some(few) => few,
        None => {
            many.resize(overrides.len(), false);
            &mut many[..]
        }
    };
    out.push(b'{');
    let field = |out: &mut Vec<u8>, key: &str, value: &[u8]| {
        if out.len() > 1 {
            out.push(b',');
        }
        super::json::write_str(out, key);
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
                if !overrides[i].1.is_empty() {
                    field(&mut out, key, &overrides[i].1);
                }
            }
            None => field(&mut out, key, raw.get().as_bytes()),
        }
    }
    for ((key, value), done) in overrides.iter().zip(written.iter()) {
        if !done && !value.is_empty() {
            field(&mut out, key, value);
        }
    }
    out.push(b'}');
    out
}

/// A comma before an array item, unless it is the first.
fn item_sep(out: &mut Vec<u8>) {
    if out.last() != Some(&b'[') {
        out.push(b',');
    }
}

/// An array item written as it is, after a comma unless it is the first.
fn item_into(out: &mut Vec<u8>, item: &[u8]) {
    item_sep(out);
    out.extend_from_slice(item);
}

/// The items of a JSON array's text, without the brackets; `None` when it is empty.
fn array_items(raw: &str) -> Option<&str> {
    let inner = raw.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
    (!inner.is_empty()).then_some(inner)
}

fn json(value: &(impl serde::Serialize + ?Sized)) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    json_into(&mut out, value);
    out
}

fn json_into(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    // Serialising strings, numbers and JSON values into memory cannot fail.
    let _ = serde_json::to_writer(out, value);
}

/// The last user message's text ("" if none): a string content, or the text parts of an
/// array joined by newlines; borrowed from the body when it holds no escapes. Text that is not
/// valid Unicode (half an emoji) is read with U+FFFD in its place; the body itself is not
/// changed.
pub fn user_message<'b>(endpoint: Endpoint, body: &Body<'b>) -> Cow<'b, str> {
    user_message_in(endpoint, body, &Messages::of(endpoint, body))
}

fn user_message_in<'b>(
    endpoint: Endpoint,
    body: &Body<'b>,
    messages: &Messages<'b>,
) -> Cow<'b, str> {
    let input;
    let items = match endpoint {
        Endpoint::ChatCompletions => messages.items.as_deref(),
        Endpoint::Responses => match body.get("input") {
            Some(raw) if raw.get().starts_with('"') => return lossy(raw).unwrap_or_default(),
            other => {
                input = other.and_then(|raw| serde_json::from_str::<Vec<Item<'b>>>(raw.get()).ok());
                input.as_deref()
            }
        },
    };
    let Some(items) = items else {
        return Cow::Borrowed("");
    };
    items
        .iter()
        .rev()
        .filter_map(Item::fields)
        .find(|m| m.role.as_deref() == Some("user"))
        .and_then(|m| m.content)
        .map(content_text)
        .unwrap_or_default()
}

fn content_text(content: &RawValue) -> Cow<'_, str> {
    if content.get().starts_with('"') {
        return lossy(content).unwrap_or_default();
    }
    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(borrow)]
        text: Option<&'a RawValue>,
    }
    let Ok(parts) = serde_json::from_str::<Vec<Part<'_>>>(content.get()) else {
        return Cow::Borrowed("");
    };
    let mut texts = parts
        .iter()
        .filter_map(|p| p.text.filter(|t| t.get().starts_with('"')))
        .filter_map(lossy);
    let Some(first) = texts.next() else {
        return Cow::Borrowed("");
    };
    let Some(second) = texts.next() else {
        return first;
    };
    let mut joined = first.into_owned();
    for text in std::iter::once(second).chain(texts) {
        joined.push('\n');
        joined.push_str(&text);
    }
    Cow::Owned(joined)
}

/// A JSON string's text when it holds no escapes: the bytes between its quotes, as they are (a
/// JSON string holds no raw control characters, and a `RawValue` is well-formed JSON).
fn unescaped(raw: &RawValue) -> Option<&str> {
    let inner = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    memchr::memchr(b'\\', inner.as_bytes())
        .is_none()
        .then_some(inner)
}

/// A JSON string's text, lone surrogates replaced by U+FFFD; borrowed when it holds no escapes.
fn lossy(raw: &RawValue) -> Option<Cow<'_, str>> {
    if let Some(text) = unescaped(raw) {
        return Some(Cow::Borrowed(text));
    }
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
    // Valid text (nearly always) is read as it is; only text with a lone surrogate is read
    // again as bytes.
    if let Ok(Text(text)) = serde_json::from_str::<Text<'_>>(raw.get()) {
        return Some(text);
    }
    serde_json::from_str::<Lossy>(raw.get())
        .ok()
        .map(|l| Cow::Owned(l.0))
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
    fn each_message_is_read_once_and_its_role_as_the_system_plan_reads_it() {
        let b = body(
            r#"{"messages": [{"role": "system", "content": "a", "content": "b"}, {"role": "developer", "content": "c"}, {"role": "user", "content": "early"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "q"}]}"#,
        );
        let messages = Messages::of(Endpoint::ChatCompletions, &b);
        assert_eq!(
            user_message_in(Endpoint::ChatCompletions, &b, &messages),
            "q"
        );
        // The first one's `content` given twice: no typed read, yet a role.
        assert_eq!(messages.leading(), 2);
        let items = messages.items.as_deref().unwrap();
        assert!(items[0].read.get().unwrap().is_none());
        assert_eq!(items[2].fields().unwrap().role.as_deref(), Some("user"));
        assert!(items[3].read.get().is_none(), "read only as far as needed");
    }

    #[test]
    fn a_message_written_as_an_array_has_no_role() {
        // serde reads a two-field struct from a two-element array; the role's own read (the
        // system plan's) does not, and an array is no system message.
        let b = body(r#"{"messages": [["system", "x"], {"role": "user", "content": "q"}]}"#);
        let messages = Messages::of(Endpoint::ChatCompletions, &b);
        assert_eq!(messages.leading(), 0);
        let items = messages.items.as_deref().unwrap();
        assert_eq!(items[0].role(), None);
        assert_eq!(items[0].role(), super::super::system::role(items[0].raw));
        // The user message is read as before (a two-field struct, arrays included).
        assert_eq!(
            user_message_in(Endpoint::ChatCompletions, &b, &messages),
            "q"
        );
    }

    #[test]
    fn unescaped_text_is_borrowed_and_escaped_text_is_left_to_serde() {
        let raw = |json: &str| -> Box<RawValue> { serde_json::from_str(json).unwrap() };
        assert_eq!(unescaped(&raw(r#""gpt-4o""#)), Some("gpt-4o"));
        assert_eq!(unescaped(&raw(r#""""#)), Some(""));
        assert_eq!(unescaped(&raw(r#""a\nb""#)), None);
        assert_eq!(unescaped(&raw(r#""\"""#)), None);
        assert_eq!(unescaped(&raw("12")), None);
        assert_eq!(lossy(&raw(r#""a\u00e9""#)).as_deref(), Some("aé"));
    }

    #[test]
    fn array_items_are_found() {
        assert_eq!(array_items(" [ ] "), None);
        assert_eq!(array_items("[1, 2]"), Some("1, 2"));
    }
}
