//! The language-model head and its loss in row chunks, shared by every family. A real
//! vocabulary makes the logits the largest tensor of a step (SmolLM2's 49,152 entries over
//! 8 × 300 tokens would be 472 MB, beyond a WebGPU binding), so no buffer ever holds the logits
//! of every token: only rows that carry a label go through the head, at most
//! [`LOGITS_CHUNK_BYTES`] of logits at a time, and each chunk's loss gradient goes straight
//! back through the head before the next chunk reuses the buffers.

use anyhow::{bail, Result};

use crate::kernels::elementwise::axpy;
use crate::kernels::embedding::{embedding, embedding_backward};
use crate::kernels::loss::{count_valid_labels, cross_entropy_into, IGNORE_INDEX};
use crate::kernels::matmul::{gemm, linear, linear_backward, Gemm};
use crate::tensor::{DType, Tensor};

/// The most bytes of logits (and as many of their gradient) alive at once.
pub const LOGITS_CHUNK_BYTES: u64 = 32 << 20;

/// Rows of logits per chunk for a vocabulary of `vocab` entries (at least one).
pub fn chunk_rows(vocab: usize) -> usize {
    ((LOGITS_CHUNK_BYTES / (4 * vocab.max(1) as u64)) as usize).max(1)
}

/// The logits buffer of one chunk when `labelled_rows` rows carry labels: (bytes, what it is),
/// for a model's [`Model::step_buffers`](crate::model::Model::step_buffers).
pub fn logits_chunk(labelled_rows: usize, vocab: usize) -> (u64, String) {
    // One chunk's logits and their gradient are the head's only large buffers, however many
    // chunks a batch takes.
    let rows = labelled_rows.clamp(1, chunk_rows(vocab));
    (
        rows as u64 * vocab as u64 * 4,
        format!(
            "one chunk of logits, {rows} tokens × {vocab} vocabulary entries (the model's vocabulary is too large)"
        ),
    )
}

/// What the head gives for one batch.
pub struct HeadLoss {
    /// Mean cross-entropy over the labelled rows, `[1]`.
    pub loss: Tensor,
    /// d(loss)/d(input) · grad_scale, [rows, d]: zero on unlabelled rows. Only with gradients.
    pub d_input: Option<Tensor>,
}

/// The gradient side of [`head_loss`]: the factor on the loss gradient (a micro-batch's share
/// of its step) and the head weight's gradient buffer, which accumulates.
pub struct HeadGradient<'a> {
    pub grad_scale: f32,
    pub d_weight: &'a Tensor,
}

/// Mean cross-entropy of `labels` (one per row of `input` [rows, d]; -100 for none) under the
/// head `weight` [vocab, d], as transformers computes it (sum over labelled rows / their count).
/// None when no row has a label. With `grad`, also the input gradient and the weight gradient.
pub fn head_loss(
    input: &Tensor,
    weight: &Tensor,
    labels: &[i32],
    grad: Option<HeadGradient>,
) -> Result<Option<HeadLoss>> {
    let (vocab, _) = head_shape(input, weight)?;
    head_loss_in_chunks(input, weight, labels, grad, chunk_rows(vocab))
}

fn head_loss_in_chunks(
    input: &Tensor,
    weight: &Tensor,
    labels: &[i32],
    grad: Option<HeadGradient>,
    rows_per_chunk: usize,
) -> Result<Option<HeadLoss>> {
    let (vocab, d) = head_shape(input, weight)?;
    if labels.len() * d != input.len() {
        bail!("head_loss: {} labels for {} rows of width {d}", labels.len(), input.len() / d);
    }
    let num_valid = count_valid_labels(labels, vocab)?;
    if num_valid == 0 {
        return Ok(None);
    }
    let gpu = input.gpu();
    let mut rows: Vec<u32> = (0..labels.len() as u32).filter(|&r| labels[r as usize] != IGNORE_INDEX).collect();
    // Every chunk has the same rows (the last padded with row 0 under the ignore index, which
    // takes no loss and no gradient), so that all chunks share one logits and one gradient
    // buffer: buffers freed inside a step only return to the pool after its submission.
    let chunk = rows_per_chunk.min(rows.len());
    let padded = rows.len().div_ceil(chunk) * chunk;
    let mut chunk_labels: Vec<i32> = rows.iter().map(|&r| labels[r as usize]).collect();
    rows.resize(padded, 0);
    chunk_labels.resize(padded, IGNORE_INDEX);
    let logits = Tensor::uninit(gpu, &[chunk, vocab], DType::F32)?;
    let dlogits = Tensor::uninit(gpu, &[chunk, vocab], DType::F32)?;
    let d_input = match grad {
        Some(_) => Some(Tensor::zeros(gpu, &[labels.len(), d], DType::F32)?),
        None => None,
    };
    let grad_scale = grad.as_ref().map_or(0.0, |g| g.grad_scale);
    let mut total: Option<Tensor> = None;
    for (ids, chunk_labels) in rows.chunks(chunk).zip(chunk_labels.chunks(chunk)) {
        let picked = embedding(input, &Tensor::from_u32(gpu, &[chunk], ids)?)?;
        gemm(&Gemm::new(chunk, vocab, d, false, true), &picked, weight, &logits)?;
        let chunk_labels = Tensor::from_i32(gpu, &[chunk], chunk_labels)?;
        let loss = cross_entropy_into(&logits, &chunk_labels, num_valid, grad_scale, &dlogits)?;
        if let (Some(g), Some(d_input)) = (&grad, &d_input) {
            let d_picked = linear_backward(&dlogits, &picked, weight, g.d_weight)?;
            embedding_backward(&d_picked, ids, d_input, None)?;
        }
        match &total {
            Some(total) => axpy(1.0, &loss, total)?,
            None => total = Some(loss),
        }
    }
    Ok(Some(HeadLoss { loss: total.expect("at least one labelled row"), d_input }))
}

/// The logits of rows `rows` of `input` [n, d] under `weight` [vocab, d]: [rows.len(), vocab].
/// For a few positions (tests, inspection), never for a whole batch.
pub fn head_logits(input: &Tensor, weight: &Tensor, rows: &[u32]) -> Result<Tensor> {
    head_shape(input, weight)?;
    let picked = embedding(input, &Tensor::from_u32(input.gpu(), &[rows.len()], rows)?)?;
    linear(&picked, weight)
}

/// The argmax of the logits at every row whose label is not ignored, in row order:
/// `logits_at(rows)` gives a chunk's logits; chunks stay within the head's buffer budget.
pub fn labelled_argmax(labels: &[i32], vocab: usize, logits_at: impl Fn(&[u32]) -> Result<Tensor>) -> Result<Vec<u32>> {
    let rows: Vec<u32> = (0..labels.len() as u32).filter(|&r| labels[r as usize] != IGNORE_INDEX).collect();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(chunk_rows(vocab)) {
        let logits = logits_at(chunk)?.to_f32()?;
        out.extend(logits.chunks(vocab).map(argmax));
    }
    Ok(out)
}

/// Splits per-target-token values of a batch back into one list per pair.
pub fn per_pair<T: Clone>(values: &[T], pairs: &[crate::model::Pair]) -> Vec<Vec<T>> {
    let mut start = 0;
    pairs
        .iter()
        .map(|(_, target)| {
            let part = values[start..start + target.len()].to_vec();
            start += target.len();
            part
        })
        .collect()
}

/// Index of the largest value; the first one on ties, as torch.argmax.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

fn head_shape(input: &Tensor, weight: &Tensor) -> Result<(usize, usize)> {
    let &[vocab, d] = weight.shape() else {
        bail!("the LM head must be a [vocab, width] matrix, got {:?}", weight.shape());
    };
    if input.shape().len() != 2 || input.shape()[1] != d {
        bail!("the LM head's input must be [rows, {d}], got {:?}", input.shape());
    }
    Ok((vocab, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::loss::reference;
    use crate::kernels::matmul::{reference_gemm, Gemm};
    use crate::kernels::testing::{assert_close, random};

    #[test]
    fn a_chunk_holds_at_most_its_byte_budget_of_logits() {
        assert_eq!(chunk_rows(49_152), 170);
        assert!(chunk_rows(49_152) as u64 * 49_152 * 4 <= LOGITS_CHUNK_BYTES);
        assert_eq!(chunk_rows(usize::MAX / 8), 1);
    }

    /// Over several chunks of 2 rows against the whole-logits reference: loss, input
    /// gradient, accumulated weight gradient.
    #[test]
    fn chunked_head_loss_equals_the_loss_of_the_whole_logits() {
        let gpu = gpu();
        let (rows, d, vocab) = (7, 5, 37);
        let x = random(rows * d, 1);
        let w = random(vocab * d, 2);
        let labels = vec![5, IGNORE_INDEX, 0, (vocab - 1) as i32, IGNORE_INDEX, 17, 30];
        let prior = random(vocab * d, 3);
        let tx = Tensor::from_f32(&gpu, &[rows, d], &x).unwrap();
        let tw = Tensor::from_f32(&gpu, &[vocab, d], &w).unwrap();
        let tdw = Tensor::from_f32(&gpu, &[vocab, d], &prior).unwrap();
        let grad = Some(HeadGradient { grad_scale: 0.5, d_weight: &tdw });
        let out = head_loss_in_chunks(&tx, &tw, &labels, grad, 2).unwrap().unwrap();

        let mut logits = vec![0.0; rows * vocab];
        reference_gemm(&Gemm::new(rows, vocab, d, false, true), &x, &w, &mut logits);
        let (want_loss, dlogits) = reference::cross_entropy(&logits, &labels, vocab, 0.5);
        let dlogits: Vec<f32> = dlogits.iter().map(|&v| v as f32).collect();
        let got_loss = out.loss.to_f32().unwrap()[0] as f64;
        assert!((got_loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "{got_loss} vs {want_loss}");
        let mut want_dx = vec![0.0; rows * d];
        reference_gemm(&Gemm::new(rows, d, vocab, false, false), &dlogits, &w, &mut want_dx);
        assert_close(&out.d_input.unwrap().to_f32().unwrap(), &want_dx, 1e-5);
        let mut want_dw = prior;
        reference_gemm(&Gemm { beta: 1.0, ..Gemm::new(vocab, d, rows, true, false) }, &dlogits, &x, &mut want_dw);
        assert_close(&tdw.to_f32().unwrap(), &want_dw, 1e-5);

        let no_grad = head_loss(&tx, &tw, &labels, None).unwrap().unwrap();
        assert!(no_grad.d_input.is_none());
        assert!((no_grad.loss.to_f32().unwrap()[0] as f64 - want_loss).abs() <= 1e-5 * want_loss.abs());
        assert!(head_loss(&tx, &tw, &[IGNORE_INDEX; 7], None).unwrap().is_none());
        let err = head_loss(&tx, &tw, &[0, 1, 2, 3, 4, 5, 37], None).err().unwrap().to_string();
        assert!(err.contains("label 37 at position 6"), "{err}");
        let logits_1_3 = head_logits(&tx, &tw, &[1, 3]).unwrap().to_f32().unwrap();
        assert_close(&logits_1_3[..vocab], &logits[vocab..2 * vocab], 1e-5);
        assert_close(&logits_1_3[vocab..], &logits[3 * vocab..4 * vocab], 1e-5);
    }
}
