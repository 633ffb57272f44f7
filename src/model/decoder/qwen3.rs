//! Qwen3 (`Qwen3ForCausalLM`): an RMS norm over each query and key head before rope, no biases.

use super::config::DecoderFamily;

pub const QWEN3: DecoderFamily = DecoderFamily {
    model_type: "qwen3",
    architecture: "Qwen3ForCausalLM",
    defaults: r#"{"vocab_size": 151936, "intermediate_size": 22016, "max_position_embeddings": 32768,
        "head_dim": 128, "use_sliding_window": false, "sliding_window": 4096, "max_window_layers": 28}"#,
    qkv_bias: false,
    qk_norm: true,
    sliding_window: super::qwen2::sliding_window,
};
