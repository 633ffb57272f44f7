//! GPU runtime: adapter and device selection, a buffer pool, a pipeline cache and a
//! step recorder that puts every dispatch of a step into one command buffer.

mod context;
mod launch;
mod pool;
mod recorder;

pub use context::{AdapterSummary, Gpu, GpuOptions};
pub use launch::{grid_1d, validate_wgsl, Binding, Launch, Shader, LOOP_BUDGET};
pub use pool::PoolStats;
