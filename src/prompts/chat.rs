//! Chat templates: a version body made of role sections (`chat: true` in front matter).
//!
//! ```text
//! system:
//! You are a support agent for {{ company }}.
//!
//! conversation:
//!
//! user:
//! Answer the last message in {{ language }}.
//! ```
//!
//! A line that is exactly `system:`, `developer:`, `user:` or `assistant:` starts a message of
//! that role; the line `conversation:` marks where the client's own messages (and the few-shot
//! `format: messages` pairs) go — after the template's messages when there is none. Each
//! message is its own Jinja template, compiled once at load.

use std::fmt;

/// A message role a chat template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    fn of_line(line: &str) -> Option<Header> {
        match line.trim_end() {
            "system:" => Some(Header::Role(Role::System)),
            "developer:" => Some(Header::Role(Role::Developer)),
            "user:" => Some(Header::Role(Role::User)),
            "assistant:" => Some(Header::Role(Role::Assistant)),
            "conversation:" => Some(Header::Conversation),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

enum Header {
    Role(Role),
    Conversation,
}

/// One message of a chat template as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub role: Role,
    /// The message's template text: the lines under the role line, blank lines around removed.
    pub text: String,
    /// The body line (1-based) on which `text` starts, to offset template error lines.
    pub line: usize,
}

/// A chat template's messages and where the conversation goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sections {
    pub messages: Vec<Section>,
    /// How many of `messages` come before the client's messages.
    pub marker: usize,
}

/// Splits a chat template body into its messages. Errors carry the body line (1-based).
pub fn split(body: &str) -> Result<Sections, Vec<(usize, String)>> {
    let mut problems = Vec::new();
    let mut messages: Vec<Section> = Vec::new();
    let mut marker: Option<(usize, usize)> = None;
    // The section being read: its role (None before the first header or after the marker),
    // its lines, its first line.
    let mut current: Option<(Role, Vec<&str>, usize)> = None;
    let mut after_marker: Option<usize> = None;
    let finish = |current: &mut Option<(Role, Vec<&str>, usize)>,
                  messages: &mut Vec<Section>,
                  problems: &mut Vec<(usize, String)>| {
        if let Some((role, lines, header_line)) = current.take() {
            let first = lines.iter().position(|l| !l.trim().is_empty());
            let Some(first) = first else {
                problems.push((
                    header_line,
                    format!(
                        "message {} (`{role}`) is empty: write its text under the `{role}:` line",
                        messages.len() + 1
                    ),
                ));
                return;
            };
            let last = lines
                .iter()
                .rposition(|l| !l.trim().is_empty())
                .unwrap_or(first);
            messages.push(Section {
                role,
                text: lines[first..=last].join("\n"),
                line: header_line + 1 + first,
            });
        }
    };
    for (i, raw) in body.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        match Role::of_line(line) {
            Some(Header::Role(role)) => {
                finish(&mut current, &mut messages, &mut problems);
                after_marker = None;
                current = Some((role, Vec::new(), line_no));
            }
            Some(Header::Conversation) => {
                finish(&mut current, &mut messages, &mut problems);
                if let Some((first, _)) = marker {
                    problems.push((
                        line_no,
                        format!("a second `conversation:` marker (the first is on line {first}): the client's messages go in one place"),
                    ));
                } else {
                    marker = Some((line_no, messages.len()));
                }
                after_marker = Some(line_no);
            }
            None => match (&mut current, after_marker) {
                (Some((_, lines, _)), _) => lines.push(line),
                (None, _) if line.trim().is_empty() => {}
                (None, Some(m)) => problems.push((
                    line_no,
                    format!("text after the `conversation:` marker (line {m}) needs a role line first (`user:`, `assistant:`, …); the marker takes no text"),
                )),
                (None, None) => problems.push((
                    line_no,
                    "text before the first role line: a chat template starts with `system:`, `developer:`, `user:` or `assistant:` on a line of its own".to_owned(),
                )),
            },
        }
    }
    finish(&mut current, &mut messages, &mut problems);
    if messages.is_empty() && problems.is_empty() {
        problems.push((
            1,
            "a chat template needs at least one message: a line `system:` (or `user:`, …) and its text".to_owned(),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let marker = marker.map_or(messages.len(), |(_, at)| at);
    Ok(Sections { messages, marker })
}

/// A chat template compiled at load: one template a message.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub messages: Vec<ChatMessage>,
    /// How many of `messages` come before the client's messages.
    pub marker: usize,
}

impl ChatTemplate {
    /// True when the first message is a `system` message before the conversation: it is then
    /// the system prompt that meets the client's own (`client_system`) and takes the
    /// `format: system` examples.
    pub fn system_first(&self) -> bool {
        self.marker > 0
            && self
                .messages
                .first()
                .is_some_and(|m| m.role == Role::System)
    }
}

/// One message of a compiled chat template.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: Role,
    /// The template text, as written.
    pub text: String,
    /// The template's name in the environment.
    pub key: String,
    /// The whole message as JSON (`{"role":…,"content":…}`) when the text holds no Jinja
    /// syntax: written as it is on every request.
    pub constant: Option<Box<[u8]>>,
}

/// A message as JSON: `{"role":"user","content":"…"}`.
pub fn message_json(role: Role, content: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 32);
    out.extend_from_slice(br#"{"role":""#);
    out.extend_from_slice(role.as_str().as_bytes());
    out.extend_from_slice(br#"","content":"#);
    // Serialising a string into memory cannot fail.
    let _ = serde_json::to_writer(&mut out, content);
    out.push(b'}');
    out
}

/// The body of a chat template from messages as the admin API takes them:
/// `[{"role": "system", "content": "…"}, {"role": "conversation"}, …]`. Errors name the
/// message (`messages[1].role`).
pub fn body_of(messages: &[serde_json::Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut marker = false;
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = message.get("role").and_then(|r| r.as_str()).unwrap_or("");
        if let Some(map) = message.as_object()
            && let Some(key) = map
                .keys()
                .find(|k| !["role", "content"].contains(&k.as_str()))
        {
            return Err(format!(
                "`{at}` has an unknown key `{key}`: a message has `role` and `content`"
            ));
        }
        if !out.is_empty() {
            out.push('\n');
        }
        if role == "conversation" {
            if message.get("content").is_some() {
                return Err(format!(
                    "`{at}`: the `conversation` marker takes no `content`"
                ));
            }
            if marker {
                return Err(format!("`{at}`: a second `conversation` marker"));
            }
            marker = true;
            out.push_str("conversation:\n");
            continue;
        }
        let Some(Header::Role(role)) = Role::of_line(&format!("{role}:")) else {
            return Err(format!(
                "`{at}.role` must be `system`, `developer`, `user`, `assistant` or `conversation`, not `{role}`"
            ));
        };
        let Some(content) = message.get("content").and_then(|c| c.as_str()) else {
            return Err(format!(
                "`{at}.content` must be the message's template text"
            ));
        };
        if let Some(line) = content.lines().find(|l| Role::of_line(l).is_some()) {
            return Err(format!(
                "`{at}.content` has a line `{}`, which would start a new message; write it as `{{{{ '' }}}}{}`",
                line.trim_end(),
                line.trim_end()
            ));
        }
        out.push_str(role.as_str());
        out.push_str(":\n");
        out.push_str(content.trim_matches(['\n', '\r']));
        out.push('\n');
    }
    if out.is_empty() {
        return Err("`messages` is empty: give at least one message".to_owned());
    }
    Ok(out)
}

/// True when a template text holds no Jinja syntax, so it renders as itself.
pub fn is_constant(text: &str) -> bool {
    !(text.contains("{{") || text.contains("{%") || text.contains("{#"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_split_on_role_lines() {
        let s = split(
            "system:\nYou help {{ company }}.\n\nBe brief.\n\nconversation:\n\nuser:\nReply in {{ lang }}.\n",
        )
        .unwrap();
        assert_eq!(s.messages.len(), 2);
        assert_eq!(s.messages[0].role, Role::System);
        assert_eq!(s.messages[0].text, "You help {{ company }}.\n\nBe brief.");
        assert_eq!(s.messages[0].line, 2);
        assert_eq!(s.messages[1].role, Role::User);
        assert_eq!(s.messages[1].text, "Reply in {{ lang }}.");
        assert_eq!(s.messages[1].line, 9);
        assert_eq!(s.marker, 1);
    }

    #[test]
    fn without_a_marker_the_conversation_comes_last() {
        let s = split("system:\nA\nuser:\nB\nassistant:\nC").unwrap();
        let roles: Vec<Role> = s.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant]);
        assert_eq!(s.marker, 3);
    }

    #[test]
    fn crlf_and_trailing_spaces_on_role_lines_work() {
        let s = split("system:  \r\nHi\r\nuser:\r\nthere").unwrap();
        assert_eq!(s.messages[0].text, "Hi");
        assert_eq!(s.messages[1].text, "there");
    }

    #[test]
    fn a_role_word_inside_text_is_text() {
        let s = split("system:\nThe user: is always right.\n  user:\nsystem: no").unwrap();
        assert_eq!(s.messages.len(), 1);
    }

    #[test]
    fn problems_name_the_line() {
        let err =
            split("Hello\nsystem:\n\nuser:\nB\nconversation:\nstray\nconversation:\n").unwrap_err();
        let lines: Vec<usize> = err.iter().map(|p| p.0).collect();
        assert_eq!(lines, [1, 2, 7, 8], "{err:?}");
        assert!(
            err[1].1.contains("message 1 (`system`) is empty"),
            "{err:?}"
        );
        assert!(split("").is_err());
        assert!(split("conversation:\n").is_err());
    }

    #[test]
    fn admin_messages_become_a_body_that_splits_back() {
        use serde_json::json;
        let body = body_of(&[
            json!({"role": "system", "content": "Hi {{ x }}"}),
            json!({"role": "conversation"}),
            json!({"role": "user", "content": "Bye"}),
        ])
        .unwrap();
        assert_eq!(body, "system:\nHi {{ x }}\n\nconversation:\n\nuser:\nBye\n");
        let s = split(&body).unwrap();
        assert_eq!((s.messages.len(), s.marker), (2, 1));
        for (messages, needle) in [
            (
                vec![json!({"role": "tool", "content": "x"})],
                "`messages[0].role` must be",
            ),
            (
                vec![json!({"role": "user"})],
                "`messages[0].content` must be",
            ),
            (
                vec![json!({"role": "user", "content": "a\nuser:\nb"})],
                "has a line `user:`",
            ),
            (
                vec![json!({"role": "user", "content": "a", "name": "x"})],
                "unknown key `name`",
            ),
            (vec![], "`messages` is empty"),
        ] {
            let err = body_of(&messages).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn constant_text_is_recognised() {
        assert!(is_constant("Plain text: {not jinja}"));
        assert!(!is_constant("Hi {{ x }}"));
        assert!(!is_constant("{% if x %}"));
    }
}
