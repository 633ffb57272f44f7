//! Decoder-only models (Llama, SmolLM2, Qwen2, Qwen3, Mistral) on the GPU kernels, one
//! implementation parameterised by what sets the families apart ([`DecoderFamily`]: q/k/v
//! biases, per-head q/k norms, a sliding window, config defaults), with Hugging Face parameter
//! names so that checkpoints load and save unchanged: RMS norm with weights, rotary position
//! embeddings, grouped-query attention, SwiGLU feed-forward, tied or untied head.
//!
//! Adding a family: one file here with its [`DecoderFamily`] and a line in [`FAMILIES`].
//!
//! Public API: [`DecoderModel::load`] / [`DecoderModel::random`], [`DecoderModel::forward`] on a
//! [`CausalBatch`], [`DecoderModel::backward`] into [`Gradients`], [`DecoderModel::generate`],
//! the `params` map, and the family-neutral [`Model`] that training and the driver use.

mod backward;
pub mod config;
mod forward;
mod generate;
mod llama;
mod mistral;
mod qwen2;
mod qwen3;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

pub use config::{DecoderConfig, DecoderFamily};
pub use forward::{DecoderForwardOutput, HeadNorm, LayerActivations};

use super::family::{f32_bytes, BlockStates, Gradients, MatrixInput, Model, Pair};
use super::lm_head::logits_chunk;
use super::params::{self, LM_HEAD};
use super::passes::{self, Passes};
use crate::gpu::Gpu;
use crate::kernels::attention::AttentionShape;
use crate::kernels::loss::IGNORE_INDEX;
use crate::kernels::rope::inverse_frequencies;
use crate::tensor::Tensor;

/// Every decoder-only family, by config.json `model_type`.
pub const FAMILIES: &[&DecoderFamily] = &[&llama::LLAMA, &qwen2::QWEN2, &qwen3::QWEN3, &mistral::MISTRAL];

/// The family of `model_type`, or an error naming the supported ones.
pub fn family(model_type: &str) -> Result<&'static DecoderFamily> {
    FAMILIES.iter().copied().find(|f| f.model_type == model_type).with_context(|| {
        let names: Vec<String> = FAMILIES.iter().map(|f| format!("{:?}", f.model_type)).collect();
        format!("model_type {model_type:?} is not a supported decoder-only family ({})", names.join(", "))
    })
}

/// The token embedding (also the output table of tied models).
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
/// The norm after the last layer.
pub const FINAL_NORM: &str = "model.norm.weight";

/// The matrices the method constrains by default, as the official OSFT code does for
/// decoder-only models: attention q, k, v, o and the SwiGLU gate, up and down projections.
pub const TARGETS: &[&str] = &[
    "model.layers.*.self_attn.q_proj.weight",
    "model.layers.*.self_attn.k_proj.weight",
    "model.layers.*.self_attn.v_proj.weight",
    "model.layers.*.self_attn.o_proj.weight",
    "model.layers.*.mlp.gate_proj.weight",
    "model.layers.*.mlp.up_proj.weight",
    "model.layers.*.mlp.down_proj.weight",
];

/// Hugging Face name of a weight of layer `layer`, e.g. `model.layers.1.self_attn.q_proj.weight`
/// for `(1, "self_attn.q_proj")`.
pub fn layer_param(layer: usize, rest: &str) -> String {
    format!("model.layers.{layer}.{rest}.weight")
}

/// Hugging Face name of a bias of layer `layer`, e.g. `model.layers.1.self_attn.q_proj.bias`.
pub fn layer_bias(layer: usize, rest: &str) -> String {
    format!("model.layers.{layer}.{rest}.bias")
}

pub struct DecoderModel {
    pub config: DecoderConfig,
    /// Every trainable tensor under its Hugging Face name.
    pub params: BTreeMap<String, Tensor>,
    /// The rotary inverse frequencies of one head (config's rope type and theta), Dh/2 of them.
    inv_freq: Vec<f64>,
    /// Positions attention is limited to (Mistral's, Qwen's `sliding_window`): longer
    /// sequences are refused.
    window: Option<usize>,
    gpu: Gpu,
}

impl DecoderModel {
    /// Names and shapes of every parameter the config implies (`lm_head.weight` unless
    /// tie_word_embeddings; q/k/v biases and q/k norms when the family has them).
    pub fn parameter_shapes(config: &DecoderConfig) -> Vec<(String, Vec<usize>)> {
        let (d, ff, head_dim) = (config.hidden_size, config.intermediate_size, config.head_dim());
        let q_width = config.num_attention_heads * head_dim;
        let kv_width = config.num_key_value_heads() * head_dim;
        let family = config.family;
        let mut out = vec![(EMBED_TOKENS.to_string(), vec![config.vocab_size, d])];
        for layer in 0..config.num_hidden_layers {
            for (rest, shape) in [
                ("self_attn.q_proj", vec![q_width, d]),
                ("self_attn.k_proj", vec![kv_width, d]),
                ("self_attn.v_proj", vec![kv_width, d]),
                ("self_attn.o_proj", vec![d, q_width]),
                ("mlp.gate_proj", vec![ff, d]),
                ("mlp.up_proj", vec![ff, d]),
                ("mlp.down_proj", vec![d, ff]),
                ("input_layernorm", vec![d]),
                ("post_attention_layernorm", vec![d]),
            ] {
                out.push((layer_param(layer, rest), shape));
            }
            if family.qkv_bias {
                for (rest, width) in
                    [("self_attn.q_proj", q_width), ("self_attn.k_proj", kv_width), ("self_attn.v_proj", kv_width)]
                {
                    out.push((layer_bias(layer, rest), vec![width]));
                }
            }
            if family.qk_norm {
                for rest in ["self_attn.q_norm", "self_attn.k_norm"] {
                    out.push((layer_param(layer, rest), vec![head_dim]));
                }
            }
        }
        out.push((FINAL_NORM.to_string(), vec![d]));
        if !config.tie_word_embeddings {
            out.push((LM_HEAD.to_string(), vec![config.vocab_size, d]));
        }
        out
    }

    /// Loads `DIR/config.json` and the safetensors weights (one `model.safetensors` or shards
    /// listed by `model.safetensors.index.json`) onto the GPU.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<DecoderModel> {
        let config = DecoderConfig::load(dir)?;
        let params = params::load(gpu, dir, &Self::parameter_shapes(&config))?;
        Self::new(gpu, config, params)
    }

    /// A model with normal(0, std) weights, unit norm weights and zero biases (benchmarks, tests).
    pub fn random(gpu: &Gpu, config: DecoderConfig, std: f32, seed: u64) -> Result<DecoderModel> {
        config.validate()?;
        let params = params::random(gpu, &Self::parameter_shapes(&config), std, seed)?;
        Self::new(gpu, config, params)
    }

    fn new(gpu: &Gpu, config: DecoderConfig, params: BTreeMap<String, Tensor>) -> Result<DecoderModel> {
        config.validate()?;
        params::check_head(&params, config.tie_word_embeddings)?;
        let (theta, scaling) = config.rope()?;
        let inv_freq = inverse_frequencies(config.head_dim(), theta, &scaling);
        let window = (config.family.sliding_window)(&config)?;
        Ok(DecoderModel { config, params, inv_freq, window, gpu: gpu.clone() })
    }

    /// The parameter `name` (every name of [`DecoderModel::parameter_shapes`] is present).
    pub fn param(&self, name: &str) -> &Tensor {
        &self.params[name]
    }

    /// The rotary inverse frequencies of one head.
    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// Concatenates (source, target) pairs into the next-token batch.
    pub fn batch(&self, pairs: &[Pair]) -> Result<CausalBatch> {
        CausalBatch::new(pairs, self.config.padding_id()?)
    }

    /// The causal self-attention shape over sequences of `q_len` new positions and `k_len`
    /// keys; refuses more keys than the sliding window (a windowed mask is not implemented).
    pub(crate) fn attention_shape(&self, batch: usize, q_len: usize, k_len: usize) -> Result<AttentionShape> {
        if let Some(window) = self.window.filter(|&w| k_len > w) {
            bail!(
                "a sequence of {k_len} tokens is longer than the model's sliding_window of {window} (config.json); \
                 sculpt does not implement windowed attention: use sequences of at most {window} tokens \
                 (lower --max-source-len / --max-target-len, or the generation length)"
            );
        }
        let c = &self.config;
        Ok(AttentionShape {
            batch,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads(),
            q_len,
            k_len,
            head_dim: c.head_dim(),
            causal: true,
            scale: 1.0 / (c.head_dim() as f32).sqrt(),
        })
    }
}

impl Model for DecoderModel {
    fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn params(&self) -> &BTreeMap<String, Tensor> {
        &self.params
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// The name of the output projection: `lm_head.weight`, or the embedding when tied.
    fn lm_head_name(&self) -> &'static str {
        if self.config.tie_word_embeddings {
            EMBED_TOKENS
        } else {
            LM_HEAD
        }
    }

    fn loss_and_gradients(&self, pairs: &[Pair], grad_scale: f32, grads: &Gradients) -> Result<Tensor> {
        passes::loss_and_gradients(self, pairs, grad_scale, grads)
    }

    fn loss(&self, pairs: &[Pair]) -> Result<Tensor> {
        passes::loss(self, pairs)
    }

    fn loss_and_target_argmax(&self, pairs: &[Pair]) -> Result<(Tensor, Vec<Vec<u32>>)> {
        passes::loss_and_target_argmax(self, pairs)
    }

    fn generate(&self, source: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        DecoderModel::generate(self, source, max_new_tokens)
    }

    /// Every layer over the real tokens of source and target.
    fn block_states(&self, pairs: &[Pair]) -> Result<Vec<BlockStates>> {
        let batch = self.batch(pairs)?;
        let out = self.trunk(&batch)?;
        let real: Vec<bool> = batch.attention_mask.iter().map(|&m| m == 1).collect();
        Ok(out
            .layer_outputs
            .iter()
            .enumerate()
            .map(|(l, output)| BlockStates {
                prefix: format!("model.layers.{l}."),
                input: out.hidden_states[l].clone(),
                output: output.clone(),
                real: real.clone(),
            })
            .collect())
    }

    fn matrix_inputs(&self, pairs: &[Pair]) -> Result<Vec<MatrixInput>> {
        let batch = self.batch(pairs)?;
        let out = self.trunk(&batch)?;
        let real: Vec<bool> = batch.attention_mask.iter().map(|&m| m == 1).collect();
        let input =
            |names: Vec<String>, input: &Tensor| MatrixInput { names, input: input.clone(), real: real.clone() };
        let mut inputs = Vec::new();
        for (l, layer) in out.layers.iter().enumerate() {
            let names = |rests: &[&str]| rests.iter().map(|r| layer_param(l, r)).collect::<Vec<_>>();
            inputs
                .push(input(names(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]), &layer.attn_normed));
            inputs.push(input(names(&["self_attn.o_proj"]), &layer.context));
            inputs.push(input(names(&["mlp.gate_proj", "mlp.up_proj"]), &layer.mlp_normed));
            inputs.push(input(names(&["mlp.down_proj"]), &layer.hidden));
        }
        inputs.push(input(vec![self.lm_head_name().to_string()], out.last_hidden_state()));
        Ok(inputs)
    }

    /// The largest buffers of a step over source + target tokens: one chunk of logits (and its
    /// gradient), the attention probabilities, the feed-forward activations, the embedding.
    fn step_buffers(&self, batch_size: usize, source_len: usize, target_len: usize) -> Vec<(u64, String)> {
        let c = &self.config;
        let seq = source_len + target_len;
        let flags = "lower --batch-size, --max-source-len or --max-target-len";
        vec![
            logits_chunk(batch_size * target_len, c.vocab_size),
            (
                f32_bytes(&[batch_size, c.num_attention_heads, seq, seq]),
                format!(
                    "the attention probabilities of {batch_size} examples × {} heads × {seq} × {seq} tokens ({flags})",
                    c.num_attention_heads
                ),
            ),
            (
                f32_bytes(&[batch_size, seq, c.intermediate_size]),
                format!(
                    "the feed-forward activations of {batch_size} × {seq} tokens × {} ({flags})",
                    c.intermediate_size
                ),
            ),
            (
                f32_bytes(&[c.vocab_size, c.hidden_size]),
                format!(
                    "the embedding table of {} × {} (the model is too large for this adapter)",
                    c.vocab_size, c.hidden_size
                ),
            ),
        ]
    }

    /// Every buffer of a step stays allocated until the step's one submission, so this is
    /// all a step allocates (counted from what the pool serves a step): per layer, 16 rows of
    /// width d, 6 of the query and of the key/value width, 9 feed-forward rows, and the
    /// probabilities and their gradient; the head's chunks and its weight-gradient scratch.
    fn activation_bytes(&self, batch_size: usize, source_len: usize, target_len: usize) -> u64 {
        let c = &self.config;
        let (b, s) = (batch_size as u64, (source_len + target_len) as u64);
        let rows = b * s;
        let (d, ff, vocab) = (c.hidden_size as u64, c.intermediate_size as u64, c.vocab_size as u64);
        let qw = (c.num_attention_heads * c.head_dim()) as u64;
        let kvw = (c.num_key_value_heads() * c.head_dim()) as u64;
        let probs = b * c.num_attention_heads as u64 * s * s;
        let per_layer = rows * (16 * d + 6 * qw + 6 * kvw + 9 * ff) + 2 * probs;
        let head = 4 * rows * d + 2 * logits_chunk(batch_size * target_len, c.vocab_size).0 / 4 + 2 * vocab * d;
        4 * (c.num_hidden_layers as u64 * per_layer + head)
    }

    fn hf_config_json(&self) -> Result<String> {
        self.config.to_hf_json()
    }

    fn default_targets(&self) -> Vec<String> {
        TARGETS.iter().map(|s| s.to_string()).collect()
    }
}

impl Passes for DecoderModel {
    type Batch = CausalBatch;
    type Output = DecoderForwardOutput;

    fn batch(&self, pairs: &[Pair]) -> Result<CausalBatch> {
        DecoderModel::batch(self, pairs)
    }
    fn labels(batch: &CausalBatch) -> &[i32] {
        &batch.labels
    }
    fn set_grad_scale(batch: &mut CausalBatch, grad_scale: f32) {
        batch.grad_scale = grad_scale;
    }
    fn forward(&self, batch: &CausalBatch, grads: Option<&Gradients>) -> Result<DecoderForwardOutput> {
        DecoderModel::forward(self, batch, grads)
    }
    fn loss_of(out: &DecoderForwardOutput) -> Option<&Tensor> {
        out.loss.as_ref()
    }
    fn backward(&self, batch: &CausalBatch, out: &DecoderForwardOutput, grads: &Gradients) -> Result<()> {
        DecoderModel::backward(self, batch, out, grads)
    }
    fn logits_at(&self, out: &DecoderForwardOutput, rows: &[u32]) -> Result<Tensor> {
        DecoderModel::logits_at(self, out, rows)
    }
}

/// One right-padded batch of (source, target) pairs for next-token prediction: each row is
/// source ++ target, and the loss is taken only on the target tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct CausalBatch {
    pub batch_size: usize,
    pub seq_len: usize,
    /// [batch_size * seq_len], right-padded with the padding id.
    pub input_ids: Vec<u32>,
    /// [batch_size * seq_len], 1 = real token, 0 = padding.
    pub attention_mask: Vec<u32>,
    /// [batch_size * seq_len], already shifted: `labels[t]` is the token at t + 1 when that is a
    /// target token, else -100 (source, padding, the last position).
    pub labels: Vec<i32>,
    /// Factor on the loss gradient: 1 for a whole batch; a micro-batch of an accumulated step
    /// takes its share of the step's labels, so the summed gradients equal one big batch's.
    pub grad_scale: f32,
}

impl CausalBatch {
    /// Concatenates each (source, target) pair and pads to the longest; `pad_token_id` is the
    /// config's [`DecoderConfig::padding_id`] (pad_token_id, else eos). Sources and targets must
    /// not be empty (the first target token is predicted from the last source token).
    pub fn new(pairs: &[(Vec<u32>, Vec<u32>)], pad_token_id: u32) -> Result<CausalBatch> {
        if pairs.is_empty() {
            bail!("a batch needs at least one example");
        }
        if let Some(n) = pairs.iter().position(|(s, t)| s.is_empty() || t.is_empty()) {
            bail!("example {n} has an empty source or target; both need at least one token");
        }
        let seq_len = pairs.iter().map(|(s, t)| s.len() + t.len()).max().unwrap_or(0);
        let mut b = CausalBatch {
            batch_size: pairs.len(),
            seq_len,
            input_ids: Vec::with_capacity(pairs.len() * seq_len),
            attention_mask: Vec::with_capacity(pairs.len() * seq_len),
            labels: Vec::with_capacity(pairs.len() * seq_len),
            grad_scale: 1.0,
        };
        for (source, target) in pairs {
            let len = source.len() + target.len();
            b.input_ids
                .extend(source.iter().chain(target).copied().chain(std::iter::repeat(pad_token_id)).take(seq_len));
            b.attention_mask.extend((0..seq_len).map(|i| u32::from(i < len)));
            b.labels.extend((0..seq_len).map(|t| {
                let next = t + 1;
                if next >= source.len() && next < len {
                    target[next - source.len()] as i32
                } else {
                    IGNORE_INDEX
                }
            }));
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_concatenates_pads_and_shifts_labels_onto_the_target() {
        let b = CausalBatch::new(&[(vec![5, 6], vec![7, 1]), (vec![8], vec![9, 10, 1])], 0).unwrap();
        assert_eq!((b.batch_size, b.seq_len), (2, 4));
        assert_eq!(b.input_ids, vec![5, 6, 7, 1, 8, 9, 10, 1]);
        assert_eq!(b.attention_mask, vec![1; 8]);
        assert_eq!(b.labels, vec![-100, 7, 1, -100, 9, 10, 1, -100]);
        let b = CausalBatch::new(&[(vec![5, 6, 4], vec![7]), (vec![8], vec![9])], 3).unwrap();
        assert_eq!(b.input_ids, vec![5, 6, 4, 7, 8, 9, 3, 3]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(b.labels, vec![-100, -100, 7, -100, 9, -100, -100, -100]);
        let err = CausalBatch::new(&[(vec![], vec![1])], 0).unwrap_err().to_string();
        assert!(err.contains("example 0 has an empty source"), "{err}");
    }

    #[test]
    fn cached_generation_matches_full_forwards_over_the_growing_sequence() {
        let gpu = crate::gpu::testing::gpu();
        let config = DecoderConfig::from_json(
            r#"{"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "vocab_size": 20, "rope_theta": 10.0}"#,
        )
        .unwrap();
        let model = DecoderModel::random(&gpu, config, 0.5, 7).unwrap();
        let prompt = vec![3, 5, 7, 11];
        let generated = model.generate(&prompt, 6).unwrap();
        assert_eq!(generated.len(), 6, "no eos id: runs to max_new_tokens");
        let mut sequence = prompt.clone();
        for &token in &generated {
            let n = sequence.len();
            let batch = CausalBatch {
                batch_size: 1,
                seq_len: n,
                input_ids: sequence.clone(),
                attention_mask: vec![1; n],
                labels: vec![IGNORE_INDEX; n],
                grad_scale: 1.0,
            };
            let out = model.forward(&batch, None).unwrap();
            assert!(out.loss.is_none());
            let logits = model.logits_at(&out, &[n as u32 - 1]).unwrap().to_f32().unwrap();
            assert_eq!(crate::model::argmax(&logits), token, "after {sequence:?}");
            sequence.push(token);
        }
    }

    #[test]
    fn parameter_names_follow_hugging_face() {
        let config = DecoderConfig::from_json(
            r#"{"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "vocab_size": 10}"#,
        )
        .unwrap();
        let shapes: BTreeMap<String, Vec<usize>> = DecoderModel::parameter_shapes(&config).into_iter().collect();
        assert_eq!(shapes.len(), 1 + 2 * 9 + 1 + 1);
        assert_eq!(shapes["model.layers.1.self_attn.k_proj.weight"], vec![8, 16]);
        assert_eq!(shapes["model.layers.0.self_attn.o_proj.weight"], vec![16, 16]);
        assert_eq!(shapes["model.layers.1.mlp.down_proj.weight"], vec![16, 24]);
        assert_eq!(shapes["model.layers.0.post_attention_layernorm.weight"], vec![16]);
        assert_eq!(shapes[LM_HEAD], vec![10, 16]);
        let mut tied = config.clone();
        tied.tie_word_embeddings = true;
        assert!(!DecoderModel::parameter_shapes(&tied).iter().any(|(n, _)| n == LM_HEAD));
    }
}
