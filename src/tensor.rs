//! A tensor is a shape, a dtype and a pooled GPU buffer, always contiguous and row-major.

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::gpu::{Binding, Gpu};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Storage-only for now; compute converts to f32.
    F16,
    BF16,
    U32,
    I32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            _ => 4,
        }
    }
}

struct Storage {
    gpu: Gpu,
    buffer: Option<wgpu::Buffer>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            // Back to the pool only once the recorded work that may read it has been submitted.
            self.gpu.inner.recorder.lock().unwrap().deferred_free.push(buffer);
        }
    }
}

/// Cloning shares the buffer.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Vec<usize>,
    dtype: DType,
}

const STORAGE_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

impl Binding for Tensor {
    fn buffer(&self) -> &wgpu::Buffer {
        self.storage.buffer.as_ref().expect("tensor buffer is present until drop")
    }
    // Tensor::byte_size is inherent too, so that callers need not import Binding for it.
    fn byte_size(&self) -> u64 {
        Tensor::byte_size(self)
    }
}

impl Tensor {
    /// A tensor with undefined contents (a reused buffer keeps old values).
    pub fn uninit(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = (shape.iter().product::<usize>() * dtype.size()) as u64;
        gpu.check_buffer_size(bytes, &format!("a tensor of shape {shape:?}"))?;
        let buffer = gpu.inner.pool.lock().unwrap().acquire(gpu.device(), bytes, STORAGE_USAGE);
        Ok(Tensor {
            storage: Arc::new(Storage { gpu: gpu.clone(), buffer: Some(buffer) }),
            shape: shape.to_vec(),
            dtype,
        })
    }

    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = Tensor::uninit(gpu, shape, dtype)?;
        t.fill_zero()?;
        Ok(t)
    }

    pub fn from_f32(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Tensor::from_pod(gpu, shape, DType::F32, data)
    }

    pub fn from_u32(gpu: &Gpu, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        Tensor::from_pod(gpu, shape, DType::U32, data)
    }

    pub fn from_i32(gpu: &Gpu, shape: &[usize], data: &[i32]) -> Result<Tensor> {
        Tensor::from_pod(gpu, shape, DType::I32, data)
    }

    fn from_pod<T: bytemuck::Pod>(gpu: &Gpu, shape: &[usize], dtype: DType, data: &[T]) -> Result<Tensor> {
        let t = Tensor::uninit(gpu, shape, dtype)?;
        // A buffer fresh from the pool is not used by any recorded work, so the upload needs no
        // flush and a step that uploads its inputs still records into one command buffer.
        t.upload(data)?;
        Ok(t)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.storage.gpu
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn byte_size(&self) -> u64 {
        (self.len() * self.dtype.size()) as u64
    }

    /// Same buffer, new shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.len() {
            bail!("cannot reshape {:?} to {shape:?}", self.shape);
        }
        Ok(Tensor { storage: self.storage.clone(), shape: shape.to_vec(), dtype: self.dtype })
    }

    /// Overwrites the contents from the host. Work already recorded is submitted first so
    /// that it sees the old contents.
    pub fn write<T: bytemuck::Pod>(&self, data: &[T]) -> Result<()> {
        if self.gpu().has_pending_work() {
            self.gpu().flush()?;
        }
        self.upload(data)
    }

    /// Queues the host data into the buffer; it lands before the next submitted step.
    fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len() as u64 != self.byte_size() {
            bail!(
                "writing {} bytes into a tensor of shape {:?} ({:?}) that holds {}",
                bytes.len(),
                self.shape,
                self.dtype,
                self.byte_size()
            );
        }
        let gpu = self.gpu();
        if bytes.len().is_multiple_of(4) {
            gpu.queue().write_buffer(self.buffer(), 0, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            gpu.queue().write_buffer(self.buffer(), 0, &padded);
        }
        Ok(())
    }

    /// Records a zero fill into the current step (any dtype).
    pub fn fill_zero(&self) -> Result<()> {
        self.gpu().record_clear(self.buffer(), self.bound_size());
        Ok(())
    }

    /// Records a copy of `src` into this tensor (same byte size).
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if src.byte_size() != self.byte_size() {
            bail!("copy between tensors of different sizes: {:?} -> {:?}", src.shape, self.shape);
        }
        self.gpu().record_copy(src.buffer(), 0, self.buffer(), 0, self.bound_size());
        Ok(())
    }

    /// Submits pending work and reads the contents back.
    pub fn to_vec<T: bytemuck::Pod>(&self) -> Result<Vec<T>> {
        let gpu = self.gpu();
        let size = self.bound_size();
        let staging = gpu.inner.pool.lock().unwrap().acquire(
            gpu.device(),
            size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        gpu.record_copy(self.buffer(), 0, &staging, 0, size);
        gpu.flush()?;
        let bytes: Vec<u8> = gpu.map_read(&staging, size)?;
        gpu.inner.pool.lock().unwrap().release(staging);
        Ok(bytemuck::pod_collect_to_vec(&bytes[..self.byte_size() as usize]))
    }

    pub fn to_f32(&self) -> Result<Vec<f32>> {
        if self.dtype != DType::F32 {
            bail!("to_f32 on a {:?} tensor", self.dtype);
        }
        self.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;

    #[test]
    fn zero_fill_copy_and_reshape_work_for_every_dtype() {
        let gpu = gpu();
        let t = Tensor::from_u32(&gpu, &[2, 3], &[1, 2, 3, 4, 5, 6]).unwrap();
        let c = Tensor::uninit(&gpu, &[6], DType::U32).unwrap();
        c.copy_from(&t).unwrap();
        t.fill_zero().unwrap();
        assert_eq!(t.to_vec::<u32>().unwrap(), vec![0; 6]);
        assert_eq!(c.to_vec::<u32>().unwrap(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(c.reshape(&[3, 2]).unwrap().shape(), &[3, 2]);
        assert!(c.reshape(&[4]).is_err());
        assert!(t.write(&[1u32; 5]).unwrap_err().to_string().contains("holds 24"));
    }
}
