//! Models on top of the kernels: what every family provides (family.rs), the plumbing they
//! share (parameter store, greedy loop, KV cache, head), configuration, GGUF import, tokenizer,
//! the T5 family and the decoder-only families (Llama, Qwen2, Qwen3, Mistral).

pub mod chat_template;
pub mod config;
pub mod decoder;
pub mod family;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod lm_head;
pub mod params;
pub mod passes;
pub mod t5;
pub mod tokenizer;
pub mod weights;

pub use chat_template::ChatTemplate;
pub use config::{FeedForward, T5Config};
pub use decoder::{CausalBatch, DecoderConfig, DecoderForwardOutput, DecoderModel};
pub use family::{BlockStates, Gradients, MatrixInput, Model, Pair};
pub use lm_head::argmax;
pub use t5::{Batch, ForwardOutput, T5Model};
pub use tokenizer::Tokenizer;

use std::path::Path;

use anyhow::{Context, Result};

/// A Hugging Face model folder of any supported family, chosen by config.json's
/// `model_type` ("t5", or a decoder-only family: "llama", "qwen2", "qwen3", "mistral"), with
/// its tokenizer checked to fit the embedding.
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
        Some(model_type) => {
            decoder::family(model_type).with_context(|| format!("{} (or \"t5\")", path.display()))?;
            load_decoder(gpu, dir).map(|(m, t)| (Box::new(m) as Box<dyn Model>, t))
        }
    }
}

/// A T5 folder: model weights on the GPU and its tokenizer, checked to fit each other.
pub fn load_t5(gpu: &crate::Gpu, dir: &Path) -> Result<(T5Model, Tokenizer)> {
    let model = T5Model::load(gpu, dir)?;
    let tokenizer = Tokenizer::load(dir, model.config.vocab_size)?;
    Ok((model, tokenizer))
}

/// A decoder-only folder (any family of [`decoder::FAMILIES`]): model weights on the GPU and
/// its tokenizer, checked to fit each other.
pub fn load_decoder(gpu: &crate::Gpu, dir: &Path) -> Result<(DecoderModel, Tokenizer)> {
    let model = DecoderModel::load(gpu, dir)?;
    let tokenizer = Tokenizer::load(dir, model.config.vocab_size)?;
    Ok((model, tokenizer))
}
