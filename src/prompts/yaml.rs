//! YAML parsing for manifests and front matter, with errors reduced to a line and a sentence.

use serde::de::DeserializeOwned;

/// A YAML error: the line (1-based, within the parsed text) when known, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: Option<usize>,
    pub message: String,
}

/// A JSON value as one line of YAML flow text (JSON is YAML), with the characters YAML does
/// not allow unescaped (DEL, the C1 controls, U+FFFE, U+FFFF — serde_json writes them as they
/// are) written as `\uXXXX`: they can only occur inside strings, where both read the escape.
pub fn json_flow(value: &serde_json::Value) -> String {
    let text = value.to_string();
    let unsafe_char = |c: char| matches!(c, '\u{7f}'..='\u{9f}' | '\u{fffe}' | '\u{ffff}');
    if !text.contains(unsafe_char) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// How deeply a JSON value nests (a scalar is 0). The YAML reader refuses more than
/// [`MAX_DEPTH`] levels.
pub fn json_depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The deepest nesting written into front matter.
pub const MAX_DEPTH: usize = 60;

/// Parses `text` as `T`, turning the parser's error into a short message that names the line
/// and, for a misspelt key, the key that was probably meant.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str(text).map_err(|err| {
        let line = err
            .location()
            .map(|loc| loc.line() as usize)
            .filter(|&line| line > 0);
        let plain = err.without_snippet().to_string();
        // The plain message ends with " at line L, column C"; the caller prints the line itself.
        let message = match plain.rfind(" at line ") {
            Some(at) => plain[..at].to_owned(),
            None => plain,
        };
        YamlError {
            line,
            message: suggest_key(&message),
        }
    })
}

/// Turns serde's "unknown field `activ`, expected one of a, b" into
/// "unknown key `activ` (did you mean `active`?); known keys: `a`, `b`".
fn suggest_key(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((key, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let known: Vec<&str> = expected
        .trim_start_matches(", expected one of ")
        .trim_start_matches(", expected ")
        .split(", ")
        .map(|k| k.trim_matches('`'))
        .filter(|k| !k.is_empty())
        .collect();
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let listed = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match best {
        Some((_, k)) => format!("unknown key `{key}` (did you mean `{k}`?); known keys: {listed}"),
        None => format!("unknown key `{key}`; known keys: {listed}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        description: Option<String>,
        active: Option<u32>,
    }

    #[test]
    fn unknown_key_names_line_and_suggestion() {
        let err = parse::<Doc>("description: x\nactiv: 3\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(
            err.message,
            "unknown key `activ` (did you mean `active`?); known keys: `description`, `active`"
        );
    }

    #[test]
    fn type_error_names_line() {
        let err = parse::<Doc>("description: x\nactive: -1\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("u32"), "{}", err.message);
    }

    #[test]
    fn empty_document_is_all_defaults() {
        let doc = parse::<Doc>("").unwrap();
        assert!(doc.description.is_none() && doc.active.is_none());
    }

    #[test]
    fn json_flow_round_trips_through_the_yaml_reader() {
        let value = serde_json::json!({
            "description": "a\u{7f}b\u{85}c\u{9f}d\u{fffe}\u{ffff} # not a comment: x\n\u{2028}é",
            "<<": [1, -2, 1e30, true, null],
        });
        let text = json_flow(&value);
        assert!(!text.contains('\u{7f}'), "{text}");
        let back: serde_json::Value = parse(&format!("k: {text}\n")).unwrap();
        assert_eq!(back["k"], value);
        assert_eq!(json_depth(&serde_json::json!({"a": [[1]]})), 3);
    }
}
