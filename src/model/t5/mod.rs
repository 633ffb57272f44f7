//! T5 encoder-decoder (v1.0 and v1.1 / flan-t5) on the GPU kernels, with Hugging Face
//! parameter names so that checkpoints load and save unchanged.

mod backward;
pub mod bucketing;
mod forward;
mod generate;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};

pub use forward::{AttentionActivations, EncoderOutput, FeedForwardActivations, ForwardOutput, LayerActivations};

use super::config::{FeedForward, T5Config};
use super::family::{f32_bytes, BlockStates, Gradients, MatrixInput, Model, Pair};
use super::lm_head::logits_chunk;
use super::params;
use super::passes::{self, Passes};
use crate::gpu::Gpu;
use crate::kernels::loss::IGNORE_INDEX;
use crate::tensor::Tensor;

/// Name of the tied embedding / output table.
pub const SHARED: &str = "shared.weight";

/// The matrices the method constrains by default: self-attention q, k, v, o and the
/// feed-forward matrices, in encoder and decoder (`*` matches any run of characters, dots
/// included).
pub const TARGETS: &[&str] = &[
    "*.SelfAttention.q.weight",
    "*.SelfAttention.k.weight",
    "*.SelfAttention.v.weight",
    "*.SelfAttention.o.weight",
    "*.DenseReluDense.wi.weight",
    "*.DenseReluDense.wi_0.weight",
    "*.DenseReluDense.wi_1.weight",
    "*.DenseReluDense.wo.weight",
];

/// Cross-attention, added to the targets on request.
pub const CROSS_ATTENTION_TARGETS: &[&str] = &[
    "*.EncDecAttention.q.weight",
    "*.EncDecAttention.k.weight",
    "*.EncDecAttention.v.weight",
    "*.EncDecAttention.o.weight",
];
pub use super::params::LM_HEAD;

pub struct T5Model {
    pub config: T5Config,
    pub feed_forward: FeedForward,
    /// Every trainable tensor under its Hugging Face name.
    pub params: BTreeMap<String, Tensor>,
    gpu: Gpu,
}

/// Which stack a block belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    Encoder,
    Decoder,
}

impl Stack {
    fn prefix(self) -> &'static str {
        match self {
            Stack::Encoder => "encoder",
            Stack::Decoder => "decoder",
        }
    }
}

/// Hugging Face name of a tensor of block `layer` of a stack, e.g.
/// `encoder.block.1.layer.0.SelfAttention.q.weight` for `(Encoder, 1, "layer.0.SelfAttention.q")`.
pub fn block_param(stack: Stack, layer: usize, rest: &str) -> String {
    format!("{}.block.{layer}.{rest}.weight", stack.prefix())
}

impl T5Model {
    /// Names and shapes of every parameter the config implies. `untied_head`: the
    /// checkpoint has its own `lm_head.weight`.
    pub fn parameter_shapes(config: &T5Config, untied_head: bool) -> Result<Vec<(String, Vec<usize>)>> {
        let (d, inner, ff) = (config.d_model, config.inner_dim(), config.d_ff);
        let gated = config.feed_forward()? == FeedForward::GatedGelu;
        let mut out = vec![(SHARED.to_string(), vec![config.vocab_size, d])];
        let attention = |stack: Stack, layer: usize, sub: &str, out: &mut Vec<(String, Vec<usize>)>| {
            for proj in ["q", "k", "v"] {
                out.push((block_param(stack, layer, &format!("{sub}.{proj}")), vec![inner, d]));
            }
            out.push((block_param(stack, layer, &format!("{sub}.o")), vec![d, inner]));
        };
        for stack in [Stack::Encoder, Stack::Decoder] {
            let layers = match stack {
                Stack::Encoder => config.num_layers,
                Stack::Decoder => config.num_decoder_layers(),
            };
            for layer in 0..layers {
                attention(stack, layer, "layer.0.SelfAttention", &mut out);
                if layer == 0 {
                    out.push((
                        block_param(stack, 0, "layer.0.SelfAttention.relative_attention_bias"),
                        vec![config.relative_attention_num_buckets, config.num_heads],
                    ));
                }
                out.push((block_param(stack, layer, "layer.0.layer_norm"), vec![d]));
                let ff_index = match stack {
                    Stack::Encoder => 1,
                    Stack::Decoder => {
                        attention(stack, layer, "layer.1.EncDecAttention", &mut out);
                        out.push((block_param(stack, layer, "layer.1.layer_norm"), vec![d]));
                        2
                    }
                };
                let ff_name = |w: &str| block_param(stack, layer, &format!("layer.{ff_index}.DenseReluDense.{w}"));
                if gated {
                    out.push((ff_name("wi_0"), vec![ff, d]));
                    out.push((ff_name("wi_1"), vec![ff, d]));
                } else {
                    out.push((ff_name("wi"), vec![ff, d]));
                }
                out.push((ff_name("wo"), vec![d, ff]));
                out.push((block_param(stack, layer, &format!("layer.{ff_index}.layer_norm")), vec![d]));
            }
            out.push((format!("{}.final_layer_norm.weight", stack.prefix()), vec![d]));
        }
        if untied_head {
            out.push((LM_HEAD.to_string(), vec![config.vocab_size, d]));
        }
        Ok(out)
    }

    /// Loads `DIR/config.json` and the safetensors weights onto the GPU.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<T5Model> {
        let config = T5Config::load(dir)?;
        // As in transformers, the config decides: a tied model ignores a stored lm_head.
        let shapes = Self::parameter_shapes(&config, !config.tie_word_embeddings)?;
        let params = params::load(gpu, dir, &shapes)?;
        Self::new(gpu, config, params)
    }

    /// A model with normal(0, std) weights and unit norm weights (benchmarks, tests).
    pub fn random(gpu: &Gpu, config: T5Config, untied_head: bool, std: f32, seed: u64) -> Result<T5Model> {
        let params = params::random(gpu, &Self::parameter_shapes(&config, untied_head)?, std, seed)?;
        Self::new(gpu, config, params)
    }

    fn new(gpu: &Gpu, config: T5Config, params: BTreeMap<String, Tensor>) -> Result<T5Model> {
        let feed_forward = config.feed_forward()?;
        params::check_head(&params, config.tie_word_embeddings)?;
        if config.relative_attention_max_distance == 0 {
            bail!("relative_attention_max_distance must be positive");
        }
        Ok(T5Model { config, feed_forward, params, gpu: gpu.clone() })
    }

    /// The parameter `name` (every name of [`T5Model::parameter_shapes`] is present).
    pub fn param(&self, name: &str) -> &Tensor {
        &self.params[name]
    }

    /// The output projection: `lm_head.weight` when the checkpoint has one, else `shared.weight`.
    pub fn lm_head(&self) -> &Tensor {
        &self.params[self.lm_head_name()]
    }

    pub fn num_layers(&self, stack: Stack) -> usize {
        match stack {
            Stack::Encoder => self.config.num_layers,
            Stack::Decoder => self.config.num_decoder_layers(),
        }
    }
}

impl T5Model {
    /// Pads (source, target) pairs into the encoder-decoder batch.
    pub fn batch(&self, pairs: &[Pair]) -> Result<Batch> {
        Batch::new(pairs, self.config.pad_token_id, self.config.decoder_start_token_id)
    }
}

impl Model for T5Model {
    fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn params(&self) -> &BTreeMap<String, Tensor> {
        &self.params
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// The name of the output projection: `lm_head.weight`, or `shared.weight` when tied.
    fn lm_head_name(&self) -> &'static str {
        if self.params.contains_key(LM_HEAD) {
            LM_HEAD
        } else {
            SHARED
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
        T5Model::generate(self, source, max_new_tokens)
    }

    /// Encoder blocks over the real source tokens, decoder blocks over the target tokens.
    fn block_states(&self, pairs: &[Pair]) -> Result<Vec<BlockStates>> {
        let batch = self.batch(pairs)?;
        let out = self.forward(&batch, None)?;
        let source_real: Vec<bool> = batch.attention_mask.iter().map(|&m| m == 1).collect();
        let target_real: Vec<bool> = batch.labels.iter().map(|&l| l != IGNORE_INDEX).collect();
        let mut states = Vec::new();
        for (stack, output, real) in
            [(Stack::Encoder, &out.encoder.stack, &source_real), (Stack::Decoder, &out.decoder, &target_real)]
        {
            for (l, block_output) in output.block_outputs.iter().enumerate() {
                let input = if l == 0 { &output.hidden_states[0] } else { &output.block_outputs[l - 1] };
                states.push(BlockStates {
                    prefix: format!("{}.block.{l}.", stack.prefix()),
                    input: input.clone(),
                    output: block_output.clone(),
                    real: real.clone(),
                });
            }
        }
        Ok(states)
    }

    fn matrix_inputs(&self, pairs: &[Pair]) -> Result<Vec<MatrixInput>> {
        let batch = self.batch(pairs)?;
        let out = self.forward(&batch, None)?;
        let source_real: Vec<bool> = batch.attention_mask.iter().map(|&m| m == 1).collect();
        let target_real: Vec<bool> = batch.labels.iter().map(|&l| l != IGNORE_INDEX).collect();
        // Names of the feed-forward variant the model lacks (wi or wi_0/wi_1) drop out here.
        let input = |names: Vec<String>, input: &Tensor, real: &Vec<bool>| MatrixInput {
            names: names.into_iter().filter(|n| self.params.contains_key(n)).collect(),
            input: input.clone(),
            real: real.clone(),
        };
        let mut inputs = Vec::new();
        for (stack, output, real) in
            [(Stack::Encoder, &out.encoder.stack, &source_real), (Stack::Decoder, &out.decoder, &target_real)]
        {
            for (l, layer) in output.layers.iter().enumerate() {
                let names = |sub: &str, projections: &[&str]| {
                    projections.iter().map(|p| block_param(stack, l, &format!("{sub}.{p}"))).collect::<Vec<_>>()
                };
                let attention = &layer.self_attention;
                inputs.push(input(names("layer.0.SelfAttention", &["q", "k", "v"]), &attention.normed, real));
                inputs.push(input(names("layer.0.SelfAttention", &["o"]), &attention.context, real));
                let mut ff_index = 1;
                if let Some(cross) = &layer.cross_attention {
                    // Queries come from the decoder; keys and values from the encoder's output.
                    let encoder_output = out.encoder.stack.last_hidden_state();
                    inputs.push(input(names("layer.1.EncDecAttention", &["q"]), &cross.normed, real));
                    inputs.push(input(names("layer.1.EncDecAttention", &["k", "v"]), encoder_output, &source_real));
                    inputs.push(input(names("layer.1.EncDecAttention", &["o"]), &cross.context, real));
                    ff_index = 2;
                }
                let ff = &layer.feed_forward;
                let sub = format!("layer.{ff_index}.DenseReluDense");
                inputs.push(input(names(&sub, &["wi", "wi_0", "wi_1"]), &ff.normed, real));
                inputs.push(input(names(&sub, &["wo"]), &ff.hidden, real));
            }
        }
        inputs.push(input(vec![self.lm_head_name().to_string()], &out.lm_head_input, &target_real));
        Ok(inputs)
    }

    /// The largest buffers of a step: one chunk of logits (and its gradient), the attention
    /// probabilities, the feed-forward activations and the embedding table.
    fn step_buffers(&self, batch_size: usize, source_len: usize, target_len: usize) -> Vec<(u64, String)> {
        let config = &self.config;
        let longest = source_len.max(target_len);
        vec![
            logits_chunk(batch_size * target_len, config.vocab_size),
            (
                f32_bytes(&[batch_size, config.num_heads, longest, longest]),
                format!("the attention probabilities of {batch_size} examples × {} heads × {longest} × {longest} tokens (lower --batch-size, --max-source-len or --max-target-len)", config.num_heads),
            ),
            (
                f32_bytes(&[batch_size, longest, config.d_ff]),
                format!("the feed-forward activations of {batch_size} × {longest} tokens × d_ff {} (lower --batch-size, --max-source-len or --max-target-len)", config.d_ff),
            ),
            (
                f32_bytes(&[config.vocab_size, config.d_model]),
                format!("the embedding table of {} × {} (the model is too large for this adapter)", config.vocab_size, config.d_model),
            ),
        ]
    }

    /// Every buffer of a step stays allocated until the step's one submission, so this is
    /// all a step allocates (counted from what the pool serves a step): per encoder block 16
    /// source rows of width d_model, 8 of the attention width and the feed-forward rows; per
    /// decoder block 21 and 12 target rows, the cross-attention keys and values over the
    /// source; the probabilities and their gradients; the head's chunks and scratch.
    fn activation_bytes(&self, batch_size: usize, source_len: usize, target_len: usize) -> u64 {
        let c = &self.config;
        let b = batch_size as u64;
        let (s, t) = (source_len as u64, target_len as u64);
        let (src, tgt) = (b * s, b * t);
        let (d, inner, h, vocab) =
            (c.d_model as u64, (c.num_heads * c.d_kv) as u64, c.num_heads as u64, c.vocab_size as u64);
        let gated = u64::from(c.feed_forward().is_ok_and(|f| f == FeedForward::GatedGelu));
        let ff = c.d_ff as u64 * (4 + 5 * gated);
        let encoder = src * (16 * d + 8 * inner + ff) + 2 * b * h * s * s;
        let decoder = tgt * (21 * d + 12 * inner + ff) + 4 * src * inner + 2 * b * h * (t * t + t * s);
        let head = 5 * (src + tgt) * d + 2 * logits_chunk(batch_size * target_len, c.vocab_size).0 / 4 + 2 * vocab * d;
        4 * (c.num_layers as u64 * encoder + c.num_decoder_layers() as u64 * decoder + head)
    }

    fn hf_config_json(&self) -> Result<String> {
        self.config.to_hf_json()
    }

    fn default_targets(&self) -> Vec<String> {
        TARGETS.iter().map(|s| s.to_string()).collect()
    }

    fn cross_attention_targets(&self) -> Vec<String> {
        CROSS_ATTENTION_TARGETS.iter().map(|s| s.to_string()).collect()
    }
}

impl Passes for T5Model {
    type Batch = Batch;
    type Output = ForwardOutput;

    fn batch(&self, pairs: &[Pair]) -> Result<Batch> {
        T5Model::batch(self, pairs)
    }
    fn labels(batch: &Batch) -> &[i32] {
        &batch.labels
    }
    fn set_grad_scale(batch: &mut Batch, grad_scale: f32) {
        batch.grad_scale = grad_scale;
    }
    fn forward(&self, batch: &Batch, grads: Option<&Gradients>) -> Result<ForwardOutput> {
        T5Model::forward(self, batch, grads)
    }
    fn loss_of(out: &ForwardOutput) -> Option<&Tensor> {
        out.loss.as_ref()
    }
    fn backward(&self, batch: &Batch, out: &ForwardOutput, grads: &Gradients) -> Result<()> {
        T5Model::backward(self, batch, out, grads)
    }
    fn logits_at(&self, out: &ForwardOutput, rows: &[u32]) -> Result<Tensor> {
        T5Model::logits_at(self, out, rows)
    }
}

/// One padded batch on the host, as transformers' `T5ForConditionalGeneration` takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch_size: usize,
    pub source_len: usize,
    pub target_len: usize,
    /// [batch_size * source_len], right-padded with `pad_token_id`.
    pub input_ids: Vec<u32>,
    /// [batch_size * source_len], 1 = real token, 0 = padding.
    pub attention_mask: Vec<u32>,
    /// [batch_size * target_len]: labels shifted right, starting with `decoder_start_token_id`.
    pub decoder_input_ids: Vec<u32>,
    /// [batch_size * target_len], -100 where no loss is taken (padding).
    pub labels: Vec<i32>,
    /// Factor on the loss gradient: 1 for a whole batch; a micro-batch of an accumulated
    /// step takes its share of the step's labels, so the summed gradients equal one big batch's.
    pub grad_scale: f32,
}

impl Batch {
    /// Pads tokenized (source, target) pairs to the longest of each; target ids become
    /// the labels and, shifted right, the decoder inputs.
    pub fn new(pairs: &[(Vec<u32>, Vec<u32>)], pad_token_id: u32, decoder_start_token_id: u32) -> Result<Batch> {
        if pairs.is_empty() {
            bail!("a batch needs at least one example");
        }
        let source_len = pairs.iter().map(|p| p.0.len()).max().unwrap_or(0);
        let target_len = pairs.iter().map(|p| p.1.len()).max().unwrap_or(0);
        if source_len == 0 || target_len == 0 {
            bail!("every batch needs a non-empty source and target (longest source {source_len}, target {target_len})");
        }
        let mut b = Batch {
            batch_size: pairs.len(),
            source_len,
            target_len,
            input_ids: Vec::new(),
            attention_mask: Vec::new(),
            decoder_input_ids: Vec::new(),
            labels: Vec::new(),
            grad_scale: 1.0,
        };
        for (source, target) in pairs {
            if source.is_empty() {
                bail!("an example has an empty source; every source needs at least one token");
            }
            b.input_ids.extend(source.iter().copied().chain(std::iter::repeat(pad_token_id)).take(source_len));
            b.attention_mask.extend((0..source_len).map(|i| u32::from(i < source.len())));
            let labels: Vec<i32> = (0..target_len).map(|i| target.get(i).map_or(IGNORE_INDEX, |&t| t as i32)).collect();
            b.decoder_input_ids.push(decoder_start_token_id);
            b.decoder_input_ids.extend(labels[..target_len - 1].iter().map(|&l| {
                if l == IGNORE_INDEX {
                    pad_token_id
                } else {
                    l as u32
                }
            }));
            b.labels.extend(labels);
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_whose_activations_exceed_the_adapter_limit_is_refused_with_the_flags_to_change() {
        let gpu = crate::gpu::testing::gpu();
        let model = T5Model::random(&gpu, T5Config::tiny(1000), true, 0.1, 1).unwrap();
        model.check_batch_buffers(8, 64, 32).unwrap();
        let limit = gpu.limits().max_buffer_size.min(gpu.limits().max_storage_buffer_binding_size);
        // Logits come in chunks: as many target tokens as the whole logits would not fit pass.
        model.check_batch_buffers((limit / (32 * 1000 * 4) + 1) as usize, 8, 32).unwrap();
        // Just enough examples that the attention probabilities no longer fit one buffer.
        let per_example = (model.config.num_heads * 32 * 32 * 4) as u64;
        let batch = (limit / per_example + 1) as usize;
        let err = model.check_batch_buffers(batch, 8, 32).unwrap_err().to_string();
        assert!(err.contains("attention") && err.contains("--batch-size") && err.contains("--max-target-len"), "{err}");
        assert!(err.contains(&(batch as u64 * per_example).to_string()), "says the size needed: {err}");
        let err = model.check_batch_buffers(1, 1 << 20, 1).unwrap_err().to_string();
        assert!(err.contains("attention") && err.contains("--max-source-len"), "{err}");
    }

    #[test]
    fn batch_pads_and_shifts_like_transformers() {
        let b = Batch::new(&[(vec![5, 6, 1], vec![7, 1]), (vec![8, 1], vec![9, 10, 1])], 0, 0).unwrap();
        assert_eq!((b.batch_size, b.source_len, b.target_len), (2, 3, 3));
        assert_eq!(b.input_ids, vec![5, 6, 1, 8, 1, 0]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!(b.labels, vec![7, 1, -100, 9, 10, 1]);
        assert_eq!(b.decoder_input_ids, vec![0, 7, 1, 0, 9, 10]);
    }

    #[test]
    fn parameter_names_follow_hugging_face() {
        let mut config: T5Config =
            serde_json::from_str(r#"{"num_layers": 2, "feed_forward_proj": "gated-gelu"}"#).unwrap();
        config.set_num_decoder_layers(3);
        let names: Vec<String> = T5Model::parameter_shapes(&config, true).unwrap().into_iter().map(|p| p.0).collect();
        for want in [
            "shared.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "encoder.block.1.layer.1.DenseReluDense.wi_1.weight",
            "decoder.block.2.layer.1.EncDecAttention.o.weight",
            "decoder.block.2.layer.2.layer_norm.weight",
            "decoder.final_layer_norm.weight",
            "lm_head.weight",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n == "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"));
        // 2 encoder blocks x 9 + 3 decoder blocks x 14 + 2 bias tables + shared, 2 final norms, lm_head
        assert_eq!(names.len(), 2 * 9 + 3 * 14 + 2 + 3 + 1);
    }
}
