use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use super::launch::PipelineKey;
use super::pool::{BufferPool, PoolStats};
use super::recorder::Recorder;

/// How to pick and configure the device.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Case-insensitive substring of the adapter name to use (`sculpt info` lists names).
    pub adapter_name: Option<String>,
    /// Request only WebGPU's baseline limits and no optional features, so the portable
    /// fallback paths can be exercised on any machine.
    pub baseline: bool,
}

impl GpuOptions {
    /// Options from the environment: `SCULPT_ADAPTER` (name substring) and
    /// `SCULPT_BASELINE=1`. `WGPU_BACKEND` is honoured by wgpu itself.
    pub fn from_env() -> Self {
        GpuOptions {
            adapter_name: std::env::var("SCULPT_ADAPTER").ok().filter(|s| !s.is_empty()),
            baseline: std::env::var("SCULPT_BASELINE").is_ok_and(|v| v == "1"),
        }
    }
}

/// What `sculpt info` prints about the chosen adapter.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub features: Vec<String>,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_size: [u32; 3],
    pub max_compute_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_shader_stage: u32,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub loop_budget: u64,
}

pub(crate) struct Inner {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub pool: Mutex<BufferPool>,
    pub pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    pub modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pub recorder: Mutex<Recorder>,
    /// Command buffers submitted so far.
    pub submissions: std::sync::atomic::AtomicU64,
    /// Errors reported by the device outside of any call (validation, loss).
    pub device_error: Arc<Mutex<Option<String>>>,
}

/// A handle to the device; cheap to clone, shared by every tensor made on it.
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<Inner>,
}

fn device_lost_message(cause: &str) -> String {
    format!(
        "the GPU device was lost ({cause}): the driver reset, the GPU was removed or it ran out of memory; \
nothing after the newest checkpoint is kept, and continuing needs a new process (run the same command again)"
    )
}

const NO_ADAPTER: &str = "no GPU adapter found. sculpt needs a Vulkan, Metal or DX12 device; \
on a machine without a GPU install a software Vulkan driver (Debian/Ubuntu: `apt-get install \
mesa-vulkan-drivers`, which provides lavapipe)";

fn device_type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl Gpu {
    /// Opens the device chosen by the environment (`SCULPT_ADAPTER`, `SCULPT_BASELINE`, `WGPU_BACKEND`).
    pub fn from_env() -> Result<Gpu> {
        Gpu::new(&GpuOptions::from_env())
    }

    /// One device per process, opened from the environment on first use.
    pub fn shared() -> Result<Gpu> {
        static SHARED: std::sync::OnceLock<Result<Gpu, String>> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Gpu::from_env().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
    }

    pub fn new(options: &GpuOptions) -> Result<Gpu> {
        // Vulkan, Metal and DX12 first; GL only where none of them has an adapter.
        let adapters_of = |backends: wgpu::Backends| {
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
            desc.backends = backends.with_env();
            let instance = wgpu::Instance::new(desc);
            pollster::block_on(instance.enumerate_adapters(backends.with_env()))
        };
        let mut adapters = adapters_of(wgpu::Backends::PRIMARY);
        if adapters.is_empty() {
            adapters = adapters_of(wgpu::Backends::SECONDARY);
        }
        if adapters.is_empty() {
            bail!(NO_ADAPTER);
        }
        // Prefer a real GPU over a software one; keep enumeration order within a kind.
        adapters.sort_by_key(|a| device_type_rank(a.get_info().device_type));
        let adapter = match &options.adapter_name {
            Some(wanted) => {
                let wanted_lc = wanted.to_lowercase();
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted_lc))
                    .ok_or_else(|| anyhow!("no adapter name contains {wanted:?}; available adapters: {names:?}"))?
            }
            None => adapters.remove(0),
        };
        let info = adapter.get_info();
        let (features, limits) = if options.baseline {
            (wgpu::Features::empty(), wgpu::Limits::default())
        } else {
            let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
            (adapter.features() & wanted, adapter.limits())
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("sculpt"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| anyhow!("could not open device on adapter {:?}: {e}", info.name))?;

        let device_error = Arc::new(Mutex::new(None::<String>));
        let sink = device_error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap();
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let sink = device_error.clone();
        device.set_device_lost_callback(move |reason, message| {
            // Destroyed: our own `lose_device`, which records its message itself.
            if reason != wgpu::DeviceLostReason::Destroyed {
                *sink.lock().unwrap() = Some(device_lost_message(&format!("{reason:?}: {message}")));
            }
        });

        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            features: features.iter_names().map(|(n, _)| n.to_string()).collect(),
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size: [
                limits.max_compute_workgroup_size_x,
                limits.max_compute_workgroup_size_y,
                limits.max_compute_workgroup_size_z,
            ],
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            loop_budget: super::LOOP_BUDGET,
        };
        log::info!("sculpt: using {} ({}, {})", summary.name, summary.backend, summary.device_type);
        let pool = BufferPool::new(limits.max_buffer_size);
        Ok(Gpu {
            inner: Arc::new(Inner {
                device,
                queue,
                summary,
                limits,
                features,
                pool: Mutex::new(pool),
                pipelines: Mutex::new(HashMap::new()),
                modules: Mutex::new(HashMap::new()),
                recorder: Mutex::new(Recorder::default()),
                submissions: Default::default(),
                device_error,
            }),
        })
    }

    pub fn summary(&self) -> &AdapterSummary {
        &self.inner.summary
    }
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }
    pub fn has_f16(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SHADER_F16)
    }
    pub fn has_subgroups(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SUBGROUP)
    }
    /// True for a software rasteriser (lavapipe, WARP, SwiftShader).
    pub fn is_cpu(&self) -> bool {
        self.inner.summary.device_type == "Cpu"
    }
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }
    /// Command buffers submitted so far (a training step should add one, plus read-backs).
    pub fn submissions(&self) -> u64 {
        self.inner.submissions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counters of the buffer pool (allocations, reuses, bytes).
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.lock().unwrap().stats()
    }

    /// Drops the buffer pool's free buffers (at the end of a phase whose sizes will not recur).
    pub fn release_free_buffers(&self) {
        self.inner.pool.lock().unwrap().release_free()
    }

    /// Starts the pool's peak of bytes in use over from now (to measure one phase).
    pub fn reset_peak(&self) {
        self.inner.pool.lock().unwrap().reset_peak()
    }

    /// Destroys the device as a driver reset or a removed GPU would: every later GPU call
    /// fails with the device-lost error. For fault-injection tests of the run's recovery.
    pub fn lose_device(&self) {
        *self.inner.device_error.lock().unwrap() = Some(device_lost_message("destroyed by lose_device"));
        self.inner.device.destroy();
    }

    /// Fails with the first error the device reported asynchronously, if any.
    pub(crate) fn check_device(&self) -> Result<()> {
        match self.inner.device_error.lock().unwrap().clone() {
            Some(e) => bail!("GPU error: {e}"),
            None => Ok(()),
        }
    }

    /// Checks that one buffer of `bytes` fits the adapter, with advice when it does not.
    pub fn check_buffer_size(&self, bytes: u64, what: &str) -> Result<()> {
        let limits = &self.inner.limits;
        let max = limits.max_buffer_size.min(limits.max_storage_buffer_binding_size);
        if bytes > max {
            bail!(
                "{what} needs a GPU buffer of {bytes} bytes ({:.1} MiB) but adapter {:?} allows at most {max} bytes ({:.1} MiB) per binding; use a smaller batch, shorter sequences or a smaller model",
                bytes as f64 / 1048576.0,
                self.inner.summary.name,
                max as f64 / 1048576.0
            );
        }
        Ok(())
    }
}
