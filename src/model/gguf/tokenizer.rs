//! `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` from a GGUF file's
//! `tokenizer.*` metadata, built as transformers' GGUF converter builds them
//! (`integrations/gguf/gguf_tokenizer_mapping.py`), so both give the same ids.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value as Json};

use super::container::{GgufFile, Value};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// llama.cpp's pre-tokenizer split of Llama 3 and the vocabularies built like it.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: as Llama 3's, but digits one by one.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The three tokenizer files of the imported folder.
pub struct TokenizerFiles {
    pub tokenizer: Json,
    pub tokenizer_config: Json,
    pub generation_config: Json,
}

/// The special token ids the GGUF names (`tokenizer.ggml.*_token_id`).
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
}

impl SpecialIds {
    pub fn read(gguf: &GgufFile) -> Result<SpecialIds> {
        let id = |key: &str| -> Result<Option<u32>> {
            let key = format!("tokenizer.ggml.{key}");
            match gguf.metadata.get(&key) {
                None => Ok(None),
                Some(v) => match v.as_u64().and_then(|id| u32::try_from(id).ok()) {
                    Some(id) => Ok(Some(id)),
                    None => bail!("{}: metadata key {key:?} is {v:?}, not a token id", gguf.path.display()),
                },
            }
        };
        Ok(SpecialIds {
            bos: id("bos_token_id")?,
            eos: id("eos_token_id")?,
            pad: id("padding_token_id")?,
            unk: id("unknown_token_id")?,
        })
    }
}

/// Builds and validates (with the tokenizers crate) the tokenizer files of a byte-level BPE
/// (`tokenizer.ggml.model` "gpt2") or SentencePiece BPE ("llama") vocabulary;
/// the model's embedding has `vocab_size` rows; `model_max_length` is the context length.
pub fn build(gguf: &GgufFile, vocab_size: usize, model_max_length: u64) -> Result<TokenizerFiles> {
    let path = gguf.path.display();
    let model = string(gguf, "tokenizer.ggml.model")?;
    let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
    if tokens.len() > vocab_size {
        bail!(
            "{path}: metadata key \"tokenizer.ggml.tokens\" lists {} tokens but tensor \"token_embd.weight\" has only {vocab_size} rows",
            tokens.len()
        );
    }
    let token_types = match gguf.metadata.get("tokenizer.ggml.token_type") {
        None => vec![],
        Some(v) => v
            .as_array()
            .and_then(|items| items.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
            .with_context(|| format!("{path}: metadata key \"tokenizer.ggml.token_type\" is not an integer array"))?,
    };
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        bail!(
            "{path}: metadata key \"tokenizer.ggml.token_type\" has {} entries but \"tokenizer.ggml.tokens\" has {}",
            token_types.len(),
            tokens.len()
        );
    }
    let ids = SpecialIds::read(gguf)?;
    let token_text = |id: Option<u32>, key: &str| -> Result<Json> {
        match id {
            None => Ok(Json::Null),
            Some(id) => tokens.get(id as usize).map(|t| json!(t)).with_context(|| {
                format!("{path}: metadata key \"tokenizer.ggml.{key}\" is {id}, past the {} tokens", tokens.len())
            }),
        }
    };
    let bos_text = token_text(ids.bos, "bos_token_id")?;
    let eos_text = token_text(ids.eos, "eos_token_id")?;
    let pad_text = token_text(ids.pad, "padding_token_id")?;
    let unk_text = token_text(ids.unk, "unknown_token_id")?;
    let flag = |key: &str, default: bool| -> Result<bool> {
        match gguf.metadata.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().with_context(|| format!("{path}: metadata key {key:?} is {v:?}, not a bool")),
        }
    };

    let vocabulary = match model {
        "gpt2" => byte_level(gguf, &tokens)?,
        "llama" => sentencepiece(gguf, &tokens)?,
        other => {
            let kind = match other {
                "bert" => " (WordPiece)",
                "t5" => " (Unigram)",
                _ => "",
            };
            bail!(
                "{path}: metadata key \"tokenizer.ggml.model\" is {other:?}{kind}, which sculpt import does not support; supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece BPE)"
            )
        }
    };
    // llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise.
    let add_bos = flag("tokenizer.ggml.add_bos_token", model == "llama")?;
    let add_eos = flag("tokenizer.ggml.add_eos_token", false)?;

    // Control tokens and the tokens the special ids name become special added tokens,
    // user-defined ones plain added tokens, so that all stay whole.
    let named: Vec<&str> = [&bos_text, &eos_text, &pad_text, &unk_text].iter().filter_map(|t| t.as_str()).collect();
    let mut added_tokens = vec![];
    for (id, token) in tokens.iter().enumerate() {
        let kind = token_types.get(id).copied();
        let special = match kind {
            _ if named.contains(token) => true,
            Some(TOKEN_TYPE_CONTROL) if (vocabulary.keeps_control)(token) => true,
            Some(TOKEN_TYPE_USER_DEFINED) if vocabulary.model["vocab"].get(*token).is_some() => false,
            _ => continue,
        };
        added_tokens.push(json!({
            "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }

    let post_processor = post_processor(gguf, &tokens, &ids, add_bos, add_eos)?;
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": vocabulary.pre_tokenizer,
        "post_processor": post_processor,
        "decoder": vocabulary.decoder,
        "model": vocabulary.model,
    });
    tokenizer
        .to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| anyhow!("{path}: the tokenizer built from the metadata does not load: {e}"))?;

    let mut tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos_text,
        "eos_token": eos_text,
        "pad_token": pad_text,
        "unk_token": unk_text,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(template) = gguf.metadata.get("tokenizer.chat_template") {
        let template = template
            .as_str()
            .with_context(|| format!("{path}: metadata key \"tokenizer.chat_template\" is not a string"))?;
        tokenizer_config["chat_template"] = json!(template);
    }
    let generation_config = json!({"bos_token_id": ids.bos, "eos_token_id": ids.eos, "pad_token_id": ids.pad});
    Ok(TokenizerFiles { tokenizer, tokenizer_config, generation_config })
}

/// The parts of tokenizer.json that depend on the kind of vocabulary.
struct Vocabulary {
    model: Json,
    pre_tokenizer: Json,
    decoder: Json,
    /// Whether a token marked control is kept as a special added token.
    keeps_control: Box<dyn Fn(&str) -> bool>,
}

/// GPT-2 style byte-level BPE: tokens are spelled in the byte alphabet, merges are listed.
fn byte_level(gguf: &GgufFile, tokens: &[&str]) -> Result<Vocabulary> {
    let merges = listed_merges(gguf)?;
    let alphabet = byte_alphabet();
    let alphabet_set: BTreeSet<char> = alphabet.iter().copied().collect();
    let in_alphabet = move |token: &str| token.chars().all(|c| alphabet_set.contains(&c));
    // A token written in plain text (not in the byte alphabet) is respelled byte by byte.
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(token) { token.to_string() } else { byte_spelling(token, &alphabet) };
        vocab.insert(spelled, json!(id));
    }
    Ok(Vocabulary {
        model: json!({
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges_json(&merges),
        }),
        pre_tokenizer: pre_tokenizer(gguf)?,
        decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        // A control token outside the byte alphabet is a llama.cpp mislabel (transformers skips it too).
        keeps_control: Box::new(in_alphabet),
    })
}

/// SentencePiece BPE (Llama 1/2, Mistral, TinyLlama...): "▁" stands for a space, unknown
/// characters fall back to the `<0xNN>` byte tokens, and the merges (which the file usually
/// lacks) are recovered from the token scores as transformers' `generate_merges` does.
fn sentencepiece(gguf: &GgufFile, tokens: &[&str]) -> Result<Vocabulary> {
    let merges = match gguf.metadata.get("tokenizer.ggml.merges") {
        Some(_) => listed_merges(gguf)?,
        None => {
            let scores = gguf
                .require("tokenizer.ggml.scores")?
                .as_array()
                .and_then(|items| items.iter().map(|v| v.as_f64()).collect::<Option<Vec<_>>>())
                .filter(|scores| scores.len() == tokens.len())
                .with_context(|| {
                    format!(
                        "{}: metadata key \"tokenizer.ggml.scores\" is not an array of one float per token",
                        gguf.path.display()
                    )
                })?;
            merges_from_scores(tokens, &scores)
        }
    };
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.to_string(), json!(id));
    }
    Ok(Vocabulary {
        model: json!({
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges_json(&merges),
        }),
        pre_tokenizer: json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false}),
        decoder: json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]}),
        keeps_control: Box::new(|_| true),
    })
}

/// `tokenizer.ggml.merges`: "left right" pairs, best first.
fn listed_merges(gguf: &GgufFile) -> Result<Vec<(String, String)>> {
    string_array(gguf, "tokenizer.ggml.merges")?
        .iter()
        .map(|m| {
            m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).with_context(|| {
                format!(
                    "{}: metadata key \"tokenizer.ggml.merges\": {m:?} is not two tokens separated by a space",
                    gguf.path.display()
                )
            })
        })
        .collect()
}

fn merges_json(merges: &[(String, String)]) -> Json {
    merges.iter().map(|(left, right)| json!([left, right])).collect()
}

/// Every split of a token into two tokens is a merge, ranked by the merged token's score
/// (best first), then by the longer left and right pieces; splits of one token are ordered by
/// the ids of their pieces. The sort is stable, as Python's in transformers' `generate_merges`.
fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<(String, String)> {
    // Later duplicates win ids, earlier ones keep their place (as Python dicts built in order).
    let mut ids = std::collections::HashMap::new();
    let mut first_score: Vec<(&str, f64)> = vec![];
    let mut seen = std::collections::HashMap::new();
    for (id, (&token, &score)) in tokens.iter().zip(scores).enumerate() {
        ids.insert(token, id);
        match seen.get(token) {
            Some(&at) => first_score[at] = (token, score),
            None => {
                seen.insert(token, first_score.len());
                first_score.push((token, score));
            }
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = vec![];
    for (token, score) in first_score {
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| (&token[..at], &token[at..]))
            .filter(|(left, right)| ids.contains_key(left) && ids.contains_key(right))
            .map(|(left, right)| (left, right, score))
            .collect();
        local.sort_by_key(|(left, right, _)| (ids[left], ids[right]));
        merges.extend(local);
    }
    let rank = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| rank(b).partial_cmp(&rank(a)).unwrap_or(std::cmp::Ordering::Equal));
    merges.into_iter().map(|(left, right, _)| (left.to_string(), right.to_string())).collect()
}

/// The split before byte-level encoding, chosen by `tokenizer.ggml.pre` as transformers does.
fn pre_tokenizer(gguf: &GgufFile) -> Result<Json> {
    let pre = match gguf.metadata.get("tokenizer.ggml.pre") {
        None => "default",
        Some(_) => string(gguf, "tokenizer.ggml.pre")?,
    };
    let split = match pre {
        // GPT-2's own regex inside the ByteLevel pre-tokenizer, as transformers does. llama.cpp's
        // "smollm" also splits digits one by one, but no token of SmolLM's vocabulary holds a
        // digit beside anything else, so the ids are the same.
        "default" | "gpt2" | "smollm" => {
            return Ok(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}))
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "qwen2" | "deepseek-r1-qwen" => QWEN2_SPLIT,
        other => bail!(
            "{}: metadata key \"tokenizer.ggml.pre\" is {other:?}, a pre-tokenizer sculpt import does not know; supported: default, gpt2, smollm, llama3, llama-v3, llama-bpe, falcon3, dbrx, smaug-bpe, qwen2, deepseek-r1-qwen",
            gguf.path.display()
        ),
    };
    Ok(json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
    ]}))
}

/// A template that puts BOS before and EOS after each sequence where the GGUF asks for them.
fn post_processor(gguf: &GgufFile, tokens: &[&str], ids: &SpecialIds, add_bos: bool, add_eos: bool) -> Result<Json> {
    let mut special_tokens = Map::new();
    let mut marker = |wanted: bool, id: Option<u32>, key: &str| -> Result<Option<Json>> {
        if !wanted {
            return Ok(None);
        }
        let id = id.with_context(|| {
            format!(
                "{}: the tokenizer adds {key} but metadata key \"tokenizer.ggml.{key}_id\" is missing",
                gguf.path.display()
            )
        })?;
        let text = *tokens.get(id as usize).with_context(|| {
            format!(
                "{}: metadata key \"tokenizer.ggml.{key}_id\" is {id}, past the {} tokens",
                gguf.path.display(),
                tokens.len()
            )
        })?;
        special_tokens.insert(text.to_string(), json!({"id": text, "ids": [id], "tokens": [text]}));
        Ok(Some(json!(text)))
    };
    let bos = marker(add_bos, ids.bos, "bos_token")?;
    let eos = marker(add_eos, ids.eos, "eos_token")?;
    let sequence = |type_id: u32, name: &str| -> Vec<Json> {
        let special = |text: &Json| json!({"SpecialToken": {"id": text, "type_id": type_id}});
        let mut pieces: Vec<Json> = bos.iter().map(special).collect();
        pieces.push(json!({"Sequence": {"id": name, "type_id": type_id}}));
        pieces.extend(eos.iter().map(special));
        pieces
    };
    let single = sequence(0, "A");
    let pair: Vec<Json> = single.iter().cloned().chain(sequence(1, "B")).collect();
    Ok(json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens}))
}

/// GPT-2's printable stand-ins for the 256 byte values (`bytes_to_unicode`): printable
/// Latin-1 bytes stand for themselves, the others for 256, 257, ... in order.
fn byte_alphabet() -> Vec<char> {
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let code = if printable {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(code).expect("below U+0200")
        })
        .collect()
}

fn byte_spelling(token: &str, alphabet: &[char]) -> String {
    token.bytes().map(|b| alphabet[b as usize]).collect()
}

fn string<'a>(gguf: &'a GgufFile, key: &str) -> Result<&'a str> {
    let v = gguf.require(key)?;
    v.as_str()
        .with_context(|| format!("{}: metadata key {key:?} is a {}, not a string", gguf.path.display(), v.type_name()))
}

fn string_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let v = gguf.require(key)?;
    v.as_array()
        .and_then(|items| items.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        .with_context(|| format!("{}: metadata key {key:?} is not an array of strings", gguf.path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_is_gpt2s() {
        let alphabet = byte_alphabet();
        assert_eq!(alphabet.iter().collect::<BTreeSet<_>>().len(), 256, "one stand-in per byte");
        assert_eq!((alphabet[b' ' as usize], alphabet[b'\n' as usize], alphabet[b'a' as usize]), ('Ġ', 'Ċ', 'a'));
        assert_eq!(byte_spelling("é", &alphabet), "Ã©");
    }

    /// transformers' `generate_merges` gives [('a', 'b'), ('b', 'a'), ('ab', 'a'), ('a', 'ba')]
    /// here: equal scores keep their order, longer left pieces first, a repeated token takes
    /// its last id.
    #[test]
    fn merges_are_recovered_from_scores_as_transformers_does() {
        let tokens = ["a", "b", "ab", "ba", "aba", "a"];
        let merges = merges_from_scores(&tokens, &[0.0, 0.0, -1.0, -1.0, -2.0, -0.5]);
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(pairs, [("a", "b"), ("b", "a"), ("ab", "a"), ("a", "ba")]);
    }
}
