//! The key/value cache of greedy decoding, shared by every family: the self-attention keys
//! and values of the positions decoded so far.

use anyhow::{bail, Result};

use crate::gpu::Binding;
use crate::tensor::{DType, Tensor};

/// The self-attention keys and values of the positions decoded so far, [1, t, width].
#[derive(Default)]
pub struct KvCache {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

impl KvCache {
    /// Appends one new position's k and v ([1, n, width]) behind the cached ones.
    pub fn append(&mut self, k_new: &Tensor, v_new: &Tensor) -> Result<()> {
        self.k = Some(append_rows(self.k.as_ref(), k_new)?);
        self.v = Some(append_rows(self.v.as_ref(), v_new)?);
        Ok(())
    }
}

/// [1, t, w] followed by [1, n, w] as a new [1, t + n, w] tensor (two buffer copies).
fn append_rows(cache: Option<&Tensor>, new: &Tensor) -> Result<Tensor> {
    let shape = new.shape();
    if shape.len() != 3 || shape[0] != 1 {
        bail!("the key/value cache holds one sequence, got new rows of shape {shape:?}");
    }
    let old_rows = cache.map_or(0, |c| c.shape()[1]);
    let out = Tensor::uninit(new.gpu(), &[1, old_rows + shape[1], shape[2]], DType::F32)?;
    let gpu = new.gpu();
    if let Some(c) = cache {
        gpu.record_copy(c.buffer(), 0, out.buffer(), 0, c.byte_size());
    }
    gpu.record_copy(new.buffer(), 0, out.buffer(), old_rows as u64 * shape[2] as u64 * 4, new.byte_size());
    Ok(out)
}
