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

/// Reuses buffers by (size class, usage). A training step asks for the same sizes every
/// step, so after the first one every request is a reuse.
pub(crate) struct BufferPool {
    free: HashMap<(u64, u32), Vec<wgpu::Buffer>>,
    stats: PoolStats,
    /// The adapter's largest buffer: no class is rounded past it.
    max_buffer_size: u64,
}

/// Sizes are rounded up to a class so that nearby requests (batches padded to different
/// lengths) share buffers: multiples of 256 bytes up to 8 KiB, then 16 classes per power of
/// two, so a buffer is at most 1/16 larger than asked. Every class is a multiple of 4, so a
/// buffer can be bound whole.
pub(crate) fn rounded_size(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    let octave = 63 - bytes.leading_zeros();
    let step = 256u64.max(1 << octave.saturating_sub(4));
    bytes.div_ceil(step) * step
}

impl BufferPool {
    pub fn new(max_buffer_size: u64) -> BufferPool {
        BufferPool { free: HashMap::new(), stats: PoolStats::default(), max_buffer_size }
    }

    pub fn acquire(&mut self, device: &wgpu::Device, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let size = rounded_size(bytes).min(self.max_buffer_size.max(bytes.div_ceil(4) * 4));
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

    /// Drops every free buffer. Sizes change between phases of a run (decompositions, training
    /// batches, evaluation), and buffers of a finished phase would otherwise stay allocated.
    pub fn release_free(&mut self) {
        self.free.clear();
        self.stats.bytes_allocated -= self.stats.bytes_free;
        self.stats.bytes_free = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearby_sizes_share_a_class_at_most_a_sixteenth_larger() {
        assert_eq!(rounded_size(1), 256);
        assert_eq!(rounded_size(4096), 4096);
        assert_eq!(rounded_size(4097), 4352);
        assert_eq!((rounded_size(8191), rounded_size(8193)), (8192, 8704), "steps of 256, then 512");
        // Two padded lengths of the same activation land in one class.
        assert_eq!(rounded_size(4 * 61 * 576 * 4), rounded_size(4 * 62 * 576 * 4));
        for bytes in (1..200_000u64).step_by(997).chain([1 << 27, (1 << 27) - 4, 123_456_789]) {
            let size = rounded_size(bytes);
            assert!(size >= bytes && size.is_multiple_of(4), "{bytes} -> {size}");
            assert!(size - bytes < 256 || (size - bytes) * 16 <= bytes, "{bytes} -> {size}");
        }
        assert_eq!(rounded_size(1 << 27), 1 << 27, "a power of two is its own class");
    }

    #[test]
    fn released_free_buffers_leave_the_pool_and_its_counts() {
        let gpu = crate::gpu::testing::gpu();
        let mut pool = BufferPool::new(1 << 20);
        let usage = wgpu::BufferUsages::STORAGE;
        let a = pool.acquire(gpu.device(), 1000, usage);
        let b = pool.acquire(gpu.device(), 3 << 20, usage);
        assert_eq!(b.size(), 3 << 20, "a request above the largest buffer is not rounded past it");
        pool.release(a);
        assert_eq!(pool.acquire(gpu.device(), 900, usage).size(), 1024, "a freed buffer serves its class");
        pool.release(b);
        assert_eq!(pool.stats().bytes_free, 3 << 20);
        pool.release_free();
        let stats = pool.stats();
        assert_eq!((stats.bytes_free, stats.bytes_allocated, stats.reuses), (0, 1024, 1));
        assert_eq!(pool.acquire(gpu.device(), 3 << 20, usage).size(), 3 << 20);
        assert_eq!(pool.stats().allocations, 3, "a released buffer is allocated anew");
    }
}
