//! Step 1 of the request path: read what promptgate needs from the request — the prompt
//! reference (the `prompt` body field and the `X-Prompt-*` headers) and the top-level fields
//! it may rewrite — and nothing else.
//!
//! The body is parsed at the top level only: every value stays the client's raw JSON text, so
//! what promptgate does not read (messages, tools, ...) goes upstream byte for byte, even text
//! that a full parse would refuse (a lone UTF-16 surrogate — half an emoji — or nesting deeper
//! than 128 levels). Only the `prompt` field is read whole; when it cannot be, the request is
//! refused with the position and the cause, never forwarded with the prompt unapplied.
//!
//! [`parse`] is the entry point for everything that reads outside input here (fuzzing too).

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use memchr::memmem::Finder;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::fewshot;
use crate::prompts::variables::{self, Text as Key, Variables};
use crate::select::VersionRef;

/// Why a request's prompt reference or body could not be read. Each names where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// The body may name a prompt but is not JSON.
    #[error("request body is not valid JSON: {cause} at line {line} column {column}")]
    Json {
        cause: String,
        line: usize,
        column: usize,
    },
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// The `prompt` field is there but is not valid JSON promptgate can read.
    #[error("`prompt` cannot be read: {cause} at line {line} column {column} of the body")]
    PromptJson {
        cause: String,
        line: usize,
        column: usize,
    },
    /// A field of `prompt` is wrong.
    #[error("{message}")]
    Field { message: String, param: String },
    /// An `X-Prompt-*` header is wrong.
    #[error("{message}")]
    Header {
        message: String,
        header: &'static str,
    },
}

impl ParseError {
    fn field(message: impl Into<String>, param: impl Into<String>) -> Self {
        ParseError::Field {
            message: message.into(),
            param: param.into(),
        }
    }
}

/// The top-level fields of a JSON object body, in order, values as the client wrote them.
#[derive(Debug, Default)]
pub struct Body<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Body<'a> {
    /// Parses the top level of `bytes`; values are only checked to be well-formed JSON.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|&b| b != b'{') {
            return Err(ParseError::NotAnObject);
        }
        serde_json::from_slice::<Body<'a>>(bytes).map_err(|e| {
            let (cause, line, column) = split_error(&e);
            ParseError::Json {
                cause,
                line,
                column,
            }
        })
    }

    /// Builds a body from fields (for `promptgate render` and the admin preview).
    pub fn from_fields(fields: Vec<(Cow<'a, str>, &'a RawValue)>) -> Self {
        Body { fields }
    }

    /// A field's raw value; the last one when a key repeats, as JSON parsers read it.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    /// A field read as `T`, `None` when absent or of another type.
    pub fn read<T: serde::Deserialize<'a>>(&self, key: &str) -> Option<T> {
        self.get(key)
            .and_then(|raw| serde_json::from_str::<T>(raw.get()).ok())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == key)
    }

    /// The fields, in the client's order.
    pub fn fields(&self) -> &[(Cow<'a, str>, &'a RawValue)] {
        &self.fields
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Body<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Fields<'a> {
            type Value = Body<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Body<'a>, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(key), value)) = map.next_entry::<Key<'a>, &'a RawValue>()? {
                    fields.push((key, value));
                }
                Ok(Body { fields })
            }
        }
        deserializer.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// serde_json's message without its " at line L column C" suffix, and the position.
fn split_error(e: &serde_json::Error) -> (String, usize, usize) {
    let text = e.to_string();
    let cause = match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    (cause, e.line(), e.column())
}

/// Line and column (1-based) of byte `offset` in `text`.
fn position(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = 1 + memchr::memchr_iter(b'\n', before).count();
    let column = 1 + before.len() - memchr::memrchr(b'\n', before).map_or(0, |i| i + 1);
    (line, column)
}

/// Byte offset in `text` of a 1-based line and column.
fn offset_of(text: &[u8], line: usize, column: usize) -> usize {
    let start = if line <= 1 {
        0
    } else {
        memchr::memchr_iter(b'\n', text)
            .nth(line - 2)
            .map_or(text.len(), |i| i + 1)
    };
    start + column.saturating_sub(1)
}

/// What a request asks of promptgate, merged from the `prompt` body field and the
/// `X-Prompt-*` headers (the body wins per field).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PromptRef {
    pub name: String,
    pub version: Option<VersionRef>,
    pub variables: Variables,
    /// `prompt.examples`: this request's few-shot count and strategy.
    pub examples: Option<fewshot::Override>,
}

/// The `X-Prompt-*` headers, for clients that cannot add body fields.
/// The text of a header value: UTF-8 when it is valid UTF-8 (what most clients send), else
/// ISO-8859-1, byte for character — what Node's `fetch` (and so the AI SDK) sends for
/// `é` and the rest of Latin-1. Characters beyond it need JSON escapes (`\u2615`) there.
pub fn header_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

#[derive(Debug, Default)]
pub struct HeaderPrompt {
    pub name: Option<String>,
    pub version: Option<String>,
    pub variables: Option<Variables>,
}

impl HeaderPrompt {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ParseError> {
        // One pass over the headers, each header's first value (what `HeaderMap::get` gives):
        // cheaper than three lookups, each of which hashes the name.
        let (mut name, mut version, mut variables) = (None, None, None);
        for (key, value) in headers {
            let slot = match key.as_str() {
                "x-prompt-name" => &mut name,
                "x-prompt-version" => &mut version,
                "x-prompt-variables" => &mut variables,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        let text = |value: Option<&HeaderValue>| {
            value.map(|v| header_text(v.as_bytes()).trim().to_owned())
        };
        let variables = match text(variables) {
            None => None,
            Some(raw) => match serde_json::from_str::<variables::Field>(&raw) {
                Ok(variables::Field::Object(variables)) => Some(variables),
                Ok(_) => {
                    return Err(ParseError::Header {
                        message: "header `X-Prompt-Variables` must be a JSON object".to_owned(),
                        header: "X-Prompt-Variables",
                    });
                }
                Err(e) => {
                    return Err(ParseError::Header {
                        message: format!("header `X-Prompt-Variables` is not valid JSON: {e}"),
                        header: "X-Prompt-Variables",
                    });
                }
            },
        };
        Ok(HeaderPrompt {
            name: text(name).filter(|s| !s.is_empty()),
            version: text(version).filter(|s| !s.is_empty()),
            variables,
        })
    }

    pub fn names_prompt(&self) -> bool {
        self.name.is_some()
    }
}

/// A parsed request.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// The request names no prompt and its body has no `prompt` field: it goes upstream as
    /// the client sent it, byte for byte (the body may not even be JSON).
    Untouched,
    /// The body has a `prompt` field that names nothing (`null` or `{}`) and no header names
    /// a prompt: it goes upstream without that field, the rest as the client wrote it.
    WithoutPrompt(Body<'a>),
    /// The request names a prompt.
    Prompt(Body<'a>, PromptRef),
}

/// Parses a request to an injecting endpoint: body bytes and headers. Reads the body only
/// when it may name a prompt, and then only its top level and its `prompt` field.
pub fn parse<'a>(bytes: &'a [u8], headers: &HeaderMap) -> Result<Parsed<'a>, ParseError> {
    let header = HeaderPrompt::from_headers(headers)?;
    // A body that cannot hold a `prompt` key — not even written with escapes — and no header
    // naming a prompt: not ours to read.
    // (Searchers built once: building one costs more than searching a small body.)
    static PROMPT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"prompt"));
    static ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u"));
    if !header.names_prompt() && PROMPT.find(bytes).is_none() && ESCAPE.find(bytes).is_none() {
        return Ok(Parsed::Untouched);
    }
    // One pass over a well-formed body (nearly every body): the top level kept raw, the
    // `prompt` field read whole on the way. Anything it cannot read is read again the long way,
    // which tells what is wrong and where.
    // (Text checked as UTF-8 once: then no string in it is checked again.)
    let once = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| serde_json::from_str::<Request<'a>>(text).ok()),
        _ => None,
    };
    let (body, field) = match once {
        Some(Request { body, prompt }) => (body, prompt),
        None => {
            let body = match Body::parse(bytes) {
                Ok(body) => body,
                // Neither the bytes nor a header name a prompt: whatever this is, it is
                // upstream's to judge.
                Err(_) if !header.names_prompt() && !has_prompt_key(bytes) => {
                    return Ok(Parsed::Untouched);
                }
                Err(e) => return Err(e),
            };
            let field = match body.get("prompt") {
                None => None,
                Some(raw) => Some(read_prompt_field(bytes, raw)?),
            };
            (body, field)
        }
    };
    let named = field.is_some();
    match prompt_ref(field.unwrap_or_default(), header)? {
        Some(reference) => Ok(Parsed::Prompt(body, reference)),
        None if named => Ok(Parsed::WithoutPrompt(body)),
        None => Ok(Parsed::Untouched),
    }
}

/// A request body read in one pass: [`Body`] with its `prompt` field read whole (and kept
/// there as `null`: it never goes upstream).
struct Request<'a> {
    body: Body<'a>,
    /// The last `prompt` field, as JSON parsers read a repeated key.
    prompt: Option<PromptField<'a>>,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Request<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Fields<'a> {
            type Value = Request<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Request<'a>, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                let mut prompt = None;
                while let Some(Key(key)) = map.next_key::<Key<'a>>()? {
                    if key == "prompt" {
                        prompt = Some(map.next_value::<PromptField<'a>>()?);
                        fields.push((key, RawValue::NULL));
                    } else {
                        fields.push((key, map.next_value::<&'a RawValue>()?));
                    }
                }
                Ok(Request {
                    body: Body { fields },
                    prompt,
                })
            }
        }
        deserializer.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// Does the text hold `"prompt"` followed by a colon, as a key — in a body that is not JSON,
/// the sign that it meant to name a prompt.
fn has_prompt_key(bytes: &[u8]) -> bool {
    memchr::memmem::find_iter(bytes, b"\"prompt\"").any(|at| {
        bytes[at + 8..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b':')
    })
}

/// The `prompt` field, read whole; errors give the position in the whole body.
fn read_prompt_field<'a>(body: &[u8], raw: &'a RawValue) -> Result<PromptField<'a>, ParseError> {
    serde_json::from_str::<PromptField<'a>>(raw.get()).map_err(|e| {
        let (cause, line, column) = split_error(&e);
        let text = raw.get().as_bytes();
        // The raw value is a slice of the body: its start is the field's offset.
        let start = (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
        let start = if start <= body.len() { start } else { 0 };
        let (line, column) = position(body, start + offset_of(text, line, column));
        ParseError::PromptJson {
            cause,
            line,
            column,
        }
    })
}

/// The `prompt` body field, read whole (so that bad JSON anywhere in it is refused as a full
/// read refuses it) into what [`prompt_ref`] checks: its members in the order first given,
/// a repeated member taking its last value, `variables` read straight into [`Variables`].
#[derive(Debug, Default)]
pub enum PromptField<'a> {
    /// No field, or `null`.
    #[default]
    Absent,
    Object(Vec<(Cow<'a, str>, Member)>),
    /// Anything else.
    Other,
}

/// A member of the `prompt` object.
#[derive(Debug)]
pub enum Member {
    Json(Value),
    Variables(variables::Field),
}

/// The members [`prompt_ref`] knows; after the first unknown one (which is refused) nothing is
/// kept, so a long list of them costs no more than reading it.
const PROMPT_MEMBERS: [&str; 5] = ["id", "name", "version", "variables", "examples"];

impl<'de: 'a, 'a> serde::Deserialize<'de> for PromptField<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldVisitor<'a> {
            type Value = PromptField<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<PromptField<'a>, E> {
                Ok(PromptField::Absent)
            }
            fn visit_bool<E>(self, _: bool) -> Result<PromptField<'a>, E> {
                Ok(PromptField::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<PromptField<'a>, E> {
                Ok(PromptField::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<PromptField<'a>, E> {
                Ok(PromptField::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<PromptField<'a>, E> {
                Ok(PromptField::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<PromptField<'a>, E> {
                Ok(PromptField::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PromptField<'a>, A::Error> {
                while seq.next_element::<Value>()?.is_some() {}
                Ok(PromptField::Other)
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<PromptField<'a>, M::Error> {
                let mut members: Vec<(Cow<'a, str>, Member)> = Vec::with_capacity(4);
                let mut unknown = false;
                while let Some(Key(key)) = map.next_key::<Key<'a>>()? {
                    let member = if key == "variables" {
                        Member::Variables(map.next_value()?)
                    } else {
                        Member::Json(map.next_value()?)
                    };
                    match members.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = member,
                        None if unknown && !PROMPT_MEMBERS.contains(&&*key) => {}
                        None => {
                            unknown |= !PROMPT_MEMBERS.contains(&&*key);
                            members.push((key, member));
                        }
                    }
                }
                Ok(PromptField::Object(members))
            }
        }
        deserializer.deserialize_any(FieldVisitor(std::marker::PhantomData))
    }
}

/// Reads the `prompt` body field and merges the headers. `Ok(None)`: the request names no
/// prompt (no field, `null`, or `{}`, and no header).
pub fn prompt_ref(
    field: PromptField<'_>,
    header: HeaderPrompt,
) -> Result<Option<PromptRef>, ParseError> {
    let mut body_name = None;
    let mut body_version = None;
    let mut body_variables = None;
    let mut examples = None;
    match field {
        PromptField::Absent => {}
        PromptField::Object(members) => {
            for (key, member) in members {
                let value = match member {
                    Member::Variables(variables) => {
                        match variables {
                            variables::Field::Null => {}
                            variables::Field::Object(vars) => body_variables = Some(vars),
                            variables::Field::Other => {
                                return Err(ParseError::field(
                                    "`prompt.variables` must be an object of name → value",
                                    "prompt.variables",
                                ));
                            }
                        }
                        continue;
                    }
                    Member::Json(value) => value,
                };
                match &*key {
                    "id" | "name" => match value {
                        Value::String(s) if !s.is_empty() => body_name = Some(s),
                        _ => {
                            return Err(ParseError::field(
                                format!("`prompt.{key}` must be a non-empty string"),
                                "prompt.id",
                            ));
                        }
                    },
                    "version" => body_version = version_ref(&value)?,
                    "examples" => {
                        if !value.is_null() {
                            examples =
                                Some(fewshot::Override::parse(&value).map_err(
                                    |(message, param)| ParseError::field(message, param),
                                )?);
                        }
                    }
                    other => {
                        return Err(ParseError::field(
                            format!(
                                "unknown field `prompt.{other}`; known fields: `id`, `version`, `variables`, `examples`"
                            ),
                            format!("prompt.{other}"),
                        ));
                    }
                }
            }
        }
        PromptField::Other => {
            return Err(ParseError::field(
                "`prompt` must be an object like {\"id\": \"name\", \"variables\": {...}}",
                "prompt",
            ));
        }
    }
    let header_names = header.names_prompt();
    let Some(name) = body_name.or(header.name) else {
        if body_version.is_some() || body_variables.is_some() || header_names {
            return Err(ParseError::field("`prompt.id` is required", "prompt.id"));
        }
        return Ok(None);
    };
    let version = match body_version {
        Some(v) => Some(v),
        None => header.version.as_deref().map(VersionRef::parse),
    };
    if let Some(VersionRef::Number(0)) = version {
        return Err(ParseError::field(
            "`prompt.version` must be a positive integer or a label",
            "prompt.version",
        ));
    }
    let variables = match (header.variables, body_variables) {
        (Some(header), Some(body)) => header.merge(body),
        (header, body) => body.or(header).unwrap_or_default(),
    };
    Ok(Some(PromptRef {
        name,
        version,
        variables,
        examples,
    }))
}

/// A version given as JSON: a positive integer, a label, or a numeric string (`null`: none).
pub fn version_ref(value: &Value) -> Result<Option<VersionRef>, ParseError> {
    let bad = |message: String| ParseError::field(message, "prompt.version");
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n > 0 => Ok(Some(VersionRef::Number(n))),
            _ => Err(bad(format!(
                "`prompt.version` must be a positive integer or a label, not {n}"
            ))),
        },
        Value::String(s) if !s.trim().is_empty() => Ok(Some(VersionRef::parse(s.trim()))),
        _ => Err(bad(
            "`prompt.version` must be a positive integer or a label".to_owned(),
        )),
    }
}

/// The assignment key: header `X-User-Id`, then body `user`, then body `safety_identifier`.
pub fn assignment_key<'b>(headers: Option<&'b HeaderMap>, body: &Body<'b>) -> Option<Cow<'b, str>> {
    static USER_ID: HeaderName = HeaderName::from_static("x-user-id");
    headers
        .and_then(|h| h.get(&USER_ID))
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(Cow::Borrowed)
        .or_else(|| body.read::<Cow<'b, str>>("user").filter(|s| !s.is_empty()))
        .or_else(|| {
            body.read::<Cow<'b, str>>("safety_identifier")
                .filter(|s| !s.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(body: &str) -> Result<Parsed<'_>, ParseError> {
        parse(body.as_bytes(), &HeaderMap::new())
    }

    #[test]
    fn top_level_values_stay_raw() {
        let text = r#"{"model": "m", "messages": [{"role":"user","content":"a\ud800b"}], "n": [[[1e400]]]}"#;
        let body = Body::parse(text.as_bytes()).unwrap();
        assert_eq!(
            body.get("messages").unwrap().get(),
            r#"[{"role":"user","content":"a\ud800b"}]"#
        );
        assert_eq!(body.get("n").unwrap().get(), "[[[1e400]]]");
        assert_eq!(body.read::<String>("model").as_deref(), Some("m"));
    }

    #[test]
    fn a_body_naming_no_prompt_is_untouched_even_if_broken() {
        assert!(matches!(
            parse_str(r#"{"messages": [{"content": "a\ud800b"}]}"#),
            Ok(Parsed::Untouched)
        ));
        assert!(matches!(parse_str("not json"), Ok(Parsed::Untouched)));
        let deep = format!(r#"{{"messages": {}1{}}}"#, "[".repeat(300), "]".repeat(300));
        assert!(matches!(parse_str(&deep), Ok(Parsed::Untouched)));
    }

    #[test]
    fn an_unreadable_prompt_is_refused_with_its_position() {
        let err = parse_str(r#"{"prompt":{"id":"greeter","variables":{"name":"a\ud800b"}}}"#)
            .unwrap_err();
        let ParseError::PromptJson { line, column, .. } = &err else {
            panic!("{err:?}")
        };
        // Just after `\ud800`, where its other half should be.
        assert_eq!((*line, *column), (1, 55), "{err}");
        assert!(err.to_string().contains("hex escape"), "{err}");
        let err = parse_str(r#"{"prompt": {"id": "g", "version": 1e400}}"#).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = parse_str("{\"prompt\": {\"id\": \"g\"},}").unwrap_err();
        assert!(matches!(err, ParseError::Json { line: 1, .. }), "{err:?}");
        assert!(err.to_string().contains("trailing comma"), "{err}");
        let deep = format!(
            r#"{{"prompt": {{"id": "g", "variables": {{"v": {}1{}}}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(matches!(
            parse_str(&deep),
            Err(ParseError::PromptJson { .. })
        ));
        let err = parse_str(r#"[{"prompt": {"id": "g"}}]"#).unwrap_err();
        assert_eq!(err, ParseError::NotAnObject);
        assert!(matches!(parse_str(r#"["prompt"]"#), Ok(Parsed::Untouched)));
        let err = parse_str("{\"messages\": [],\n \"prompt\" : {\"id\": \"g\"}").unwrap_err();
        assert!(matches!(err, ParseError::Json { line: 2, .. }), "{err:?}");
    }

    #[test]
    fn an_escaped_prompt_key_is_still_read() {
        let Ok(Parsed::Prompt(_, reference)) = parse_str(r#"{"\u0070rompt": {"id": "g"}}"#) else {
            panic!()
        };
        assert_eq!(reference.name, "g");
    }

    #[test]
    fn null_and_empty_prompt_name_nothing() {
        for body in [r#"{"prompt": null}"#, r#"{"prompt": {}}"#] {
            assert!(
                matches!(parse_str(body), Ok(Parsed::WithoutPrompt(_))),
                "{body}"
            );
        }
    }

    /// The long way: the top level kept raw, then the `prompt` field read on its own.
    fn parse_long(text: &str) -> Result<Option<PromptRef>, ParseError> {
        let body = Body::parse(text.as_bytes())?;
        let field = match body.get("prompt") {
            None => PromptField::Absent,
            Some(raw) => read_prompt_field(text.as_bytes(), raw)?,
        };
        prompt_ref(field, HeaderPrompt::default())
    }

    #[test]
    fn one_pass_reads_what_the_long_way_reads() {
        let deep = |n: usize| {
            format!(
                r#"{{"prompt": {{"id": "g", "variables": {{"v": {}1{}}}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let bodies = [
            r#"{"model": "m", "prompt": {"id": "g", "version": 2, "variables": {"a": "x", "b": [1, {"k": null}], "a": 3}}, "n": 1}"#.to_owned(),
            r#"{"prompt": {"id": "g", "variables": {"x": "\ud800"}}, "prompt": {"name": "h"}}"#.to_owned(),
            r#"{"\u0070rompt": {"id": "g", "variables": null, "examples": null}}"#.to_owned(),
            r#"{"prompt": {"id": "g", "zz": 1, "id": 5, "variables": []}}"#.to_owned(),
            r#"{"prompt": {"id": 5, "zz": 1}}"#.to_owned(),
            r#"{"prompt": {"variables": {}}}"#.to_owned(),
            r#"{"prompt": [1, "x"]}"#.to_owned(),
            // Deep enough that only a read of the field on its own takes it.
            deep(124),
            deep(125),
            deep(126),
        ];
        for text in &bodies {
            let long = parse_long(text);
            match parse_str(text) {
                Ok(Parsed::Prompt(body, reference)) => {
                    assert_eq!(Ok(Some(reference)), long, "{text}");
                    let long_body = Body::parse(text.as_bytes()).unwrap();
                    let keys = |b: &Body<'_>| {
                        b.fields()
                            .iter()
                            .filter(|(k, _)| k != "prompt")
                            .map(|(k, v)| (k.to_string(), v.get().to_owned()))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(keys(&body), keys(&long_body), "{text}");
                }
                Ok(other) => panic!("{text}: {other:?}"),
                Err(e) => assert_eq!(Err(e), long, "{text}"),
            }
        }
        // 125 levels: one more than the one pass takes, the most a read of the field takes.
        assert!(serde_json::from_slice::<Request<'_>>(deep(125).as_bytes()).is_err());
        assert!(matches!(parse_str(&deep(125)), Ok(Parsed::Prompt(..))));
        // Past the depth a full read allows, refused either way.
        assert!(matches!(
            parse_str(&deep(126)),
            Err(ParseError::PromptJson { .. })
        ));
    }

    #[test]
    fn headers_are_read_as_their_first_values() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.append("x-prompt-name", " greeter ".parse().unwrap());
        headers.append("x-prompt-version", "".parse().unwrap());
        headers.append("x-prompt-name", "other".parse().unwrap());
        headers.append("x-prompt-version", "2".parse().unwrap());
        headers.insert("x-prompt-variables", r#"{"a": 1}"#.parse().unwrap());
        headers.append("x-prompt-variables", "not json".parse().unwrap());
        headers.insert("x-prompt-other", "x".parse().unwrap());
        let header = HeaderPrompt::from_headers(&headers).unwrap();
        // What a lookup of each name gives: its first value.
        assert_eq!(header.name.as_deref(), Some("greeter"));
        assert_eq!(header.version, None);
        let variables = header.variables.unwrap();
        assert_eq!(variables.names().collect::<Vec<_>>(), ["a"]);
        let none = HeaderPrompt::from_headers(&HeaderMap::new()).unwrap();
        assert!(none.name.is_none() && none.version.is_none() && none.variables.is_none());
        headers.remove("x-prompt-variables");
        headers.insert("x-prompt-variables", "[1]".parse().unwrap());
        let err = HeaderPrompt::from_headers(&headers).unwrap_err();
        assert!(matches!(
            err,
            ParseError::Header {
                header: "X-Prompt-Variables",
                ..
            }
        ));
    }

    #[test]
    fn positions_are_line_and_column() {
        assert_eq!(position(b"ab\ncd", 4), (2, 2));
        assert_eq!(offset_of(b"ab\ncd", 2, 2), 4);
        assert_eq!(offset_of(b"abc", 1, 3), 2);
    }
}
