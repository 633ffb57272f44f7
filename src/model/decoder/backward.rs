//! The decoder backward pass, layer by layer in reverse (llm.c style): every parameter's
//! gradient accumulates into its own buffer of [`Gradients`], so micro-batches add up. A tied
//! embedding gathers both its LM-head and its lookup gradient.

use anyhow::{bail, Result};

use super::forward::{DecoderForwardOutput, HeadNorm, LayerActivations};
use super::{layer_bias, layer_param, CausalBatch, DecoderModel, EMBED_TOKENS, FINAL_NORM};
use crate::kernels::attention::{attention_backward, AttentionShape};
use crate::kernels::elementwise::{axpy, mul, silu, silu_backward};
use crate::kernels::embedding::embedding_backward;
use crate::kernels::matmul::linear_backward;
use crate::kernels::norm::rms_norm_backward;
use crate::kernels::reduce::col_sum_into;
use crate::kernels::rope::{rope, Direction, RopeTable};
use crate::model::Gradients;
use crate::tensor::Tensor;

impl DecoderModel {
    /// Records the gradients of the forward's loss into `grads` (accumulating), from the head
    /// gradient that `forward(batch, Some(grads))` left in `out`.
    pub fn backward(&self, batch: &CausalBatch, out: &DecoderForwardOutput, grads: &Gradients) -> Result<()> {
        let Some(d_normed) = &out.d_head_input else {
            bail!("backward needs a forward run with gradients on a batch with at least one label other than -100");
        };
        let d = self.config.hidden_size;
        let rows = batch.batch_size * batch.seq_len;
        let last = out.layer_outputs.last().expect("a model has layers").reshape(&[rows, d])?;
        let mut dh =
            rms_norm_backward(d_normed, &last, self.param(FINAL_NORM), &out.final_inv_rms, grads.get(FINAL_NORM))?;
        for (layer, acts) in out.layers.iter().enumerate().rev() {
            dh = self.layer_backward(layer, acts, &out.shape, &out.rope, dh, grads)?;
        }
        // transformers builds the embedding with padding_idx = pad_token_id: that row learns
        // nothing from lookups (only, when tied, as the head).
        embedding_backward(&dh, &batch.input_ids, grads.get(EMBED_TOKENS), self.config.pad_token_id)
    }

    /// Through one layer from the gradient of its output; returns the gradient of its input.
    fn layer_backward(
        &self,
        layer: usize,
        a: &LayerActivations,
        shape: &AttentionShape,
        table: &RopeTable,
        dy: Tensor,
        grads: &Gradients,
    ) -> Result<Tensor> {
        let name = |rest: &str| layer_param(layer, rest);
        // (weight, gradient buffer) of one parameter of this layer
        let wg = |rest: &str| {
            let n = name(rest);
            (self.param(&n), grads.get(&n))
        };
        let (b, s) = (shape.batch, shape.q_len);
        let rows = b * s;

        // Feed-forward: y = mid + down(silu(gate) ⊙ up), gate/up from n = norm(mid).
        let (w, g) = wg("mlp.down_proj");
        let d_hidden = linear_backward(&dy, &a.hidden, w, g)?;
        let d_up = mul(&d_hidden, &silu(&a.gate)?)?;
        let d_gate = silu_backward(&mul(&d_hidden, &a.up)?, &a.gate)?;
        let (w, g) = wg("mlp.gate_proj");
        let d_mlp_normed = linear_backward(&d_gate, &a.mlp_normed, w, g)?;
        let (w, g) = wg("mlp.up_proj");
        axpy(1.0, &linear_backward(&d_up, &a.mlp_normed, w, g)?, &d_mlp_normed)?;
        let (w, g) = wg("post_attention_layernorm");
        let d_mid = rms_norm_backward(&d_mlp_normed, &a.mid, w, &a.mlp_inv_rms, g)?;
        axpy(1.0, &dy, &d_mid)?;

        // Attention: mid = x + o(attn(rope(qn(q(n))), rope(kn(k(n))), v(n))), n = norm(x).
        let (w, g) = wg("self_attn.o_proj");
        let d_context = linear_backward(&d_mid, &a.context, w, g)?;
        let q_width = shape.heads * shape.head_dim;
        let d_context = d_context.reshape(&[b, s, q_width])?;
        let (dq, dk, dv) = attention_backward(shape, &d_context, &a.q, &a.k, &a.v, &a.probs, None)?;
        let kv_width = shape.kv_heads * shape.head_dim;
        // Back through rope and the per-head norm (Qwen3) to the projection's output.
        let unrotate = |d: &Tensor, heads: usize, norm: Option<&HeadNorm>, norm_name: &str| -> Result<Tensor> {
            let d = rope(d, table, heads, s, 0, Direction::Backward)?;
            let d = match norm {
                Some(n) => {
                    let (w, g) = wg(norm_name);
                    rms_norm_backward(&d.reshape(n.input.shape())?, &n.input, w, &n.inv_rms, g)?
                }
                None => d,
            };
            d.reshape(&[rows, heads * shape.head_dim])
        };
        let dq = unrotate(&dq, shape.heads, a.q_norm.as_ref(), "self_attn.q_norm")?;
        let dk = unrotate(&dk, shape.kv_heads, a.k_norm.as_ref(), "self_attn.k_norm")?;
        let dv = dv.reshape(&[rows, kv_width])?;
        let mut d_attn_normed: Option<Tensor> = None;
        for (proj, d) in [("self_attn.q_proj", &dq), ("self_attn.k_proj", &dk), ("self_attn.v_proj", &dv)] {
            if self.config.family.qkv_bias {
                col_sum_into(d, grads.get(&layer_bias(layer, proj)), true)?;
            }
            let (w, g) = wg(proj);
            let dx = linear_backward(d, &a.attn_normed, w, g)?;
            match &d_attn_normed {
                Some(sum) => axpy(1.0, &dx, sum)?,
                None => d_attn_normed = Some(dx),
            }
        }
        let d_attn_normed = d_attn_normed.expect("three projections");
        let (w, g) = wg("input_layernorm");
        let dx = rms_norm_backward(&d_attn_normed, &a.input, w, &a.attn_inv_rms, g)?;
        axpy(1.0, &d_mid, &dx)?;
        Ok(dx)
    }
}
