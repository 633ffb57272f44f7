//! Models on top of the kernels: configuration, checkpoint I/O, tokenizer, the T5 family and
//! the decoder-only Llama family.

pub mod config;
pub mod gradients;
pub mod llama;
pub mod t5;
pub mod tokenizer;
pub mod weights;

pub use config::{FeedForward, T5Config};
pub use gradients::{Gradients, Parameters};
pub use llama::{CausalBatch, LlamaConfig, LlamaForwardOutput, LlamaModel};
pub use t5::{Batch, ForwardOutput, T5Model};
pub use tokenizer::Tokenizer;

use std::path::Path;

use anyhow::Result;

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
