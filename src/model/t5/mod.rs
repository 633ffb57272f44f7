//! T5 encoder-decoder (v1.0 and v1.1 / flan-t5) on the GPU kernels, with Hugging Face
//! parameter names so that checkpoints load and save unchanged.

mod backward;
mod forward;
mod generate;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};

pub use super::gradients::Gradients;
pub use forward::{AttentionActivations, EncoderOutput, FeedForwardActivations, ForwardOutput, LayerActivations};
pub(crate) use generate::argmax;
pub use generate::KvCache;

use super::config::{FeedForward, T5Config};
use super::weights::Weights;
use crate::gpu::Gpu;
use crate::kernels::loss::IGNORE_INDEX;
use crate::tensor::Tensor;

/// Name of the tied embedding / output table.
pub const SHARED: &str = "shared.weight";
/// Name of the separate output table of untied models.
pub const LM_HEAD: &str = "lm_head.weight";

pub struct T5Model {
    pub config: T5Config,
    pub feed_forward: FeedForward,
    /// Every trainable tensor under its Hugging Face name.
    pub params: BTreeMap<String, Tensor>,
    gpu: Gpu,
}

impl super::gradients::Parameters for T5Model {
    fn gpu(&self) -> &Gpu {
        &self.gpu
    }
    fn params(&self) -> &BTreeMap<String, Tensor> {
        &self.params
    }
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
        let weights = Weights::load(dir)?;
        // As in transformers, the config decides: a tied model ignores a stored lm_head.
        let untied_head = !config.tie_word_embeddings;
        let mut params = BTreeMap::new();
        for (name, shape) in Self::parameter_shapes(&config, untied_head)? {
            let host = weights.get(&name, &shape)?;
            params.insert(name, Tensor::from_f32(gpu, &shape, &host.data)?);
        }
        Self::new(gpu, config, params)
    }

    /// A model with normal(0, std) weights and unit norm weights (benchmarks, tests).
    pub fn random(gpu: &Gpu, config: T5Config, untied_head: bool, std: f32, seed: u64) -> Result<T5Model> {
        let mut rng = crate::rng::Rng::new(seed);
        let mut params = BTreeMap::new();
        for (name, shape) in Self::parameter_shapes(&config, untied_head)? {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("layer_norm.weight") {
                vec![1.0; n]
            } else {
                (0..n).map(|_| rng.normal() * std).collect()
            };
            params.insert(name, Tensor::from_f32(gpu, &shape, &data)?);
        }
        Self::new(gpu, config, params)
    }

    fn new(gpu: &Gpu, config: T5Config, params: BTreeMap<String, Tensor>) -> Result<T5Model> {
        let feed_forward = config.feed_forward()?;
        if params.contains_key(LM_HEAD) == config.tie_word_embeddings {
            bail!(
                "tie_word_embeddings is {} but the model {} a separate {LM_HEAD}",
                config.tie_word_embeddings,
                if config.tie_word_embeddings { "has" } else { "lacks" }
            );
        }
        if config.relative_attention_max_distance == 0 {
            bail!("relative_attention_max_distance must be positive");
        }
        Ok(T5Model { config, feed_forward, params, gpu: gpu.clone() })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The parameter `name` (every name of [`T5Model::parameter_shapes`] is present).
    pub fn param(&self, name: &str) -> &Tensor {
        &self.params[name]
    }

    /// The output projection: `lm_head.weight` when the checkpoint has one, else `shared.weight`.
    pub fn lm_head(&self) -> &Tensor {
        self.params.get(LM_HEAD).unwrap_or(&self.params[SHARED])
    }

    /// The files of a Hugging Face model folder: config.json and model.safetensors.
    pub fn hf_files(&self) -> Result<[(&'static str, Vec<u8>); 2]> {
        let tensors: Vec<(String, &Tensor)> = self.params.iter().map(|(n, t)| (n.clone(), t)).collect();
        Ok([
            ("config.json", self.config.to_hf_json()?.into_bytes()),
            ("model.safetensors", super::weights::serialize(&tensors, None)?),
        ])
    }

    pub fn num_layers(&self, stack: Stack) -> usize {
        match stack {
            Stack::Encoder => self.config.num_layers,
            Stack::Decoder => self.config.num_decoder_layers(),
        }
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
