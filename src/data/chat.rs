//! Chat data for decoder-only models: JSON Lines whose objects hold either a conversation
//! `{"messages": [{"role": ..., "content": ...}, ...]}` or a plain `{"input": ..., "target": ...}`
//! pair. Every assistant message of a conversation becomes one [`Example`]: the input is the
//! conversation before it rendered with [`render_turn`] plus the assistant header, the target is
//! the message's content, so the loss falls only on assistant tokens.
//!
//! The template, one block per message (roles "system", "user", "assistant"):
//!
//! ```text
//! System: {content}
//! User: {content}
//! Assistant:
//! ```
//!
//! i.e. `"{Role}: {content}\n"` per earlier message, then `"Assistant:"`; the target is
//! `" {content}"` (the tokenizer adds the end-of-sequence token).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::jsonl::{example_from, json_lines, Example};

/// The roles a message may have, with their rendered names.
const ROLES: [(&str, &str); 3] = [("system", "System"), ("user", "User"), ("assistant", "Assistant")];

/// One earlier message as it appears in a prompt: `"{Role}: {content}\n"`.
pub fn render_turn(role: &str, content: &str) -> Result<String> {
    let name = ROLES
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, name)| name)
        .with_context(|| format!("role {role:?} is not one of \"system\", \"user\", \"assistant\""))?;
    Ok(format!("{name}: {content}\n"))
}

/// The (prompt, answer) examples of one conversation line.
fn conversation(messages: &serde_json::Value, origin: &str, line: usize) -> Result<Vec<Example>> {
    let messages = messages.as_array().with_context(|| {
        format!("{origin}:{line}: \"messages\" must be a list of {{\"role\", \"content\"}} objects")
    })?;
    let mut history = String::new();
    let mut out = Vec::new();
    for (n, message) in messages.iter().enumerate() {
        let field = |key: &str| -> Result<&str> {
            message
                .get(key)
                .and_then(|v| v.as_str())
                .with_context(|| format!("{origin}:{line}: messages[{n}] needs a string \"{key}\""))
        };
        let (role, content) = (field("role")?, field("content")?);
        let turn = render_turn(role, content).with_context(|| format!("{origin}:{line}: messages[{n}]"))?;
        if role == "assistant" {
            out.push(Example { input: format!("{history}Assistant:"), target: format!(" {content}") });
        }
        history.push_str(&turn);
    }
    if out.is_empty() {
        bail!("{origin}:{line}: the conversation has no assistant message to learn from");
    }
    Ok(out)
}

/// Parses chat JSONL text; `origin` names the file in errors. Blank lines are skipped.
pub fn parse_chat_jsonl(text: &str, origin: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for line in json_lines(text, origin, r#"{"messages": [...]} or {"input": ..., "target": ...}"#) {
        let (n, value) = line?;
        match value.get("messages") {
            Some(messages) => out.extend(conversation(messages, origin, n)?),
            None => out.push(example_from(&value, origin, n)?),
        }
    }
    if out.is_empty() {
        bail!("{origin}: no examples (expected JSON Lines with \"messages\", or \"input\" and \"target\")");
    }
    Ok(out)
}

pub fn read_chat_jsonl(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_chat_jsonl(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(input: &str, target: &str) -> Example {
        Example { input: input.into(), target: target.into() }
    }

    #[test]
    fn every_assistant_message_becomes_an_example_of_the_conversation_before_it() {
        let text = concat!(
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},"#,
            r#" {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},"#,
            r#" {"role": "assistant", "content": "6"}]}"#,
            "\n\n",
            r#"{"input": "copy: a", "target": "a"}"#,
            "\n"
        );
        let got = parse_chat_jsonl(text, "chat.jsonl").unwrap();
        assert_eq!(
            got,
            vec![
                example("System: Be brief.\nUser: 2+2?\nAssistant:", " 4"),
                example("System: Be brief.\nUser: 2+2?\nAssistant: 4\nUser: and 3+3?\nAssistant:", " 6"),
                example("copy: a", "a"),
            ]
        );
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let cases = [
            ("{\"messages\": 3}", "chat.jsonl:1: \"messages\" must be a list"),
            ("\n{\"messages\": [{\"role\": \"user\"}]}", "chat.jsonl:2: messages[0] needs a string \"content\""),
            ("{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", "chat.jsonl:1: messages[0]: role \"tool\""),
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
                "chat.jsonl:1: the conversation has no assistant",
            ),
            ("{\"input\": \"a\"}", "chat.jsonl:1: missing \"target\""),
            ("{oops", "chat.jsonl:1: not valid JSON"),
            ("\n", "chat.jsonl: no examples"),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", parse_chat_jsonl(text, "chat.jsonl").unwrap_err());
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
