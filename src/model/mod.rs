//! Models on top of the kernels: what every family provides (family.rs), configuration,
//! checkpoint I/O, tokenizer, the T5 family and the decoder-only Llama family.

pub mod config;
pub mod family;
pub mod llama;
pub mod t5;
pub mod tokenizer;
pub mod weights;

pub use config::{FeedForward, T5Config};
pub use family::{BlockStates, Gradients, Model, Pair};
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
