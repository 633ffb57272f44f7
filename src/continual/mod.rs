//! The continual-learning driver: tasks in sequence, every task evaluated after each one.

pub mod driver;
pub mod memory;
pub mod metrics;
pub mod recipe;
pub mod report;
pub mod retention;
pub mod run_dir;

pub use metrics::{metrics, Metrics};
