//! Gradient buffers keyed by parameter name, shared by every model family.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::gpu::Gpu;
use crate::tensor::{DType, Tensor};

/// A model whose trainable tensors are kept by Hugging Face name.
pub trait Parameters {
    fn gpu(&self) -> &Gpu;
    fn params(&self) -> &BTreeMap<String, Tensor>;
}

/// One gradient buffer per parameter, under the parameter's name; backward passes
/// accumulate into them, so micro-batches add up.
pub struct Gradients {
    pub grads: BTreeMap<String, Tensor>,
}

impl Gradients {
    /// Zeroed buffers shaped like the model's parameters (allocated once per run).
    pub fn zeros_like(model: &impl Parameters) -> Result<Gradients> {
        let grads = model
            .params()
            .iter()
            .map(|(name, p)| Ok((name.clone(), Tensor::zeros(model.gpu(), p.shape(), DType::F32)?)))
            .collect::<Result<_>>()?;
        Ok(Gradients { grads })
    }

    /// Records zero fills of every buffer (start of an accumulation cycle).
    pub fn zero(&self) -> Result<()> {
        self.grads.values().try_for_each(|g| g.fill_zero())
    }

    pub fn get(&self, name: &str) -> &Tensor {
        &self.grads[name]
    }
}
