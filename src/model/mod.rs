//! Models on top of the kernels: what every family provides (family.rs), configuration,
//! checkpoint I/O, GGUF import, tokenizer, the T5 family and the decoder-only Llama family.

pub mod chat_template;
pub mod config;
pub mod family;
pub mod gguf;
pub mod kv_cache;
pub mod llama;
pub mod lm_head;
pub mod t5;
pub mod targets;
pub mod tokenizer;
pub mod weights;

pub use chat_template::ChatTemplate;
pub use config::{FeedForward, T5Config};
pub use family::{BlockStates, Gradients, Model, Pair};
pub use llama::{CausalBatch, LlamaConfig, LlamaForwardOutput, LlamaModel};
pub use lm_head::argmax;
pub use t5::{Batch, ForwardOutput, T5Model};
pub use tokenizer::Tokenizer;

use std::path::Path;

use anyhow::{bail, Context, Result};

/// A Hugging Face model folder of any supported family, chosen by config.json's
/// `model_type` ("t5", "llama"), with its tokenizer checked to fit the embedding.
pub fn load_model(gpu: &crate::Gpu, dir: &Path) -> Result<(Box<dyn Model>, Tokenizer)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("{}: cannot read the model config (is {} a model folder?)", path.display(), dir.display())
    })?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    match config["model_type"].as_str() {
        // T5 configs of old checkpoints may lack model_type.
        Some("t5") | None => load_t5(gpu, dir).map(|(m, t)| (Box::new(m) as Box<dyn Model>, t)),
        Some("llama") => load_llama(gpu, dir).map(|(m, t)| (Box::new(m) as Box<dyn Model>, t)),
        Some(other) => bail!(
            "{}: model_type {other:?} is not supported (supported: \"t5\" encoder-decoder, \"llama\" decoder-only)",
            path.display()
        ),
    }
}

/// A T5 folder: model weights on the GPU and its tokenizer, checked to fit each other.
pub fn load_t5(gpu: &crate::Gpu, dir: &Path) -> Result<(T5Model, Tokenizer)> {
    let model = T5Model::load(gpu, dir)?;
    let tokenizer = Tokenizer::load(dir, model.config.vocab_size)?;
    Ok((model, tokenizer))
}

/// A Llama folder: model weights on the GPU and its tokenizer, checked to fit each other.
pub fn load_llama(gpu: &crate::Gpu, dir: &Path) -> Result<(LlamaModel, Tokenizer)> {
    let model = LlamaModel::load(gpu, dir)?;
    let tokenizer = Tokenizer::load(dir, model.config.vocab_size)?;
    Ok((model, tokenizer))
}
