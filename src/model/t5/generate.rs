//! Greedy decoding: the encoder runs once, the decoder one position at a time with a
//! key/value cache (self-attention keys/values grow by one row a step; the cross-attention
//! keys/values of the encoder output are projected once).

use anyhow::{bail, Result};

use super::bucketing::relative_position_buckets;
use super::forward::KeyValues;
use super::{block_param, Stack, T5Model, SHARED};
use crate::kernels::attention::{position_bias, AttentionShape};
use crate::kernels::embedding::embedding;
use crate::kernels::matmul::linear;
use crate::kernels::norm::rms_norm;
use crate::model::generate::greedy;
use crate::model::kv_cache::KvCache;
use crate::model::Model;
use crate::tensor::Tensor;

impl T5Model {
    /// Greedy output ids for one tokenized input (which should end with `</s>`), without the
    /// decoder start token; stops after `</s>` (included) or `max_new_tokens` tokens.
    pub fn generate(&self, input_ids: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        if input_ids.is_empty() {
            bail!("generate needs at least one input token");
        }
        let gpu = self.gpu();
        let c = &self.config;
        let (d, inner, src_len) = (c.d_model, c.inner_dim(), input_ids.len());
        let encoder = self.encode(input_ids, &vec![1; src_len], 1, src_len)?;
        let encoder_out = encoder.stack.last_hidden_state().reshape(&[src_len, d])?;
        let num_layers = self.num_layers(Stack::Decoder);
        let mut cross = Vec::with_capacity(num_layers);
        for layer in 0..num_layers {
            let w = |p: &str| self.param(&block_param(Stack::Decoder, layer, &format!("layer.1.EncDecAttention.{p}")));
            cross.push((
                linear(&encoder_out, w("k"))?.reshape(&[1, src_len, inner])?,
                linear(&encoder_out, w("v"))?.reshape(&[1, src_len, inner])?,
            ));
        }
        let mut caches: Vec<KvCache> = (0..num_layers).map(|_| KvCache::default()).collect();
        let table = self.param(&block_param(Stack::Decoder, 0, "layer.0.SelfAttention.relative_attention_bias"));
        let mut step = 0;
        greedy(&[c.decoder_start_token_id], max_new_tokens, &[c.eos_token_id], |token| {
            let position_count = step + 1;
            // Bias row of the newest query against every position so far.
            let buckets = relative_position_buckets(
                step,
                1,
                position_count,
                false,
                c.relative_attention_num_buckets,
                c.relative_attention_max_distance,
            );
            let row = Tensor::from_u32(gpu, &[position_count], &buckets)?;
            let bias = position_bias(table, &row, 1, position_count)?;
            let self_shape = AttentionShape {
                batch: 1,
                heads: c.num_heads,
                kv_heads: c.num_heads,
                q_len: 1,
                k_len: position_count,
                head_dim: c.d_kv,
                causal: false,
                scale: 1.0,
            };
            let cross_shape = AttentionShape { k_len: src_len, ..self_shape };
            let mut h = embedding(self.param(SHARED), &Tensor::from_u32(gpu, &[1], token)?)?;
            for (layer, cache) in caches.iter_mut().enumerate() {
                let (_, out) = self.attention_sublayer(
                    Stack::Decoder,
                    layer,
                    "layer.0.SelfAttention",
                    "layer.0.layer_norm",
                    &h,
                    KeyValues::Append(cache),
                    &self_shape,
                    Some(&bias),
                    None,
                )?;
                let (k, v) = &cross[layer];
                let (_, out) = self.attention_sublayer(
                    Stack::Decoder,
                    layer,
                    "layer.1.EncDecAttention",
                    "layer.1.layer_norm",
                    &out,
                    KeyValues::Given(k, v),
                    &cross_shape,
                    None,
                    Some(&encoder.key_mask),
                )?;
                h = self.feed_forward_sublayer(Stack::Decoder, layer, 2, &out)?.1;
            }
            let (normed, _) = rms_norm(&h, self.param("decoder.final_layer_norm.weight"), c.layer_norm_epsilon as f32)?;
            step += 1;
            linear(&self.lm_head_input(&normed)?, self.lm_head())?.to_f32()
        })
    }
}
