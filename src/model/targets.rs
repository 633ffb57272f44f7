//! The weight matrices T5 constrains by default, as glob patterns over parameter names (`*`
//! matches any run of characters, dots included); the decoder-only families' are
//! [`crate::model::decoder::TARGETS`].

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

/// Cross-attention, added to the targets by option.
pub const T5_CROSS_ATTENTION: &[&str] = &[
    "*.EncDecAttention.q.weight",
    "*.EncDecAttention.k.weight",
    "*.EncDecAttention.v.weight",
    "*.EncDecAttention.o.weight",
];
