//! Structured outputs and tools as front matter: `response_format` and `tools`, checked at
//! load and serialised once for each endpoint's shape (chat completions and the Responses API).

use serde_json::{Map, Value, json};

use super::schema;

/// A version's `response_format`, written once per endpoint shape.
#[derive(Debug, Clone)]
pub struct ResponseFormat {
    /// Chat completions' `response_format`, as a value (for the admin API).
    pub value: Value,
    /// Chat completions' `response_format`, serialised.
    pub chat: Box<[u8]>,
    /// The Responses API's `text.format`, serialised.
    pub text_format: Box<[u8]>,
}

/// A version's `tools`, written once per endpoint shape.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Chat completions' `tools`, as a value (for the admin API).
    pub value: Value,
    /// Chat completions' `tools` (`{type: function, function: {...}}`), serialised.
    pub chat: Box<[u8]>,
    /// The Responses API's `tools` (flat `{type: function, name, ...}`), serialised.
    pub responses: Box<[u8]>,
}

/// A name OpenAI accepts for a schema or a function: `[a-zA-Z0-9_-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Reads a file beside the version for a value given as a file name.
pub type Resolve<'a> = dyn FnMut(&str) -> Result<Value, String> + 'a;

/// Builds `response_format` from its front-matter value:
/// `json_object`, `{schema: MAPPING | FILE, name?, description?, strict?}`, or OpenAI's own
/// `{type: json_schema, json_schema: {...}}` / `{type: json_object}`.
pub fn response_format(
    value: &Value,
    default_name: &str,
    resolve: &mut Resolve<'_>,
) -> Result<ResponseFormat, String> {
    let json_object = || {
        let v = json!({"type": "json_object"});
        Ok(ResponseFormat {
            chat: bytes(&v),
            text_format: bytes(&v),
            value: v,
        })
    };
    let map = match value {
        Value::String(s) if s == "json_object" => return json_object(),
        Value::Object(map) => map,
        _ => {
            return Err(
                "`response_format` must be `json_object` or a mapping with a `schema`".to_owned(),
            );
        }
    };
    let spec = match map.get("type").and_then(Value::as_str) {
        Some("json_object") if map.len() == 1 => return json_object(),
        Some("json_schema") => match map.get("json_schema") {
            Some(Value::Object(inner)) if map.len() == 2 => inner,
            _ => {
                return Err(
                    "`response_format` of `type: json_schema` needs a `json_schema` mapping and nothing else".to_owned(),
                );
            }
        },
        Some(other) => {
            return Err(format!(
                "`response_format.type` must be `json_schema` or `json_object`, not `{other}`"
            ));
        }
        None => map,
    };
    for key in spec.keys() {
        if !["name", "description", "schema", "strict"].contains(&key.as_str()) {
            return Err(format!(
                "unknown key `{key}` in `response_format`; known keys: `name`, `schema`, `description`, `strict`"
            ));
        }
    }
    let name = match spec.get("name") {
        None => default_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect(),
        Some(Value::String(n)) if valid_name(n) => n.clone(),
        Some(other) => {
            return Err(format!(
                "`response_format.name` must be letters, digits, `_` or `-` (at most 64), not {other}"
            ));
        }
    };
    let schema = match spec.get("schema") {
        Some(Value::String(file)) => resolve(file)?,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(
                "`response_format.schema` must be a JSON Schema mapping or the name of a file beside the version".to_owned(),
            );
        }
        None => return Err("`response_format` needs a `schema`".to_owned()),
    };
    schema::compile(&schema).map_err(|e| format!("`response_format.schema` {e}"))?;
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err(
            "`response_format.schema` must describe an object (`type: object`), as OpenAI requires"
                .to_owned(),
        );
    }
    let strict = match spec.get("strict") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("`response_format.strict` must be true or false".to_owned()),
    };
    let mut inner = Map::new();
    inner.insert("name".to_owned(), Value::String(name));
    if let Some(d) = spec.get("description") {
        inner.insert("description".to_owned(), d.clone());
    }
    inner.insert("schema".to_owned(), schema);
    inner.insert("strict".to_owned(), Value::Bool(strict));
    let chat = json!({"type": "json_schema", "json_schema": inner});
    let mut flat = Map::new();
    flat.insert("type".to_owned(), json!("json_schema"));
    flat.extend(inner);
    Ok(ResponseFormat {
        chat: bytes(&chat),
        text_format: bytes(&Value::Object(flat)),
        value: chat,
    })
}

/// Builds `tools` from its front-matter value: a list (or the name of a file holding one)
/// of functions in chat completions' shape, the Responses API's flat shape, or just
/// `{name, description, parameters}`. Tools of other types go through as written.
pub fn tools(value: &Value, resolve: &mut Resolve<'_>) -> Result<Tools, String> {
    let list = match value {
        Value::String(file) => resolve(file)?,
        other => other.clone(),
    };
    let Value::Array(list) = list else {
        return Err(
            "`tools` must be a list of tools, or the name of a file holding one".to_owned(),
        );
    };
    let mut chat = Vec::new();
    let mut flat = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, tool) in list.iter().enumerate() {
        let at = format!("`tools[{i}]`");
        let Value::Object(map) = tool else {
            return Err(format!("{at} must be a mapping"));
        };
        let kind = map.get("type").and_then(Value::as_str);
        let function = match (kind, map.get("function")) {
            (Some("function") | None, Some(Value::Object(f))) => f,
            (Some("function") | None, None) => map,
            (Some(_), None) if kind != Some("function") => {
                // A built-in tool (`web_search`, …): the upstream knows it.
                chat.push(tool.clone());
                flat.push(tool.clone());
                continue;
            }
            _ => return Err(format!("{at}.function must be a mapping")),
        };
        for key in function.keys() {
            if ![
                "type",
                "name",
                "description",
                "parameters",
                "strict",
                "function",
            ]
            .contains(&key.as_str())
            {
                return Err(format!(
                    "unknown key `{key}` in {at}; known keys: `name`, `description`, `parameters`, `strict`"
                ));
            }
        }
        let name = match function.get("name") {
            Some(Value::String(n)) if valid_name(n) => n.clone(),
            Some(other) => {
                return Err(format!(
                    "{at}: the name must be letters, digits, `_` or `-` (at most 64), not {other}"
                ));
            }
            None => return Err(format!("{at} needs a `name`")),
        };
        if !names.insert(name.clone()) {
            return Err(format!("{at}: a second tool named `{name}`"));
        }
        let mut out = Map::new();
        out.insert("name".to_owned(), Value::String(name));
        if let Some(d) = function.get("description") {
            if !d.is_string() {
                return Err(format!("{at}.description must be text"));
            }
            out.insert("description".to_owned(), d.clone());
        }
        if let Some(p) = function.get("parameters") {
            schema::compile(p).map_err(|e| format!("{at}.parameters {e}"))?;
            if p.get("type").and_then(Value::as_str) != Some("object") {
                return Err(format!(
                    "{at}.parameters must describe an object (`type: object`)"
                ));
            }
            out.insert("parameters".to_owned(), p.clone());
        }
        let strict = match function.get("strict") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(format!("{at}.strict must be true or false")),
        };
        if let Some(s) = strict {
            out.insert("strict".to_owned(), Value::Bool(s));
        }
        chat.push(json!({"type": "function", "function": out.clone()}));
        // The Responses API reads `parameters` and `strict` as present (and strict by
        // default): write both, so a tool means the same on both endpoints.
        let mut f = Map::new();
        f.insert("type".to_owned(), json!("function"));
        f.insert("name".to_owned(), out["name"].clone());
        if let Some(d) = out.get("description") {
            f.insert("description".to_owned(), d.clone());
        }
        f.insert(
            "parameters".to_owned(),
            out.get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        );
        f.insert("strict".to_owned(), Value::Bool(strict.unwrap_or(false)));
        flat.push(Value::Object(f));
    }
    if chat.is_empty() {
        return Err("`tools` is empty: list at least one tool, or leave `tools` out".to_owned());
    }
    let chat = Value::Array(chat);
    Ok(Tools {
        chat: bytes(&chat),
        responses: bytes(&Value::Array(flat)),
        value: chat,
    })
}

fn bytes(value: &Value) -> Box<[u8]> {
    serde_json::to_vec(value)
        .expect("a JSON value serialises")
        .into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_files(name: &str) -> Result<Value, String> {
        Err(format!("no file `{name}`"))
    }

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn short_form_response_format_becomes_both_shapes() {
        let rf = response_format(
            &json!({"schema": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": false}}),
            "support.v2",
            &mut no_files,
        )
        .unwrap();
        assert_eq!(
            text(&rf.chat),
            r#"{"type":"json_schema","json_schema":{"name":"support_v2","schema":{"type":"object","properties":{"a":{"type":"string"}},"required":["a"],"additionalProperties":false},"strict":true}}"#
        );
        assert_eq!(
            text(&rf.text_format),
            r#"{"type":"json_schema","name":"support_v2","schema":{"type":"object","properties":{"a":{"type":"string"}},"required":["a"],"additionalProperties":false},"strict":true}"#
        );
    }

    #[test]
    fn openai_shape_and_json_object_and_files_are_read() {
        let rf = response_format(
            &json!({"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "object"}, "strict": false}}),
            "p",
            &mut no_files,
        )
        .unwrap();
        assert_eq!(rf.value["json_schema"]["strict"], false);
        let rf = response_format(&json!("json_object"), "p", &mut no_files).unwrap();
        assert_eq!(text(&rf.chat), r#"{"type":"json_object"}"#);
        let mut from_file = |name: &str| {
            assert_eq!(name, "ticket.json");
            Ok(json!({"type": "object"}))
        };
        let rf = response_format(
            &json!({"schema": "ticket.json", "name": "ticket"}),
            "p",
            &mut from_file,
        )
        .unwrap();
        assert_eq!(rf.value["json_schema"]["name"], "ticket");
    }

    #[test]
    fn bad_response_formats_are_refused() {
        for (value, needle) in [
            (
                json!({"schema": {"type": "strin"}}),
                "not a valid JSON Schema",
            ),
            (
                json!({"schema": {"type": "array"}}),
                "must describe an object",
            ),
            (
                json!({"schema": {"type": "object"}, "name": "a b"}),
                "`response_format.name` must be",
            ),
            (
                json!({"schema": {"type": "object"}, "nme": "x"}),
                "unknown key `nme`",
            ),
            (
                json!({"type": "xml"}),
                "must be `json_schema` or `json_object`",
            ),
            (json!({"schema": "missing.json"}), "no file `missing.json`"),
            (json!(3), "must be `json_object` or a mapping"),
        ] {
            let err = response_format(&value, "p", &mut no_files).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }

    #[test]
    fn tools_in_any_shape_become_both_shapes() {
        let t = tools(
            &json!([
                {"type": "function", "function": {"name": "lookup", "description": "Find", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}},
                {"type": "function", "name": "escalate", "strict": true, "parameters": {"type": "object", "properties": {}, "additionalProperties": false}},
                {"name": "ping"},
                {"type": "web_search"}
            ]),
            &mut no_files,
        )
        .unwrap();
        assert_eq!(
            text(&t.chat),
            r#"[{"type":"function","function":{"name":"lookup","description":"Find","parameters":{"type":"object","properties":{"id":{"type":"string"}}}}},{"type":"function","function":{"name":"escalate","parameters":{"type":"object","properties":{},"additionalProperties":false},"strict":true}},{"type":"function","function":{"name":"ping"}},{"type":"web_search"}]"#
        );
        assert_eq!(
            text(&t.responses),
            r#"[{"type":"function","name":"lookup","description":"Find","parameters":{"type":"object","properties":{"id":{"type":"string"}}},"strict":false},{"type":"function","name":"escalate","parameters":{"type":"object","properties":{},"additionalProperties":false},"strict":true},{"type":"function","name":"ping","parameters":{"type":"object","properties":{}},"strict":false},{"type":"web_search"}]"#
        );
    }

    #[test]
    fn bad_tools_are_refused_with_their_index() {
        for (value, needle) in [
            (
                json!([{"name": "a"}, {"name": "a"}]),
                "`tools[1]`: a second tool named `a`",
            ),
            (json!([{"name": "a b"}]), "`tools[0]`: the name must be"),
            (json!([{"description": "x"}]), "`tools[0]` needs a `name`"),
            (
                json!([{"name": "a", "parameters": {"type": 5}}]),
                "`tools[0]`.parameters is not a valid JSON Schema",
            ),
            (
                json!([{"name": "a", "paramters": {}}]),
                "unknown key `paramters`",
            ),
            (json!([]), "`tools` is empty"),
            (json!({"name": "a"}), "must be a list"),
        ] {
            let err = tools(&value, &mut no_files).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }
}
