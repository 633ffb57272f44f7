//! GPU runtime: adapter and device selection, a buffer pool, a pipeline cache and a
//! step recorder that puts every dispatch of a step into one command buffer.

mod context;
mod launch;
mod pool;
mod recorder;

pub use context::{AdapterSummary, Gpu, GpuOptions};
pub use launch::{grid_1d, validate_wgsl, Binding, Launch, Shader, LOOP_BUDGET};
pub use pool::PoolStats;

/// The device of the crate's unit tests, one per test process.
#[cfg(test)]
pub(crate) mod testing {
    use super::Gpu;

    pub fn gpu() -> Gpu {
        Gpu::shared().expect("a GPU adapter (install mesa-vulkan-drivers for lavapipe)")
    }
}
