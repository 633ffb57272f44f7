//! Hugging Face `config.json` of a decoder-only checkpoint → [`DecoderConfig`], with the
//! defaults of its family's transformers config ([`DecoderFamily`], chosen by `model_type`).
//! Both rope layouts are read: the legacy `rope_theta` + `rope_scaling` (with `type` or
//! `rope_type`) and transformers 5's `rope_parameters`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::kernels::rope::RopeScaling;

/// What sets one decoder-only family apart: how its config.json is named and defaulted, and
/// which optional pieces its layers have. Each family is one such constant in its own file,
/// registered in [`super::FAMILIES`].
pub struct DecoderFamily {
    /// config.json's `model_type`.
    pub model_type: &'static str,
    /// transformers' model class, written into `architectures`.
    pub architecture: &'static str,
    /// transformers' defaults of this family where they differ from Llama's, as a JSON object:
    /// they fill fields that config.json lacks.
    pub defaults: &'static str,
    /// q, k and v projections with biases (Qwen2).
    pub qkv_bias: bool,
    /// An RMS norm over each query and key head before rope (Qwen3).
    pub qk_norm: bool,
    /// The attention window the config sets, if any: longer sequences are refused.
    pub sliding_window: fn(&DecoderConfig) -> Result<Option<usize>>,
}

impl std::fmt::Debug for DecoderFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type)
    }
}

/// The fields of a decoder-only `config.json` that the model needs. Missing fields take the
/// family's transformers defaults; other fields are kept as they are, so a saved checkpoint has
/// the config it was loaded with.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DecoderConfig {
    /// Chosen by `model_type` (absent: Llama); written back through `model_type`.
    #[serde(skip, default = "llama")]
    pub family: &'static DecoderFamily,
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    /// transformers: defaults to `num_attention_heads` (no grouping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_key_value_heads: Option<usize>,
    /// transformers: defaults to hidden_size / num_attention_heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    head_dim: Option<usize>,
    #[serde(default = "defaults::rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Legacy layout: the base of the rotary frequencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rope_theta: Option<f64>,
    /// Legacy layout: {"rope_type" or "type": "linear" | "llama3" | "default", "factor", ...}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5 layout: {"rope_type", "rope_theta", "factor", ...}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    /// An id or a list of ids; generation stops at any of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eos_token_id: Option<serde_json::Value>,
    /// Every other field of the file (architectures, torch_dtype, use_cache...).
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

fn llama() -> &'static DecoderFamily {
    &super::llama::LLAMA
}

mod defaults {
    pub fn vocab_size() -> usize {
        32000
    }
    pub fn hidden_size() -> usize {
        4096
    }
    pub fn intermediate_size() -> usize {
        11008
    }
    pub fn num_hidden_layers() -> usize {
        32
    }
    pub fn num_attention_heads() -> usize {
        32
    }
    pub fn rms_norm_eps() -> f64 {
        1e-6
    }
    pub fn hidden_act() -> String {
        "silu".into()
    }
    pub fn max_position_embeddings() -> usize {
        2048
    }
}

/// transformers' default rope base.
const DEFAULT_ROPE_THETA: f64 = 10000.0;

impl DecoderConfig {
    /// Reads and checks `DIR/config.json`.
    pub fn load(dir: &Path) -> Result<DecoderConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{}: cannot read the model config (is this a decoder-only model folder?)", path.display())
        })?;
        Self::from_json(&text).with_context(|| format!("{}", path.display()))
    }

    /// The built-in small decoder-only model of `sculpt train --arch llama`: about as many
    /// parameters as [`crate::model::T5Config::tiny`], with grouped-query attention; the
    /// ids follow the built-in tokenizer (pad 0, end 1).
    pub fn tiny(vocab_size: usize) -> DecoderConfig {
        let json = format!(
            r#"{{"vocab_size": {vocab_size}, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                "rope_theta": 10000.0, "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false}}"#
        );
        Self::from_json(&json).expect("the built-in config is valid")
    }

    /// Parses and checks the text of a `config.json`; its `model_type` picks the family.
    pub fn from_json(text: &str) -> Result<DecoderConfig> {
        let mut value: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
        let object = value.as_object_mut().context("a config must be a JSON object")?;
        let family = match object.get("model_type") {
            None => llama(),
            Some(t) => super::family(t.as_str().with_context(|| format!("model_type must be a string, got {t}"))?)?,
        };
        let defaults: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(family.defaults).expect("a family's defaults are a JSON object");
        for (key, default) in defaults {
            object.entry(key).or_insert(default);
        }
        let mut config: DecoderConfig =
            serde_json::from_value(value).with_context(|| format!("not a valid {} config", family.model_type))?;
        config.family = family;
        config.validate()?;
        Ok(config)
    }

    /// The `config.json` transformers loads: this config with the model-type fields that
    /// its family's class needs when the source config lacked them.
    pub fn to_hf_json(&self) -> Result<String> {
        let mut value = serde_json::to_value(self)?;
        let object = value.as_object_mut().expect("a config serializes to an object");
        for (key, default) in [
            ("architectures", serde_json::json!([self.family.architecture])),
            ("model_type", self.family.model_type.into()),
        ] {
            object.entry(key).or_insert(default);
        }
        Ok(serde_json::to_string_pretty(&value)?)
    }

    /// Refuses what the model does not implement, naming the config field.
    pub fn validate(&self) -> Result<()> {
        let zero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads()),
            ("head_dim", self.head_dim()),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, v)| *v == 0) {
            bail!("{name} must be positive");
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads()) {
            bail!(
                "num_key_value_heads {} must divide num_attention_heads {}",
                self.num_key_value_heads(),
                self.num_attention_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!("head_dim {} must be even for rotary position embeddings", self.head_dim());
        }
        if self.attention_bias {
            bail!("attention_bias is true: attention projections with biases are not supported (set it to false)");
        }
        if self.mlp_bias {
            bail!("mlp_bias is true: feed-forward projections with biases are not supported (set it to false)");
        }
        if self.hidden_act != "silu" {
            bail!("hidden_act {:?} is not supported (only \"silu\", Llama's SwiGLU)", self.hidden_act);
        }
        self.rope()?;
        self.eos_token_ids()?;
        (self.family.sliding_window)(self)?;
        Ok(())
    }

    /// A field of config.json that only some families read (`sliding_window`...).
    pub fn field(&self, key: &str) -> Option<&serde_json::Value> {
        self.extra.get(key).filter(|v| !v.is_null())
    }

    /// [`DecoderConfig::field`] `key` as a count (absent or null: None).
    pub fn count_field(&self, key: &str) -> Result<Option<usize>> {
        self.field(key)
            .map(|v| v.as_u64().map(|n| n as usize).with_context(|| format!("{key} must be a count, got {v}")))
            .transpose()
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The ids that end generation (`eos_token_id`: absent, an id, or a list of ids).
    pub fn eos_token_ids(&self) -> Result<Vec<u32>> {
        let id = |v: &serde_json::Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .with_context(|| format!("eos_token_id: {v} is not a token id (an id or a list of ids)"))
        };
        match &self.eos_token_id {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(ids)) => ids.iter().map(id).collect(),
            Some(v) => Ok(vec![id(v)?]),
        }
    }

    /// The padding id of batches: `pad_token_id`, else the first end-of-sequence id.
    pub fn padding_id(&self) -> Result<u32> {
        match self.pad_token_id {
            Some(id) => Ok(id),
            None => self
                .eos_token_ids()?
                .first()
                .copied()
                .context("config.json has neither pad_token_id nor eos_token_id; set one"),
        }
    }

    /// The rotary base and scaling, from `rope_parameters` or else `rope_theta` + `rope_scaling`.
    pub fn rope(&self) -> Result<(f64, RopeScaling)> {
        let (field, params) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) if !p.is_null() => ("rope_parameters", Some(p)),
            (_, Some(s)) if !s.is_null() => ("rope_scaling", Some(s)),
            _ => ("rope_scaling", None),
        };
        let theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA);
        let Some(params) = params else {
            return Ok((theta, RopeScaling::None));
        };
        let rope_type = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .map(|t| t.as_str().with_context(|| format!("{field}.rope_type must be a string, got {t}")))
            .transpose()?
            .unwrap_or("default");
        let number = |key: &str| -> Result<f64> {
            params.get(key).and_then(|v| v.as_f64()).with_context(|| {
                format!("{field}.{key} is missing or not a number (needed by rope_type {rope_type:?})")
            })
        };
        let scaling = match rope_type {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: number("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                // transformers falls back to max_position_embeddings.
                original_max_position_embeddings: number("original_max_position_embeddings")
                    .unwrap_or(self.max_position_embeddings as f64),
            },
            other => {
                bail!("{field}.rope_type {other:?} is not supported (supported: \"default\", \"linear\", \"llama3\")")
            }
        };
        Ok((theta, scaling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_transformers_defaults() {
        let c = DecoderConfig::from_json("{}").unwrap();
        assert_eq!((c.vocab_size, c.hidden_size, c.num_hidden_layers), (32000, 4096, 32));
        assert_eq!((c.num_key_value_heads(), c.head_dim()), (32, 128));
        assert_eq!(c.rope().unwrap(), (10000.0, RopeScaling::None));
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids().unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn both_rope_layouts_and_both_type_keys_are_read() {
        let legacy = DecoderConfig::from_json(
            r#"{"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}, "eos_token_id": [1, 7]}"#,
        )
        .unwrap();
        assert_eq!(legacy.rope().unwrap(), (500000.0, RopeScaling::Linear { factor: 2.0 }));
        assert_eq!(legacy.eos_token_ids().unwrap(), vec![1, 7]);
        assert_eq!(legacy.padding_id().unwrap(), 1);
        let v5 = DecoderConfig::from_json(
            r#"{"max_position_embeddings": 128, "rope_parameters": {"rope_type": "llama3", "rope_theta": 100.0,
                "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4}, "eos_token_id": 2, "pad_token_id": 0}"#,
        )
        .unwrap();
        let want = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 128.0,
        };
        assert_eq!(v5.rope().unwrap(), (100.0, want));
        assert_eq!((v5.eos_token_ids().unwrap(), v5.padding_id().unwrap()), (vec![2], 0));
        let default =
            DecoderConfig::from_json(r#"{"rope_scaling": {"rope_type": "default"}, "rope_theta": 7.0}"#).unwrap();
        assert_eq!(default.rope().unwrap(), (7.0, RopeScaling::None));
    }

    #[test]
    fn hf_json_round_trips_and_keeps_unknown_fields() {
        let c = DecoderConfig::from_json(
            r#"{"hidden_size": 8, "num_attention_heads": 2, "torch_dtype": "bfloat16",
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10.0}}"#,
        )
        .unwrap();
        let text = c.to_hf_json().unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["torch_dtype"], "bfloat16");
        assert_eq!(value["model_type"], "llama");
        assert_eq!(value["rope_parameters"]["factor"], 2.0);
        let back = DecoderConfig::from_json(&text).unwrap();
        assert_eq!(back.rope().unwrap(), c.rope().unwrap());
        assert_eq!(back.to_hf_json().unwrap(), text);
    }

    #[test]
    fn unsupported_features_are_refused_naming_the_field() {
        for (json, want) in [
            (r#"{"attention_bias": true}"#, "attention_bias"),
            (r#"{"mlp_bias": true}"#, "mlp_bias"),
            (r#"{"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#, "rope_scaling.rope_type \"yarn\""),
            (
                r#"{"rope_parameters": {"rope_type": "dynamic", "factor": 4.0}}"#,
                "rope_parameters.rope_type \"dynamic\"",
            ),
            (r#"{"rope_scaling": {"type": "linear"}}"#, "rope_scaling.factor"),
            (r#"{"num_attention_heads": 32, "num_key_value_heads": 5}"#, "num_key_value_heads 5"),
            (r#"{"hidden_act": "gelu"}"#, "hidden_act"),
            (r#"{"eos_token_id": "x"}"#, "eos_token_id"),
        ] {
            let err = format!("{:#}", DecoderConfig::from_json(json).unwrap_err());
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
