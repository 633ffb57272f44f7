//! The continual-learning driver: tasks in sequence, every task evaluated after each one, and
//! the checkpoints a run resumes from.

pub mod checkpoint;
pub mod driver;
pub mod memory;
pub mod metrics;
pub mod recipe;
pub mod report;
pub mod retention;
pub mod run_dir;

pub use metrics::{metrics, Metrics};
