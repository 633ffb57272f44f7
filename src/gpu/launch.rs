use anyhow::{anyhow, bail, Context, Result};

use super::recorder::{BoundBuffer, Op};
use super::Gpu;

/// lavapipe (llvmpipe) silently stops any loop after 65,535 iterations per invocation,
/// summed over all loops of that invocation. Every launcher computes its worst case and
/// the launch is refused above this, on every adapter, so results never depend on the driver.
pub const LOOP_BUDGET: u64 = 65_535;

/// A WGSL file of one kernel family, compiled once per device.
pub struct Shader {
    pub name: &'static str,
    pub wgsl: &'static str,
}

/// Parses and validates a shader with naga, so that an error names the file and line.
pub fn validate_wgsl(shader: &Shader) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let module = naga::front::wgsl::parse_str(shader.wgsl)
        .map_err(|e| anyhow!("shaders/{}.wgsl: {}", shader.name, e.emit_to_string(shader.wgsl)))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .map_err(|e| anyhow!("shaders/{}.wgsl: {}", shader.name, e.emit_to_string(shader.wgsl)))?;
    Ok((module, info))
}

/// A buffer that a [`Launch`] binds as storage. The tensor layer implements it, so that gpu
/// launches tensors without knowing them.
pub trait Binding {
    fn buffer(&self) -> &wgpu::Buffer;
    /// Bytes of data, checked against the adapter's buffer limits.
    fn byte_size(&self) -> u64;
    /// The bound range: whole 4-byte words covering the data.
    fn bound_size(&self) -> u64 {
        self.byte_size().max(4).div_ceil(4) * 4
    }
}

/// One compute dispatch. Binding 0 is the uniform `params` block; then the `read`
/// buffers as read-only storage (bindings 1..), then the `write` buffers as read-write storage.
pub struct Launch<'a, B: Binding> {
    pub shader: &'static Shader,
    pub entry: &'static str,
    /// Values for WGSL `override` constants (workgroup sizes, tile shapes).
    pub constants: &'a [(&'static str, f64)],
    pub params: &'a [u8],
    pub read: &'a [&'a B],
    pub write: &'a [&'a B],
    pub workgroups: [u32; 3],
    /// Worst-case loop iterations of one invocation, summed over its loops.
    pub loop_iterations: u64,
    /// Workgroup (shared) memory the entry point declares, in bytes.
    pub workgroup_bytes: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    constants: String,
    reads: usize,
    writes: usize,
}

/// Spreads `groups` workgroups over x and y so that no dimension passes the 65,535 limit;
/// kernels rebuild the linear index as `wg.x + wg.y * num_workgroups.x`.
pub fn grid_1d(groups: u64) -> [u32; 3] {
    const MAX: u64 = 65_535;
    if groups <= MAX {
        [groups.max(1) as u32, 1, 1]
    } else {
        let y = groups.div_ceil(MAX);
        [groups.div_ceil(y) as u32, y as u32, 1]
    }
}

impl Gpu {
    /// Records one dispatch into the current step; nothing runs until [`Gpu::flush`].
    pub fn launch<B: Binding>(&self, l: &Launch<B>) -> Result<()> {
        let what = format!("kernel {}::{}", l.shader.name, l.entry);
        if l.loop_iterations > LOOP_BUDGET {
            bail!(
                "{what} would run {} loop iterations per invocation; the limit is {LOOP_BUDGET} (lavapipe silently truncates longer loops). Use smaller shapes or a split kernel",
                l.loop_iterations
            );
        }
        let limits = &self.inner.limits;
        if l.workgroup_bytes > limits.max_compute_workgroup_storage_size as u64 {
            bail!(
                "{what} needs {} bytes of workgroup memory; this adapter allows {}",
                l.workgroup_bytes,
                limits.max_compute_workgroup_storage_size
            );
        }
        let max_groups = limits.max_compute_workgroups_per_dimension;
        if l.workgroups.iter().any(|&g| g > max_groups) {
            bail!("{what}: workgroup grid {:?} exceeds the adapter's {max_groups} per dimension", l.workgroups);
        }
        for t in l.read.iter().chain(l.write.iter()) {
            self.check_buffer_size(t.byte_size(), &what)?;
        }
        if l.workgroups.contains(&0) {
            return Ok(());
        }
        if self.profile_full() {
            self.flush()?;
        }
        let pipeline = self.pipeline(l).with_context(|| format!("building {what}"))?;
        let mut buffers = Vec::with_capacity(l.read.len() + l.write.len());
        buffers.extend(l.read.iter().map(|t| BoundBuffer { buffer: t.buffer().clone(), size: t.bound_size() }));
        buffers.extend(l.write.iter().map(|t| BoundBuffer { buffer: t.buffer().clone(), size: t.bound_size() }));
        let mut rec = self.inner.recorder.lock().unwrap();
        let params_offset = rec.push_params(l.params, limits.min_uniform_buffer_offset_alignment as usize);
        rec.ops.push(Op::Dispatch {
            name: l.entry,
            pipeline,
            params_offset,
            params_size: l.params.len().max(16) as u64,
            buffers,
            workgroups: l.workgroups,
        });
        Ok(())
    }

    fn pipeline<B: Binding>(&self, l: &Launch<B>) -> Result<wgpu::ComputePipeline> {
        let key = PipelineKey {
            shader: l.shader.name,
            entry: l.entry,
            constants: format!("{:?}", l.constants),
            reads: l.read.len(),
            writes: l.write.len(),
        };
        if let Some(p) = self.inner.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let module = self.module(l.shader)?;
        let device = &self.inner.device;
        let storage = |read_only: bool, binding: u32| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        let n_read = l.read.len() as u32;
        entries.extend((0..n_read).map(|i| storage(true, 1 + i)));
        entries.extend((0..l.write.len() as u32).map(|i| storage(false, 1 + n_read + i)));
        let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(l.entry),
            layout: Some(&layout),
            module: &module,
            entry_point: Some(l.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: l.constants,
                // Kernels initialise the workgroup memory they read; wgpu's zeroing takes minutes on GL.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        self.check_device()?;
        self.inner.pipelines.lock().unwrap().insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn module(&self, shader: &'static Shader) -> Result<wgpu::ShaderModule> {
        if let Some(m) = self.inner.modules.lock().unwrap().get(shader.name) {
            return Ok(m.clone());
        }
        // Validate with naga first: its message names the file and line, wgpu's would panic.
        validate_wgsl(shader)?;
        let module = self.inner.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(shader.wgsl.into()),
        });
        self.inner.modules.lock().unwrap().insert(shader.name, module.clone());
        Ok(module)
    }
}
