//! The T5 forward pass, written out layer by layer like the paper and transformers'
//! `modeling_t5.py`: pre-norm residual blocks, relative position bias computed by the first
//! block of each stack and shared by the others, no 1/sqrt(d_kv) attention scaling.
//! Everything the backward pass needs is kept in the returned activations.

use anyhow::Result;

use super::bucketing::relative_position_buckets;
use super::{block_param, Batch, Stack, T5Model, SHARED};
use crate::kernels::attention::{attention, position_bias, AttentionShape};
use crate::kernels::elementwise::{add, gelu_new, mul, relu, scale};
use crate::kernels::embedding::{check_ids, embedding};
use crate::kernels::matmul::linear;
use crate::kernels::norm::rms_norm;
use crate::model::config::FeedForward;
use crate::model::kv_cache::KvCache;
use crate::model::lm_head::{head_logits, head_loss, HeadGradient};
use crate::model::{Gradients, Model};
use crate::tensor::Tensor;

/// One attention sub-layer: x + o(attention(q(n), k(kv), v(kv))) with n = rms_norm(x).
pub struct AttentionActivations {
    /// Residual stream entering the sub-layer, [rows, d_model].
    pub input: Tensor,
    pub normed: Tensor,
    pub inv_rms: Tensor,
    /// [B, Sq, H*d_kv] and [B, Sk, H*d_kv].
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// Softmax output [B, H, Sq, Sk].
    pub probs: Tensor,
    /// Concatenated heads before the output projection, [rows, H*d_kv].
    pub context: Tensor,
    pub shape: AttentionShape,
}

/// The feed-forward sub-layer: x + wo(act(n)) with n = rms_norm(x).
pub struct FeedForwardActivations {
    pub input: Tensor,
    pub normed: Tensor,
    pub inv_rms: Tensor,
    /// wi·n (relu) or [wi_0·n, wi_1·n] (gated-gelu), [rows, d_ff] each.
    pub pre_activation: Vec<Tensor>,
    /// Input of wo, [rows, d_ff].
    pub hidden: Tensor,
}

/// One block; `cross_attention` only in the decoder.
pub struct LayerActivations {
    pub self_attention: AttentionActivations,
    pub cross_attention: Option<AttentionActivations>,
    pub feed_forward: FeedForwardActivations,
}

/// Where an attention sub-layer gets its keys and values.
pub(super) enum KeyValues<'a> {
    /// Projected from the normed input (self-attention over a whole sequence).
    FromInput,
    /// Projected from another sequence (cross-attention on the encoder output).
    From(&'a Tensor),
    /// Already projected (the cross-attention cache of generation).
    Given(&'a Tensor, &'a Tensor),
    /// Self-attention of new positions: projected, appended to the cache, all attended to.
    Append(&'a mut KvCache),
}

/// What one stack (encoder or decoder) produced.
pub struct StackOutput {
    /// transformers' `hidden_states`: embedding output, outputs of blocks 0..L-2, then
    /// final_layer_norm(output of the last block); each [B, S, d_model].
    pub hidden_states: Vec<Tensor>,
    /// The raw output of every block, [B, S, d_model].
    pub block_outputs: Vec<Tensor>,
    pub layers: Vec<LayerActivations>,
    /// Relative position bias [H, S, S] of the self-attention, shared by all blocks.
    pub position_bias: Tensor,
    /// Bucket of every (query, key) pair, for the bias gradient.
    pub buckets: Vec<u32>,
    /// Inverse RMS of the final layer norm.
    pub final_inv_rms: Tensor,
}

impl StackOutput {
    /// final_layer_norm of the last block, [B, S, d_model].
    pub fn last_hidden_state(&self) -> &Tensor {
        self.hidden_states.last().expect("a stack has at least its embedding output")
    }
}

/// The encoder's result, which the decoder (and generation) attend to.
pub struct EncoderOutput {
    pub stack: StackOutput,
    /// F32 [B, S_src], 1 = real token; the key mask of encoder self- and cross-attention.
    pub key_mask: Tensor,
    pub batch: usize,
    pub len: usize,
}

pub struct ForwardOutput {
    /// Mean cross-entropy over labels != -100, `[1]`; None when the batch has no such label.
    pub loss: Option<Tensor>,
    /// d(loss)/d(lm_head_input), [B*S_tgt, d_model]; only when the forward was given gradients
    /// (the head's own gradient is then already in them).
    pub d_lm_head_input: Option<Tensor>,
    pub encoder: EncoderOutput,
    pub decoder: StackOutput,
    /// Decoder output entering the LM head (after the optional d_model^-0.5 scaling), [rows, d_model].
    pub lm_head_input: Tensor,
}

impl ForwardOutput {
    pub fn encoder_hidden_states(&self) -> &[Tensor] {
        &self.encoder.stack.hidden_states
    }
    pub fn decoder_hidden_states(&self) -> &[Tensor] {
        &self.decoder.hidden_states
    }
}

impl T5Model {
    /// Encoder, decoder (teacher forcing on `decoder_input_ids`) and, when the batch has labels,
    /// the loss through the LM head in row chunks; with `grads`, the head's gradient too
    /// (accumulated there) and the gradient that [`T5Model::backward`] takes through the stacks.
    /// Records the work; read results with `to_f32`.
    pub fn forward(&self, batch: &Batch, grads: Option<&Gradients>) -> Result<ForwardOutput> {
        let encoder = self.encode(&batch.input_ids, &batch.attention_mask, batch.batch_size, batch.source_len)?;
        let decoder = self.decode(&encoder, &batch.decoder_input_ids, batch.target_len)?;
        let rows = batch.batch_size * batch.target_len;
        let lm_head_input = self.lm_head_input(&decoder.last_hidden_state().reshape(&[rows, self.config.d_model])?)?;
        let grad = grads.map(|g| HeadGradient { grad_scale: batch.grad_scale, d_weight: g.get(self.lm_head_name()) });
        let (loss, d_lm_head_input) = match head_loss(&lm_head_input, self.lm_head(), &batch.labels, grad)? {
            Some(h) => (Some(h.loss), h.d_input),
            None => (None, None),
        };
        Ok(ForwardOutput { loss, d_lm_head_input, encoder, decoder, lm_head_input })
    }

    /// The logits at flat decoder positions `rows` (b * target_len + t), [rows.len(), vocab].
    pub fn logits_at(&self, out: &ForwardOutput, rows: &[u32]) -> Result<Tensor> {
        head_logits(&out.lm_head_input, self.lm_head(), rows)
    }

    /// Tied heads see the decoder output scaled by d_model^-0.5 (Mesh TensorFlow's rescaling).
    pub(super) fn lm_head_input(&self, decoder_output: &Tensor) -> Result<Tensor> {
        if self.config.scale_decoder_outputs() {
            scale(decoder_output, (self.config.d_model as f32).powf(-0.5))
        } else {
            Ok(decoder_output.clone())
        }
    }

    /// The encoder over right-padded `input_ids` [batch * len] with `attention_mask` (1 = token).
    pub fn encode(&self, input_ids: &[u32], attention_mask: &[u32], batch: usize, len: usize) -> Result<EncoderOutput> {
        let gpu = self.gpu();
        let mask: Vec<f32> = attention_mask.iter().map(|&m| m as f32).collect();
        let key_mask = Tensor::from_f32(gpu, &[batch, len], &mask)?;
        let stack = self.run_stack(Stack::Encoder, input_ids, batch, len, &key_mask, None)?;
        Ok(EncoderOutput { stack, key_mask, batch, len })
    }

    /// The decoder over `decoder_input_ids` [batch * len], causal, attending to `encoder`.
    pub fn decode(&self, encoder: &EncoderOutput, decoder_input_ids: &[u32], len: usize) -> Result<StackOutput> {
        // The decoder has no padding mask of its own: the causal mask keeps every real
        // position away from later (padded) ones, and padded positions carry label -100.
        self.run_stack(Stack::Decoder, decoder_input_ids, encoder.batch, len, &encoder.key_mask, Some(encoder))
    }

    fn run_stack(
        &self,
        stack: Stack,
        ids: &[u32],
        batch: usize,
        len: usize,
        self_key_mask: &Tensor,
        encoder: Option<&EncoderOutput>,
    ) -> Result<StackOutput> {
        let gpu = self.gpu();
        let c = &self.config;
        let rows = batch * len;
        let decoder = stack == Stack::Decoder;
        check_ids(ids, c.vocab_size)?;
        let ids = Tensor::from_u32(gpu, &[rows], ids)?;
        let mut h = embedding(self.param(SHARED), &ids)?;
        let mut hidden_states = vec![h.reshape(&[batch, len, c.d_model])?];

        // Computed once by block 0's bias table, reused by every block (transformers does the same).
        let buckets = relative_position_buckets(
            0,
            len,
            len,
            !decoder,
            c.relative_attention_num_buckets,
            c.relative_attention_max_distance,
        );
        let bucket_ids = Tensor::from_u32(gpu, &[len * len], &buckets)?;
        let table = self.param(&block_param(stack, 0, "layer.0.SelfAttention.relative_attention_bias"));
        let bias = position_bias(table, &bucket_ids, len, len)?;
        let self_shape = AttentionShape {
            batch,
            heads: c.num_heads,
            kv_heads: c.num_heads,
            q_len: len,
            k_len: len,
            head_dim: c.d_kv,
            causal: decoder,
            scale: 1.0,
        };
        let self_mask = if decoder { None } else { Some(self_key_mask) };

        let mut layers = Vec::new();
        let mut block_outputs = Vec::new();
        let num_layers = self.num_layers(stack);
        for layer in 0..num_layers {
            let self_attention = self.attention_sublayer(
                stack,
                layer,
                "layer.0.SelfAttention",
                "layer.0.layer_norm",
                &h,
                KeyValues::FromInput,
                &self_shape,
                Some(&bias),
                self_mask,
            )?;
            h = self_attention.1;
            let cross_attention = match encoder {
                Some(enc) => {
                    let shape = AttentionShape { k_len: enc.len, causal: false, ..self_shape };
                    let enc_out = enc.stack.last_hidden_state().reshape(&[enc.batch * enc.len, c.d_model])?;
                    let (acts, out) = self.attention_sublayer(
                        stack,
                        layer,
                        "layer.1.EncDecAttention",
                        "layer.1.layer_norm",
                        &h,
                        KeyValues::From(&enc_out),
                        &shape,
                        None,
                        Some(&enc.key_mask),
                    )?;
                    h = out;
                    Some(acts)
                }
                None => None,
            };
            let ff_index = if decoder { 2 } else { 1 };
            let (feed_forward, out) = self.feed_forward_sublayer(stack, layer, ff_index, &h)?;
            h = out;
            let block_output = h.reshape(&[batch, len, c.d_model])?;
            block_outputs.push(block_output.clone());
            if layer + 1 < num_layers {
                hidden_states.push(block_output);
            }
            layers.push(LayerActivations { self_attention: self_attention.0, cross_attention, feed_forward });
        }
        let final_norm = self.param(&format!("{}.final_layer_norm.weight", stack.prefix()));
        let (normed, final_inv_rms) = rms_norm(&h, final_norm, c.layer_norm_epsilon as f32)?;
        hidden_states.push(normed.reshape(&[batch, len, c.d_model])?);
        Ok(StackOutput { hidden_states, block_outputs, layers, position_bias: bias, buckets, final_inv_rms })
    }

    /// x + o(attention(q(n), k, v)), n = rms_norm(x), with k and v as `kv` says.
    /// Returns the activations and the new residual stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_sublayer(
        &self,
        stack: Stack,
        layer: usize,
        attention_name: &str,
        norm_name: &str,
        x: &Tensor,
        kv: KeyValues,
        shape: &AttentionShape,
        bias: Option<&Tensor>,
        key_mask: Option<&Tensor>,
    ) -> Result<(AttentionActivations, Tensor)> {
        let c = &self.config;
        let weight = |proj: &str| self.param(&block_param(stack, layer, &format!("{attention_name}.{proj}")));
        let (normed, inv_rms) =
            rms_norm(x, self.param(&block_param(stack, layer, norm_name)), c.layer_norm_epsilon as f32)?;
        let inner = c.inner_dim();
        let q = linear(&normed, weight("q"))?.reshape(&[shape.batch, shape.q_len, inner])?;
        let project = |source: &Tensor, len: usize| -> Result<(Tensor, Tensor)> {
            Ok((
                linear(source, weight("k"))?.reshape(&[shape.batch, len, inner])?,
                linear(source, weight("v"))?.reshape(&[shape.batch, len, inner])?,
            ))
        };
        let (k, v) = match kv {
            KeyValues::FromInput => project(&normed, shape.k_len)?,
            KeyValues::From(source) => project(source, shape.k_len)?,
            KeyValues::Given(k, v) => (k.clone(), v.clone()),
            KeyValues::Append(cache) => {
                let (k_new, v_new) = project(&normed, shape.q_len)?;
                cache.append(&k_new, &v_new)?;
                (cache.k.clone().expect("appended"), cache.v.clone().expect("appended"))
            }
        };
        let (context, probs) = attention(shape, &q, &k, &v, bias, key_mask)?;
        let context = context.reshape(&[shape.batch * shape.q_len, inner])?;
        let out = add(x, &linear(&context, weight("o"))?)?;
        Ok((
            AttentionActivations {
                input: x.clone(),
                normed,
                inv_rms,
                q,
                k,
                v,
                probs,
                context,
                shape: AttentionShape { ..*shape },
            },
            out,
        ))
    }

    /// x + wo(act(n)), n = rms_norm(x); act = relu(wi n) or gelu_new(wi_0 n) ⊙ wi_1 n.
    pub(super) fn feed_forward_sublayer(
        &self,
        stack: Stack,
        layer: usize,
        index: usize,
        x: &Tensor,
    ) -> Result<(FeedForwardActivations, Tensor)> {
        let weight = |w: &str| self.param(&block_param(stack, layer, &format!("layer.{index}.DenseReluDense.{w}")));
        let norm = self.param(&block_param(stack, layer, &format!("layer.{index}.layer_norm")));
        let (normed, inv_rms) = rms_norm(x, norm, self.config.layer_norm_epsilon as f32)?;
        let (pre_activation, hidden) = match self.feed_forward {
            FeedForward::Relu => {
                let pre = linear(&normed, weight("wi"))?;
                let hidden = relu(&pre)?;
                (vec![pre], hidden)
            }
            FeedForward::GatedGelu => {
                let gate = linear(&normed, weight("wi_0"))?;
                let up = linear(&normed, weight("wi_1"))?;
                let hidden = mul(&gelu_new(&gate)?, &up)?;
                (vec![gate, up], hidden)
            }
        };
        let out = add(x, &linear(&hidden, weight("wo"))?)?;
        Ok((FeedForwardActivations { input: x.clone(), normed, inv_rms, pre_activation, hidden }, out))
    }
}
