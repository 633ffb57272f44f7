//! `tokenizer.json` through the tokenizers crate: encoding appends `</s>` (the file's
//! post-processor), decoding skips special tokens, as transformers' T5 tokenizer does; with it,
//! the model's chat template where the folder has one (see [`super::chat_template`]).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::chat_template::{ChatTemplate, CHAT_TEMPLATE_FILE};

pub const TOKENIZER_FILE: &str = "tokenizer.json";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    chat_template: Option<ChatTemplate>,
}

impl Tokenizer {
    /// Reads `DIR/tokenizer.json` and checks that every id it can produce has a row in
    /// the embedding table of `vocab_size` rows; reads the chat template of `DIR` where it has one.
    pub fn load(dir: &Path, vocab_size: usize) -> Result<Tokenizer> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.exists() {
            bail!("{}: no tokenizer file (a tokenizers JSON file is needed)", path.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        // The tokenizers crate panics on some malformed files (bad JSON in its decoder
        // section, templates naming undefined special tokens), so those are checked first.
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON (a tokenizers JSON file is needed)", path.display()))?;
        check_templates(&json["post_processor"]).with_context(|| format!("{}: post_processor", path.display()))?;
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let tokenizer_vocab = inner.get_vocab_size(true);
        if tokenizer_vocab > vocab_size {
            bail!(
                "{}: the tokenizer has {tokenizer_vocab} tokens but the model's embedding table has only {vocab_size} rows (config vocab_size); tokenizer and model do not belong together",
                path.display()
            );
        }
        let chat_template = ChatTemplate::load(dir)?;
        Ok(Tokenizer { inner, path, chat_template })
    }

    /// The model's chat template, where its folder has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The token that ends an assistant turn of the chat template (its `eos_token`), where
    /// there is a template and that marker is one token.
    pub fn end_of_turn_id(&self) -> Option<u32> {
        self.chat_template.as_ref()?.end_of_turn().and_then(|t| self.inner.token_to_id(t))
    }

    /// The tokenizer's files in its folder (tokenizer.json and, where present, the files
    /// transformers' tokenizers read beside it), copied into checkpoints.
    pub fn files(&self) -> Vec<PathBuf> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut files = vec![self.path.clone()];
        for name in [
            "tokenizer_config.json",
            "special_tokens_map.json",
            "spiece.model",
            "generation_config.json",
            CHAT_TEMPLATE_FILE,
        ] {
            let path = dir.join(name);
            if path.is_file() {
                files.push(path);
            }
        }
        files
    }

    /// Token ids of `text`, ending with `</s>`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding =
            self.inner.encode(text, true).map_err(|e| anyhow!("{}: encoding {text:?}: {e}", self.path.display()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of `text` without the tokenizer's added special tokens, as transformers
    /// encodes a rendered chat template (the template writes the special tokens it wants).
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<u32>> {
        let encoding =
            self.inner.encode(text, false).map_err(|e| anyhow!("{}: encoding {text:?}: {e}", self.path.display()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids` without special tokens (padding, `</s>`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("{}: decoding {ids:?}: {e}", self.path.display()))
    }
}

/// Every special token a template post-processor inserts must be defined in it (tokenizers
/// panics when encoding otherwise).
fn check_templates(processor: &serde_json::Value) -> Result<()> {
    if let Some(list) = processor["processors"].as_array() {
        return list.iter().try_for_each(check_templates);
    }
    if processor["type"] != "TemplateProcessing" {
        return Ok(());
    }
    for template in ["single", "pair"] {
        for piece in processor[template].as_array().into_iter().flatten() {
            if let Some(id) = piece["SpecialToken"]["id"].as_str() {
                if processor["special_tokens"].get(id).is_none() {
                    bail!(
                        "template {template:?} uses the special token {id:?}, which \"special_tokens\" does not define"
                    );
                }
            }
        }
    }
    Ok(())
}
