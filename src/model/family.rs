//! What training, evaluation, checkpoints and the continual driver need from a model
//! family, so that they run unchanged on every family (T5 and the decoder-only ones). A family
//! takes tokenized (source, target) pairs and lays them out as its forward pass wants.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::gpu::Gpu;
use crate::tensor::{DType, Tensor};

/// A tokenized example: source ids and target ids (each ending as the tokenizer ends it).
pub type Pair = (Vec<u32>, Vec<u32>);

/// The hidden states entering and leaving one block, for layer importance.
pub struct BlockStates {
    /// Name prefix of the block's parameters ("encoder.block.3.").
    pub prefix: String,
    /// [tokens, width] each.
    pub input: Tensor,
    pub output: Tensor,
    /// Which of the tokens are real (not padding, not ignored).
    pub real: Vec<bool>,
}

/// The input of one or more target matrices (those that multiply the same activation), for
/// per-matrix importance: y = W x for every named W.
pub struct MatrixInput {
    /// Hugging Face names of the matrices that take this input.
    pub names: Vec<String>,
    /// [tokens, in_features].
    pub input: Tensor,
    /// Which of the tokens are real (not padding, not ignored).
    pub real: Vec<bool>,
}

pub trait Model {
    fn gpu(&self) -> &Gpu;
    /// Every trainable tensor under its Hugging Face name.
    fn params(&self) -> &BTreeMap<String, Tensor>;
    fn vocab_size(&self) -> usize;
    /// The name of the output projection (the embedding's when the head is tied).
    fn lm_head_name(&self) -> &'static str;
    // The three batch passes below are written once, over each family's `Passes`.

    /// Records the forward pass, the loss and the backward pass of one batch, adding
    /// `grad_scale` times its gradients into `grads`; returns the mean loss per target token.
    fn loss_and_gradients(&self, pairs: &[Pair], grad_scale: f32, grads: &Gradients) -> Result<Tensor>;
    /// Records the forward pass and the mean loss per target token of one batch.
    fn loss(&self, pairs: &[Pair]) -> Result<Tensor>;
    /// One forward pass under teacher forcing on each pair's target: the mean loss per target
    /// token, and the model's greedy (argmax) choice at every target position, which equals the
    /// target throughout exactly when greedy decoding from the source would reproduce it.
    fn loss_and_target_argmax(&self, pairs: &[Pair]) -> Result<(Tensor, Vec<Vec<u32>>)>;
    /// Greedy continuation of `source`: the new tokens, up to the end token or `max_new_tokens`.
    fn generate(&self, source: &[u32], max_new_tokens: usize) -> Result<Vec<u32>>;
    /// The input and output hidden states of every block over one batch of `pairs`.
    fn block_states(&self, pairs: &[Pair]) -> Result<Vec<BlockStates>>;
    /// The input activation of every 2-D weight matrix applied to the batch's tokens (the LM
    /// head's too), over one batch of `pairs`.
    fn matrix_inputs(&self, pairs: &[Pair]) -> Result<Vec<MatrixInput>>;
    /// The largest buffers of a step on a batch of `batch_size` pairs of these lengths:
    /// (bytes, what they hold and the flags that shrink them).
    fn step_buffers(&self, batch_size: usize, source_len: usize, target_len: usize) -> Vec<(u64, String)>;
    /// Bytes a training step on a batch of `batch_size` pairs of these lengths allocates for
    /// its forward and backward passes (activations, gradients of activations, the head's
    /// chunks): an estimate for the memory plan.
    fn activation_bytes(&self, batch_size: usize, source_len: usize, target_len: usize) -> u64;
    /// The `config.json` that transformers loads.
    fn hf_config_json(&self) -> Result<String>;
    /// Name patterns of the matrices the method constrains by default.
    fn default_targets(&self) -> Vec<String>;
    /// Name patterns of the cross-attention matrices (added on request); none in a
    /// decoder-only model.
    fn cross_attention_targets(&self) -> Vec<String> {
        Vec::new()
    }

    /// The default targets, plus the cross-attention ones when `cross_attention` (refused for
    /// a model without cross-attention).
    fn targets(&self, cross_attention: bool) -> Result<Vec<String>> {
        let mut targets = self.default_targets();
        if cross_attention {
            let cross = self.cross_attention_targets();
            if cross.is_empty() {
                anyhow::bail!("--cross-attention: this model has no cross-attention (it is decoder-only)");
            }
            targets.extend(cross);
        }
        Ok(targets)
    }

    /// Refuses, before any GPU work, a batch whose largest buffers exceed the adapter's limit.
    fn check_batch_buffers(&self, batch_size: usize, source_len: usize, target_len: usize) -> Result<()> {
        for (bytes, what) in self.step_buffers(batch_size, source_len, target_len) {
            self.gpu().check_buffer_size(bytes, &what)?;
        }
        Ok(())
    }

    /// The files of a Hugging Face model folder: config.json and model.safetensors.
    fn hf_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let tensors: Vec<(String, &Tensor)> = self.params().iter().map(|(n, t)| (n.clone(), t)).collect();
        Ok(vec![
            ("config.json", self.hf_config_json()?.into_bytes()),
            ("model.safetensors", super::weights::serialize(&tensors, None)?),
        ])
    }
}

/// Bytes of an f32 tensor of shape `dims` (saturating: sizes come from user configs).
pub fn f32_bytes(dims: &[usize]) -> u64 {
    dims.iter().fold(4u64, |n, &d| n.saturating_mul(d as u64))
}

/// One gradient buffer per parameter, under the parameter's name.
pub struct Gradients {
    pub grads: BTreeMap<String, Tensor>,
}

impl Gradients {
    /// Zeroed buffers shaped like the model's parameters (allocated once per run).
    pub fn zeros_like(model: &dyn Model) -> Result<Gradients> {
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

/// Target tokens of `pairs` that take a loss, after checking every id against the vocabulary.
pub fn count_target_tokens(pairs: &[Pair], vocab_size: usize) -> Result<usize> {
    for (source, target) in pairs {
        crate::kernels::embedding::check_ids(source, vocab_size)?;
        crate::kernels::embedding::check_ids(target, vocab_size)?;
    }
    Ok(pairs.iter().map(|p| p.1.len()).sum())
}
