//! Chat conversations in the JSON Lines data (read by [`super::jsonl::parse_jsonl`] beside
//! plain `{"input": ..., "target": ...}` lines): `{"messages": [{"role": ..., "content": ...}, ...]}`.
//! Every assistant message of a conversation becomes one [`Example`]: the input is the
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

use anyhow::{bail, Context, Result};

use super::jsonl::Example;

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
pub(crate) fn conversation(messages: &serde_json::Value, origin: &str, line: usize) -> Result<Vec<Example>> {
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
        let got = crate::data::jsonl::parse_jsonl(text, "chat.jsonl").unwrap();
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
            let err = format!("{:#}", crate::data::jsonl::parse_jsonl(text, "chat.jsonl").unwrap_err());
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
