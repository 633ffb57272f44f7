//! The continual-learning driver: tasks in sequence, every task evaluated after each one.

pub mod metrics;

pub use metrics::{metrics, Metrics};
