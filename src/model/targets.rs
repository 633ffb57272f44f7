//! The weight matrices each family constrains by default, as glob patterns over parameter
//! names (`*` matches any run of characters, dots included).

/// The default targets for T5: self-attention q, k, v, o and the feed-forward matrices,
/// in encoder and decoder (`*` matches any run of characters, dots included).
pub const T5_DEFAULT: &[&str] = &[
    "*.SelfAttention.q.weight",
    "*.SelfAttention.k.weight",
    "*.SelfAttention.v.weight",
    "*.SelfAttention.o.weight",
    "*.DenseReluDense.wi.weight",
    "*.DenseReluDense.wi_0.weight",
    "*.DenseReluDense.wi_1.weight",
    "*.DenseReluDense.wo.weight",
];

/// The default targets for decoder-only (Llama-family) models: attention q, k, v, o and the
/// SwiGLU feed-forward gate, up and down projections of every layer.
pub const LLAMA_DEFAULT: &[&str] = &[
    "model.layers.*.self_attn.q_proj.weight",
    "model.layers.*.self_attn.k_proj.weight",
    "model.layers.*.self_attn.v_proj.weight",
    "model.layers.*.self_attn.o_proj.weight",
    "model.layers.*.mlp.gate_proj.weight",
    "model.layers.*.mlp.up_proj.weight",
    "model.layers.*.mlp.down_proj.weight",
];

/// Cross-attention, added to the targets by option.
pub const T5_CROSS_ATTENTION: &[&str] = &[
    "*.EncDecAttention.q.weight",
    "*.EncDecAttention.k.weight",
    "*.EncDecAttention.v.weight",
    "*.EncDecAttention.o.weight",
];
