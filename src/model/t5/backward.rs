//! The T5 backward pass, layer by layer in reverse (llm.c style): every parameter's
//! gradient accumulates into its own buffer of [`Gradients`], so micro-batches add up.

use anyhow::{bail, Result};

use super::forward::{AttentionActivations, FeedForwardActivations, ForwardOutput, StackOutput};
use super::{block_param, Batch, Stack, T5Model, SHARED};
use crate::kernels::attention::{attention_backward, position_bias_backward};
use crate::kernels::elementwise::{axpy, binary, gelu_new, mul, scale, Binary};
use crate::kernels::embedding::embedding_backward;
use crate::kernels::matmul::linear_backward;
use crate::kernels::norm::rms_norm_backward;
use crate::model::config::FeedForward;
use crate::model::family::Gradients;
use crate::model::Model;
use crate::tensor::{DType, Tensor};

impl T5Model {
    /// Records the gradients of the forward's loss into `grads` (accumulating), from the head
    /// gradient that `forward(batch, Some(grads))` left in `out`.
    pub fn backward(&self, batch: &Batch, out: &ForwardOutput, grads: &Gradients) -> Result<()> {
        let Some(d_lm_head_input) = &out.d_lm_head_input else {
            bail!("backward needs a forward run with gradients on a batch with at least one label other than -100");
        };
        let c = &self.config;
        let rows = batch.batch_size * batch.target_len;
        let mut dh = d_lm_head_input.clone();
        if c.scale_decoder_outputs() {
            dh = scale(&dh, (c.d_model as f32).powf(-0.5))?;
        }
        let enc = &out.encoder;
        let enc_rows = enc.batch * enc.len;
        let d_encoder_out = Tensor::zeros(self.gpu(), &[enc_rows, c.d_model], DType::F32)?;
        let enc_out = enc.stack.last_hidden_state().reshape(&[enc_rows, c.d_model])?;
        let cross = Some((&enc_out, &d_encoder_out));
        self.stack_backward(Stack::Decoder, &out.decoder, &batch.decoder_input_ids, rows, dh, cross, grads)?;
        self.stack_backward(Stack::Encoder, &enc.stack, &batch.input_ids, enc_rows, d_encoder_out.clone(), None, grads)
    }

    /// Backward through one stack from the gradient of its final (normed) output. For the
    /// decoder, `cross` holds the encoder output and the buffer its gradient accumulates in.
    #[allow(clippy::too_many_arguments)]
    fn stack_backward(
        &self,
        stack: Stack,
        acts: &StackOutput,
        ids: &[u32],
        rows: usize,
        d_out: Tensor,
        cross: Option<(&Tensor, &Tensor)>,
        grads: &Gradients,
    ) -> Result<()> {
        let c = &self.config;
        let final_name = format!("{}.final_layer_norm.weight", stack.prefix());
        let last = acts.block_outputs.last().expect("a stack has blocks").reshape(&[rows, c.d_model])?;
        let mut dh =
            rms_norm_backward(&d_out, &last, self.param(&final_name), &acts.final_inv_rms, grads.get(&final_name))?;
        let dbias = Tensor::zeros(self.gpu(), acts.position_bias.shape(), DType::F32)?;
        for (layer, la) in acts.layers.iter().enumerate().rev() {
            let ff_index = if stack == Stack::Decoder { 2 } else { 1 };
            dh = self.feed_forward_backward(stack, layer, ff_index, &la.feed_forward, dh, grads)?;
            if let (Some(ca), Some((enc_out, d_enc))) = (&la.cross_attention, cross) {
                let names = ("layer.1.EncDecAttention", "layer.1.layer_norm");
                dh = self.attention_backward(stack, layer, names, ca, dh, Some((enc_out, d_enc)), None, grads)?;
            }
            let names = ("layer.0.SelfAttention", "layer.0.layer_norm");
            dh = self.attention_backward(stack, layer, names, &la.self_attention, dh, None, Some(&dbias), grads)?;
        }
        let table = block_param(stack, 0, "layer.0.SelfAttention.relative_attention_bias");
        position_bias_backward(&dbias, &acts.buckets, grads.get(&table))?;
        embedding_backward(&dh, ids, grads.get(SHARED), None)
    }

    /// Through x + wo(act(n)), n = rms_norm(x); returns d x.
    fn feed_forward_backward(
        &self,
        stack: Stack,
        layer: usize,
        index: usize,
        a: &FeedForwardActivations,
        dy: Tensor,
        grads: &Gradients,
    ) -> Result<Tensor> {
        let name = |w: &str| block_param(stack, layer, &format!("layer.{index}.DenseReluDense.{w}"));
        let wo = name("wo");
        let d_hidden = linear_backward(&dy, &a.hidden, self.param(&wo), grads.get(&wo))?;
        let d_normed = match self.feed_forward {
            FeedForward::Relu => {
                let d_pre = binary(Binary::ReluBackward, &d_hidden, &a.pre_activation[0])?;
                let wi = name("wi");
                linear_backward(&d_pre, &a.normed, self.param(&wi), grads.get(&wi))?
            }
            FeedForward::GatedGelu => {
                let (gate, up) = (&a.pre_activation[0], &a.pre_activation[1]);
                let d_up = mul(&d_hidden, &gelu_new(gate)?)?;
                let d_gate = binary(Binary::GeluNewBackward, &mul(&d_hidden, up)?, gate)?;
                let (wi_0, wi_1) = (name("wi_0"), name("wi_1"));
                let d_normed = linear_backward(&d_gate, &a.normed, self.param(&wi_0), grads.get(&wi_0))?;
                axpy(1.0, &linear_backward(&d_up, &a.normed, self.param(&wi_1), grads.get(&wi_1))?, &d_normed)?;
                d_normed
            }
        };
        let norm = block_param(stack, layer, &format!("layer.{index}.layer_norm"));
        let dx = rms_norm_backward(&d_normed, &a.input, self.param(&norm), &a.inv_rms, grads.get(&norm))?;
        axpy(1.0, &dy, &dx)?;
        Ok(dx)
    }

    /// Through x + o(attention(q(n), k, v)), n = rms_norm(x); returns d x. Cross-attention
    /// passes the encoder output its keys and values came from, and accumulates its gradient.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        stack: Stack,
        layer: usize,
        (attention_name, norm_name): (&str, &str),
        a: &AttentionActivations,
        dy: Tensor,
        cross: Option<(&Tensor, &Tensor)>,
        dbias: Option<&Tensor>,
        grads: &Gradients,
    ) -> Result<Tensor> {
        let name = |proj: &str| block_param(stack, layer, &format!("{attention_name}.{proj}"));
        let s = &a.shape;
        let inner = self.config.inner_dim();
        let o = name("o");
        let d_context = linear_backward(&dy, &a.context, self.param(&o), grads.get(&o))?;
        let d_context = d_context.reshape(&[s.batch, s.q_len, inner])?;
        let (dq, dk, dv) = attention_backward(s, &d_context, &a.q, &a.k, &a.v, &a.probs, dbias)?;
        let flat = |t: &Tensor, len: usize| t.reshape(&[s.batch * len, inner]);
        let q = name("q");
        let d_normed = linear_backward(&flat(&dq, s.q_len)?, &a.normed, self.param(&q), grads.get(&q))?;
        let (source, d_source) = match cross {
            Some((enc_out, d_enc)) => (enc_out.clone(), d_enc.clone()),
            None => (a.normed.clone(), d_normed.clone()),
        };
        for (proj, d) in [("k", &dk), ("v", &dv)] {
            let w = name(proj);
            axpy(1.0, &linear_backward(&flat(d, s.k_len)?, &source, self.param(&w), grads.get(&w))?, &d_source)?;
        }
        let norm = block_param(stack, layer, norm_name);
        let dx = rms_norm_backward(&d_normed, &a.input, self.param(&norm), &a.inv_rms, grads.get(&norm))?;
        axpy(1.0, &dy, &dx)?;
        Ok(dx)
    }
}
