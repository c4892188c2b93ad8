//! Part of step 5 of the request path (inject): how the rendered prompt meets the client's own
//! system or developer message, per the version's `client_system` (SPEC §2).
//!
//! Frameworks send one of their own — LangChain's `SystemMessage`, the AI SDK's `system:`,
//! pydantic-ai's `instructions`, instructor's JSON modes — so most framework users would get
//! two system messages, which many self-hosted chat templates refuse. The default merges them.
//!
//! Only the client's leading messages are read, and only their `role` (and, to merge, their
//! `content`); every message is otherwise written upstream as the client wrote it.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::prompts::ClientSystem;

/// Where the parts of a chat conversation go: the one system message promptgate writes,
/// then the client's messages `kept` as they are, then the example pairs, then the client's
/// messages from `rest`.
#[derive(Debug, PartialEq)]
pub struct Head<'p> {
    pub system: Cow<'p, str>,
    pub kept: Range<usize>,
    pub rest: usize,
}

/// How many of `items` (as the client wrote them) lead with a `system` or `developer` role.
#[cfg(test)]
fn leading(items: &[&RawValue]) -> usize {
    items
        .iter()
        .take_while(|m| matches!(role(m).as_deref(), Some("system" | "developer")))
        .count()
}

/// Plans the head of a conversation whose leading system and developer messages (as the
/// client wrote them) are `leading_items`.
///
/// The client's leading `system` / `developer` messages (those before its first other message)
/// are the ones that meet the prompt: merged into one system message (prompt, blank line, the
/// client's text), kept after the prompt's, or dropped. A leading message whose content is not
/// plain text (an image part, say) cannot be merged without loss, so then they are all kept.
pub fn plan<'p, 'r>(
    leading_items: impl ExactSizeIterator<Item = &'r RawValue>,
    rendered: &'p str,
    mode: ClientSystem,
) -> Head<'p> {
    let leading = leading_items.len();
    let keep = |system| Head {
        system,
        kept: 0..leading,
        rest: leading,
    };
    match mode {
        ClientSystem::Separate => keep(Cow::Borrowed(rendered)),
        ClientSystem::Replace => Head {
            system: Cow::Borrowed(rendered),
            kept: 0..0,
            rest: leading,
        },
        ClientSystem::Merge if leading == 0 => keep(Cow::Borrowed(rendered)),
        ClientSystem::Merge => {
            let texts: Option<Vec<String>> = leading_items.map(content_text).collect();
            let Some(texts) = texts else {
                return keep(Cow::Borrowed(rendered));
            };
            let mut merged = rendered.to_owned();
            for text in texts.iter().filter(|t| !t.is_empty()) {
                merged.push_str("\n\n");
                merged.push_str(text);
            }
            Head {
                system: Cow::Owned(merged),
                kept: 0..0,
                rest: leading,
            }
        }
    }
}

/// Plans the head of a conversation for a chat template that has no leading system message of
/// its own: the client's leading system/developer messages stay first, as written, unless the
/// version says `replace`.
/// The client's messages `kept` first, and where the rest begins, given how many `leading`
/// system/developer messages it has.
pub fn plan_without_prompt(leading: usize, mode: ClientSystem) -> (Range<usize>, usize) {
    let kept = match mode {
        ClientSystem::Replace => 0..0,
        ClientSystem::Merge | ClientSystem::Separate => 0..leading,
    };
    (kept, leading)
}

/// What the Responses API's `instructions` become, given the client's own (`own`, as written):
/// the instructions promptgate writes, and the client's, as written, when they become an input
/// item of their own.
pub enum Instructions<'a> {
    /// The rendered prompt, a blank line, the client's instructions.
    Merged,
    /// The rendered prompt; the client's go first in `input` as a developer message.
    Apart(&'a RawValue),
    /// The rendered prompt only.
    Alone,
}

/// Decides the Responses API's `instructions` for the client's own (a JSON string, if any).
pub fn instructions(own: Option<&RawValue>, mode: ClientSystem) -> Instructions<'_> {
    let Some(own) = own.filter(|raw| raw.get().starts_with('"') && raw.get().len() > 2) else {
        return Instructions::Alone;
    };
    match mode {
        ClientSystem::Merge => Instructions::Merged,
        ClientSystem::Separate => Instructions::Apart(own),
        ClientSystem::Replace => Instructions::Alone,
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// A message's `role`, when it is an object with a string (or null) `role`.
pub fn role<'a>(message: &'a RawValue) -> Option<Cow<'a, str>> {
    serde_json::from_str::<Message<'a>>(message.get())
        .ok()
        .and_then(|m| m.role)
}

/// A message's content when it is text only: a string, or an array of text parts (joined by a
/// newline). `None` for anything else, or text that is not valid Unicode.
fn content_text(message: &RawValue) -> Option<String> {
    let content = serde_json::from_str::<Content<'_>>(message.get())
        .ok()?
        .content?;
    match serde_json::from_str::<Value>(content.get()).ok()? {
        Value::String(s) => Some(s),
        Value::Array(parts) => {
            let texts: Option<Vec<&str>> = parts
                .iter()
                .map(|p| match p.get("type").and_then(Value::as_str) {
                    Some("text" | "input_text") => p.get("text").and_then(Value::as_str),
                    _ => None,
                })
                .collect();
            texts.map(|t| t.join("\n"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(json: &str) -> Vec<&RawValue> {
        serde_json::from_str(json).unwrap()
    }

    fn plan_of<'p>(items: &[&RawValue], rendered: &'p str, mode: ClientSystem) -> Head<'p> {
        plan(items[..leading(items)].iter().copied(), rendered, mode)
    }

    const CONVERSATION: &str = r#"[{"role":"system","content":"Answer in French."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Salut"}]"#;

    #[test]
    fn merge_makes_one_leading_system_message() {
        let m = items(CONVERSATION);
        let head = plan_of(&m, "PROMPT", ClientSystem::Merge);
        assert_eq!(head.system, "PROMPT\n\nAnswer in French.");
        assert_eq!((head.kept, head.rest), (0..0, 1));
    }

    #[test]
    fn merge_takes_developer_messages_and_text_parts() {
        let m = items(
            r#"[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"system","content":"c"},{"role":"user","content":"Hi"}]"#,
        );
        let head = plan_of(&m, "P", ClientSystem::Merge);
        assert_eq!(head.system, "P\n\na\nb\n\nc");
        assert_eq!((head.kept, head.rest), (0..0, 2));
    }

    #[test]
    fn merge_without_a_client_system_message_is_the_prompt() {
        let m = items(r#"[{"role":"user","content":"Hi"}]"#);
        let head = plan_of(&m, "P", ClientSystem::Merge);
        assert_eq!(head.system, "P");
        assert_eq!((head.kept, head.rest), (0..0, 0));
    }

    #[test]
    fn merge_keeps_what_it_cannot_merge_without_loss() {
        let image = r#"[{"role":"system","content":[{"type":"image_url","image_url":{"url":"x"}}]},{"role":"user","content":"Hi"}]"#;
        let broken = r#"[{"role":"system","content":"half an emoji \ud83d"},{"role":"user","content":"Hi"}]"#;
        for json in [image, broken] {
            let m = items(json);
            let head = plan_of(&m, "P", ClientSystem::Merge);
            assert_eq!(head.system, "P");
            assert_eq!((head.kept, head.rest), (0..1, 1), "{json}");
        }
    }

    #[test]
    fn separate_keeps_both() {
        let m = items(CONVERSATION);
        let head = plan_of(&m, "P", ClientSystem::Separate);
        assert_eq!(head.system, "P");
        assert_eq!((head.kept, head.rest), (0..1, 1));
    }

    #[test]
    fn replace_drops_the_client_system_message() {
        let m = items(CONVERSATION);
        let head = plan_of(&m, "P", ClientSystem::Replace);
        assert_eq!((head.kept, head.rest), (0..0, 1));
    }

    #[test]
    fn a_later_system_message_is_left_alone() {
        let m = items(r#"[{"role":"user","content":"Hi"},{"role":"system","content":"late"}]"#);
        let head = plan_of(&m, "P", ClientSystem::Merge);
        assert_eq!((head.kept, head.rest), (0..0, 0));
    }

    #[test]
    fn instructions_follow_the_mode() {
        let own: &RawValue = serde_json::from_str(r#""Be brief.""#).unwrap();
        assert!(matches!(
            instructions(Some(own), ClientSystem::Merge),
            Instructions::Merged
        ));
        assert!(matches!(
            instructions(Some(own), ClientSystem::Separate),
            Instructions::Apart(_)
        ));
        assert!(matches!(
            instructions(Some(own), ClientSystem::Replace),
            Instructions::Alone
        ));
        assert!(matches!(
            instructions(None, ClientSystem::Separate),
            Instructions::Alone
        ));
        let empty: &RawValue = serde_json::from_str(r#""""#).unwrap();
        assert!(matches!(
            instructions(Some(empty), ClientSystem::Merge),
            Instructions::Alone
        ));
    }
}
