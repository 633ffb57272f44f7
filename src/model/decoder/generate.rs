//! Greedy decoding with a key/value cache: the prompt runs once through every layer (its
//! rotated keys and values cached), then one new position a step, rotated at its absolute
//! position, attending to everything cached.

use anyhow::{bail, Result};

use super::forward::KeyValues;
use super::{DecoderModel, EMBED_TOKENS, FINAL_NORM};
use crate::gpu::Binding;
use crate::kernels::embedding::{check_ids, embedding};
use crate::kernels::matmul::linear;
use crate::kernels::norm::rms_norm;
use crate::kernels::rope::RopeTable;
use crate::model::generate::greedy;
use crate::model::kv_cache::KvCache;
use crate::model::Model;
use crate::tensor::Tensor;

impl DecoderModel {
    /// Greedy continuation of `prompt_ids` (not repeated in the result): at most
    /// `max_new_tokens` ids, stopping after (and including) any of the config's eos ids.
    pub fn generate(&self, prompt_ids: &[u32], max_new_tokens: usize) -> Result<Vec<u32>> {
        if prompt_ids.is_empty() {
            bail!("generate needs at least one prompt token");
        }
        check_ids(prompt_ids, self.config.vocab_size)?;
        let gpu = self.gpu();
        let c = &self.config;
        let eos = c.eos_token_ids()?;
        // Every position this call can reach; the last new token is never fed back.
        let table = RopeTable::new(gpu, self.inv_freq(), prompt_ids.len() + max_new_tokens.max(1))?;
        let mut caches: Vec<KvCache> = (0..c.num_hidden_layers).map(|_| KvCache::default()).collect();
        let mut first_position = 0;
        greedy(prompt_ids, max_new_tokens, &eos, |input| {
            let n = input.len();
            let shape = self.attention_shape(1, n, first_position + n)?;
            let mut h = embedding(self.param(EMBED_TOKENS), &Tensor::from_u32(gpu, &[n], input)?)?;
            for (layer, cache) in caches.iter_mut().enumerate() {
                h = self.layer(layer, &h, KeyValues::Append(cache), &shape, &table, first_position, None)?.1;
            }
            // Only the newest position's logits decide the next token.
            let last = Tensor::uninit(gpu, &[1, c.hidden_size], h.dtype())?;
            gpu.record_copy(h.buffer(), ((n - 1) * c.hidden_size * 4) as u64, last.buffer(), 0, last.byte_size());
            let (normed, _) = rms_norm(&last, self.param(FINAL_NORM), c.rms_norm_eps as f32)?;
            first_position += n;
            linear(&normed, self.param(self.lm_head_name()))?.to_f32()
        })
    }
}
