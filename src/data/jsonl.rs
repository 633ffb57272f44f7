//! Examples from JSON Lines: one `{"input": ..., "target": ...}` object per line, or a chat
//! conversation `{"messages": [...]}` (each assistant message one example, see [`super::chat`]).

use std::fmt::Display;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One training or evaluation example: an input and the target the model should answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub input: String,
    pub target: String,
    /// For an example from a chat conversation, the conversation through the assistant
    /// message it learns, which a model with a chat template renders in its own format
    /// (`input` and `target` then hold the built-in "Role: content" rendering, which the
    /// training loop encodes for models without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<Conversation>,
}

impl Example {
    /// A plain example: `target` answers `input`.
    pub fn new(input: String, target: String) -> Example {
        Example { input, target, chat: None }
    }

    /// The answer the example teaches: its target, or a chat example's assistant message.
    pub fn answer(&self) -> &str {
        self.chat.as_ref().map_or(self.target.as_str(), |c| c.answer())
    }
}

/// A chat conversation through the assistant message one example learns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// The messages as the file holds them (objects with "role", "content" and any other
    /// fields), the last one the assistant message.
    pub messages: Vec<serde_json::Value>,
    /// `file:line` of the conversation, for errors.
    pub origin: String,
}

impl Conversation {
    /// The content of the assistant message the example learns.
    pub fn answer(&self) -> &str {
        self.messages.last().and_then(|m| m["content"].as_str()).unwrap_or_default()
    }
}

/// Parses JSONL text; `origin` names the file in errors. Blank lines are skipped.
pub fn parse_jsonl(text: &str, origin: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for line in json_lines(text, origin, r#"{"input": ..., "target": ...} or {"messages": [...]}"#) {
        let (n, value) = line?;
        match value.get("messages") {
            Some(messages) => out.extend(super::chat::conversation(messages, origin, n)?),
            None => out.push(example_from(&value, origin, n)?),
        }
    }
    if out.is_empty() {
        bail!("{origin}: no examples (expected JSON Lines with \"input\" and \"target\", or \"messages\")");
    }
    Ok(out)
}

/// Every non-blank line of JSONL text as (1-based line number, JSON value); `shape` shows
/// what a line should look like in the error of an unparsable one.
pub(crate) fn json_lines<'a>(
    text: &'a str,
    origin: &'a str,
    shape: &'a str,
) -> impl Iterator<Item = Result<(usize, serde_json::Value)>> + 'a {
    text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).map(move |(i, line)| {
        let value = serde_json::from_str(line.trim())
            .with_context(|| format!("{origin}:{}: not valid JSON; each line must be one object {shape}", i + 1))?;
        Ok((i + 1, value))
    })
}

/// The example of one parsed line `{"input": ..., "target": ...}`; errors name `origin:line`.
pub(crate) fn example_from(value: &serde_json::Value, origin: &str, line: usize) -> Result<Example> {
    let needs = "each line needs \"input\" and \"target\" strings";
    let field = |key: &str| string_field(value, key, format_args!("{origin}:{line}"), needs);
    Ok(Example::new(field("input")?, field("target")?))
}

/// The string `key` of one JSON record; errors start with `at`, which names the record
/// (`file:line`, `file: record 3`), and a missing key's error ends with `needs`, which says
/// what every record must hold.
pub(crate) fn string_field(record: &serde_json::Value, key: &str, at: impl Display, needs: &str) -> Result<String> {
    match record.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!("{at}: \"{key}\" must be a string, got {other}"),
        None => bail!("{at}: missing \"{key}\"; {needs}"),
    }
}

pub fn read_jsonl(path: &Path) -> Result<Vec<Example>> {
    let text = crate::io::read_text(path)?;
    parse_jsonl(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_examples_and_skips_blank_lines() {
        let got = parse_jsonl(
            "{\"input\": \"a\", \"target\": \"b\", \"extra\": 1}\n\n{\"input\":\"c\",\"target\":\"d\"}\n",
            "x.jsonl",
        )
        .unwrap();
        assert_eq!(got, vec![Example::new("a".into(), "b".into()), Example::new("c".into(), "d".into())]);
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let cases = [
            ("{\"input\": \"a\", \"target\": \"b\"}\n{oops", "x.jsonl:2: not valid JSON"),
            ("{\"input\": \"a\"}", "x.jsonl:1: missing \"target\""),
            ("{\"input\": 3, \"target\": \"b\"}", "x.jsonl:1: \"input\" must be a string"),
            ("\n\n", "x.jsonl: no examples"),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", parse_jsonl(text, "x.jsonl").unwrap_err());
            assert!(err.contains(want), "{err}");
        }
    }
}
