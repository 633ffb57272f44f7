//! Data: JSONL seq2seq examples and the built-in synthetic task stream.

pub mod jsonl;
pub mod synthetic;

pub use jsonl::{read_jsonl, Example};
