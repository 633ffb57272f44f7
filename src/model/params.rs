//! The parameter store every family shares: Hugging Face names → GPU tensors, read from a
//! checkpoint folder (each size checked against the adapter before any weight is read) or
//! drawn at random, and the check that the head agrees with `tie_word_embeddings`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};

use super::family::f32_bytes;
use super::weights::Weights;
use crate::gpu::Gpu;
use crate::tensor::Tensor;

/// The separate output table of untied models (every family names it so).
pub const LM_HEAD: &str = "lm_head.weight";

/// Every tensor of `shapes` (name, shape), read from the safetensors of `dir`. The config
/// decides which tensors there are: a stored tensor it does not name (a tied model's
/// lm_head) is ignored, as transformers does.
pub fn load(gpu: &Gpu, dir: &Path, shapes: &[(String, Vec<usize>)]) -> Result<BTreeMap<String, Tensor>> {
    // Refused before reading gigabytes of weights.
    for (name, shape) in shapes {
        gpu.check_buffer_size(f32_bytes(shape), &format!("{}: parameter {name} {shape:?}", dir.display()))?;
    }
    let weights = Weights::load(dir)?;
    shapes
        .iter()
        .map(|(name, shape)| Ok((name.clone(), Tensor::from_f32(gpu, shape, &weights.get(name, shape)?.data)?)))
        .collect()
}

/// Random parameters for benchmarks and tests: norm weights 1, biases 0, everything else
/// normal(0, std).
pub fn random(gpu: &Gpu, shapes: &[(String, Vec<usize>)], std: f32, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    let mut rng = crate::rng::Rng::new(seed);
    let mut params = BTreeMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| rng.normal() * std).collect()
        };
        params.insert(name.clone(), Tensor::from_f32(gpu, shape, &data)?);
    }
    Ok(params)
}

/// Refuses parameters whose separate head disagrees with `tie_word_embeddings`.
pub fn check_head(params: &BTreeMap<String, Tensor>, tie_word_embeddings: bool) -> Result<()> {
    if params.contains_key(LM_HEAD) == tie_word_embeddings {
        bail!(
            "tie_word_embeddings is {tie_word_embeddings} but the model {} a separate {LM_HEAD}",
            if tie_word_embeddings { "has" } else { "lacks" }
        );
    }
    Ok(())
}
