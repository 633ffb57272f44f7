//! Importance of the target matrices, measured on samples of the previous task, for the rank
//! policies that read it: per matrix (the official rule) or per block (sculpt's variant).

use std::collections::BTreeMap;

use anyhow::Result;

use super::targets::is_target;
use crate::kernels::matmul::linear;
use crate::model::{MatrixInput, Model, Pair};
use crate::tensor::Tensor;

/// Running mean of cosines over tokens.
#[derive(Default)]
struct MeanCosine {
    sum: f64,
    tokens: usize,
}

impl MeanCosine {
    /// Adds the cosine of every real row of `x` and `y` (`width` values per row, both read from
    /// the first `width` columns of rows `stride_x` and `stride_y` long).
    fn add(&mut self, x: &[f32], stride_x: usize, y: &[f32], stride_y: usize, width: usize, real: &[bool]) {
        for (t, _) in real.iter().enumerate().filter(|(_, &r)| r) {
            let (a, b) = (&x[t * stride_x..t * stride_x + width], &y[t * stride_y..t * stride_y + width]);
            self.sum += cosine(a, b);
            self.tokens += 1;
        }
    }

    fn mean(&self) -> f64 {
        self.sum / self.tokens.max(1) as f64
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum();
    let na = a.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// The official rule's raw importance of every target matrix W (m × n, d = min(m, n)): the mean
/// over real tokens of the cosine between the first d features of the matrix's input x and the
/// first d features of its output W x. `pairs` run in batches of `batch_size`.
pub fn matrix_importance(
    model: &dyn Model,
    pairs: &[Pair],
    batch_size: usize,
    targets: &[String],
) -> Result<BTreeMap<String, f64>> {
    let mut importance = MatrixImportance::default();
    for batch in pairs.chunks(batch_size.max(1)) {
        importance.add(model.params(), targets, &model.matrix_inputs(batch)?)?;
    }
    Ok(importance.means())
}

/// [`matrix_importance`] accumulated over batches of matrix inputs.
#[derive(Default)]
pub struct MatrixImportance {
    /// The first d rows of each W (only they give the first d outputs), cut once per pass.
    heads: BTreeMap<String, Tensor>,
    sums: BTreeMap<String, MeanCosine>,
}

impl MatrixImportance {
    pub fn add(&mut self, params: &BTreeMap<String, Tensor>, targets: &[String], inputs: &[MatrixInput]) -> Result<()> {
        for group in inputs {
            let names: Vec<&String> = group.names.iter().filter(|n| is_target(targets, n)).collect();
            if names.is_empty() {
                continue;
            }
            let x = group.input.to_f32()?;
            let rows = group.real.len();
            let stride_x = x.len() / rows.max(1);
            for name in names {
                let w = &params[name];
                let &[m, n] = w.shape() else { continue };
                let d = m.min(n);
                if !self.heads.contains_key(name) {
                    let head =
                        if d == m { w.clone() } else { Tensor::from_f32(w.gpu(), &[d, n], &w.to_f32()?[..d * n])? };
                    self.heads.insert(name.clone(), head);
                }
                let y = linear(&group.input.reshape(&[rows, n])?, &self.heads[name])?.to_f32()?;
                self.sums.entry(name.clone()).or_default().add(&x, stride_x, &y, d, d, &group.real);
            }
        }
        Ok(())
    }

    /// The mean cosine of every matrix seen.
    pub fn means(&self) -> BTreeMap<String, f64> {
        self.sums.iter().map(|(name, s)| (name.clone(), s.mean())).collect()
    }
}

/// Mean cosine similarity between the input and output hidden states of every block (real
/// tokens only), keyed by the block's name prefix ("encoder.block.3."), in the model's block
/// order. `pairs` run in batches of `batch_size`, through the blocks only (no LM head).
pub fn block_importance(model: &dyn Model, pairs: &[Pair], batch_size: usize) -> Result<Vec<(String, f64)>> {
    let mut sums: Vec<(String, MeanCosine)> = Vec::new();
    for batch in pairs.chunks(batch_size.max(1)) {
        for (i, block) in model.block_states(batch)?.into_iter().enumerate() {
            let (x, y) = (block.input.to_f32()?, block.output.to_f32()?);
            let d = x.len() / block.real.len().max(1);
            if sums.len() <= i {
                sums.push((block.prefix.clone(), MeanCosine::default()));
            }
            sums[i].1.add(&x, d, &y, d, d, &block.real);
        }
    }
    Ok(sums.into_iter().map(|(prefix, s)| (prefix, s.mean())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosines_average_over_real_tokens_of_the_first_columns() {
        // Two tokens of 3 features; the second is padding. Only the first 2 columns count.
        let x = [1.0, 0.0, 9.0, 5.0, 5.0, 5.0];
        let y = [1.0, 1.0, 0.0, 1.0];
        let mut m = MeanCosine::default();
        m.add(&x, 3, &y, 2, 2, &[true, false]);
        assert!((m.mean() - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(m.tokens, 1);
    }
}
