//! Llama (`LlamaForCausalLM`; SmolLM2 is one): the plain decoder every other family varies.

use super::config::DecoderFamily;

pub const LLAMA: DecoderFamily = DecoderFamily {
    model_type: "llama",
    architecture: "LlamaForCausalLM",
    defaults: "{}",
    qkv_bias: false,
    qk_norm: false,
    sliding_window: |_| Ok(None),
};
