//! `promptgate import`: prompts written for other tools, turned into prompt folders.
//!
//! Each source ([`prompty`], [`langfuse`]) turns its files into [`Imported`] prompts: the text
//! of each version file and of `prompt.yaml`, and notes on what could not be carried over.
//! [`write`] checks each prompt with the same loader `serve` uses before anything is written,
//! and never overwrites a file.

pub mod langfuse;
pub mod prompty;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::prompts::{self, Overlay};

/// One prompt, ready to be written.
#[derive(Debug, Default)]
pub struct Imported {
    /// The prompt's folder name.
    pub name: String,
    /// Version number → the version file's text.
    pub versions: BTreeMap<u32, String>,
    /// The text of `prompt.yaml`, if the prompt needs one.
    pub manifest: Option<String>,
    /// Other files of the folder (file name → text).
    pub files: BTreeMap<String, String>,
    /// What could not be carried over, or was changed on the way.
    pub notes: Vec<String>,
}

/// An input file could not be read as its source's format.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ImportError {
    pub file: String,
    pub message: String,
}

/// What a written prompt became.
#[derive(Debug)]
pub struct Written {
    pub name: String,
    pub folder: PathBuf,
    pub versions: Vec<u32>,
}

/// The largest input file `promptgate import` reads: prompts are far smaller, and the whole
/// file is held in memory.
pub const MAX_INPUT: u64 = 10 * 1024 * 1024;

/// An input file's text, refused past [`MAX_INPUT`] bytes.
pub fn read_input(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    let mut text = String::new();
    file.take(MAX_INPUT + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    if text.len() as u64 > MAX_INPUT {
        return Err(format!(
            "`{shown}` is larger than {} MiB, too large to be a prompt export",
            MAX_INPUT / 1024 / 1024
        ));
    }
    Ok(text)
}

/// Writes `prompt` under `out`, after checking it loads. Existing files are never overwritten.
pub fn write(out: &Path, prompt: &Imported) -> Result<Written, String> {
    let folder = out.join(&prompt.name);
    let mut overlay = Overlay::new();
    for (n, text) in &prompt.versions {
        overlay.insert(format!("v{n}.prompt"), text.clone());
    }
    if let Some(manifest) = &prompt.manifest {
        overlay.insert("prompt.yaml".to_owned(), manifest.clone());
    }
    for (file, text) in &prompt.files {
        overlay.insert(file.clone(), text.clone());
    }
    for file in overlay.keys() {
        if folder.join(file).exists() {
            return Err(format!(
                "`{}` exists already: import into an empty folder, or move it away",
                folder.join(file).display()
            ));
        }
    }
    prompts::check_prompt(out, &prompt.name, &overlay).map_err(|problems| {
        format!("the imported prompt does not validate, nothing was written:\n{problems}")
    })?;
    std::fs::create_dir_all(&folder)
        .map_err(|e| format!("cannot create `{}`: {e}", folder.display()))?;
    for (file, text) in &overlay {
        std::fs::write(folder.join(file), text)
            .map_err(|e| format!("cannot write `{}`: {e}", folder.join(file).display()))?;
    }
    Ok(Written {
        name: prompt.name.clone(),
        folder,
        versions: prompt.versions.keys().copied().collect(),
    })
}

/// A folder name from another tool's prompt name: lowercase, `/` as `.`, anything else not
/// allowed as `_`.
pub fn folder_name(name: &str) -> String {
    let mut out: String = name
        .trim()
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '_' | '-' | '.' => c,
            '/' => '.',
            _ => '_',
        })
        .collect();
    while out.starts_with(['_', '.', '-']) {
        out.remove(0);
    }
    out.truncate(128);
    if out.is_empty() {
        out.push_str("imported");
    }
    out
}

/// A JSON value as YAML flow text (JSON is YAML).
pub fn yaml_value(value: &Value) -> String {
    crate::prompts::yaml::json_flow(value)
}

/// Front matter lines for a version, in a fixed order.
#[derive(Debug, Default)]
pub struct Front {
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub params: Map<String, Value>,
    pub chat: bool,
    pub input_schema: Option<Value>,
    pub response_format: Option<Value>,
    pub tools: Option<Value>,
    pub created_by: Option<String>,
    pub notes: Option<String>,
}

impl Front {
    /// The version file: front matter, then the body.
    pub fn file(&self, body: &str) -> String {
        let mut front = String::new();
        let string = |s: &str| Value::from(s).to_string();
        if let Some(m) = &self.model {
            let _ = writeln!(front, "model: {}", string(m));
        }
        if let Some(t) = self.temperature {
            let _ = writeln!(front, "temperature: {t}");
        }
        if let Some(m) = self.max_tokens {
            let _ = writeln!(front, "max_tokens: {m}");
        }
        if !self.params.is_empty() {
            let _ = writeln!(front, "params: {}", Value::Object(self.params.clone()));
        }
        if self.chat {
            front.push_str("chat: true\n");
        }
        for (key, value) in [
            ("input_schema", &self.input_schema),
            ("response_format", &self.response_format),
            ("tools", &self.tools),
        ] {
            if let Some(v) = value {
                let _ = writeln!(front, "{key}: {}", yaml_value(v));
            }
        }
        if let Some(by) = &self.created_by {
            let _ = writeln!(front, "created_by: {}", string(by));
        }
        if let Some(n) = &self.notes {
            let _ = writeln!(front, "notes: {}", string(n));
        }
        let body = body.trim_end_matches(['\n', '\r']);
        if front.is_empty() && !body.starts_with("---") {
            format!("{body}\n")
        } else {
            format!("---\n{front}---\n{body}\n")
        }
    }
}

/// OpenAI request fields a version may carry in `params`.
pub const PARAMS: [&str; 12] = [
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "stop",
    "seed",
    "n",
    "logit_bias",
    "reasoning_effort",
    "max_completion_tokens",
    "parallel_tool_calls",
    "logprobs",
    "top_logprobs",
];

/// Sorts a model-settings mapping (Langfuse's `config`, Prompty's `model.parameters`) into
/// the front matter; returns the keys that have no place.
pub fn settings(map: &Map<String, Value>, front: &mut Front) -> Vec<String> {
    let mut left = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "model" if value.is_string() => front.model = value.as_str().map(str::to_owned),
            "temperature" if value.is_number() => front.temperature = value.as_f64(),
            "max_tokens" if value.is_u64() => front.max_tokens = value.as_u64(),
            "response_format" => front.response_format = Some(value.clone()),
            "json_schema" if value.is_object() => {
                front.response_format = Some(match value.get("schema") {
                    Some(_) => value.clone(),
                    None => serde_json::json!({"schema": value}),
                });
            }
            "tools" => front.tools = Some(value.clone()),
            k if PARAMS.contains(&k) => {
                front.params.insert(key.clone(), value.clone());
            }
            _ => left.push(key.clone()),
        }
    }
    left
}

/// A report per prompt: where it went, then a note for each thing not carried over or changed
/// on the way.
pub fn report(written: &Written, notes: &[String]) -> String {
    let versions: Vec<String> = written.versions.iter().map(|v| format!("v{v}")).collect();
    let mut out = format!(
        "imported `{}` ({}) into {}\n",
        written.name,
        versions.join(", "),
        written.folder.display()
    );
    for note in notes {
        let _ = writeln!(out, "  note: {note}");
    }
    out
}

/// Text from another tool whose `{{ name }}` placeholders are kept and every other template
/// syntax is made literal, so it renders as it was written. Returns the notes.
pub fn literal_except_variables(text: &str, notes: &mut Vec<String>, at: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = ["{{", "{%", "{#"]
        .iter()
        .filter_map(|open| rest.find(open))
        .min()
    {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(var) = variable(tail) {
            out.push_str(&format!("{{{{ {} }}}}", var.0));
            rest = &tail[var.1..];
            continue;
        }
        let open = &tail[..2];
        if open == "{{" {
            let shown: String = tail
                .find("}}")
                .map_or(tail, |end| &tail[..end + 2])
                .chars()
                .take(60)
                .collect();
            notes.push(format!(
                "{at}: Mustache `{shown}` has no Jinja equivalent; kept as literal text"
            ));
        }
        out.push_str(&format!("{{{{ '{open}' }}}}"));
        rest = &tail[2..];
    }
    out.push_str(rest);
    out
}

/// `{{ name }}` at the start of `text`: the name and the length matched.
fn variable(text: &str) -> Option<(&str, usize)> {
    let inner_end = text.find("}}")?;
    let inner = &text[2..inner_end];
    let name = inner.trim();
    (prompts::version::is_identifier(name) && !inner.contains('\n'))
        .then_some((name, inner_end + 2))
}

/// A line that is exactly a role line of a chat template (`user:`) but is text in the source:
/// made so the splitter does not take it as a role line, and still renders as written.
pub fn guard_role_lines(text: &str) -> String {
    text.split('\n')
        .map(|line| {
            let bare = line.strip_suffix('\r').unwrap_or(line).trim_end();
            if [
                "system:",
                "developer:",
                "user:",
                "assistant:",
                "conversation:",
            ]
            .contains(&bare)
            {
                format!("{{{{ '' }}}}{line}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_file_past_the_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_INPUT + 1).unwrap();
        let err = read_input(&path).unwrap_err();
        assert!(err.contains("big.json` is larger than 10 MiB"), "{err}");
        file.set_len(MAX_INPUT).unwrap();
        assert_eq!(read_input(&path).unwrap().len() as u64, MAX_INPUT);
    }

    #[test]
    fn names_become_folder_names() {
        assert_eq!(folder_name("Support/Triage Bot"), "support.triage_bot");
        assert_eq!(folder_name("__x"), "x");
        assert_eq!(folder_name("???"), "imported");
    }

    #[test]
    fn only_plain_variables_stay_template_syntax() {
        let mut notes = Vec::new();
        let out = literal_except_variables(
            "Hi {{name}}, {{ tier }}! {{#vip}}VIP{{/vip}} 50{%} {#x}",
            &mut notes,
            "v1",
        );
        assert_eq!(
            out,
            "Hi {{ name }}, {{ tier }}! {{ '{{' }}#vip}}VIP{{ '{{' }}/vip}} 50{{ '{%' }}} {{ '{#' }}x}"
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("`{{#vip}}`"), "{notes:?}");
        // It renders back to the source text.
        let mut env = crate::prompts::template::environment();
        env.add_template("t", &out).unwrap();
        let rendered = env
            .get_template("t")
            .unwrap()
            .render(minijinja::context! {name => "Al", tier => "pro"})
            .unwrap();
        assert_eq!(rendered, "Hi Al, pro! {{#vip}}VIP{{/vip}} 50{%} {#x}");
    }

    #[test]
    fn role_words_on_their_own_line_stay_text() {
        let out = guard_role_lines("a\nuser:\nb");
        assert_eq!(out, "a\n{{ '' }}user:\nb");
    }

    #[test]
    fn front_matter_is_written_in_order() {
        let front = Front {
            model: Some("gpt-4o".into()),
            temperature: Some(0.2),
            chat: true,
            notes: Some("from x".into()),
            ..Front::default()
        };
        assert_eq!(
            front.file("system:\nHi\n\n"),
            "---\nmodel: \"gpt-4o\"\ntemperature: 0.2\nchat: true\nnotes: \"from x\"\n---\nsystem:\nHi\n"
        );
        assert_eq!(Front::default().file("Hi"), "Hi\n");
    }
}
