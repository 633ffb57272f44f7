//! The continual-learning driver: tasks in sequence, every task evaluated after each one.

pub mod driver;
pub mod memory;
pub mod metrics;
pub mod report;

pub use metrics::{metrics, Metrics};
