//! Models on top of the kernels: configuration, checkpoint I/O, tokenizer and the T5 family.

pub mod config;
pub mod tokenizer;
pub mod weights;

pub use config::{FeedForward, T5Config};
pub use tokenizer::Tokenizer;
