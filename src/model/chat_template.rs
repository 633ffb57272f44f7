//! A model's chat template, rendered as transformers' `tokenizer.apply_chat_template(messages,
//! tokenize=False, add_generation_prompt=...)` renders it.
//!
//! The template comes from the model folder's `chat_template.jinja` or, failing that, from
//! `tokenizer_config.json`'s `chat_template` (a string, or a list of `{"name", "template"}` of
//! which "default" is used). It is rendered with minijinja in the environment transformers builds
//! (`utils/chat_template_utils.py`, `_compile_jinja_template`): `trim_blocks` and `lstrip_blocks`
//! on, the trailing newline of the template dropped, loop controls, the functions
//! `raise_exception(msg)` and `strftime_now(fmt)`, a `tojson` filter that writes JSON as Python's
//! `json.dumps` does (no HTML escaping), and Python's string, list and dict methods (`.strip()`,
//! `.startswith()`, `.items()`...). The template sees `messages`, `add_generation_prompt`,
//! `tools` and `documents` (none) and the special-token strings of `tokenizer_config.json`
//! (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`, `cls_token`, `mask_token`,
//! each a string or a `{"content": ...}` object). transformers' `{% generation %}` block (which
//! only marks assistant text) renders its body.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

/// The file transformers writes a chat template into beside the tokenizer.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// The special-token attributes transformers passes to every template.
const SPECIAL_TOKENS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

const NAME: &str = "chat_template";

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The file the template was read from, for errors.
    origin: String,
    special_tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The chat template of the model folder `dir`, or None where it has none.
    pub fn load(dir: &Path) -> Result<Option<ChatTemplate>> {
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config: serde_json::Value = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("{}: cannot read", config_path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?
        } else {
            serde_json::Value::Null
        };
        let special_tokens =
            special_tokens(&config).with_context(|| format!("{}: special tokens", config_path.display()))?;
        let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
        if jinja_path.is_file() {
            let source = std::fs::read_to_string(&jinja_path)
                .with_context(|| format!("{}: cannot read", jinja_path.display()))?;
            return ChatTemplate::new(&source, &jinja_path.display().to_string(), special_tokens).map(Some);
        }
        let origin = format!("{} (chat_template)", config_path.display());
        let source = match &config["chat_template"] {
            serde_json::Value::Null => return Ok(None),
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(list) => {
                let mut names = Vec::new();
                let mut default = None;
                for entry in list {
                    let (Some(name), Some(template)) = (entry["name"].as_str(), entry["template"].as_str()) else {
                        bail!("{origin}: a list of chat templates holds {{\"name\": ..., \"template\": ...}} objects, got {entry}");
                    };
                    names.push(name.to_string());
                    if name == "default" {
                        default = Some(template.to_string());
                    }
                }
                default.with_context(|| {
                    format!("{origin}: none of the chat templates [{}] is named \"default\"", names.join(", "))
                })?
            }
            other => bail!("{origin}: must be a string or a list of {{\"name\", \"template\"}} objects, got {other}"),
        };
        ChatTemplate::new(&source, &origin, special_tokens).map(Some)
    }

    /// Compiles `source`; `origin` names where it came from in errors.
    pub fn new(source: &str, origin: &str, special_tokens: BTreeMap<String, String>) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(false)
                .build()
                .expect("the default delimiters are valid"),
        );
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        // Jinja2 prints none, booleans, lists and dicts as Python's str() does.
        env.set_formatter(|out, state, value| match value.kind() {
            ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => {
                out.write_str(&python_str(value)).map_err(|e| Error::new(ErrorKind::WriteFailure, e.to_string()))
            }
            _ => minijinja::escape_formatter(out, state, value),
        });
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {message}")))
        });
        env.add_function("strftime_now", |format: String| strftime(&format, now_utc()));
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, without_generation_tags(source))
            .map_err(|e| anyhow!("{origin}: the chat template does not compile: {}", describe(&e)))?;
        Ok(ChatTemplate { env, origin: origin.to_string(), special_tokens })
    }

    /// Where the template was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The special-token strings the template sees (`bos_token`...).
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special_tokens
    }

    /// The marker that ends a turn: the `eos_token` string, where there is one.
    pub fn end_of_turn(&self) -> Option<&str> {
        self.special_tokens.get("eos_token").map(String::as_str).filter(|s| !s.is_empty())
    }

    /// `messages` (JSON objects with "role" and "content" and any other fields) rendered as
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` renders them.
    pub fn render(&self, messages: &[serde_json::Value], add_generation_prompt: bool) -> Result<String> {
        let mut ctx: BTreeMap<String, Value> =
            self.special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        ctx.insert("messages".into(), Value::from(minijinja::value::Serde(messages)));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        let template = self.env.get_template(NAME).expect("added in new()");
        template.render(Value::from_pairs(ctx)).map_err(|e| {
            anyhow!(
                "{}: rendering the chat template (add_generation_prompt={}) failed: {}",
                self.origin,
                if add_generation_prompt { "true" } else { "false" },
                describe(&e)
            )
        })
    }

    /// The prompt and the answer of the last message of `messages` (an assistant message):
    /// the prompt is the rendering of the messages before it with the generation prompt, the
    /// answer the rest of the rendering of all of them (without it) after that prompt, through
    /// the first end-of-turn marker, trailing whitespace dropped (all of the rest, trailing
    /// whitespace dropped, where it holds no end-of-turn marker).
    pub fn split_turn(&self, messages: &[serde_json::Value]) -> Result<(String, String)> {
        let (_, before) = messages.split_last().context("an empty conversation has no turn to split")?;
        let prompt = self.render(before, true)?;
        let full = self.render(messages, false)?;
        let Some(rest) = full.strip_prefix(&prompt) else {
            let common = prompt
                .char_indices()
                .zip(full.chars())
                .find(|((_, a), b)| a != b)
                .map_or(prompt.len().min(full.len()), |((i, _), _)| i);
            bail!(
                "{}: the chat template cannot split this conversation into prompt and answer: its rendering through the last assistant message does not start with its rendering of the messages before it with add_generation_prompt=true (they differ from byte {common}: {:?} vs {:?}); training on chat data needs a template whose renderings extend each other",
                self.origin,
                snippet(&prompt, common),
                snippet(&full, common)
            );
        };
        let answer = match self.end_of_turn().and_then(|eot| rest.find(eot).map(|i| i + eot.len())) {
            Some(end) => &rest[..end],
            None => rest,
        };
        Ok((prompt, answer.trim_end().to_string()))
    }
}

/// Up to 40 characters of `text` from byte `at`.
fn snippet(text: &str, at: usize) -> String {
    text[at..].chars().take(40).collect()
}

/// A minijinja error with its cause and place ("... (in chat_template:3)").
fn describe(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

/// The special-token strings of a parsed `tokenizer_config.json` (Null: none).
fn special_tokens(config: &serde_json::Value) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for key in SPECIAL_TOKENS {
        let text = match &config[key] {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s.clone(),
            v => match v.get("content").and_then(|c| c.as_str()) {
                Some(s) => s.to_string(),
                None => bail!("{key} must be a string or a {{\"content\": ...}} object, got {v}"),
            },
        };
        out.insert(key.to_string(), text);
    }
    Ok(out)
}

/// `source` with transformers' `{% generation %}` and `{% endgeneration %}` tags (which only
/// mark assistant text) as `{% if true %}` and `{% endif %}`, which render their body and
/// strip whitespace alike.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let (open, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, close) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{open} if true {close}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{open} endif {close}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Python's `str()` of a template value: `None`, `True`, `[1, 'a']`, `{'k': None}`.
fn python_str(value: &Value) -> String {
    fn repr(value: &Value, out: &mut String) {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("None"),
            ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
            ValueKind::String => {
                let s = value.as_str().unwrap_or_default();
                let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
                out.push(quote);
                for c in s.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c if c == quote => {
                            out.push('\\');
                            out.push(c);
                        }
                        c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push(quote);
            }
            ValueKind::Seq | ValueKind::Iterable => {
                out.push('[');
                for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    repr(&item, out);
                }
                out.push(']');
            }
            ValueKind::Map => {
                out.push('{');
                for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    repr(&key, out);
                    out.push_str(": ");
                    repr(&value.get_item(&key).unwrap_or_default(), out);
                }
                out.push('}');
            }
            _ => out.push_str(&value.to_string()),
        }
    }
    let mut out = String::new();
    repr(value, &mut out);
    out
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)` with those keyword arguments.
fn tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_string()),
            _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be a number or a string")),
        },
    };
    let (item, key) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v.try_iter()?.map(|p| p.to_string()).collect();
            match parts.as_slice() {
                [a, b] => (a.clone(), b.clone()),
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
        _ => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item,
        key,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&value, 0, &mut out)?;
    Ok(out)
}

struct JsonStyle {
    indent: Option<String>,
    item: String,
    key: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl JsonStyle {
    fn write(&self, value: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&value.to_string()),
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(items.iter().map(|v| (None, v.clone())).collect(), '[', ']', depth, out)?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for k in value.try_iter()? {
                    let v = value.get_item(&k)?;
                    entries.push((Some(k.to_string()), v));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(entries, '{', '}', depth, out)?;
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a {} is not JSON serializable", value.kind()),
                ))
            }
        }
        Ok(())
    }

    fn container(
        &self,
        entries: Vec<(Option<String>, Value)>,
        open: char,
        close: char,
        depth: usize,
        out: &mut String,
    ) -> Result<(), Error> {
        out.push(open);
        if entries.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, (key, v)) in entries.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item);
            }
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(depth + 1));
            }
            if let Some(key) = key {
                self.string(key, out);
                out.push_str(&self.key);
            }
            self.write(v, depth + 1, out)?;
        }
        if let Some(indent) = &self.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth));
        }
        out.push(close);
        Ok(())
    }

    /// A JSON string as Python writes it.
    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Seconds since the Unix epoch, now (UTC; transformers uses the local time).
fn now_utc() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Python's `strftime` for the common directives (%Y %y %m %d %e %j %H %I %M %S %p %a %A %b
/// %B %%) of the UTC time `secs`; others are copied as they are.
fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    let (h, mi, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(source: &str) -> ChatTemplate {
        let tokens = BTreeMap::from([("eos_token".to_string(), "</s>".to_string())]);
        ChatTemplate::new(source, "t.jinja", tokens).unwrap()
    }

    #[test]
    fn python_methods_tojson_raise_exception_and_generation_tags() {
        let t = template(concat!(
            "{% for m in messages %}{{ m.content.strip().upper() }}|{{ m | tojson }}|",
            "{% if m.role.startswith('us') %}U{% endif %}{% endfor %}",
            "{%- generation -%} G {%- endgeneration %}",
            "{% if add_generation_prompt %}{{ raise_exception('no prompt here') }}{% endif %}\n"
        ));
        let messages = [json!({"role": "user", "content": " hé\n\"x\" "})];
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "HÉ\n\"X\"|{\"content\": \" hé\\n\\\"x\\\" \", \"role\": \"user\"}|UG"
        );
        let err = format!("{:#}", t.render(&messages, true).unwrap_err());
        assert!(err.contains("t.jinja: rendering the chat template (add_generation_prompt=true) failed"), "{err}");
        assert!(err.contains("no prompt here"), "{err}");
    }

    #[test]
    fn none_booleans_lists_and_dicts_print_as_python_does() {
        let t = template(
            "{{ none }}|{{ true }}|{{ false }}|{{ x }}|{{ [1, 'a', \"it's\", none] }}|{{ {'k': false} }}|{{ 2 }}",
        );
        assert_eq!(t.render(&[], false).unwrap(), "None|True|False||[1, 'a', \"it's\", None]|{'k': False}|2");
    }

    #[test]
    fn compile_errors_name_the_file() {
        let err = ChatTemplate::new("{% for m in messages %}", "x/chat_template.jinja", BTreeMap::new()).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("x/chat_template.jinja: the chat template does not compile"), "{err}");
    }

    #[test]
    fn strftime_formats_utc_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %A %j %y %B %I%p %%", 1709211909),
            "29 Feb 2024 13:05:09 Thursday 060 24 February 01PM %"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
    }

    #[test]
    fn tojson_writes_python_json() {
        let t = template("{{ messages[0] | tojson(indent=2) }}/{{ messages | tojson(separators=(',', ':')) }}");
        let messages = [json!({"a": [1, 2.5, null, true], "b": {}})];
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "{\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"b\": {}\n}/[{\"a\":[1,2.5,null,true],\"b\":{}}]"
        );
    }
}
