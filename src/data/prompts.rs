//! Prompts without answers (the retention set): JSON Lines of `{"messages": [...]}` whose
//! last message is the user's, or `{"input": ...}`. Each becomes an [`Example`] whose answer is
//! empty, so that it encodes as every other example does (a chat prompt rendered with the
//! model's template and its generation prompt).

use std::path::Path;

use anyhow::{bail, Result};

use super::jsonl::{json_lines, string_field, Example};

pub fn parse_prompts(text: &str, origin: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for line in json_lines(text, origin, r#"{"messages": [..., {"role": "user", ...}]} or {"input": ...}"#) {
        let (n, value) = line?;
        match value.get("messages") {
            Some(messages) => {
                let mut messages = messages.as_array().cloned().unwrap_or_default();
                if messages.last().and_then(|m| m["role"].as_str()) != Some("user") {
                    bail!("{origin}:{n}: a prompt's \"messages\" must end with a user message (the model answers it)");
                }
                messages.push(serde_json::json!({"role": "assistant", "content": ""}));
                let mut examples = super::chat::conversation(&serde_json::Value::Array(messages), origin, n)?;
                out.push(examples.pop().expect("one assistant message"));
            }
            None => {
                let needs = "each line needs \"messages\" or an \"input\" string";
                out.push(Example::new(
                    string_field(&value, "input", format_args!("{origin}:{n}"), needs)?,
                    String::new(),
                ));
            }
        }
    }
    if out.is_empty() {
        bail!("{origin}: no prompts (expected JSON Lines with \"messages\" or \"input\")");
    }
    Ok(out)
}

pub fn read_prompts(path: &Path) -> Result<Vec<Example>> {
    let text = crate::io::read_text(path)?;
    parse_prompts(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_and_plain_prompts_become_examples_without_answers() {
        let text = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi?\"}]}\n{\"input\": \"2+2=\"}\n";
        let got = parse_prompts(text, "r.jsonl").unwrap();
        assert_eq!(got.len(), 2);
        let chat = got[0].chat.as_ref().unwrap();
        assert_eq!((chat.messages.len(), chat.answer()), (3, ""));
        assert_eq!(got[0].input, "System: Be brief.\nUser: Hi?\nAssistant:");
        assert_eq!((got[1].input.as_str(), got[1].target.as_str()), ("2+2=", ""));
    }

    #[test]
    fn bad_prompts_name_the_line() {
        let err = |text: &str| parse_prompts(text, "r.jsonl").unwrap_err().to_string();
        assert!(err("{\"input\": \"a\"}\n{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}")
            .contains("r.jsonl:2: a prompt's"));
        assert!(err("{\"prompt\": \"a\"}").contains("r.jsonl:1: missing \"input\""));
        assert!(err("\n").contains("no prompts"));
    }
}
