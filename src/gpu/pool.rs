use std::collections::HashMap;

/// Counters that let a test check that a training step allocates nothing after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// `create_buffer` calls so far.
    pub allocations: u64,
    /// Requests served from a freed buffer.
    pub reuses: u64,
    /// Bytes of every buffer the pool ever created (live or free).
    pub bytes_allocated: u64,
    /// Bytes sitting in the free lists.
    pub bytes_free: u64,
    /// The most bytes ever held by live buffers at once (allocated less free), since the
    /// device was made or [`crate::Gpu::reset_peak`]: what a run really needs.
    pub peak_bytes_in_use: u64,
}

impl PoolStats {
    /// Bytes held by live buffers now.
    pub fn bytes_in_use(&self) -> u64 {
        self.bytes_allocated - self.bytes_free
    }
}

/// Reuses buffers by exact (size, usage). A training step asks for the same sizes every
/// step, so after the first one every request is a reuse.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: HashMap<(u64, u32), Vec<wgpu::Buffer>>,
    stats: PoolStats,
}

/// Sizes are rounded up so that slightly different requests share buffers and every
/// buffer can be bound whole (binding sizes must be multiples of 4).
pub(crate) fn rounded_size(bytes: u64) -> u64 {
    bytes.max(4).div_ceil(256) * 256
}

impl BufferPool {
    pub fn acquire(&mut self, device: &wgpu::Device, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let size = rounded_size(bytes);
        if let Some(buffer) = self.free.get_mut(&(size, usage.bits())).and_then(|list| list.pop()) {
            self.stats.reuses += 1;
            self.stats.bytes_free -= size;
            self.note_peak();
            return buffer;
        }
        self.stats.allocations += 1;
        self.stats.bytes_allocated += size;
        self.note_peak();
        device.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage, mapped_at_creation: false })
    }

    pub fn release(&mut self, buffer: wgpu::Buffer) {
        let size = buffer.size();
        self.stats.bytes_free += size;
        self.free.entry((size, buffer.usage().bits())).or_default().push(buffer);
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    fn note_peak(&mut self) {
        self.stats.peak_bytes_in_use = self.stats.peak_bytes_in_use.max(self.stats.bytes_in_use());
    }

    /// Starts the peak over from the bytes in use now.
    pub fn reset_peak(&mut self) {
        self.stats.peak_bytes_in_use = self.stats.bytes_in_use();
    }
}
