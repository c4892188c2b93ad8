//! `vN.prompt`: optional YAML front matter between two `---` lines, then the template body.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::yaml;

/// The front matter as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrontMatter {
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    pub variables: Option<Vec<String>>,
    pub created_by: Option<String>,
    pub created_at: Option<String>,
    pub notes: Option<String>,
    /// How the rendered prompt meets the client's own system or developer message.
    pub client_system: Option<ClientSystem>,
    /// `true`: the body is a chat template of role sections (see `chat`).
    pub chat: Option<bool>,
    /// A JSON Schema for `prompt.variables` (a mapping, or a file beside the version).
    pub input_schema: Option<serde_json::Value>,
    /// Structured output: `json_object`, or `{schema, name, strict}` (schema inline or a file).
    pub response_format: Option<serde_json::Value>,
    /// Tools: a list, or a file beside the version holding one.
    pub tools: Option<serde_json::Value>,
}

/// How the rendered prompt meets a system or developer message the client sent itself
/// (LangChain's `SystemMessage`, the AI SDK's `system:`, pydantic-ai's `instructions` …), and
/// the Responses API's `instructions`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ClientSystem {
    /// One leading system message: the rendered prompt, a blank line, the client's text. Works
    /// with every server, including chat templates that refuse a second system message.
    #[default]
    Merge,
    /// The rendered prompt as its own system message, the client's message kept after it.
    Separate,
    /// The rendered prompt only: the client's system and developer messages are dropped.
    Replace,
}

impl TryFrom<String> for ClientSystem {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "merge" => Ok(ClientSystem::Merge),
            "separate" => Ok(ClientSystem::Separate),
            "replace" => Ok(ClientSystem::Replace),
            other => Err(format!(
                "`client_system` must be `merge`, `separate` or `replace`, not `{other}`"
            )),
        }
    }
}

impl ClientSystem {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientSystem::Merge => "merge",
            ClientSystem::Separate => "separate",
            ClientSystem::Replace => "replace",
        }
    }
}

/// A version file split into its parts.
#[derive(Debug, Clone)]
pub struct RawVersion {
    pub front: RawFrontMatter,
    /// The template body: the text after the front matter, trailing newlines removed.
    pub body: String,
    /// The file line on which the body starts (1-based), to offset template error lines.
    pub body_line: usize,
    /// The file line of each top-level front-matter key, to place problems found later.
    pub key_lines: Vec<(String, usize)>,
}

impl RawVersion {
    /// The file line of a top-level front-matter key.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.key_lines
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, line)| *line)
    }
}

/// A problem in a file: the line when known, and what is wrong.
pub type LineProblem = (Option<usize>, String);

/// Request fields a version may not set through `params`: they are the client's or ours.
const RESERVED_PARAMS: [&str; 3] = ["messages", "input", "prompt"];

/// Parses a version file. Errors carry the file line.
pub fn parse(text: &str) -> Result<RawVersion, Vec<LineProblem>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (front_text, body, body_line) = split(text)?;
    let front = match front_text {
        None => RawFrontMatter::default(),
        // Front matter starts on file line 2, after the opening `---`.
        Some(front_text) => yaml::parse::<Option<RawFrontMatter>>(front_text)
            .map(Option::unwrap_or_default)
            .map_err(|e| vec![(e.line.map(|l| l + 1), e.message)])?,
    };
    let mut problems = Vec::new();
    if let Some(t) = front.temperature
        && !(0.0..=2.0).contains(&t)
    {
        problems.push((
            None,
            format!("`temperature` must be between 0 and 2, not {t}"),
        ));
    }
    if front.max_tokens == Some(0) {
        problems.push((None, "`max_tokens` must be at least 1".to_owned()));
    }
    if let Some(model) = &front.model
        && model.trim().is_empty()
    {
        problems.push((None, "`model` is empty".to_owned()));
    }
    for key in front.params.iter().flat_map(|p| p.keys()) {
        if RESERVED_PARAMS.contains(&key.as_str()) {
            problems.push((
                None,
                format!(
                    "`params.{key}` cannot be set by a prompt version; it comes from the request"
                ),
            ));
        }
    }
    for (key, set) in [
        ("tools", front.tools.is_some()),
        ("response_format", front.response_format.is_some()),
        ("text", front.response_format.is_some()),
    ] {
        if set && front.params.as_ref().is_some_and(|p| p.contains_key(key)) {
            problems.push((
                None,
                format!("`params.{key}` and the version's own `tools`/`response_format` cannot both be set: keep one"),
            ));
        }
    }
    for name in front.variables.iter().flatten() {
        if !is_identifier(name) {
            problems.push((
                None,
                format!("`variables` holds `{name}`, which is not a valid variable name"),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let key_lines = front_text.map_or_else(Vec::new, key_lines);
    Ok(RawVersion {
        front,
        body: body.to_owned(),
        body_line,
        key_lines,
    })
}

/// Top-level keys of the front matter and their file lines (the front matter starts on line 2).
fn key_lines(front: &str) -> Vec<(String, usize)> {
    front
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let (key, _) = line.split_once(':')?;
            (!key.is_empty() && is_identifier(key)).then(|| (key.to_owned(), i + 2))
        })
        .collect()
}

/// Splits the text into front matter (if any), body and the body's first line.
fn split(text: &str) -> Result<(Option<&str>, &str, usize), Vec<LineProblem>> {
    let trim_end = |s: &str| s.trim_end_matches(['\n', '\r']).len();
    let first_line_end = text.find('\n').unwrap_or(text.len());
    if text[..first_line_end].trim_end() != "---" {
        return Ok((None, &text[..trim_end(text)], 1));
    }
    let mut offset = (first_line_end + 1).min(text.len());
    let mut line = 2;
    while offset < text.len() {
        let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        if text[offset..end].trim_end() == "---" {
            let front = &text[first_line_end + 1..offset];
            let body_start = (end + 1).min(text.len());
            let body = &text[body_start..];
            return Ok((Some(front), &body[..trim_end(body)], line + 1));
        }
        offset = end + 1;
        line += 1;
    }
    Err(vec![(
        Some(1),
        "front matter opened with `---` on line 1 is never closed: add a line `---` after it"
            .to_owned(),
    )])
}

/// The version's hash: the first 12 hex characters of the SHA-256 of the body.
pub fn hash(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let mut out = String::with_capacity(12);
    for byte in &digest[..6] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// `v12.prompt` → 12. Numbers are positive and written without leading zeros.
pub fn number_from_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('v')?.strip_suffix(".prompt")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A template variable name: what Jinja accepts as a plain identifier.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_and_body_are_split() {
        let v = parse(
            "---\nmodel: gpt-4o\ntemperature: 0.3\nvariables: [a, b]\n---\nHello {{ a }}\n\n",
        )
        .unwrap();
        assert_eq!(v.front.model.as_deref(), Some("gpt-4o"));
        assert_eq!(v.front.temperature, Some(0.3));
        assert_eq!(v.front.variables, Some(vec!["a".into(), "b".into()]));
        assert_eq!(v.body, "Hello {{ a }}");
        assert_eq!(v.body_line, 6);
    }

    #[test]
    fn file_without_front_matter_is_all_body() {
        let v = parse("You are helpful.\nBe brief.\n").unwrap();
        assert!(v.front.model.is_none());
        assert_eq!(v.body, "You are helpful.\nBe brief.");
        assert_eq!(v.body_line, 1);
    }

    #[test]
    fn crlf_files_work() {
        let v = parse("---\r\nmodel: m\r\n---\r\nHi\r\n").unwrap();
        assert_eq!(v.front.model.as_deref(), Some("m"));
        assert_eq!(v.body, "Hi");
    }

    #[test]
    fn unknown_front_matter_key_names_file_line() {
        let err = parse("---\nmodel: m\ntemprature: 0.3\n---\nHi").unwrap_err();
        assert_eq!(err[0].0, Some(3));
        assert!(err[0].1.contains("did you mean `temperature`"), "{err:?}");
    }

    #[test]
    fn unclosed_front_matter_is_an_error() {
        let err = parse("---\nmodel: m\nHi").unwrap_err();
        assert_eq!(err[0].0, Some(1));
        assert!(err[0].1.contains("never closed"));
    }

    #[test]
    fn bad_settings_are_all_reported() {
        let err =
            parse("---\ntemperature: 3\nmax_tokens: 0\nparams: {messages: []}\nvariables: [\"a b\"]\n---\nHi")
                .unwrap_err();
        assert_eq!(err.len(), 4, "{err:?}");
    }

    #[test]
    fn client_system_is_read_and_checked() {
        let v = parse("---\nclient_system: separate\n---\nHi").unwrap();
        assert_eq!(v.front.client_system, Some(ClientSystem::Separate));
        let v = parse("Hi").unwrap();
        assert_eq!(v.front.client_system, None);
        let err = parse("---\nmodel: m\nclient_system: both\n---\nHi").unwrap_err();
        assert_eq!(err[0].0, Some(3), "{err:?}");
        assert!(err[0].1.contains("`client_system` must be"), "{err:?}");
    }

    #[test]
    fn hash_is_sha256_prefix_of_body() {
        // sha256("hello") = 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
        assert_eq!(hash("hello"), "2cf24dba5fb0");
        let v = parse("---\nmodel: m\n---\nhello\n").unwrap();
        assert_eq!(hash(&v.body), "2cf24dba5fb0");
    }

    #[test]
    fn version_numbers_come_from_file_names() {
        assert_eq!(number_from_file_name("v1.prompt"), Some(1));
        assert_eq!(number_from_file_name("v12.prompt"), Some(12));
        assert_eq!(number_from_file_name("v0.prompt"), None);
        assert_eq!(number_from_file_name("v01.prompt"), None);
        assert_eq!(number_from_file_name("vx.prompt"), None);
        assert_eq!(number_from_file_name("v1.txt"), None);
    }
}
