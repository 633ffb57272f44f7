//! Qwen2 (`Qwen2ForCausalLM`, also Qwen2.5): biases on the q, k and v projections.

use anyhow::Result;

use super::config::{DecoderConfig, DecoderFamily};

pub const QWEN2: DecoderFamily = DecoderFamily {
    model_type: "qwen2",
    architecture: "Qwen2ForCausalLM",
    defaults: r#"{"vocab_size": 151936, "intermediate_size": 22016, "max_position_embeddings": 32768,
        "use_sliding_window": false, "sliding_window": 4096, "max_window_layers": 28}"#,
    qkv_bias: true,
    qk_norm: false,
    sliding_window,
};

/// Qwen's window: with `use_sliding_window`, the layers from `max_window_layers` on attend
/// within `sliding_window` positions (any such layer limits the whole model).
pub fn sliding_window(config: &DecoderConfig) -> Result<Option<usize>> {
    let on = config.field("use_sliding_window").is_some_and(|v| v.as_bool() == Some(true));
    if !on || config.count_field("max_window_layers")?.unwrap_or(0) >= config.num_hidden_layers {
        return Ok(None);
    }
    config.count_field("sliding_window")
}
