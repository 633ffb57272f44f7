//! Mean cross-entropy with ignore index -100 (transformers semantics: the sum of token losses
//! divided by the number of labels != -100 in the whole batch), forward and backward fused.
//! Launcher for `shaders/loss.wgsl`.

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};

use super::reduce::{launch_rows, row_loop_iterations, row_sum, rows_cols, WG};
use crate::gpu::Shader;
use crate::kernels::ShaderContract;
use crate::tensor::{DType, Tensor};

pub static SHADER: Shader = crate::row_shader!("loss");

/// Labels with this value contribute neither loss nor gradient.
pub const IGNORE_INDEX: i32 = -100;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
    inv_valid: f32,
}

pub(super) fn contract() -> ShaderContract {
    let params = crate::uniform_layout!("Params", Params { rows, vocab, scale, inv_valid });
    ShaderContract { shader: &SHADER, uniforms: vec![params], constants: vec![("WG", WG)] }
}

/// The `num_valid` of [`cross_entropy`] for labels held on the host; errors on a label
/// outside [0, vocab) that is not the ignore index (the GPU would silently ignore it).
pub fn count_valid_labels(labels: &[i32], vocab: usize) -> Result<usize> {
    let mut valid = 0;
    for (i, &l) in labels.iter().enumerate() {
        if l == IGNORE_INDEX {
            continue;
        }
        if l < 0 || l as usize >= vocab {
            bail!("label {l} at position {i} is outside the vocabulary of {vocab} and is not the ignore index {IGNORE_INDEX}");
        }
        valid += 1;
    }
    Ok(valid)
}

/// Mean cross-entropy over rows whose label != -100. logits [.., vocab], labels I32 `[rows]`.
/// Returns (loss `[1]` = Σ row losses / num_valid, dlogits = d(loss)/d(logits) · grad_scale,
/// shaped like logits). `num_valid` counts the labels of the whole batch, of which these rows
/// may be one chunk. With num_valid = 0 the loss and gradient are 0 rather than NaN.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, num_valid: usize, grad_scale: f32) -> Result<(Tensor, Tensor)> {
    let dlogits = Tensor::uninit(logits.gpu(), logits.shape(), DType::F32)?;
    let loss = cross_entropy_into(logits, labels, num_valid, grad_scale, &dlogits)?;
    Ok((loss, dlogits))
}

/// [`cross_entropy`] writing the gradient into `dlogits` (shaped like logits), so that a
/// chunked caller reuses one buffer; returns the loss `[1]`.
pub fn cross_entropy_into(
    logits: &Tensor,
    labels: &Tensor,
    num_valid: usize,
    grad_scale: f32,
    dlogits: &Tensor,
) -> Result<Tensor> {
    let (rows, vocab) = rows_cols("cross_entropy", "logits", logits)?;
    if dlogits.shape() != logits.shape() {
        bail!("cross_entropy: dlogits {:?} must be shaped like logits {:?}", dlogits.shape(), logits.shape());
    }
    if labels.dtype() != DType::I32 || labels.len() != rows {
        bail!(
            "cross_entropy: labels must be I32 with {rows} elements (rows of logits {:?}), got {:?} {:?}",
            logits.shape(),
            labels.dtype(),
            labels.shape()
        );
    }
    let inv_valid = if num_valid == 0 { 0.0 } else { 1.0 / num_valid as f32 };
    let row_loss = Tensor::uninit(logits.gpu(), &[1, rows], DType::F32)?;
    let params = Params { rows: rows as u32, vocab: vocab as u32, scale: grad_scale * inv_valid, inv_valid };
    // max, sum of exp and gradient passes; a max and a sum reduction
    let loops = row_loop_iterations(vocab, 3, 2);
    launch_rows(
        &SHADER,
        "cross_entropy",
        bytemuck::bytes_of(&params),
        &[logits, labels],
        &[dlogits, &row_loss],
        rows,
        loops,
    )?;
    row_sum(&row_loss)
}

/// CPU reference in f64: (loss, dlogits · grad_scale).
#[cfg(test)]
pub(crate) mod reference {
    pub fn cross_entropy(logits: &[f32], labels: &[i32], vocab: usize, grad_scale: f64) -> (f64, Vec<f64>) {
        let num_valid = labels.iter().filter(|&&l| l != super::IGNORE_INDEX).count() as f64;
        let mut loss = 0.0;
        let mut grad = Vec::with_capacity(logits.len());
        for (row, &label) in logits.chunks(vocab).zip(labels) {
            if label == super::IGNORE_INDEX {
                grad.extend(std::iter::repeat_n(0.0, vocab));
                continue;
            }
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            loss += lse - row[label as usize] as f64;
            grad.extend(row.iter().enumerate().map(|(c, &v)| {
                ((v as f64 - lse).exp() - if c == label as usize { 1.0 } else { 0.0 }) * grad_scale / num_valid
            }));
        }
        (loss / num_valid, grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::{
        assert_close, assert_matches_finite_differences, random, snapshot_text, AWKWARD_DIMS,
    };
    use crate::rng::Rng;

    fn labels_for(rows: usize, vocab: usize, seed: u64) -> Vec<i32> {
        let mut rng = Rng::new(seed);
        // About one row in four ignored, at least one valid.
        let mut labels: Vec<i32> =
            (0..rows).map(|_| if rng.below(4) == 0 { IGNORE_INDEX } else { rng.below(vocab) as i32 }).collect();
        labels[rows / 2] = (vocab - 1) as i32;
        labels
    }

    #[test]
    fn loss_and_gradient_match_reference() {
        let gpu = gpu();
        for &rows in &[1, 3, 17, 65] {
            for &vocab in AWKWARD_DIMS {
                let seed = (rows * 10_000 + vocab) as u64;
                let xs: Vec<f32> = random(rows * vocab, seed).iter().map(|v| v * 20.0).collect();
                let labels = labels_for(rows, vocab, seed);
                let num_valid = count_valid_labels(&labels, vocab).unwrap();
                let logits = Tensor::from_f32(&gpu, &[rows, vocab], &xs).unwrap();
                let lt = Tensor::from_i32(&gpu, &[rows], &labels).unwrap();
                let (loss, dlogits) = cross_entropy(&logits, &lt, num_valid, 0.5).unwrap();
                let (want_loss, want_grad) = reference::cross_entropy(&xs, &labels, vocab, 0.5);
                assert_eq!(loss.shape(), &[1]);
                assert_close(&loss.to_f32().unwrap(), &[want_loss as f32], 1e-5);
                let want_grad: Vec<f32> = want_grad.iter().map(|&v| v as f32).collect();
                assert_close(&dlogits.to_f32().unwrap(), &want_grad, 1e-5);
            }
        }
    }

    #[test]
    fn t5_vocab_over_batched_rows() {
        let gpu = gpu();
        let (rows, vocab) = (3, 32_128);
        let xs: Vec<f32> = random(rows * vocab, 5).iter().map(|v| v * 10.0).collect();
        let labels = [7, IGNORE_INDEX, 32_127];
        let logits = Tensor::from_f32(&gpu, &[1, rows, vocab], &xs).unwrap();
        let lt = Tensor::from_i32(&gpu, &[rows], &labels).unwrap();
        let (loss, dlogits) = cross_entropy(&logits, &lt, 2, 1.0).unwrap();
        let (want_loss, want_grad) = reference::cross_entropy(&xs, &labels, vocab, 1.0);
        assert_close(&loss.to_f32().unwrap(), &[want_loss as f32], 1e-5);
        let want_grad: Vec<f32> = want_grad.iter().map(|&v| v as f32).collect();
        assert_close(&dlogits.to_f32().unwrap(), &want_grad, 1e-5);
    }

    #[test]
    fn gradient_reference_matches_finite_differences() {
        let vocab = 7;
        let xs = random(3 * vocab, 21);
        let labels = [2, IGNORE_INDEX, 6];
        let (_, grad) = reference::cross_entropy(&xs, &labels, vocab, 1.0);
        assert_matches_finite_differences("dlogits", &xs, &grad, 1e-4, |x| {
            reference::cross_entropy(x, &labels, vocab, 1.0).0
        });
    }

    #[test]
    fn all_ignored_gives_zero_not_nan() {
        let gpu = gpu();
        let logits = Tensor::from_f32(&gpu, &[2, 3], &random(6, 1)).unwrap();
        let labels = Tensor::from_i32(&gpu, &[2], &[IGNORE_INDEX, IGNORE_INDEX]).unwrap();
        let (loss, dlogits) = cross_entropy(&logits, &labels, 0, 1.0).unwrap();
        assert_eq!(loss.to_f32().unwrap(), vec![0.0]);
        assert!(dlogits.to_f32().unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn labels_outside_the_vocabulary_are_refused() {
        let err = count_valid_labels(&[1, IGNORE_INDEX, 9], 5).unwrap_err().to_string();
        assert!(err.contains("label 9 at position 2"), "{err}");
        assert_eq!(count_valid_labels(&[1, IGNORE_INDEX, 4], 5).unwrap(), 2);
    }

    #[test]
    fn over_budget_vocabulary_is_refused() {
        let gpu = gpu();
        // 3 * ceil(vocab / 256) + 16 > 65,535
        let logits = Tensor::uninit(&gpu, &[1, 21_840 * 256], DType::F32).unwrap();
        let labels = Tensor::from_i32(&gpu, &[1], &[0]).unwrap();
        let err = cross_entropy(&logits, &labels, 1, 1.0).unwrap_err().to_string();
        assert!(err.contains("loop iterations"), "{err}");
    }

    #[test]
    fn cross_entropy_snapshot() {
        let gpu = gpu();
        let xs = [2.0, 1.0, 0.1, -1.0, 0.5, 0.5, 0.5, 0.5, -3.0, 4.0, 0.0, 1.5];
        let logits = Tensor::from_f32(&gpu, &[3, 4], &xs).unwrap();
        let labels = Tensor::from_i32(&gpu, &[3], &[0, IGNORE_INDEX, 3]).unwrap();
        let (loss, dlogits) = cross_entropy(&logits, &labels, 2, 1.0).unwrap();
        insta::assert_snapshot!(format!(
            "loss:\n{}\ndlogits:\n{}",
            snapshot_text(&loss.to_f32().unwrap(), 1),
            snapshot_text(&dlogits.to_f32().unwrap(), 4)
        ));
    }
}
