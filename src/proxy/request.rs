//! Steps 1–4 of the request path: parse the prompt reference, choose the version, render it
//! and inject it into the request body that goes upstream.
//!
//! Pure: no I/O, no HTTP plumbing. The proxy handlers, `promptgate render` and the admin
//! render preview all build the upstream request through [`prepare`].

use axum::http::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::fewshot::{self, ModelSlot};
use crate::prompts::{Builtins, ExamplesFormat, PromptSet};
use crate::select::{self, Selection, VersionRef};

/// The endpoints that inject a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`: the prompt becomes the first (system) message.
    ChatCompletions,
    /// `POST /v1/responses`: the prompt becomes `instructions`.
    Responses,
}

/// How OpenAI's own prompt ids begin (`pmpt_68b0…`).
pub const OPENAI_PROMPT_PREFIX: &str = "pmpt_";

/// Which prompt version served a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub name: String,
    pub version: u32,
    pub hash: String,
    pub selection: Selection,
    /// The id of the experiment that assigned the version, when one did.
    pub experiment: Option<String>,
}

/// The body to send upstream, and the prompt that shaped it (none: forwarded unchanged).
#[derive(Debug)]
pub struct Prepared {
    pub body: Bytes,
    pub served: Option<Served>,
    /// The model the request names, after the version's override.
    pub model: Option<String>,
    /// promptgate asked for `stream_options.include_usage` on behalf of a client that did
    /// not, so the usage-only chunk must not reach the client.
    pub strip_usage_chunk: bool,
}

impl Prepared {
    fn unchanged(body: Bytes) -> Self {
        Prepared {
            body,
            served: None,
            model: None,
            strip_usage_chunk: false,
        }
    }
}

/// What a request asks of promptgate, merged from the `prompt` body field and the
/// `X-Prompt-*` headers (the body wins per field).
#[derive(Debug, Default, PartialEq)]
pub struct PromptRef {
    pub name: String,
    pub version: Option<VersionRef>,
    pub variables: Map<String, Value>,
    /// `prompt.examples`: this request's few-shot count and strategy.
    pub examples: Option<fewshot::Override>,
}

/// The `X-Prompt-*` headers, for clients that cannot add body fields.
#[derive(Debug, Default)]
pub struct HeaderPrompt {
    pub name: Option<String>,
    pub version: Option<String>,
    pub variables: Option<Map<String, Value>>,
}

impl HeaderPrompt {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &str| {
            headers
                .get(name)
                .map(|v| header_text(v.as_bytes()).trim().to_owned())
        };
        let variables = match text("x-prompt-variables") {
            None => None,
            Some(raw) => match serde_json::from_str::<Value>(&raw) {
                Ok(Value::Object(map)) => Some(map),
                Ok(_) => {
                    return Err(ApiError::bad_request(
                        "header `X-Prompt-Variables` must be a JSON object",
                        Some("X-Prompt-Variables".to_owned()),
                    ));
                }
                Err(e) => {
                    return Err(ApiError::bad_request(
                        format!("header `X-Prompt-Variables` is not valid JSON: {e}"),
                        Some("X-Prompt-Variables".to_owned()),
                    ));
                }
            },
        };
        Ok(HeaderPrompt {
            name: text("x-prompt-name").filter(|s| !s.is_empty()),
            version: text("x-prompt-version").filter(|s| !s.is_empty()),
            variables,
        })
    }

    fn names_prompt(&self) -> bool {
        self.name.is_some()
    }
}

/// The text of a header value: UTF-8 when it is valid UTF-8 (what most clients send), else
/// ISO-8859-1, byte for character — what Node's `fetch` (and so the AI SDK) sends for
/// `é` and the rest of Latin-1. Characters beyond it need JSON escapes (`\u2615`) there.
pub fn header_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => std::borrow::Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

/// Reads the `prompt` body field (already removed from the body) and merges the headers.
/// `Ok(None)`: the request names no prompt.
pub fn prompt_ref(
    field: Option<Value>,
    header: HeaderPrompt,
) -> Result<Option<PromptRef>, ApiError> {
    let bad = |message: String, param: &str| ApiError::bad_request(message, Some(param.to_owned()));
    let mut body_name = None;
    let mut body_version = None;
    let mut body_variables = None;
    let mut examples = None;
    match field {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, value) in map {
                match key.as_str() {
                    "id" | "name" => match value {
                        Value::String(s) if !s.is_empty() => body_name = Some(s),
                        _ => {
                            return Err(bad(
                                format!("`prompt.{key}` must be a non-empty string"),
                                "prompt.id",
                            ));
                        }
                    },
                    "version" => match value {
                        Value::Null => {}
                        Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                            Some(n) if n > 0 => body_version = Some(VersionRef::Number(n)),
                            _ => {
                                return Err(bad(
                                    format!(
                                        "`prompt.version` must be a positive integer or a label, not {n}"
                                    ),
                                    "prompt.version",
                                ));
                            }
                        },
                        Value::String(s) if !s.trim().is_empty() => {
                            body_version = Some(VersionRef::parse(s.trim()))
                        }
                        _ => {
                            return Err(bad(
                                "`prompt.version` must be a positive integer or a label".to_owned(),
                                "prompt.version",
                            ));
                        }
                    },
                    "variables" => match value {
                        Value::Null => {}
                        Value::Object(vars) => body_variables = Some(vars),
                        _ => {
                            return Err(bad(
                                "`prompt.variables` must be an object of name → value".to_owned(),
                                "prompt.variables",
                            ));
                        }
                    },
                    "examples" => {
                        if !value.is_null() {
                            examples = Some(
                                fewshot::Override::parse(&value)
                                    .map_err(|(message, param)| bad(message, param))?,
                            );
                        }
                    }
                    other => {
                        return Err(bad(
                            format!(
                                "unknown field `prompt.{other}`; known fields: `id`, `version`, `variables`, `examples`"
                            ),
                            &format!("prompt.{other}"),
                        ));
                    }
                }
            }
        }
        Some(_) => {
            return Err(bad(
                "`prompt` must be an object like {\"id\": \"name\", \"variables\": {...}}"
                    .to_owned(),
                "prompt",
            ));
        }
    }
    let header_names = header.names_prompt();
    let Some(name) = body_name.or(header.name) else {
        if body_version.is_some() || body_variables.is_some() || header_names {
            return Err(bad("`prompt.id` is required".to_owned(), "prompt.id"));
        }
        return Ok(None);
    };
    let version = match body_version {
        Some(v) => Some(v),
        None => header.version.as_deref().map(VersionRef::parse),
    };
    if let Some(VersionRef::Number(0)) = version {
        return Err(bad(
            "`prompt.version` must be a positive integer or a label".to_owned(),
            "prompt.version",
        ));
    }
    let mut variables = header.variables.unwrap_or_default();
    variables.extend(body_variables.unwrap_or_default());
    Ok(Some(PromptRef {
        name,
        version,
        variables,
        examples,
    }))
}

/// The assignment key: header `X-User-Id`, then body `user`, then body `safety_identifier`.
fn assignment_key<'a>(headers: &'a HeaderMap, body: &'a Map<String, Value>) -> Option<&'a str> {
    headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .or_else(|| body.get("user").and_then(Value::as_str))
        .or_else(|| body.get("safety_identifier").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

/// Text of a message `content`: a string, or the text parts of an array joined by newlines.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The last user message's text ("" if none).
pub fn user_message(endpoint: Endpoint, body: &Map<String, Value>) -> String {
    let items = match endpoint {
        Endpoint::ChatCompletions => body.get("messages"),
        Endpoint::Responses => match body.get("input") {
            Some(Value::String(s)) => return s.clone(),
            other => other,
        },
    };
    items
        .and_then(Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .map(content_text)
        .unwrap_or_default()
}

/// Builds the upstream body for a request. A body that names no prompt is returned unchanged,
/// byte for byte.
pub async fn prepare(
    set: &PromptSet,
    model: &ModelSlot,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Bytes,
    now: DateTime<Utc>,
) -> Result<Prepared, ApiError> {
    let header = HeaderPrompt::from_headers(headers)?;
    // Fast path: a body that cannot hold a `prompt` field, and no header naming one, is not
    // ours to touch, so it is not even parsed.
    if !header.names_prompt() && memchr::memmem::find(&body, b"prompt").is_none() {
        return Ok(Prepared::unchanged(body));
    }
    let mut map = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) if !header.names_prompt() => return Ok(Prepared::unchanged(body)),
        Err(_) if !header.names_prompt() => return Ok(Prepared::unchanged(body)),
        Ok(_) => {
            return Err(ApiError::bad_request(
                "request body must be a JSON object",
                None,
            ));
        }
        Err(e) => {
            return Err(ApiError::bad_request(
                format!("request body is not valid JSON: {e}"),
                None,
            ));
        }
    };
    let field = map.remove("prompt");
    let Some(reference) = prompt_ref(field, header)? else {
        return Ok(Prepared::unchanged(body));
    };

    // OpenAI's own reusable prompts (`prompt: {id: "pmpt_…"}` on the Responses API) are not
    // ours: unless a local prompt has that name, the request goes upstream as it came.
    if endpoint == Endpoint::Responses
        && reference.name.starts_with(OPENAI_PROMPT_PREFIX)
        && set.get(&reference.name).is_none()
    {
        return Ok(Prepared::unchanged(body));
    }
    let prompt = select::find(set, &reference.name)?;
    let key = assignment_key(headers, &map);
    let (version, selection) = select::choose(prompt, reference.version.as_ref(), key)?;

    let user_message = user_message(endpoint, &map);
    let plan = fewshot::plan(prompt, reference.examples.as_ref());
    let picked = match &plan {
        Some(plan) => fewshot::pick(prompt, plan, &user_message, model).await?,
        None => Vec::new(),
    };
    let format = plan.map_or(ExamplesFormat::System, |p| p.format);
    let block = match format {
        ExamplesFormat::System => fewshot::block(prompt, &picked),
        ExamplesFormat::Messages => String::new(),
    };
    let today = now.format("%Y-%m-%d").to_string();
    let now_text = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut system = set.render(
        prompt,
        version,
        &reference.variables,
        Builtins {
            today: &today,
            now: &now_text,
            user_message: &user_message,
            examples: &block,
        },
    )?;
    // The seed appends the block after the prompt, unless the template places it itself.
    if !block.is_empty() && !version.places_examples() {
        system.push_str("\n\n");
        system.push_str(&block);
    }
    let example_messages = match format {
        ExamplesFormat::Messages => fewshot::messages(prompt, &picked),
        ExamplesFormat::System => Vec::new(),
    };

    match endpoint {
        Endpoint::ChatCompletions => {
            let messages = match map.get_mut("messages") {
                Some(Value::Array(messages)) => messages,
                None => {
                    map.insert("messages".to_owned(), Value::Array(Vec::new()));
                    let Some(Value::Array(messages)) = map.get_mut("messages") else {
                        unreachable!("just inserted an array")
                    };
                    messages
                }
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "`messages` must be an array of messages",
                        Some("messages".to_owned()),
                    ));
                }
            };
            super::system::into_messages(messages, system, example_messages, version.client_system);
        }
        Endpoint::Responses => {
            let (instructions, own_item) = super::system::into_instructions(
                system,
                map.get("instructions"),
                version.client_system,
            );
            map.insert("instructions".to_owned(), Value::String(instructions));
            if !example_messages.is_empty() || own_item.is_some() {
                // The client's own instructions (kept apart) and the example pairs go before
                // the client's input, which becomes a list if needed.
                let input = match map.remove("input") {
                    Some(Value::Array(items)) => items,
                    Some(Value::String(text)) => {
                        vec![serde_json::json!({"role": "user", "content": text})]
                    }
                    Some(other) => vec![other],
                    None => Vec::new(),
                };
                let mut all: Vec<Value> = own_item.into_iter().collect();
                all.extend(example_messages);
                all.extend(input);
                map.insert("input".to_owned(), Value::Array(all));
            }
        }
    }

    if let Some(model) = &version.model {
        map.insert("model".to_owned(), Value::String(model.clone()));
    }
    if let Some(t) = version.temperature {
        map.insert("temperature".to_owned(), Value::from(t));
    }
    if let Some(max) = version.max_tokens {
        let field = match endpoint {
            Endpoint::Responses => "max_output_tokens",
            // Newer models only take `max_completion_tokens`; respect the client's choice.
            Endpoint::ChatCompletions if map.contains_key("max_completion_tokens") => {
                "max_completion_tokens"
            }
            Endpoint::ChatCompletions => "max_tokens",
        };
        map.insert(field.to_owned(), Value::from(max));
    }
    for (key, value) in &version.params {
        map.insert(key.clone(), value.clone());
    }

    // Token usage of a stream comes only when asked for; ask on the client's behalf and
    // remember to take the extra chunk out again.
    let mut strip_usage_chunk = false;
    if endpoint == Endpoint::ChatCompletions && map.get("stream") == Some(&Value::Bool(true)) {
        let options = map
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(options) = options
            && options.get("include_usage") != Some(&Value::Bool(true))
        {
            options.insert("include_usage".to_owned(), Value::Bool(true));
            strip_usage_chunk = true;
        }
    }
    let model = map.get("model").and_then(Value::as_str).map(str::to_owned);
    let experiment = match selection {
        Selection::Experiment => prompt.experiment.as_ref().map(crate::record::experiment_id),
        _ => None,
    };

    let body = serde_json::to_vec(&map).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Prepared {
        body: Bytes::from(body),
        served: Some(Served {
            name: prompt.name.clone(),
            version: version.version,
            hash: version.hash.clone(),
            selection,
            experiment,
        }),
        model,
        strip_usage_chunk,
    })
}

#[cfg(test)]
mod tests;
