//! Langfuse prompts: the JSON its prompts API returns (`GET /api/public/v2/prompts/{name}`),
//! one object per version — `name`, `version`, `type` (`text` | `chat`), `prompt` (a string,
//! or a list of `{role, content}` and `{type: placeholder, name}` messages), `config`,
//! `labels`, `tags`, `commitMessage`. A file may hold one such object or a list of them.
//! Variables are Mustache `{{name}}`, which Jinja reads the same.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    Front, ImportError, Imported, folder_name, guard_role_lines, literal_except_variables, settings,
};

/// One version as the API returns it.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Version {
    name: String,
    version: u32,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    prompt: Value,
    #[serde(default)]
    config: Value,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    commit_message: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
}

/// Reads the versions in one export file.
fn read(file: &str, text: &str) -> Result<Vec<Version>, ImportError> {
    let fail = |message: String| ImportError {
        file: file.to_owned(),
        message,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| fail(format!("not JSON: {e}")))?;
    let list = match value {
        Value::Array(list) => list,
        // The list endpoint wraps its items in `data`.
        Value::Object(mut map) if map.contains_key("data") && !map.contains_key("prompt") => {
            match map.remove("data") {
                Some(Value::Array(list)) => list,
                _ => return Err(fail("`data` must be a list of prompt versions".into())),
            }
        }
        other => vec![other],
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value::<Version>(v).map_err(|e| {
                fail(format!(
                    "item {}: not a Langfuse prompt version (needs `name`, `version`, `prompt`): {e}",
                    i + 1
                ))
            })
        })
        .collect()
}

/// Converts export files (name, text) into prompts, one per Langfuse prompt name.
pub fn convert(files: &[(String, String)]) -> Result<Vec<Imported>, ImportError> {
    let mut by_name: BTreeMap<String, Vec<Version>> = BTreeMap::new();
    for (file, text) in files {
        for version in read(file, text)? {
            by_name
                .entry(version.name.clone())
                .or_default()
                .push(version);
        }
    }
    let mut out = Vec::new();
    for (name, mut versions) in by_name {
        versions.sort_by_key(|v| v.version);
        versions.dedup_by_key(|v| v.version);
        out.push(prompt(&name, &versions)?);
    }
    Ok(out)
}

fn prompt(name: &str, versions: &[Version]) -> Result<Imported, ImportError> {
    let folder = folder_name(name);
    let mut imported = Imported {
        name: folder.clone(),
        ..Imported::default()
    };
    let notes = &mut imported.notes;
    if folder != name {
        notes.push(format!(
            "the name `{name}` became the folder name `{folder}`"
        ));
    }
    let mut labels = BTreeMap::new();
    let mut active = None;
    let mut tags: Vec<String> = Vec::new();
    for v in versions {
        let at = format!("v{}", v.version);
        if v.version == 0 {
            return Err(ImportError {
                file: name.to_owned(),
                message: "version 0: Langfuse versions start at 1".into(),
            });
        }
        for label in &v.labels {
            match label.as_str() {
                "production" => active = Some(v.version),
                // Langfuse's `latest` is the highest version, which serves without a label.
                "latest" => {}
                other if crate::prompts::manifest::valid_label(other) => {
                    labels.insert(other.to_owned(), v.version);
                }
                other => notes.push(format!(
                    "{at}: label `{other}` is not a valid label name here"
                )),
            }
        }
        for tag in &v.tags {
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        let mut front = Front {
            notes: v.commit_message.clone(),
            created_by: v.created_by.clone(),
            ..Front::default()
        };
        match &v.config {
            Value::Object(config) => {
                for key in settings(config, &mut front) {
                    notes.push(format!(
                        "{at}: config key `{key}` is not an OpenAI request field promptgate knows"
                    ));
                }
            }
            Value::Null => {}
            other => notes.push(format!("{at}: config `{other}` is not a mapping")),
        }
        let body = match (&v.prompt, v.kind.as_deref()) {
            (Value::String(text), None | Some("text")) => {
                composed(text, notes, &at);
                if text.ends_with(['\n', '\r']) && !text.trim().is_empty() {
                    notes.push(format!(
                        "{at}: the trailing newlines were dropped (a version's text ends at its last line)"
                    ));
                }
                literal_except_variables(text, notes, &at)
            }
            (Value::Array(messages), None | Some("chat")) => {
                front.chat = true;
                chat_body(messages, notes, &at)
            }
            (_, kind) => {
                return Err(ImportError {
                    file: name.to_owned(),
                    message: format!(
                        "{at}: a `{}` prompt must be {}",
                        kind.unwrap_or("?"),
                        if kind == Some("chat") {
                            "a list of messages"
                        } else {
                            "text"
                        }
                    ),
                });
            }
        };
        imported.versions.insert(v.version, front.file(&body));
    }
    let mut manifest = String::new();
    if !tags.is_empty() {
        manifest.push_str(&format!("tags: {}\n", Value::from(tags)));
    }
    match active {
        Some(a) => manifest.push_str(&format!("active: {a}\n")),
        None => imported.notes.push(
            "no version has the `production` label: the highest version is the active one".into(),
        ),
    }
    if !labels.is_empty() {
        let map: Map<String, Value> = labels.into_iter().map(|(k, v)| (k, v.into())).collect();
        manifest.push_str(&format!("labels: {}\n", Value::Object(map)));
    }
    imported.manifest = (!manifest.is_empty()).then_some(manifest);
    Ok(imported)
}

/// Langfuse's prompt composition tags (`@@@langfusePrompt:name=x|label=y@@@`) are not resolved.
fn composed(text: &str, notes: &mut Vec<String>, at: &str) {
    if text.contains("@@@langfusePrompt:") {
        notes.push(format!(
            "{at}: a `@@@langfusePrompt:…@@@` reference to another prompt is kept as text, not resolved"
        ));
    }
}

fn chat_body(messages: &[Value], notes: &mut Vec<String>, at: &str) -> String {
    let mut sections = Vec::new();
    let mut marker = false;
    for (i, message) in messages.iter().enumerate() {
        let at = format!("{at} message {}", i + 1);
        if message.get("type").and_then(Value::as_str) == Some("placeholder") {
            let name = message.get("name").and_then(Value::as_str).unwrap_or("?");
            if marker {
                notes.push(format!(
                    "{at}: a second placeholder (`{name}`): the client's messages go in one place; left out"
                ));
            } else {
                marker = true;
                notes.push(format!(
                    "{at}: the placeholder `{name}` became the `conversation:` marker: the client's own messages go there"
                ));
                sections.push("conversation:\n".to_owned());
            }
            continue;
        }
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let Some(content) = message.get("content").and_then(Value::as_str) else {
            notes.push(format!("{at}: content that is not text; left out"));
            continue;
        };
        if !["system", "developer", "user", "assistant"].contains(&role) {
            notes.push(format!(
                "{at}: role `{role}` has no place in a chat template; left out"
            ));
            continue;
        }
        if content.trim().is_empty() {
            notes.push(format!("{at}: an empty `{role}` message; left out"));
            continue;
        }
        composed(content, notes, &at);
        let lines: Vec<&str> = content.split('\n').collect();
        if lines.first().is_some_and(|l| l.trim().is_empty())
            || lines.last().is_some_and(|l| l.trim().is_empty())
        {
            notes.push(format!(
                "{at}: blank lines at the start or end of the message were dropped (a message here runs from its first to its last line with text)"
            ));
        }
        let text = guard_role_lines(&literal_except_variables(content, notes, &at));
        sections.push(format!("{role}:\n{}\n", text.trim_matches('\n')));
    }
    sections.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_prompts_become_role_sections() {
        let mut notes = Vec::new();
        let body = chat_body(
            &[
                json!({"role": "system", "content": "You are {{name}}."}),
                json!({"type": "placeholder", "name": "history"}),
                json!({"role": "user", "content": "user:\n{{question}}"}),
                json!({"role": "tool", "content": "x"}),
            ],
            &mut notes,
            "v1",
        );
        assert_eq!(
            body,
            "system:\nYou are {{ name }}.\n\nconversation:\n\nuser:\n{{ '' }}user:\n{{ question }}\n"
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn trimmed_whitespace_is_noted() {
        let mut notes = Vec::new();
        chat_body(
            &[
                json!({"role": "system", "content": "  \nYou help."}),
                json!({"role": "user", "content": "{{q}}\n"}),
                json!({"role": "user", "content": "a\n\nb"}),
            ],
            &mut notes,
            "v1",
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].starts_with("v1 message 1: blank lines"),
            "{notes:?}"
        );
        let one = r#"[{"name": "a", "version": 1, "type": "text", "prompt": "Hi\n\n", "config": {}, "labels": [], "tags": []}]"#;
        let imported = convert(&[("f".to_owned(), one.to_owned())]).unwrap();
        assert!(
            imported[0]
                .notes
                .iter()
                .any(|n| n.contains("trailing newlines")),
            "{:?}",
            imported[0].notes
        );
    }

    #[test]
    fn one_object_a_list_or_data_are_read() {
        let one = r#"{"name": "a", "version": 1, "type": "text", "prompt": "Hi", "config": {}, "labels": [], "tags": []}"#;
        assert_eq!(read("f", one).unwrap().len(), 1);
        assert_eq!(read("f", &format!("[{one}, {one}]")).unwrap().len(), 2);
        assert_eq!(
            read("f", &format!("{{\"data\": [{one}]}}")).unwrap().len(),
            1
        );
        let err = read("f.json", r#"{"name": "a"}"#).unwrap_err();
        assert!(err.to_string().starts_with("f.json: item 1:"), "{err}");
    }
}
