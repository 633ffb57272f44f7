//! Data: tasks and stream files, JSONL seq2seq examples, chat JSONL for decoder-only models,
//! O-LoRA's CL_Benchmark and TRACE layouts and the built-in synthetic task stream.

pub mod chat;
pub mod cl_benchmark;
pub mod jsonl;
pub mod prompts;
pub mod stream;
pub mod synthetic;
pub mod trace;

pub use jsonl::{read_jsonl, Conversation, Example};
pub use prompts::read_prompts;
pub use stream::{Stream, Task, TaskSettings};
