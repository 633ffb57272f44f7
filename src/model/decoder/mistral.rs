//! Mistral (`MistralForCausalLM`): Llama's layers, attention limited to `sliding_window`
//! positions when the config sets one.

use super::config::DecoderFamily;

pub const MISTRAL: DecoderFamily = DecoderFamily {
    model_type: "mistral",
    architecture: "MistralForCausalLM",
    defaults: r#"{"intermediate_size": 14336, "num_key_value_heads": 8, "max_position_embeddings": 131072,
        "bos_token_id": 1, "eos_token_id": 2, "sliding_window": 4096}"#,
    qkv_bias: false,
    qk_norm: false,
    // null: no window
    sliding_window: |config| config.count_field("sliding_window"),
};
