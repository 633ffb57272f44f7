//! The decoder forward pass, written out layer by layer like transformers' `modeling_llama.py`
//! (`modeling_qwen2.py`, `modeling_qwen3.py`): pre-norm residual blocks
//! x + o(attn(rope(qn(q(n))), rope(kn(k(n))), v(n))), then x + down(silu(gate(n)) ⊙ up(n));
//! a final norm and the LM head. q, k, v carry biases in Qwen2; qn and kn, per-head RMS norms,
//! exist in Qwen3. Everything the backward pass needs is kept in the returned activations.

use anyhow::Result;

use super::{layer_bias, layer_param, CausalBatch, DecoderModel, EMBED_TOKENS, FINAL_NORM};
use crate::kernels::attention::{attention, AttentionShape};
use crate::kernels::elementwise::{add, mul, silu};
use crate::kernels::embedding::{check_ids, embedding};
use crate::kernels::matmul::{add_bias, linear};
use crate::kernels::norm::rms_norm;
use crate::kernels::rope::{rope, Direction, RopeTable};
use crate::model::kv_cache::KvCache;
use crate::model::lm_head::{head_logits, head_loss, HeadGradient};
use crate::model::{Gradients, Model};
use crate::tensor::Tensor;

/// One decoder layer's activations.
pub struct LayerActivations {
    /// Residual stream entering the layer, [rows, hidden].
    pub input: Tensor,
    pub attn_normed: Tensor,
    pub attn_inv_rms: Tensor,
    /// The per-head norms of the projected queries and keys (Qwen3).
    pub q_norm: Option<HeadNorm>,
    pub k_norm: Option<HeadNorm>,
    /// Rotated queries [B, S, H*Dh] and keys [B, S, Hkv*Dh]; values [B, S, Hkv*Dh].
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// Softmax output [B, H, S, S].
    pub probs: Tensor,
    /// Concatenated heads before o_proj, [rows, H*Dh].
    pub context: Tensor,
    /// Residual stream after the attention block, [rows, hidden].
    pub mid: Tensor,
    pub mlp_normed: Tensor,
    pub mlp_inv_rms: Tensor,
    /// gate_proj·n and up_proj·n, [rows, intermediate].
    pub gate: Tensor,
    pub up: Tensor,
    /// silu(gate) ⊙ up, the input of down_proj.
    pub hidden: Tensor,
}

/// One per-head RMS norm: its input (the projection) and inverse RMS per head row.
pub struct HeadNorm {
    /// [rows * heads, head_dim].
    pub input: Tensor,
    pub inv_rms: Tensor,
}

pub struct DecoderForwardOutput {
    /// Mean cross-entropy over labels != -100, `[1]`; None when the batch has no such label.
    pub loss: Option<Tensor>,
    /// d(loss)/d(final normed hidden state), [B*S, hidden]; only when the forward was given
    /// gradients (the head's own gradient is then already in them).
    pub d_head_input: Option<Tensor>,
    /// transformers' `hidden_states`: the input of every layer (entry 0 is the embedding
    /// output), then the final norm of the last layer's output; each [B, S, hidden].
    pub hidden_states: Vec<Tensor>,
    /// The raw output of every layer, [B, S, hidden].
    pub layer_outputs: Vec<Tensor>,
    pub layers: Vec<LayerActivations>,
    /// Inverse RMS of the final norm.
    pub final_inv_rms: Tensor,
    /// Causal self-attention over the padded batch.
    pub shape: AttentionShape,
    /// cos/sin of positions 0..S.
    pub rope: RopeTable,
    /// F32 [B, S], 1 = real token.
    pub key_mask: Tensor,
}

impl DecoderForwardOutput {
    /// The final norm of the last layer's output, [B, S, hidden] (the LM head's input).
    pub fn last_hidden_state(&self) -> &Tensor {
        self.hidden_states.last().expect("hidden states end with the final norm")
    }
}

/// Where a self-attention block gets the keys and values it attends to.
pub(super) enum KeyValues<'a> {
    /// Those of its own input (a whole sequence).
    FromInput,
    /// Its own, appended to the cache of earlier positions, all attended to (generation).
    Append(&'a mut KvCache),
}

impl DecoderModel {
    /// Embedding, every layer, the final norm and, when the batch has labels, the loss through
    /// the LM head in row chunks; with `grads`, the head's gradient too (accumulated there) and
    /// the gradient that [`DecoderModel::backward`] takes through the layers. Records the work;
    /// read results with `to_f32`.
    pub fn forward(&self, batch: &CausalBatch, grads: Option<&Gradients>) -> Result<DecoderForwardOutput> {
        let mut out = self.trunk(batch)?;
        let d = self.config.hidden_size;
        let normed = out.last_hidden_state().reshape(&[batch.batch_size * batch.seq_len, d])?;
        let head = self.lm_head_name();
        let grad = grads.map(|g| HeadGradient { grad_scale: batch.grad_scale, d_weight: g.get(head) });
        if let Some(h) = head_loss(&normed, self.param(head), &batch.labels, grad)? {
            (out.loss, out.d_head_input) = (Some(h.loss), h.d_input);
        }
        Ok(out)
    }

    /// Embedding, every layer and the final norm, without the head (layer importance).
    pub fn trunk(&self, batch: &CausalBatch) -> Result<DecoderForwardOutput> {
        let gpu = self.gpu();
        let c = &self.config;
        let (b, s, d) = (batch.batch_size, batch.seq_len, c.hidden_size);
        let rows = b * s;
        check_ids(&batch.input_ids, c.vocab_size)?;
        let ids = Tensor::from_u32(gpu, &[rows], &batch.input_ids)?;
        let mask: Vec<f32> = batch.attention_mask.iter().map(|&m| m as f32).collect();
        let key_mask = Tensor::from_f32(gpu, &[b, s], &mask)?;
        let table = RopeTable::new(gpu, self.inv_freq(), s)?;
        let shape = self.attention_shape(b, s, s)?;

        let mut h = embedding(self.param(EMBED_TOKENS), &ids)?;
        let mut hidden_states = Vec::with_capacity(c.num_hidden_layers + 1);
        let mut layer_outputs = Vec::with_capacity(c.num_hidden_layers);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for layer in 0..c.num_hidden_layers {
            hidden_states.push(h.reshape(&[b, s, d])?);
            let (acts, out) = self.layer(layer, &h, KeyValues::FromInput, &shape, &table, 0, Some(&key_mask))?;
            layer_outputs.push(out.reshape(&[b, s, d])?);
            layers.push(acts);
            h = out;
        }
        let (normed, final_inv_rms) = rms_norm(&h, self.param(FINAL_NORM), c.rms_norm_eps as f32)?;
        hidden_states.push(normed.reshape(&[b, s, d])?);
        Ok(DecoderForwardOutput {
            loss: None,
            d_head_input: None,
            hidden_states,
            layer_outputs,
            layers,
            final_inv_rms,
            shape,
            rope: table,
            key_mask,
        })
    }

    /// The logits at flat positions `rows` (b * seq_len + t) of a forward, [rows.len(), vocab].
    pub fn logits_at(&self, out: &DecoderForwardOutput, rows: &[u32]) -> Result<Tensor> {
        let normed = out.last_hidden_state();
        let d = self.config.hidden_size;
        head_logits(&normed.reshape(&[normed.len() / d, d])?, self.param(self.lm_head_name()), rows)
    }

    /// One decoder layer over `x` [rows, hidden] whose sequences start at absolute position
    /// `first_position`. Returns the activations and the layer's output.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer(
        &self,
        layer: usize,
        x: &Tensor,
        kv: KeyValues,
        shape: &AttentionShape,
        table: &RopeTable,
        first_position: usize,
        key_mask: Option<&Tensor>,
    ) -> Result<(LayerActivations, Tensor)> {
        let c = &self.config;
        let eps = c.rms_norm_eps as f32;
        let w = |rest: &str| self.param(&layer_param(layer, rest));
        let (b, s) = (shape.batch, shape.q_len);
        let (q_width, kv_width) = (shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim);

        let family = c.family;
        let (attn_normed, attn_inv_rms) = rms_norm(x, w("input_layernorm"), eps)?;
        let project = |name: &str, width: usize| -> Result<Tensor> {
            let y = linear(&attn_normed, w(name))?.reshape(&[b, s, width])?;
            if family.qkv_bias {
                add_bias(&y, self.param(&layer_bias(layer, name)))?;
            }
            Ok(y)
        };
        // The per-head norm (Qwen3), then rope at the sequences' absolute positions.
        let norm_and_rotate = |y: Tensor, norm: &str, heads: usize| -> Result<(Tensor, Option<HeadNorm>)> {
            let (y, head_norm) = if family.qk_norm {
                let input = y.reshape(&[b * s * heads, shape.head_dim])?;
                let (normed, inv_rms) = rms_norm(&input, w(norm), eps)?;
                (normed.reshape(&[b, s, heads * shape.head_dim])?, Some(HeadNorm { input, inv_rms }))
            } else {
                (y, None)
            };
            Ok((rope(&y, table, heads, s, first_position, Direction::Forward)?, head_norm))
        };
        let (q, q_norm) = norm_and_rotate(project("self_attn.q_proj", q_width)?, "self_attn.q_norm", shape.heads)?;
        let (k_new, k_norm) =
            norm_and_rotate(project("self_attn.k_proj", kv_width)?, "self_attn.k_norm", shape.kv_heads)?;
        let v_new = project("self_attn.v_proj", kv_width)?;
        let (k, v) = match kv {
            KeyValues::FromInput => (k_new, v_new),
            KeyValues::Append(cache) => {
                cache.append(&k_new, &v_new)?;
                (cache.k.clone().expect("appended"), cache.v.clone().expect("appended"))
            }
        };
        let (context, probs) = attention(shape, &q, &k, &v, None, key_mask)?;
        let context = context.reshape(&[b * s, q_width])?;
        let mid = add(x, &linear(&context, w("self_attn.o_proj"))?)?;

        let (mlp_normed, mlp_inv_rms) = rms_norm(&mid, w("post_attention_layernorm"), eps)?;
        let gate = linear(&mlp_normed, w("mlp.gate_proj"))?;
        let up = linear(&mlp_normed, w("mlp.up_proj"))?;
        let hidden = mul(&silu(&gate)?, &up)?;
        let out = add(&mid, &linear(&hidden, w("mlp.down_proj"))?)?;
        let acts = LayerActivations {
            input: x.clone(),
            attn_normed,
            attn_inv_rms,
            q_norm,
            k_norm,
            q,
            k,
            v,
            probs,
            context,
            mid,
            mlp_normed,
            mlp_inv_rms,
            gate,
            up,
            hidden,
        };
        Ok((acts, out))
    }
}
