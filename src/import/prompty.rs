//! Prompty files (`.prompty`): YAML front matter (`name`, `description`, `model`, `inputs`,
//! `outputs`, `sample`) between `---` lines, then a Jinja2 body in role sections (`system:`,
//! `user:` lines). Close to our chat templates, so most of it carries over as written.

use serde_json::{Map, Value, json};

use super::{Front, ImportError, Imported, folder_name, settings};

/// Converts one Prompty file. `stem` is the file name without `.prompty`, the folder name when
/// the file has no `name`.
pub fn convert(file: &str, stem: &str, text: &str) -> Result<Imported, ImportError> {
    let fail = |message: String| ImportError {
        file: file.to_owned(),
        message,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (front_text, body) = split(text).ok_or_else(|| {
        fail("no front matter: a Prompty file starts with `---`, its settings, and `---`".into())
    })?;
    let front: Value = serde_saphyr::from_str::<Option<Value>>(front_text)
        .map_err(|e| fail(format!("front matter: {}", e.without_snippet())))?
        .unwrap_or(Value::Object(Map::new()));
    let Value::Object(front) = front else {
        return Err(fail("the front matter must be a mapping".into()));
    };
    let mut notes = Vec::new();
    let mut out = Front::default();
    let mut manifest = String::new();

    let name = front.get("name").and_then(Value::as_str).unwrap_or(stem);
    let folder = folder_name(name);
    if folder != name {
        notes.push(format!(
            "the name `{name}` became the folder name `{folder}`"
        ));
    }
    for (key, value) in &front {
        match key.as_str() {
            "name" | "inputs" | "outputs" | "model" => {}
            "description" => {
                if let Some(d) = value.as_str() {
                    manifest.push_str(&format!("description: {}\n", Value::from(d.trim())));
                }
            }
            "tags" if value.is_array() => manifest.push_str(&format!("tags: {value}\n")),
            "authors" => {
                out.created_by = value
                    .as_array()
                    .and_then(|a| a.first())
                    .or(Some(value))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            "version" => {
                out.notes = Some(format!(
                    "imported from Prompty, version {}",
                    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
                ));
            }
            "sample" => notes.push(
                "`sample`: sample values are not part of a prompt here; pass them with `promptgate render --var`".to_owned(),
            ),
            "template" => {
                let format = value
                    .as_str()
                    .or_else(|| value.get("format").and_then(Value::as_str))
                    .unwrap_or("jinja2");
                if format != "jinja2" {
                    notes.push(format!(
                        "`template: {format}`: the body was read as Jinja2, the only template language here"
                    ));
                }
            }
            other => notes.push(format!("`{other}`: no equivalent here")),
        }
    }
    match front.get("model") {
        Some(Value::Object(model)) => model_settings(model, &mut out, &mut notes),
        Some(Value::String(model)) => {
            out.model = unreference("model", model, &mut notes).map(str::to_owned);
        }
        Some(Value::Null) | None => {}
        Some(other) => notes.push(format!(
            "`model: {other}`: neither a model name nor a mapping of settings; left out"
        )),
    }

    let body = guard_conversation(body, &mut notes);
    let (body, history) = history_loop(&body, &mut notes);
    let (body, chat) = role_sections(&body, &mut notes);
    if chat {
        shared_definitions(&body).map_err(fail)?;
    }
    out.chat = chat;
    if let Some(inputs) = by_name(&front, "inputs", &mut notes) {
        out.input_schema = input_schema(&inputs, history.as_deref(), &mut notes);
    }
    if let Some(outputs) = by_name(&front, "outputs", &mut notes) {
        out.response_format = output_format(&outputs, &mut notes);
    }
    let mut imported = Imported {
        name: folder,
        ..Imported::default()
    };
    imported.versions.insert(1, out.file(&body));
    imported.manifest = (!manifest.is_empty()).then_some(manifest);
    imported.notes = notes;
    Ok(imported)
}

/// `inputs` or `outputs` as a mapping of names to specs: as written, or from the list form
/// (`- name: question` plus the spec's keys, or bare names). Anything else is noted.
fn by_name(
    front: &Map<String, Value>,
    key: &str,
    notes: &mut Vec<String>,
) -> Option<Map<String, Value>> {
    match front.get(key)? {
        Value::Object(map) => Some(map.clone()),
        Value::Array(items) => {
            let mut map = Map::new();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(name) => {
                        map.insert(name.clone(), json!({}));
                    }
                    Value::Object(spec) if spec.get("name").is_some_and(Value::is_string) => {
                        let mut spec = spec.clone();
                        if let Some(Value::String(name)) = spec.remove("name") {
                            map.insert(name, Value::Object(spec));
                        }
                    }
                    other => notes.push(format!(
                        "`{key}` item {}: `{other}` has no `name`; left out",
                        i + 1
                    )),
                }
            }
            Some(map)
        }
        Value::Null => None,
        other => {
            notes.push(format!(
                "`{key}: {other}`: neither a mapping nor a list of names; left out"
            ));
            None
        }
    }
}

/// A `conversation:` line is text in Prompty but the marker here: made literal, with a note.
fn guard_conversation(body: &str, notes: &mut Vec<String>) -> String {
    let lines: Vec<String> = body
        .split('\n')
        .map(|line| {
            if line.trim_end() == "conversation:" {
                notes.push(
                    "a `conversation:` line is text in Prompty; kept as text (it would be the client's messages here)"
                        .to_owned(),
                );
                format!("{{{{ '' }}}}{line}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    lines.join("\n")
}

fn split(text: &str) -> Option<(&str, &str)> {
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))?;
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some((&rest[..offset], &rest[offset + line.len()..]));
        }
        offset += line.len();
    }
    None
}

fn model_settings(model: &Map<String, Value>, out: &mut Front, notes: &mut Vec<String>) {
    for (key, value) in model {
        match key.as_str() {
            "api" if value == "chat" => {}
            "api" => notes.push(format!(
                "`model.api: {value}`: only chat models are served; the prompt is imported as a chat prompt"
            )),
            "configuration" => {
                let Value::Object(conf) = value else { continue };
                let deployment = ["azure_deployment", "model", "name"]
                    .iter()
                    .find_map(|k| Some((*k, conf.get(*k).and_then(Value::as_str)?)));
                if let Some((key, model)) = deployment {
                    out.model = unreference(&format!("model.configuration.{key}"), model, notes)
                        .map(str::to_owned);
                }
                let rest: Vec<&str> = conf
                    .keys()
                    .map(String::as_str)
                    .filter(|k| !["azure_deployment", "model", "name", "type"].contains(k))
                    .collect();
                if !rest.is_empty() {
                    notes.push(format!(
                        "`model.configuration` ({}): connection settings belong to `promptgate serve --upstream` and `--upstream-api-key`",
                        rest.join(", ")
                    ));
                }
            }
            "parameters" => {
                let Value::Object(params) = value else { continue };
                let mut params = params.clone();
                params.retain(|key, value| match value.as_str() {
                    Some(text) if text.starts_with("${") => {
                        notes.push(format!(
                            "`model.parameters.{key}: {text}`: the value comes from the environment in Prompty; left out, set it yourself"
                        ));
                        false
                    }
                    _ => true,
                });
                for key in settings(&params, out) {
                    notes.push(format!(
                        "`model.parameters.{key}`: not an OpenAI request field promptgate knows"
                    ));
                }
            }
            "response" => {
                if value != "first" {
                    notes.push(format!(
                        "`model.response: {value}`: the whole response is always passed back"
                    ));
                }
            }
            other => notes.push(format!("`model.{other}`: no equivalent here")),
        }
    }
}

/// A setting's value, unless it is a Prompty environment reference (`${env:NAME}`), which
/// would be sent as written: then the reference's default (`${env:NAME:default}`) or nothing,
/// with a note.
fn unreference<'a>(key: &str, value: &'a str, notes: &mut Vec<String>) -> Option<&'a str> {
    if !value.starts_with("${") {
        return Some(value);
    }
    let default = value
        .strip_prefix("${env:")
        .and_then(|r| r.strip_suffix('}'))
        .and_then(|r| r.split_once(':'))
        .map(|(_, default)| default)
        .filter(|d| !d.is_empty());
    match default {
        Some(d) => notes.push(format!(
            "`{key}: {value}`: the model comes from the environment in Prompty; its default `{d}` was used, set `model:` yourself if that is not it"
        )),
        None => notes.push(format!(
            "`{key}: {value}`: the model comes from the environment in Prompty; set `model:` yourself"
        )),
    }
    default
}

/// Prompty's chat-history idiom — `{% for item in history %}{{item.role}}:\n{{item.content}}
/// {% endfor %}` — is where the client's messages go: it becomes the `conversation:` marker.
fn history_loop(body: &str, notes: &mut Vec<String>) -> (String, Option<String>) {
    let lines: Vec<&str> = body.split('\n').collect();
    for (start, line) in lines.iter().enumerate() {
        let Some((item, list)) = for_header(line) else {
            continue;
        };
        let Some(len) = lines[start + 1..]
            .iter()
            .position(|l| l.replace(['-', ' '], "").trim() == "{%endfor%}")
        else {
            continue;
        };
        let end = start + 1 + len;
        let inner: String = lines[start + 1..end].concat().replace(' ', "");
        if !inner.contains(&format!("{{{{{item}.role}}}}:"))
            && !inner.contains(&format!("{{{{{item}[\"role\"]}}}}:"))
        {
            continue;
        }
        let mut out: Vec<&str> = lines[..start].to_vec();
        out.push("conversation:");
        out.extend(&lines[end + 1..]);
        notes.push(format!(
            "the `{{% for {item} in {list} %}}` chat-history loop became the `conversation:` marker: the client's own messages go there, `{list}` is not a variable"
        ));
        return (out.join("\n"), Some(list.to_owned()));
    }
    (body.to_owned(), None)
}

/// `{% for item in history %}` → (`item`, `history`).
fn for_header(line: &str) -> Option<(&str, &str)> {
    let inner = line
        .trim()
        .strip_prefix("{%")?
        .strip_suffix("%}")?
        .trim_matches(['-', ' ']);
    let mut words = inner.split_whitespace();
    (words.next()? == "for").then_some(())?;
    let item = words.next()?;
    (words.next()? == "in").then_some(())?;
    let list = words.next()?;
    words.next().is_none().then_some((item, list))
}

/// Rewrites Prompty's role lines (`system:`, `# user:`, any case) as ours. Returns the body and
/// whether it is a chat template.
fn role_sections(body: &str, notes: &mut Vec<String>) -> (String, bool) {
    let mut out = Vec::new();
    let mut any = false;
    let mut skipping = false;
    let mut seen_text = false;
    for line in body.split('\n') {
        let trimmed = line.trim();
        let unhashed = trimmed.trim_start_matches('#');
        let hashes = trimmed.len() - unhashed.len();
        let bare = unhashed.trim().to_ascii_lowercase();
        let mut role = bare.strip_suffix(':').map(str::trim_end);
        // `user[name="Jane"]:`: a role line with attributes.
        let mut attributes = None;
        if let Some(r) = role
            && let Some((name, rest)) = r.split_once('[')
            && rest.ends_with(']')
        {
            role = Some(name.trim_end());
            attributes = Some(rest);
        }
        let is_role = matches!(
            role,
            Some("system" | "user" | "assistant" | "developer" | "function" | "tool")
        );
        if is_role && hashes > 1 {
            notes.push(format!(
                "`{trimmed}`: Prompty takes at most one `#` before a role; kept as text"
            ));
            role = None;
        }
        if is_role
            && hashes <= 1
            && let Some(attributes) = attributes
        {
            notes.push(format!(
                "`{trimmed}`: the message's attributes (`[{attributes}`) have no place here; left out"
            ));
        }
        match role {
            Some(r @ ("system" | "user" | "assistant" | "developer")) => {
                any = true;
                skipping = false;
                out.push(format!("{r}:"));
            }
            Some(r @ ("function" | "tool")) => {
                any = true;
                skipping = true;
                notes.push(format!(
                    "a `{r}:` section: tool results come from the client's conversation; the section was left out"
                ));
            }
            // The marker the history loop became (source lines were made text before).
            Some("conversation") if line == "conversation:" => {
                any = true;
                skipping = false;
                out.push("conversation:".to_owned());
            }
            _ if skipping => {}
            _ => {
                if !any && !line.trim().is_empty() {
                    seen_text = true;
                }
                out.push(line.to_owned());
            }
        }
    }
    if !any {
        return (body.to_owned(), false);
    }
    let mut text = out.join("\n");
    if seen_text {
        // Text before the first role line is the system message, as Prompty reads it.
        text = format!("system:\n{text}");
    }
    (text, true)
}

/// Prompty renders the whole body, then splits it into messages; here each message is its own
/// template. A name one message defines (`{% set %}`, `{% macro %}`, `{% import %}`,
/// `{% from … import %}`) and another uses would be undefined on every request: refused.
fn shared_definitions(body: &str) -> Result<(), String> {
    let mut sections: Vec<(String, String)> = vec![(String::new(), String::new())];
    for line in body.split('\n') {
        let role = line.trim_end();
        if [
            "system:",
            "developer:",
            "user:",
            "assistant:",
            "conversation:",
        ]
        .contains(&role)
        {
            sections.push((role.to_owned(), String::new()));
        } else if let Some(last) = sections.last_mut() {
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    let sections: Vec<(String, Vec<String>, Vec<String>)> = sections
        .into_iter()
        .map(|(role, text)| {
            let (defined, used) = tag_names(&text);
            (role, defined, used)
        })
        .collect();
    for (i, (role, defined, _)) in sections.iter().enumerate() {
        for name in defined {
            let user = sections
                .iter()
                .enumerate()
                .find(|(j, (_, other_defined, used))| {
                    *j != i && used.contains(name) && !other_defined.contains(name)
                });
            if let Some((j, (other, _, _))) = user {
                return Err(format!(
                    "`{name}` is defined in message {i} (`{role}`) and used in message {j} (`{other}`): Prompty renders the whole body before splitting it into messages, but each message is its own template here, so `{name}` would be undefined on every request; define it in each message that uses it, then import again"
                ));
            }
        }
    }
    Ok(())
}

/// The names a template text defines at its top (`set`, `macro`, `import`, `from … import`)
/// and every identifier its tags use.
fn tag_names(text: &str) -> (Vec<String>, Vec<String>) {
    let mut defined = Vec::new();
    let mut used = Vec::new();
    let mut rest = text;
    while let Some(start) = ["{{", "{%"].iter().filter_map(|o| rest.find(o)).min() {
        let statement = rest[start..].starts_with("{%");
        let close = if statement { "%}" } else { "}}" };
        let inner_start = start + 2;
        let Some(len) = rest[inner_start..].find(close) else {
            break;
        };
        let inner = rest[inner_start..inner_start + len].trim_matches(['-', '+', ' ', '\n', '\t']);
        rest = &rest[inner_start + len + 2..];
        let words = identifiers(inner);
        if statement {
            match words.first().map(String::as_str) {
                Some("set" | "macro") => defined.extend(
                    inner
                        .split(['=', '('])
                        .next()
                        .map(identifiers)
                        .unwrap_or_default()
                        .into_iter()
                        .skip(1),
                ),
                Some("import") => {
                    if let Some(i) = words.iter().position(|w| w == "as") {
                        defined.extend(words.get(i + 1).cloned());
                    }
                }
                Some("from") => {
                    if let Some(i) = words.iter().position(|w| w == "import") {
                        let names = &words[i + 1..];
                        let mut k = 0;
                        while k < names.len() {
                            if names.get(k + 1).is_some_and(|w| w == "as") {
                                defined.extend(names.get(k + 2).cloned());
                                k += 3;
                            } else {
                                defined.push(names[k].clone());
                                k += 1;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        used.extend(words);
    }
    (defined, used)
}

/// The identifiers of a tag's text, outside string literals.
fn identifiers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    for c in text.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c == '"' || c == '\'' {
            quote = Some(c);
        } else if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty() && !word.starts_with(|c: char| c.is_ascii_digit()) {
            out.push(std::mem::take(&mut word));
        }
        word.clear();
    }
    if !word.is_empty() && !word.starts_with(|c: char| c.is_ascii_digit()) {
        out.push(word);
    }
    out
}

fn json_type(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "string" | "str" => "string",
        "number" | "float" => "number",
        "integer" | "int" => "integer",
        "boolean" | "bool" => "boolean",
        "array" | "list" => "array",
        "object" | "dict" => "object",
        _ => return None,
    })
}

/// JSON Schema keywords a Prompty type spec may carry that mean the same here.
const SCHEMA_KEYS: [&str; 20] = [
    "description",
    "default",
    "enum",
    "const",
    "title",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "items",
    "properties",
    "additionalProperties",
];

/// A Prompty type spec (`{type: array, items: {type: string}}`) as a JSON Schema: its type in
/// JSON Schema's words, the keywords that mean the same (nested `items` and `properties` too),
/// a note for each key dropped. `at` names the spec in notes (`input \`topics\``).
fn type_spec(spec: &Map<String, Value>, at: &str, notes: &mut Vec<String>) -> Map<String, Value> {
    let mut property = Map::new();
    let mut dropped = Vec::new();
    for (key, value) in spec {
        match key.as_str() {
            "type" => match value.as_str().and_then(json_type) {
                Some(t) => {
                    property.insert("type".into(), json!(t));
                }
                None => notes.push(format!(
                    "{at}: type `{}` has no JSON Schema equivalent; left untyped",
                    value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned)
                )),
            },
            "items" | "additionalProperties" if value.is_object() => {
                let spec = value.as_object().cloned().unwrap_or_default();
                let inner = type_spec(&spec, &format!("{at}.{key}"), notes);
                property.insert(key.clone(), Value::Object(inner));
            }
            "properties" if value.is_object() => {
                let mut inner = Map::new();
                for (name, spec) in value.as_object().into_iter().flatten() {
                    let spec = match spec {
                        Value::Object(m) => type_spec(m, &format!("{at}.{name}"), notes),
                        _ => Map::new(),
                    };
                    inner.insert(name.clone(), Value::Object(spec));
                }
                property.insert(key.clone(), Value::Object(inner));
            }
            // Prompty's `required: true` goes to the parent's `required` list; a JSON Schema
            // list of required names stays.
            "required" if value.is_boolean() => {}
            "required" if value.is_array() => {
                property.insert(key.clone(), value.clone());
            }
            // An example value, as `sample` is at the top level.
            "sample" => {}
            "default" if value.as_str().is_some_and(|v| v.starts_with("${")) => notes.push(format!(
                "{at}: the default `{}` comes from the environment in Prompty; left out, the variable has no default",
                value.as_str().unwrap_or_default()
            )),
            k if SCHEMA_KEYS.contains(&k) && k != "items" && k != "properties" => {
                property.insert(key.clone(), value.clone());
            }
            _ => dropped.push(key.as_str()),
        }
    }
    if !dropped.is_empty() {
        notes.push(format!(
            "{at}: {} not carried over (no JSON Schema equivalent)",
            dropped
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    property
}

/// A type spec, as opposed to the older `inputs: {name: sample value}` form: a mapping with a
/// `type`, or one with only Prompty's spec keys.
fn is_type_spec(spec: &Value) -> bool {
    spec.as_object().is_some_and(|m| {
        m.get("type").is_some_and(Value::is_string)
            || m.keys().all(|k| {
                ["type", "description", "default", "sample", "required"].contains(&k.as_str())
            })
    })
}

fn input_schema(
    inputs: &Map<String, Value>,
    history: Option<&str>,
    notes: &mut Vec<String>,
) -> Option<Value> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, spec) in inputs {
        if Some(name.as_str()) == history {
            continue;
        }
        let property = match spec {
            Value::Object(m) if is_type_spec(spec) => {
                if m.get("required") == Some(&Value::Bool(true)) {
                    required.push(name.clone());
                }
                type_spec(m, &format!("input `{name}`"), notes)
            }
            // `inputs: {name: sample value}`, the older form: the type of the sample.
            _ => {
                let t = match spec {
                    Value::String(_) => "string",
                    Value::Bool(_) => "boolean",
                    Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                    Value::Number(_) => "number",
                    Value::Array(_) => "array",
                    Value::Object(_) => "object",
                    Value::Null => continue,
                };
                let mut property = Map::new();
                property.insert("type".into(), json!(t));
                property
            }
        };
        properties.insert(name.clone(), Value::Object(property));
    }
    if properties.is_empty() {
        return None;
    }
    let mut schema = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    Some(schema)
}

fn output_format(outputs: &Map<String, Value>, notes: &mut Vec<String>) -> Option<Value> {
    let mut properties = Map::new();
    let mut loose = Vec::new();
    for (name, spec) in outputs {
        let property = match spec {
            Value::Object(m) => type_spec(m, &format!("output `{name}`"), notes),
            _ => Map::new(),
        };
        if !strict_ready(&property) {
            loose.push(format!("`{name}`"));
        }
        properties.insert(name.clone(), Value::Object(property));
    }
    if properties.is_empty() {
        return None;
    }
    let required: Vec<&String> = properties.keys().collect();
    let schema = json!({"type": "object", "properties": properties, "required": required,
                        "additionalProperties": false});
    if loose.is_empty() {
        return Some(json!({"schema": schema}));
    }
    notes.push(format!(
        "outputs {}: not typed completely (a type on each, `items` on an array), which OpenAI's strict structured outputs refuse; written with `strict: false`",
        loose.join(", ")
    ));
    Some(json!({"schema": schema, "strict": false}))
}

/// True when OpenAI's strict mode accepts `schema` as it is: a type, `items` on an array, and
/// on an object every property listed in `required` and `additionalProperties: false`.
fn strict_ready(schema: &Map<String, Value>) -> bool {
    match schema.get("type").and_then(Value::as_str) {
        Some("string" | "number" | "integer" | "boolean") => true,
        Some("array") => schema
            .get("items")
            .and_then(Value::as_object)
            .is_some_and(strict_ready),
        Some("object") => {
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return false;
            };
            let required = schema.get("required").and_then(Value::as_array);
            schema.get("additionalProperties") == Some(&Value::Bool(false))
                && props.iter().all(|(k, v)| {
                    required.is_some_and(|r| r.contains(&json!(k)))
                        && v.as_object().is_some_and(strict_ready)
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converted(text: &str) -> Imported {
        convert("t.prompty", "t", text).unwrap()
    }

    #[test]
    fn environment_references_are_not_sent_as_the_model() {
        let t = converted(
            "---\nmodel:\n  configuration:\n    azure_deployment: ${env:AZURE_OPENAI_DEPLOYMENT}\n  parameters:\n    seed: ${env:SEED}\n---\nHi\n",
        );
        assert_eq!(t.versions[&1], "Hi\n");
        assert!(
            t.notes.iter().any(|n| n.contains("`model.configuration.azure_deployment: ${env:AZURE_OPENAI_DEPLOYMENT}`: the model comes from the environment")),
            "{:?}",
            t.notes
        );
        assert!(t.notes.iter().any(|n| n.contains("`model.parameters.seed")));
        let t = converted(
            "---\nmodel:\n  configuration:\n    name: ${env:MODEL:gpt-4o-mini}\n---\nHi\n",
        );
        assert!(
            t.versions[&1].contains("model: \"gpt-4o-mini\""),
            "{}",
            t.versions[&1]
        );
        assert!(
            t.notes
                .iter()
                .any(|n| n.contains("its default `gpt-4o-mini`"))
        );
    }

    #[test]
    fn typed_inputs_keep_their_json_schema_keys() {
        let mut notes = Vec::new();
        let inputs: Map<String, Value> = serde_json::from_value(json!({
            "topics": {"type": "array", "items": {"type": "str"}, "required": true, "minItems": 1, "widget": "list"},
            "tone": {"type": "string", "enum": ["calm", "brisk"], "sample": "calm", "default": "${env:TONE}"},
            "count": 3,
        }))
        .unwrap();
        let schema = input_schema(&inputs, None, &mut notes).unwrap();
        assert_eq!(
            schema,
            json!({"type": "object", "required": ["topics"], "properties": {
                "topics": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "tone": {"type": "string", "enum": ["calm", "brisk"]},
                "count": {"type": "integer"},
            }})
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("input `topics`: `widget` not carried over"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("input `tone`: the default `${env:TONE}`"),
            "{notes:?}"
        );
    }

    #[test]
    fn outputs_are_strict_only_when_strict_mode_takes_them() {
        let mut notes = Vec::new();
        let outputs: Map<String, Value> = serde_json::from_value(json!({
            "answer": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        }))
        .unwrap();
        let format = output_format(&outputs, &mut notes).unwrap();
        assert!(format.get("strict").is_none(), "{format}");
        assert!(notes.is_empty(), "{notes:?}");
        for loose in [
            json!({"answer": {"type": "string"}, "tags": {"type": "array"}}),
            json!({"answer": {"description": "anything"}}),
        ] {
            let outputs: Map<String, Value> = serde_json::from_value(loose).unwrap();
            let format = output_format(&outputs, &mut notes).unwrap();
            assert_eq!(format["strict"], json!(false), "{format}");
        }
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("outputs `tags`"), "{notes:?}");
    }

    #[test]
    fn a_model_name_and_list_inputs_are_carried() {
        let t = converted(
            "---\nmodel: gpt-4o\ninputs:\n  - name: question\n    type: string\n  - 5\noutputs: yes\n---\nuser:\n{{question}}\n",
        );
        let v1 = &t.versions[&1];
        assert!(v1.contains("model: \"gpt-4o\""), "{v1}");
        assert!(
            v1.contains(
                r#"input_schema: {"type":"object","properties":{"question":{"type":"string"}}}"#
            ),
            "{v1}"
        );
        assert_eq!(t.notes.len(), 2, "{:?}", t.notes);
        assert!(t.notes[0].contains("`inputs` item 2"), "{:?}", t.notes);
        assert!(t.notes[1].contains("`outputs: true`"), "{:?}", t.notes);
    }

    #[test]
    fn role_lines_prompty_does_not_take_stay_text() {
        let t = converted(
            "---\nname: t\n---\nsystem:\nconversation:\n## user:\nx\nuser[name=\"Jane\"]:\n{{q}}\n",
        );
        assert_eq!(
            t.versions[&1],
            "---\nchat: true\n---\nsystem:\n{{ '' }}conversation:\n## user:\nx\nuser:\n{{q}}\n"
        );
        assert_eq!(t.notes.len(), 3, "{:?}", t.notes);
    }

    #[test]
    fn a_name_set_in_one_message_and_used_in_another_is_refused() {
        for body in [
            "system:\n{% set who = 'Jane' %}Hi\nuser:\n{{ who }}",
            "{%- macro greet(n) -%}Hi {{ n }}{%- endmacro %}\nuser:\n{{ greet(q) }}",
            "system:\n{% from 'x' import a as helper %}\nuser:\n{{ helper() }}",
            "system:\n{% import 'x' as lib %}\nuser:\n{{ lib.f() }}",
        ] {
            let err = convert("t.prompty", "t", &format!("---\nname: t\n---\n{body}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("is defined in message"), "{body}: {err}");
        }
        // Defined and used in the same message, or defined again where used: fine.
        for body in [
            "system:\n{% set who = 'Jane' %}{{ who }}\nuser:\n{{ q }}",
            "system:\n{% set x = 1 %}{{ x }}\nuser:\n{% set x = 2 %}{{ x }}",
            "system:\n{% set x = 1 %}{{ x }}\nuser:\n{{ 'x' }}",
        ] {
            convert("t.prompty", "t", &format!("---\nname: t\n---\n{body}\n")).unwrap();
        }
    }

    #[test]
    fn role_lines_in_any_prompty_spelling_become_ours() {
        let mut notes = Vec::new();
        let (body, chat) = role_sections("# System:\nHi\n# Customer\nUSER :\n{{q}}", &mut notes);
        assert!(chat);
        assert_eq!(body, "system:\nHi\n# Customer\nuser:\n{{q}}");
        let (body, chat) = role_sections("Just text {{q}}", &mut notes);
        assert!(!chat);
        assert_eq!(body, "Just text {{q}}");
        let (body, _) = role_sections("Lead\nuser:\nQ", &mut notes);
        assert_eq!(body, "system:\nLead\nuser:\nQ");
    }

    #[test]
    fn the_history_loop_becomes_the_marker() {
        let mut notes = Vec::new();
        let (body, history) = history_loop(
            "system:\nHi\n\n{% for item in chat_history %}\n{{item.role}}:\n{{item.content}}\n{% endfor %}\n\nuser:\n{{q}}",
            &mut notes,
        );
        assert_eq!(history.as_deref(), Some("chat_history"));
        assert_eq!(body, "system:\nHi\n\nconversation:\n\nuser:\n{{q}}");
        assert_eq!(notes.len(), 1);
        // Another loop is left as it is.
        let (body, history) =
            history_loop("{% for t in topics %}{{ t }}\n{% endfor %}", &mut notes);
        assert!(history.is_none());
        assert!(body.starts_with("{% for t"));
    }
}
