//! Typed variables: a version's `input_schema` (a JSON Schema for `prompt.variables`), compiled
//! once at load; every request's variables get the schema's defaults and are checked against it.

use serde_json::{Map, Value};

/// At most this many failing paths are listed in one answer.
pub const MAX_LISTED: usize = 10;

/// A compiled JSON Schema for a version's variables.
pub struct InputSchema {
    /// The schema as written, for the admin API.
    pub schema: Value,
    validator: jsonschema::Validator,
    /// True when some property of the schema has a `default`.
    has_defaults: bool,
}

impl std::fmt::Debug for InputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputSchema")
            .field("schema", &self.schema)
            .finish()
    }
}

/// Compiles a JSON Schema, refusing one that is not valid. The message names the schema's
/// failing keyword path.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("must be a JSON Schema (a mapping)".to_owned());
    }
    jsonschema::validator_for(schema).map_err(|e| {
        let at = e.instance_path().as_str();
        if at.is_empty() {
            format!("is not a valid JSON Schema: {}", e.masked())
        } else {
            format!(
                "is not a valid JSON Schema: at `{}`: {}",
                dotted("schema", at),
                e.masked()
            )
        }
    })
}

impl InputSchema {
    /// Compiles the schema of a version's variables: a valid JSON Schema whose root is an
    /// object.
    pub fn new(schema: Value) -> Result<Self, String> {
        let validator = compile(&schema)?;
        if let Some(kind) = schema.get("type")
            && kind != "object"
        {
            return Err(format!(
                "describes the `prompt.variables` object, so its `type` must be `object`, not {kind}"
            ));
        }
        let has_defaults = has_defaults(&schema);
        Ok(InputSchema {
            schema,
            validator,
            has_defaults,
        })
    }

    /// The properties the schema requires at the top level.
    pub fn required(&self) -> Vec<String> {
        self.schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The request's variables with the schema's defaults filled in, or every failing path
    /// (at most [`MAX_LISTED`], then "and more").
    pub fn apply(&self, variables: &Map<String, Value>) -> Result<Map<String, Value>, Vec<String>> {
        let mut object = Value::Object(variables.clone());
        if self.has_defaults {
            fill_defaults(&self.schema, &mut object);
        }
        if self.validator.is_valid(&object) {
            let Value::Object(map) = object else {
                unreachable!("an object stays an object")
            };
            return Ok(map);
        }
        // Bounded work and answer whatever the client sent: the first MAX_LISTED failures,
        // each cut to MAX_PROBLEM_CHARS, and whether there are more.
        let mut problems = Vec::new();
        for error in self.validator.iter_errors(&object).take(MAX_LISTED + 1) {
            if problems.len() == MAX_LISTED {
                problems.push("and more".to_owned());
                break;
            }
            problems.push(cut(describe(&error)));
        }
        Err(problems)
    }
}

/// The longest problem text answered (a client's key or value can be long).
const MAX_PROBLEM_CHARS: usize = 300;

fn cut(mut text: String) -> String {
    if let Some((at, _)) = text.char_indices().nth(MAX_PROBLEM_CHARS) {
        text.truncate(at);
        text.push('…');
    }
    text
}

/// True when the schema (or a nested `properties` schema) gives a default.
fn has_defaults(schema: &Value) -> bool {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|props| {
            props
                .values()
                .any(|p| p.get("default").is_some() || has_defaults(p))
        })
}

/// Fills in the `default` of every absent property, and in nested objects that are present.
fn fill_defaults(schema: &Value, instance: &mut Value) {
    let (Some(props), Value::Object(map)) = (
        schema.get("properties").and_then(Value::as_object),
        instance,
    ) else {
        return;
    };
    for (name, sub) in props {
        match map.get_mut(name) {
            Some(value) => fill_defaults(sub, value),
            None => {
                if let Some(default) = sub.get("default") {
                    map.insert(name.clone(), default.clone());
                }
            }
        }
    }
}

/// `variables.tier: must be one of free, pro, enterprise`.
fn describe(error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as Kind;
    let path = dotted("variables", error.instance_path().as_str());
    match error.kind() {
        Kind::Enum { options } => {
            let listed: Vec<String> = options
                .as_array()
                .map(|o| o.iter().map(plain).collect())
                .unwrap_or_default();
            format!("{path}: must be one of {}", listed.join(", "))
        }
        Kind::Required { property } => {
            format!(
                "{}: is required",
                dotted_key(&path, property.as_str().unwrap_or_default())
            )
        }
        Kind::Constant { expected_value } => {
            format!("{path}: must be {}", plain(expected_value))
        }
        Kind::Type { .. } => {
            let message = error.masked().to_string();
            let wanted = message
                .split_once(" is not of type ")
                .map_or(message.as_str(), |(_, t)| t);
            format!("{path}: must be of type {wanted}")
        }
        _ => {
            let message = error.masked().to_string();
            let message = message.strip_prefix("value ").unwrap_or(&message);
            format!("{path}: {message}")
        }
    }
}

/// A value as a person writes it in a list: strings without quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON Pointer (`/a/0/b`) as a dotted path under `root` (`variables.a[0].b`).
pub fn dotted(root: &str, pointer: &str) -> String {
    let mut out = root.to_owned();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            out = dotted_key(&out, &segment);
        }
    }
    out
}

fn dotted_key(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> InputSchema {
        InputSchema::new(json!({
            "type": "object",
            "required": ["company", "tier"],
            "properties": {
                "company": {"type": "string"},
                "tier": {"enum": ["free", "pro", "enterprise"]},
                "language": {"type": "string", "default": "English"},
                "limits": {"type": "object", "properties": {"max": {"type": "integer", "default": 3}}},
                "topics": {"type": "array", "items": {"type": "string"}}
            }
        }))
        .unwrap()
    }

    fn vars(v: Value) -> Map<String, Value> {
        let Value::Object(m) = v else { panic!() };
        m
    }

    #[test]
    fn defaults_are_applied() {
        let s = schema();
        let v = vars(json!({"company": "Acme", "tier": "pro", "limits": {}}));
        let out = s.apply(&v).unwrap();
        assert_eq!(out["language"], "English");
        assert_eq!(out["limits"]["max"], 3);
        let v = vars(json!({"company": "Acme", "tier": "pro", "language": "French"}));
        assert_eq!(s.apply(&v).unwrap()["language"], "French");
    }

    #[test]
    fn every_failing_path_is_named() {
        let s = schema();
        let v = vars(json!({"tier": "gold", "topics": ["a", 3], "limits": {"max": "x"}}));
        let mut problems = s.apply(&v).unwrap_err();
        problems.sort();
        assert_eq!(
            problems,
            [
                "variables.company: is required",
                "variables.limits.max: must be of type \"integer\"",
                "variables.tier: must be one of free, pro, enterprise",
                "variables.topics[1]: must be of type \"string\"",
            ]
        );
    }

    #[test]
    fn the_list_is_bounded() {
        let props: Map<String, Value> = (0..30)
            .map(|i| (format!("v{i}"), json!({"type": "string"})))
            .collect();
        let s = InputSchema::new(json!({"type": "object", "properties": props})).unwrap();
        let v: Map<String, Value> = (0..30).map(|i| (format!("v{i}"), json!(i))).collect();
        let problems = s.apply(&v).unwrap_err();
        assert_eq!(problems.len(), MAX_LISTED + 1);
        assert_eq!(problems.last().unwrap(), "and more");
    }

    #[test]
    fn invalid_schemas_are_refused_at_load() {
        let err =
            InputSchema::new(json!({"type": "object", "properties": {"a": {"type": "strin"}}}))
                .unwrap_err();
        assert!(err.contains("not a valid JSON Schema"), "{err}");
        let err = InputSchema::new(json!({"type": "string"})).unwrap_err();
        assert!(err.contains("must be `object`"), "{err}");
        assert!(InputSchema::new(json!([1])).is_err());
    }

    #[test]
    fn pointers_become_dotted_paths() {
        assert_eq!(dotted("variables", ""), "variables");
        assert_eq!(dotted("variables", "/a/0/b~1c"), "variables.a[0].b/c");
    }
}
