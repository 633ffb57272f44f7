use std::collections::HashMap;

use anyhow::{bail, Result};

use super::Gpu;

pub(crate) struct BoundBuffer {
    pub buffer: wgpu::Buffer,
    pub size: u64,
}

pub(crate) enum Op {
    Dispatch {
        name: &'static str,
        pipeline: wgpu::ComputePipeline,
        params_offset: u64,
        params_size: u64,
        buffers: Vec<BoundBuffer>,
        workgroups: [u32; 3],
    },
    Clear {
        buffer: wgpu::Buffer,
        size: u64,
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
}

/// Timestamp queries hold at most this many dispatches per query set.
const PROFILED_DISPATCHES: usize = 2048;

/// The work of the current step: dispatches and copies in order, the uniform bytes of every
/// dispatch packed into one arena, and buffers freed during the step (they return to the
/// pool only after submission, so a later request in the same step can never alias them).
#[derive(Default)]
pub(crate) struct Recorder {
    pub ops: Vec<Op>,
    params: Vec<u8>,
    arena: Option<wgpu::Buffer>,
    pub deferred_free: Vec<wgpu::Buffer>,
    profiling: bool,
    profile: HashMap<String, (u64, f64)>,
}

impl Recorder {
    pub fn push_params(&mut self, bytes: &[u8], align: usize) -> u64 {
        let offset = self.params.len().div_ceil(align) * align;
        self.params.resize(offset, 0);
        self.params.extend_from_slice(bytes);
        // Uniform blocks are at least 16 bytes.
        self.params.resize(offset + bytes.len().max(16).div_ceil(16) * 16, 0);
        offset as u64
    }

    pub fn dispatch_count(&self) -> usize {
        self.ops.iter().filter(|op| matches!(op, Op::Dispatch { .. })).count()
    }
}

impl Gpu {
    /// Records a buffer-to-buffer copy into the current step.
    pub(crate) fn record_copy(
        &self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) {
        let mut rec = self.inner.recorder.lock().unwrap();
        rec.ops.push(Op::Copy { src: src.clone(), src_offset, dst: dst.clone(), dst_offset, size });
    }

    /// Records a zero fill of the first `size` bytes (a multiple of 4) of a buffer.
    pub(crate) fn record_clear(&self, buffer: &wgpu::Buffer, size: u64) {
        self.inner.recorder.lock().unwrap().ops.push(Op::Clear { buffer: buffer.clone(), size });
    }

    /// True while recorded work has not been submitted.
    pub fn has_pending_work(&self) -> bool {
        !self.inner.recorder.lock().unwrap().ops.is_empty()
    }

    /// Per-kernel GPU time from timestamp queries, when the adapter offers them. While on,
    /// every dispatch gets its own pass; figures accumulate until [`Gpu::take_profile`].
    pub fn set_profiling(&self, on: bool) -> bool {
        let supported = self.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        self.inner.recorder.lock().unwrap().profiling = on && supported;
        on && supported
    }

    /// (kernel entry point, dispatch count, total milliseconds), most expensive first.
    pub fn take_profile(&self) -> Result<Vec<(String, u64, f64)>> {
        self.flush()?;
        let mut rec = self.inner.recorder.lock().unwrap();
        let mut rows: Vec<(String, u64, f64)> = rec.profile.drain().map(|(k, (n, ms))| (k, n, ms)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(rows)
    }

    pub(crate) fn profile_full(&self) -> bool {
        let rec = self.inner.recorder.lock().unwrap();
        rec.profiling && rec.dispatch_count() >= PROFILED_DISPATCHES
    }

    /// Submits everything recorded since the last flush as one command buffer and waits
    /// for it; buffers freed meanwhile go back to the pool.
    pub fn flush(&self) -> Result<()> {
        let device = &self.inner.device;
        let mut rec = self.inner.recorder.lock().unwrap();
        if rec.ops.is_empty() {
            let freed = std::mem::take(&mut rec.deferred_free);
            drop(rec);
            let mut pool = self.inner.pool.lock().unwrap();
            freed.into_iter().for_each(|b| pool.release(b));
            return self.check_device();
        }
        let ops = std::mem::take(&mut rec.ops);
        let params = std::mem::take(&mut rec.params);
        let arena_size = crate::gpu::pool::rounded_size(params.len() as u64);
        if rec.arena.as_ref().is_none_or(|a| a.size() < arena_size) {
            let old = rec.arena.take();
            let mut pool = self.inner.pool.lock().unwrap();
            if let Some(old) = old {
                pool.release(old);
            }
            rec.arena = Some(pool.acquire(
                device,
                arena_size.next_power_of_two(),
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            ));
        }
        let arena = rec.arena.clone().unwrap();
        self.inner.queue.write_buffer(&arena, 0, &params);

        let profiling = rec.profiling;
        let mut names = Vec::new();
        let n_dispatch = ops.iter().filter(|op| matches!(op, Op::Dispatch { .. })).count();
        let queries = (profiling && n_dispatch > 0).then(|| {
            let count = (2 * n_dispatch) as u32;
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: None,
                ty: wgpu::QueryType::Timestamp,
                count,
            });
            let bytes = 8 * count as u64;
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (set, resolve, read, count)
        });

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("sculpt step") });
        let mut i = 0;
        let mut dispatch_index = 0u32;
        while i < ops.len() {
            match &ops[i] {
                Op::Clear { buffer, size } => {
                    encoder.clear_buffer(buffer, 0, Some(*size));
                    i += 1;
                }
                Op::Copy { src, src_offset, dst, dst_offset, size } => {
                    encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                    i += 1;
                }
                Op::Dispatch { .. } => {
                    let timestamp_writes = queries.as_ref().map(|(set, ..)| wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: Some(2 * dispatch_index),
                        end_of_pass_write_index: Some(2 * dispatch_index + 1),
                    });
                    let mut pass =
                        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
                    // Consecutive dispatches share one pass (one per dispatch while profiling).
                    while let Some(Op::Dispatch { name, pipeline, params_offset, params_size, buffers, workgroups }) =
                        ops.get(i)
                    {
                        let mut entries = vec![wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &arena,
                                offset: *params_offset,
                                size: wgpu::BufferSize::new(*params_size),
                            }),
                        }];
                        entries.extend(buffers.iter().enumerate().map(|(j, b)| wgpu::BindGroupEntry {
                            binding: 1 + j as u32,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &b.buffer,
                                offset: 0,
                                size: wgpu::BufferSize::new(b.size),
                            }),
                        }));
                        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: None,
                            layout: &pipeline.get_bind_group_layout(0),
                            entries: &entries,
                        });
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, &bind_group, &[]);
                        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
                        i += 1;
                        if profiling {
                            names.push(*name);
                            dispatch_index += 1;
                            break;
                        }
                    }
                }
            }
        }
        if let Some((set, resolve, read, count)) = &queries {
            encoder.resolve_query_set(set, 0..*count, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 8 * *count as u64);
        }
        let freed = std::mem::take(&mut rec.deferred_free);
        // Submit while holding the recorder: another thread's flush writes the shared params
        // arena, and a queue write staged before this submit would run before these dispatches.
        self.inner.queue.submit([encoder.finish()]);
        self.inner.submissions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(rec);
        if let Some((_, _, read, _)) = &queries {
            let stamps: Vec<u64> = self.map_read(read, read.size())?;
            let period = self.inner.queue.get_timestamp_period() as f64;
            let mut rec = self.inner.recorder.lock().unwrap();
            for (k, name) in names.into_iter().enumerate() {
                let ms = stamps[2 * k + 1].saturating_sub(stamps[2 * k]) as f64 * period * 1e-6;
                let slot = rec.profile.entry(name.to_string()).or_insert((0, 0.0));
                slot.0 += 1;
                slot.1 += ms;
            }
        } else {
            self.wait()?;
        }
        let mut pool = self.inner.pool.lock().unwrap();
        freed.into_iter().for_each(|b| pool.release(b));
        drop(pool);
        self.check_device()
    }

    fn wait(&self) -> Result<()> {
        if let Err(e) = self.inner.device.poll(wgpu::PollType::wait_indefinitely()) {
            bail!("waiting for the GPU failed: {e}");
        }
        Ok(())
    }

    /// Maps a MAP_READ buffer after the work writing it was submitted and copies out its contents.
    pub(crate) fn map_read<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        let (tx, rx) = std::sync::mpsc::channel();
        buffer.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("reading back a GPU buffer failed: {e}"),
            Err(_) => bail!("reading back a GPU buffer failed: the map callback never ran"),
        }
        let out = {
            let view = buffer
                .get_mapped_range(0..bytes)
                .map_err(|e| anyhow::anyhow!("reading back a GPU buffer failed: {e}"))?;
            bytemuck::pod_collect_to_vec(&view[..])
        };
        buffer.unmap();
        self.check_device()?;
        Ok(out)
    }
}
