//! What a family's forward and backward passes over one padded batch look like, and the
//! [`Model`] methods built from them once for every family: a training micro-batch, the loss
//! of a batch, and the loss with the teacher-forced argmax.

use anyhow::{Context, Result};

use super::family::{Gradients, Model, Pair};
use super::lm_head::{labelled_argmax, per_pair};
use crate::tensor::Tensor;

pub trait Passes {
    /// One padded batch on the host.
    type Batch;
    /// The activations a forward pass keeps for the backward pass and the head.
    type Output;

    fn batch(&self, pairs: &[Pair]) -> Result<Self::Batch>;
    /// The label of every flat position of the batch (-100 where no loss is taken).
    fn labels(batch: &Self::Batch) -> &[i32];
    /// A micro-batch of an accumulated step takes its share of the step's gradient.
    fn set_grad_scale(batch: &mut Self::Batch, grad_scale: f32);
    /// Records the forward pass and, when the batch has labels, the loss; with `grads`, the
    /// head's gradient too.
    fn forward(&self, batch: &Self::Batch, grads: Option<&Gradients>) -> Result<Self::Output>;
    fn loss_of(out: &Self::Output) -> Option<&Tensor>;
    fn backward(&self, batch: &Self::Batch, out: &Self::Output, grads: &Gradients) -> Result<()>;
    /// The logits at flat positions `rows` of a forward pass, [rows.len(), vocab].
    fn logits_at(&self, out: &Self::Output, rows: &[u32]) -> Result<Tensor>;
}

/// [`Model::loss_and_gradients`].
pub fn loss_and_gradients<P: Passes>(p: &P, pairs: &[Pair], grad_scale: f32, grads: &Gradients) -> Result<Tensor> {
    let mut batch = p.batch(pairs)?;
    P::set_grad_scale(&mut batch, grad_scale);
    let out = p.forward(&batch, Some(grads))?;
    p.backward(&batch, &out, grads)?;
    P::loss_of(&out).cloned().context("a training batch has target tokens")
}

/// [`Model::loss`].
pub fn loss<P: Passes>(p: &P, pairs: &[Pair]) -> Result<Tensor> {
    P::loss_of(&p.forward(&p.batch(pairs)?, None)?).cloned().context("an evaluation batch has target tokens")
}

/// [`Model::loss_and_target_argmax`].
pub fn loss_and_target_argmax<P: Passes + Model>(p: &P, pairs: &[Pair]) -> Result<(Tensor, Vec<Vec<u32>>)> {
    let batch = p.batch(pairs)?;
    let out = p.forward(&batch, None)?;
    let loss = P::loss_of(&out).cloned().context("an evaluation batch has target tokens")?;
    let argmax = labelled_argmax(P::labels(&batch), p.vocab_size(), |rows| p.logits_at(&out, rows))?;
    Ok((loss, per_pair(&argmax, pairs)))
}
