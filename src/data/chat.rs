//! Chat conversations in the JSON Lines data (read by [`super::jsonl::parse_jsonl`] beside
//! plain `{"input": ..., "target": ...}` lines): `{"messages": [{"role": ..., "content": ...}, ...]}`.
//! Every assistant message of a conversation becomes one [`Example`] that keeps the
//! conversation through that message ([`Example::chat`]); the loss falls only on the
//! assistant's tokens.
//!
//! A model with a chat template renders the conversation in its own format when the training
//! loop encodes the example. For a model without one, the example's input and target hold the
//! built-in rendering, one block per message (roles "system", "user", "assistant"):
//!
//! ```text
//! System: {content}
//! User: {content}
//! Assistant:
//! ```
//!
//! i.e. `"{Role}: {content}\n"` per earlier message, then `"Assistant:"` ([`builtin_prompt`]);
//! the target is `" {content}"` (the tokenizer adds the end-of-sequence token).

use anyhow::{bail, Context, Result};

use super::jsonl::{Conversation, Example};

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

/// The built-in prompt for the assistant's next message after `turns` (role, content):
/// each turn as [`render_turn`] writes it, then `"Assistant:"`.
pub fn builtin_prompt<'a>(turns: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<String> {
    let mut prompt = String::new();
    for (n, (role, content)) in turns.into_iter().enumerate() {
        prompt.push_str(&render_turn(role, content).with_context(|| format!("messages[{n}]"))?);
    }
    prompt.push_str("Assistant:");
    Ok(prompt)
}

/// The (prompt, answer) examples of one conversation line.
pub(crate) fn conversation(messages: &serde_json::Value, origin: &str, line: usize) -> Result<Vec<Example>> {
    let messages = messages.as_array().with_context(|| {
        format!("{origin}:{line}: \"messages\" must be a list of {{\"role\", \"content\"}} objects")
    })?;
    let mut turns = Vec::with_capacity(messages.len());
    let mut out = Vec::new();
    for (n, message) in messages.iter().enumerate() {
        let field = |key: &str| -> Result<&str> {
            message
                .get(key)
                .and_then(|v| v.as_str())
                .with_context(|| format!("{origin}:{line}: messages[{n}] needs a string \"{key}\""))
        };
        let (role, content) = (field("role")?, field("content")?);
        render_turn(role, content).with_context(|| format!("{origin}:{line}: messages[{n}]"))?;
        if role == "assistant" {
            out.push(Example {
                input: builtin_prompt(turns.iter().copied())?,
                target: format!(" {content}"),
                chat: Some(Conversation { messages: messages[..=n].to_vec(), origin: format!("{origin}:{line}") }),
            });
        }
        turns.push((role, content));
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
        Example::new(input.into(), target.into())
    }

    /// The examples without their conversations.
    fn plain(examples: Vec<Example>) -> Vec<Example> {
        examples.into_iter().map(|e| Example::new(e.input, e.target)).collect()
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
        let chat = |e: &Example| e.chat.as_ref().map(|c| (c.messages.len(), c.origin.clone(), c.answer().to_string()));
        assert_eq!(
            got.iter().map(chat).collect::<Vec<_>>(),
            [Some((3, "chat.jsonl:1".into(), "4".into())), Some((5, "chat.jsonl:1".into(), "6".into())), None]
        );
        assert_eq!(
            plain(got),
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
