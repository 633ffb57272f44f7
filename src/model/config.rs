//! Hugging Face `config.json` of a T5 checkpoint → [`T5Config`], with transformers' defaults.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The feed-forward block of a T5 layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForward {
    /// T5 v1.0: wo(relu(wi x)).
    Relu,
    /// T5 v1.1 / flan-t5: wo(gelu_new(wi_0 x) ⊙ wi_1 x).
    GatedGelu,
}

/// The fields of a T5 `config.json` that the forward pass needs. Missing fields take
/// transformers' `T5Config` defaults (t5-small); other fields are kept as they are, so a
/// saved checkpoint has the config it was loaded with.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct T5Config {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::d_model")]
    pub d_model: usize,
    #[serde(default = "defaults::d_kv")]
    pub d_kv: usize,
    #[serde(default = "defaults::d_ff")]
    pub d_ff: usize,
    #[serde(default = "defaults::num_layers")]
    pub num_layers: usize,
    /// transformers: `num_decoder_layers` defaults to `num_layers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_decoder_layers: Option<usize>,
    #[serde(default = "defaults::num_heads")]
    pub num_heads: usize,
    #[serde(default = "defaults::num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "defaults::max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "defaults::layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "defaults::feed_forward_proj")]
    pub feed_forward_proj: String,
    #[serde(default = "defaults::yes")]
    pub tie_word_embeddings: bool,
    /// Absent in most configs; when absent the d_model^-0.5 output scaling follows
    /// `tie_word_embeddings` (transformers' rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pub decoder_start_token_id: u32,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: u32,
    /// Every other field of the file (architectures, dropout_rate, task_specific_params...).
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

mod defaults {
    pub fn vocab_size() -> usize {
        32128
    }
    pub fn d_model() -> usize {
        512
    }
    pub fn d_kv() -> usize {
        64
    }
    pub fn d_ff() -> usize {
        2048
    }
    pub fn num_layers() -> usize {
        6
    }
    pub fn num_heads() -> usize {
        8
    }
    pub fn num_buckets() -> usize {
        32
    }
    pub fn max_distance() -> usize {
        128
    }
    pub fn layer_norm_epsilon() -> f64 {
        1e-6
    }
    pub fn feed_forward_proj() -> String {
        "relu".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn eos_token_id() -> u32 {
        1
    }
}

impl T5Config {
    /// Reads and checks `DIR/config.json`.
    pub fn load(dir: &Path) -> Result<T5Config> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{}: cannot read the model config (is this a T5 model folder?)", path.display())
        })?;
        let config: T5Config =
            serde_json::from_str(&text).with_context(|| format!("{}: not a valid T5 config", path.display()))?;
        config.validate().with_context(|| format!("{}", path.display()))?;
        Ok(config)
    }

    /// t5-small's shape with a given vocabulary (for benchmarks and tests).
    pub fn t5_small() -> T5Config {
        serde_json::from_str("{}").expect("an empty config takes every default")
    }

    /// The built-in small model of `sculpt train` and the training tests: small enough for a
    /// software GPU. 32 position buckets: copying (the training test) needs exact relative
    /// positions, which 8 buckets (2 exact distances per direction) cannot tell apart.
    pub fn tiny(vocab_size: usize) -> T5Config {
        let json = format!(
            r#"{{"vocab_size": {vocab_size}, "d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128, "num_layers": 2,
                "num_decoder_layers": 2, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 64,
                "feed_forward_proj": "relu", "tie_word_embeddings": false}}"#
        );
        serde_json::from_str(&json).expect("the built-in config parses")
    }

    /// The `config.json` transformers loads: this config with the model-type fields that
    /// `T5ForConditionalGeneration` needs when the source config lacked them.
    pub fn to_hf_json(&self) -> Result<String> {
        let mut value = serde_json::to_value(self)?;
        let object = value.as_object_mut().expect("a config serializes to an object");
        object.insert("num_decoder_layers".into(), self.num_decoder_layers().into());
        for (key, default) in [
            ("architectures", serde_json::json!(["T5ForConditionalGeneration"])),
            ("model_type", "t5".into()),
            ("is_encoder_decoder", true.into()),
        ] {
            object.entry(key).or_insert(default);
        }
        Ok(serde_json::to_string_pretty(&value)?)
    }

    pub fn validate(&self) -> Result<()> {
        self.feed_forward()?;
        let zero = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, v)| *v == 0) {
            bail!("{name} must be positive");
        }
        // Far above any published T5 (t5-11b: d_ff 65536, 128 heads, 24 layers); a typo
        // beyond these would otherwise start allocating or looping for a very long time.
        let bounds = [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("d_model", self.d_model, 1 << 16),
            ("d_kv", self.d_kv, 1 << 12),
            ("d_ff", self.d_ff, 1 << 18),
            ("num_heads", self.num_heads, 1 << 10),
            ("num_layers", self.num_layers, 1 << 10),
            ("num_decoder_layers", self.num_decoder_layers(), 1 << 10),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets, 1 << 12),
            ("relative_attention_max_distance", self.relative_attention_max_distance, 1 << 20),
        ];
        if let Some((name, value, max)) = bounds.iter().find(|(_, v, max)| v > max) {
            bail!("{name} is {value}, above the largest sculpt accepts ({max}); is the config damaged?");
        }
        Ok(())
    }

    pub fn num_decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    pub fn set_num_decoder_layers(&mut self, n: usize) {
        self.num_decoder_layers = Some(n);
    }

    /// Width of the concatenated attention heads (H * d_kv), which need not equal d_model.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Whether the decoder output is multiplied by d_model^-0.5 before the LM head.
    pub fn scale_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs.unwrap_or(self.tie_word_embeddings)
    }

    /// transformers accepts `ACT` or `gated-ACT`; "gated-gelu" means gelu_new.
    pub fn feed_forward(&self) -> Result<FeedForward> {
        match self.feed_forward_proj.as_str() {
            "relu" => Ok(FeedForward::Relu),
            "gated-gelu" | "gated-gelu_new" => Ok(FeedForward::GatedGelu),
            other => bail!(
                "feed_forward_proj {other:?} is not supported (supported: \"relu\" for T5 v1.0, \"gated-gelu\" for T5 v1.1 / flan-t5)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_transformers_defaults() {
        let c = T5Config::t5_small();
        assert_eq!((c.vocab_size, c.d_model, c.d_kv, c.d_ff, c.num_heads), (32128, 512, 64, 2048, 8));
        assert_eq!((c.num_layers, c.num_decoder_layers()), (6, 6));
        assert_eq!((c.relative_attention_num_buckets, c.relative_attention_max_distance), (32, 128));
        assert_eq!(c.feed_forward().unwrap(), FeedForward::Relu);
        assert!(c.scale_decoder_outputs());
    }

    #[test]
    fn v1_1_fields_are_read() {
        let c: T5Config = serde_json::from_str(
            r#"{"num_layers": 2, "num_decoder_layers": 3, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false}"#,
        )
        .unwrap();
        assert_eq!(c.num_decoder_layers(), 3);
        assert_eq!(c.feed_forward().unwrap(), FeedForward::GatedGelu);
        assert!(!c.scale_decoder_outputs());
        let explicit: T5Config =
            serde_json::from_str(r#"{"tie_word_embeddings": false, "scale_decoder_outputs": true}"#).unwrap();
        assert!(explicit.scale_decoder_outputs());
    }

    #[test]
    fn hf_json_round_trips_and_keeps_unknown_fields() {
        let c: T5Config = serde_json::from_str(r#"{"d_model": 8, "dropout_rate": 0.25, "n_positions": 512}"#).unwrap();
        let text = c.to_hf_json().unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["dropout_rate"], 0.25);
        assert_eq!(value["model_type"], "t5");
        assert_eq!(value["num_decoder_layers"], 6);
        let back: T5Config = serde_json::from_str(&text).unwrap();
        assert_eq!((back.d_model, back.num_decoder_layers()), (8, 6));
        assert_eq!(back.to_hf_json().unwrap(), text);
    }

    #[test]
    fn unknown_feed_forward_is_refused() {
        let c: T5Config = serde_json::from_str(r#"{"feed_forward_proj": "gated-silu"}"#).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("gated-silu") && err.contains("gated-gelu"), "{err}");
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        for (field, value) in [("num_layers", 1u64 << 40), ("num_decoder_layers", 5000), ("d_model", 1 << 20)] {
            let c: T5Config = serde_json::from_str(&format!(r#"{{"{field}": {value}}}"#)).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(&value.to_string()) && err.contains("damaged"), "{err}");
        }
        T5Config::t5_small().validate().unwrap();
    }
}
