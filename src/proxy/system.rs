//! Part of step 4 of the request path (inject): how the rendered prompt meets the client's own
//! system or developer message, per the version's `client_system` (SPEC §2).
//!
//! Frameworks send one of their own — LangChain's `SystemMessage`, the AI SDK's `system:`,
//! pydantic-ai's `instructions`, instructor's JSON modes — so most framework users would get
//! two system messages, which many self-hosted chat templates refuse. The default merges them.

use serde_json::{Value, json};

use crate::prompts::ClientSystem;

/// Puts the rendered prompt and the example pairs at the head of a chat conversation.
///
/// The client's leading `system` / `developer` messages (those before its first other message)
/// are the ones that meet the prompt: merged into one system message (prompt, blank line, the
/// client's text), kept after the prompt's, or dropped. A leading message whose content is not
/// plain text (an image part, say) cannot be merged without loss, so it is kept as it is.
/// The example pairs follow the system messages, then the rest of the conversation.
pub fn into_messages(
    messages: &mut Vec<Value>,
    rendered: String,
    examples: Vec<Value>,
    mode: ClientSystem,
) {
    let leading = messages
        .iter()
        .take_while(|m| matches!(role(m), Some("system" | "developer")))
        .count();
    let mut head = Vec::with_capacity(1 + leading + examples.len());
    match mode {
        ClientSystem::Merge => {
            let texts: Option<Vec<String>> = messages[..leading]
                .iter()
                .map(|m| m.get("content").and_then(plain_text))
                .collect();
            match texts {
                Some(texts) => {
                    let mut merged = rendered;
                    for text in texts.iter().filter(|t| !t.is_empty()) {
                        merged.push_str("\n\n");
                        merged.push_str(text);
                    }
                    head.push(json!({"role": "system", "content": merged}));
                    messages.drain(..leading);
                }
                None => head.push(json!({"role": "system", "content": rendered})),
            }
        }
        ClientSystem::Separate => head.push(json!({"role": "system", "content": rendered})),
        ClientSystem::Replace => {
            head.push(json!({"role": "system", "content": rendered}));
            messages.drain(..leading);
        }
    }
    // Whatever of the client's leading messages is still there stays before the examples.
    let kept = messages
        .iter()
        .take_while(|m| matches!(role(m), Some("system" | "developer")))
        .count();
    head.extend(messages.drain(..kept));
    head.extend(examples);
    messages.splice(0..0, head);
}

/// The Responses API's `instructions` for a request whose own `instructions` are `own`, and
/// the input item that carries the client's instructions when they are kept apart.
pub fn into_instructions(
    rendered: String,
    own: Option<&Value>,
    mode: ClientSystem,
) -> (String, Option<Value>) {
    let own = match own {
        Some(Value::String(own)) if !own.is_empty() => own,
        _ => return (rendered, None),
    };
    match mode {
        ClientSystem::Merge => (format!("{rendered}\n\n{own}"), None),
        ClientSystem::Separate => (rendered, Some(json!({"role": "developer", "content": own}))),
        ClientSystem::Replace => (rendered, None),
    }
}

fn role(message: &Value) -> Option<&str> {
    message.get("role").and_then(Value::as_str)
}

/// A message content that is text only: a string, or an array of text parts (joined by a
/// newline). `None` for anything else.
fn plain_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
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

    fn conversation() -> Vec<Value> {
        vec![
            json!({"role": "system", "content": "Answer in French."}),
            json!({"role": "user", "content": "Hi"}),
            json!({"role": "assistant", "content": "Salut"}),
            json!({"role": "user", "content": "Bye"}),
        ]
    }

    fn pair() -> Vec<Value> {
        vec![
            json!({"role": "user", "content": "ex in"}),
            json!({"role": "assistant", "content": "ex out"}),
        ]
    }

    #[test]
    fn merge_makes_one_leading_system_message() {
        let mut m = conversation();
        into_messages(&mut m, "PROMPT".into(), pair(), ClientSystem::Merge);
        assert_eq!(
            m[0],
            json!({"role": "system", "content": "PROMPT\n\nAnswer in French."})
        );
        assert_eq!(m[1]["content"], "ex in");
        assert_eq!(m[2]["content"], "ex out");
        assert_eq!(&m[3..], &conversation()[1..]);
    }

    #[test]
    fn merge_takes_developer_messages_and_text_parts() {
        let mut m = vec![
            json!({"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            json!({"role": "system", "content": "c"}),
            json!({"role": "user", "content": "Hi"}),
        ];
        into_messages(&mut m, "P".into(), Vec::new(), ClientSystem::Merge);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], json!({"role": "system", "content": "P\n\na\nb\n\nc"}));
        assert_eq!(m[1]["role"], "user");
    }

    #[test]
    fn merge_without_a_client_system_message_inserts_one() {
        let mut m = vec![json!({"role": "user", "content": "Hi"})];
        into_messages(&mut m, "P".into(), Vec::new(), ClientSystem::Merge);
        assert_eq!(m[0], json!({"role": "system", "content": "P"}));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn merge_keeps_a_message_it_cannot_merge_without_loss() {
        let image = json!({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]});
        let mut m = vec![image.clone(), json!({"role": "user", "content": "Hi"})];
        into_messages(&mut m, "P".into(), pair(), ClientSystem::Merge);
        assert_eq!(m[0], json!({"role": "system", "content": "P"}));
        assert_eq!(m[1], image);
        assert_eq!(m[2]["content"], "ex in");
    }

    #[test]
    fn separate_keeps_both_then_examples() {
        let mut m = conversation();
        into_messages(&mut m, "P".into(), pair(), ClientSystem::Separate);
        assert_eq!(m[0], json!({"role": "system", "content": "P"}));
        assert_eq!(m[1], conversation()[0]);
        assert_eq!(m[2]["content"], "ex in");
        assert_eq!(m.len(), 4 + 1 + 2);
    }

    #[test]
    fn replace_drops_the_client_system_message() {
        let mut m = conversation();
        into_messages(&mut m, "P".into(), Vec::new(), ClientSystem::Replace);
        assert_eq!(m[0], json!({"role": "system", "content": "P"}));
        assert_eq!(&m[1..], &conversation()[1..]);
    }

    #[test]
    fn a_later_system_message_is_left_alone() {
        let mut m = vec![
            json!({"role": "user", "content": "Hi"}),
            json!({"role": "system", "content": "late"}),
        ];
        into_messages(&mut m, "P".into(), Vec::new(), ClientSystem::Merge);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2]["content"], "late");
    }

    #[test]
    fn instructions_follow_the_mode() {
        let own = json!("Be brief.");
        assert_eq!(
            into_instructions("P".into(), Some(&own), ClientSystem::Merge),
            ("P\n\nBe brief.".to_owned(), None)
        );
        assert_eq!(
            into_instructions("P".into(), Some(&own), ClientSystem::Separate),
            (
                "P".to_owned(),
                Some(json!({"role": "developer", "content": "Be brief."}))
            )
        );
        assert_eq!(
            into_instructions("P".into(), Some(&own), ClientSystem::Replace),
            ("P".to_owned(), None)
        );
        assert_eq!(
            into_instructions("P".into(), None, ClientSystem::Separate),
            ("P".to_owned(), None)
        );
    }
}
