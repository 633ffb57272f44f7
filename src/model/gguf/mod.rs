//! `sculpt import --gguf`: a llama.cpp GGUF file (what llama.cpp and Ollama users have) of
//! architecture llama (also Mistral's), qwen2 or qwen3 → a Hugging Face `LlamaForCausalLM`
//! (`Qwen2ForCausalLM`, `Qwen3ForCausalLM`) folder in f32 that sculpt and transformers load:
//! config.json, model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json.
//!
//! The weights are dequantised and renamed; for llama the query and key rows are put back in
//! the rotary layout transformers uses, undoing the permutation of llama.cpp's converter (Qwen's
//! converter keeps transformers' layout).

pub mod container;
pub mod dequant;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::io::PartialDir;
use crate::kernels::rope::{inverse_frequencies, RopeScaling};
use crate::model::decoder::{self, DecoderFamily};
use crate::model::weights;
use crate::model::DecoderConfig;
use container::{GgufFile, TensorInfo};

/// The GGUF architectures sculpt imports, each the `model_type` of its decoder family.
const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3"];

/// llama.cpp's Llama 3 rope scaling: read into config.json, not a weight.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// What an import produced.
#[derive(Debug)]
pub struct ImportSummary {
    pub out: PathBuf,
    pub tensors: usize,
    pub parameters: u64,
    /// Tensors per GGUF storage type ("Q4_1" → 210).
    pub types: BTreeMap<&'static str, usize>,
    pub layers: usize,
    pub vocab_size: usize,
    pub tied_embeddings: bool,
}

/// Converts the GGUF file `gguf` into a model folder `out`, built beside it under a hidden
/// name and renamed into place when complete. An existing non-empty `out` is refused unless
/// `overwrite`.
pub fn import(gguf: &Path, out: &Path, overwrite: bool) -> Result<ImportSummary> {
    check_destination(out, overwrite)?;
    let file = GgufFile::open(gguf)?;
    let architecture = file.require("general.architecture")?;
    let Some(arch) = architecture.as_str().and_then(|a| ARCHITECTURES.iter().copied().find(|&k| k == a)) else {
        bail!(
            "{}: general.architecture {} is not supported by sculpt import; supported: {}",
            gguf.display(),
            match architecture.as_str() {
                Some(name) => format!("{name:?}"),
                None => format!("(a {})", architecture.type_name()),
            },
            ARCHITECTURES.join(", ")
        );
    };
    let shape = Shape::read(&file, arch)?;
    let tokenizer = tokenizer::build(&file, shape.vocab_size, shape.context_length)?;
    let config = config_json(&file, &shape)?;
    // The model loads this config itself; parse it here so a bad one fails before any writing.
    DecoderConfig::from_json(&config.to_string())
        .with_context(|| format!("{}: the config built from it", gguf.display()))?;

    for required in shape.required_tensors() {
        if file.tensor(&required).is_none() {
            bail!("{}: tensor {required:?} is missing", gguf.display());
        }
    }

    let mut types = BTreeMap::new();
    let mut converted = Vec::with_capacity(file.tensors.len());
    for info in file.tensors.iter().filter(|t| t.name != ROPE_FREQS) {
        let (name, expected) = shape.hf_tensor(&info.name).with_context(|| format!("{}", gguf.display()))?;
        if info.shape() != expected {
            bail!(
                "{}: tensor {:?} has shape {:?} (GGUF dims {:?}) but the metadata implies {expected:?} for {name}",
                gguf.display(),
                info.name,
                info.shape(),
                info.dims
            );
        }
        let data = dequantize(&file, info, &shape)?;
        *types.entry(info.kind.name()).or_insert(0) += 1;
        converted.push((name, expected, data));
    }

    let parameters = converted.iter().map(|(_, _, data)| data.len() as u64).sum();
    let dir = PartialDir::replacing(out)?;
    weights::write_host(&dir.path().join(weights::WEIGHTS_FILE), &converted, None)
        .with_context(|| format!("{}", gguf.display()))?;
    let pretty = |value: &serde_json::Value| serde_json::to_vec_pretty(value).expect("JSON values serialise");
    dir.write("config.json", &pretty(&config))?;
    dir.write("generation_config.json", &pretty(&tokenizer.generation_config))?;
    dir.write(crate::model::tokenizer::TOKENIZER_FILE, &serde_json::to_vec(&tokenizer.tokenizer)?)?;
    dir.write("tokenizer_config.json", &pretty(&tokenizer.tokenizer_config))?;
    let out = dir.commit()?;
    Ok(ImportSummary {
        out,
        tensors: converted.len(),
        parameters,
        types,
        layers: shape.layers,
        vocab_size: shape.vocab_size,
        tied_embeddings: shape.tied,
    })
}

fn check_destination(out: &Path, overwrite: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        bail!("{} exists and is not a folder", out.display());
    }
    let empty = std::fs::read_dir(out).with_context(|| format!("cannot list {}", out.display()))?.next().is_none();
    if !empty && !overwrite {
        bail!("{} exists and is not empty; pass --overwrite to replace it", out.display());
    }
    Ok(())
}

/// The model's dimensions, from the `ARCH.*` metadata and the tensors present.
struct Shape {
    /// `general.architecture`: the prefix of the metadata keys.
    arch: &'static str,
    family: &'static DecoderFamily,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab_size: usize,
    context_length: u64,
    /// No `output.weight`: the head reuses the embedding.
    tied: bool,
}

impl Shape {
    fn read(file: &GgufFile, arch: &'static str) -> Result<Shape> {
        let count = |key: &str| -> Result<usize> {
            let key = &format!("{arch}.{key}");
            let v = file.require(key)?;
            v.as_u64().map(|n| n as usize).filter(|&n| n > 0).with_context(|| {
                format!("{}: metadata key {key:?} is {v:?}, not a positive integer", file.path.display())
            })
        };
        let optional = |key: &str| file.metadata.get(&format!("{arch}.{key}")).map(|_| count(key)).transpose();
        let hidden = count("embedding_length")?;
        let heads = count("attention.head_count")?;
        let kv_heads = optional("attention.head_count_kv")?.unwrap_or(heads);
        let head_dim = optional("attention.key_length")?.unwrap_or(hidden / heads);
        if let Some(rotary) = optional("rope.dimension_count")? {
            if rotary != head_dim {
                bail!(
                    "{}: metadata key \"{arch}.rope.dimension_count\" is {rotary} but heads have {head_dim} dimensions; partial rotary embeddings are not supported",
                    file.path.display()
                );
            }
        }
        if heads % kv_heads != 0 || head_dim % 2 != 0 {
            bail!(
                "{}: {heads} query heads, {kv_heads} key/value heads of {head_dim} dimensions do not make grouped rotary attention",
                file.path.display()
            );
        }
        let embedding = file
            .tensor("token_embd.weight")
            .with_context(|| format!("{}: tensor \"token_embd.weight\" is missing", file.path.display()))?;
        let vocab_size = match embedding.shape()[..] {
            [rows, _] => rows,
            ref other => bail!(
                "{}: tensor \"token_embd.weight\" has shape {other:?}; a [vocabulary, width] matrix is needed",
                file.path.display()
            ),
        };
        if let Some(stated) = optional("vocab_size")? {
            if stated != vocab_size {
                bail!(
                    "{}: metadata key \"{arch}.vocab_size\" is {stated} but tensor \"token_embd.weight\" has {vocab_size} rows",
                    file.path.display()
                );
            }
        }
        Ok(Shape {
            arch,
            family: decoder::family(arch)?,
            hidden,
            intermediate: count("feed_forward_length")?,
            layers: count("block_count")?,
            heads,
            kv_heads,
            head_dim,
            vocab_size,
            context_length: count("context_length")? as u64,
            tied: file.tensor("output.weight").is_none(),
        })
    }

    /// The Hugging Face name and shape of GGUF tensor `name`.
    fn hf_tensor(&self, name: &str) -> Result<(String, Vec<usize>)> {
        let (h, v) = (self.hidden, self.vocab_size);
        let (q, kv, ff) = (self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate);
        let top = match name {
            "token_embd.weight" => Some(("model.embed_tokens.weight".to_string(), vec![v, h])),
            "output_norm.weight" => Some(("model.norm.weight".to_string(), vec![h])),
            "output.weight" => Some(("lm_head.weight".to_string(), vec![v, h])),
            _ => None,
        };
        if let Some(found) = top {
            return Ok(found);
        }
        let unknown = || {
            anyhow::anyhow!(
                "tensor {name:?} has no counterpart in a Hugging Face {} (sculpt import maps token_embd, output_norm, output and blk.N.{{{}}})",
                self.family.architecture,
                self.layer_leaves().join(", ")
            )
        };
        let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
        let (layer, leaf) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        if layer >= self.layers {
            bail!("tensor {name:?} belongs to layer {layer} but {}.block_count is {}", self.arch, self.layers);
        }
        let (hf, shape) = match leaf {
            "attn_q.weight" => ("self_attn.q_proj.weight", vec![q, h]),
            "attn_k.weight" => ("self_attn.k_proj.weight", vec![kv, h]),
            "attn_v.weight" => ("self_attn.v_proj.weight", vec![kv, h]),
            "attn_output.weight" => ("self_attn.o_proj.weight", vec![h, q]),
            "attn_norm.weight" => ("input_layernorm.weight", vec![h]),
            "ffn_gate.weight" => ("mlp.gate_proj.weight", vec![ff, h]),
            "ffn_up.weight" => ("mlp.up_proj.weight", vec![ff, h]),
            "ffn_down.weight" => ("mlp.down_proj.weight", vec![h, ff]),
            "ffn_norm.weight" => ("post_attention_layernorm.weight", vec![h]),
            "attn_q.bias" if self.family.qkv_bias => ("self_attn.q_proj.bias", vec![q]),
            "attn_k.bias" if self.family.qkv_bias => ("self_attn.k_proj.bias", vec![kv]),
            "attn_v.bias" if self.family.qkv_bias => ("self_attn.v_proj.bias", vec![kv]),
            "attn_q_norm.weight" if self.family.qk_norm => ("self_attn.q_norm.weight", vec![self.head_dim]),
            "attn_k_norm.weight" if self.family.qk_norm => ("self_attn.k_norm.weight", vec![self.head_dim]),
            _ => return Err(unknown()),
        };
        Ok((format!("model.layers.{layer}.{hf}"), shape))
    }

    /// The tensors of each layer `blk.N.*` (with the family's biases and q/k norms).
    fn layer_leaves(&self) -> Vec<&'static str> {
        let mut leaves = vec![
            "attn_q.weight",
            "attn_k.weight",
            "attn_v.weight",
            "attn_output.weight",
            "attn_norm.weight",
            "ffn_gate.weight",
            "ffn_up.weight",
            "ffn_down.weight",
            "ffn_norm.weight",
        ];
        if self.family.qkv_bias {
            leaves.extend(["attn_q.bias", "attn_k.bias", "attn_v.bias"]);
        }
        if self.family.qk_norm {
            leaves.extend(["attn_q_norm.weight", "attn_k_norm.weight"]);
        }
        leaves
    }

    /// Every GGUF tensor the model needs (`output.weight` is optional: tied embeddings).
    fn required_tensors(&self) -> Vec<String> {
        let mut names = vec!["token_embd.weight".to_string(), "output_norm.weight".to_string()];
        for layer in 0..self.layers {
            names.extend(self.layer_leaves().iter().map(|leaf| format!("blk.{layer}.{leaf}")));
        }
        names
    }
}

/// The f32 values of a tensor in Hugging Face layout.
fn dequantize(file: &GgufFile, info: &TensorInfo, shape: &Shape) -> Result<Vec<f32>> {
    let bytes = file.read_bytes(info)?;
    let values = info
        .kind
        .dequantize(&bytes)
        .with_context(|| format!("{}: tensor {:?} ({})", file.path.display(), info.name, info.kind.name()))?;
    // Only llama.cpp's llama converter permutes the rotary rows.
    let heads = if shape.arch != "llama" {
        return Ok(values);
    } else if info.name.ends_with(".attn_q.weight") {
        shape.heads
    } else if info.name.ends_with(".attn_k.weight") {
        shape.kv_heads
    } else {
        return Ok(values);
    };
    Ok(unpermute_rotary_rows(&values, info.shape()[0], heads))
}

/// llama.cpp's converter stores each head's query/key rows interleaved (row 2i, 2i+1 are the
/// two halves of rotary pair i); transformers rotates the first half of a head against the
/// second. Row (head, half, i) of the result is row (head, 2i + half) of `values`.
fn unpermute_rotary_rows(values: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    let cols = values.len() / rows;
    let pairs = rows / heads / 2;
    let mut out = Vec::with_capacity(values.len());
    for head in 0..heads {
        for half in 0..2 {
            for i in 0..pairs {
                let row = head * 2 * pairs + 2 * i + half;
                out.extend_from_slice(&values[row * cols..(row + 1) * cols]);
            }
        }
    }
    out
}

/// config.json of the imported model.
fn config_json(file: &GgufFile, shape: &Shape) -> Result<serde_json::Value> {
    let path = file.path.display();
    let float = |key: &str| -> Result<Option<f64>> {
        file.metadata
            .get(key)
            .map(|v| v.as_f64().with_context(|| format!("{path}: metadata key {key:?} is {v:?}, not a float")))
            .transpose()
    };
    let arch = shape.arch;
    let key = |k: &str| format!("{arch}.{k}");
    let rms_norm_eps = float(&key("attention.layer_norm_rms_epsilon"))?
        .with_context(|| format!("{path}: metadata key \"{arch}.attention.layer_norm_rms_epsilon\" is missing"))?;
    let rope_theta = float(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let ids = tokenizer::SpecialIds::read(file)?;
    let mut config = json!({
        "architectures": [shape.family.architecture],
        "model_type": shape.family.model_type,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": rope_theta,
        "max_position_embeddings": shape.context_length,
        "vocab_size": shape.vocab_size,
        "tie_word_embeddings": shape.tied,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "torch_dtype": "float32",
    });
    match file.metadata.get(&key("rope.scaling.type")).map(|v| v.as_str()) {
        None | Some(Some("none")) => {}
        Some(Some("linear")) => {
            let factor = float(&key("rope.scaling.factor"))?
                .with_context(|| format!("{path}: metadata key \"{arch}.rope.scaling.factor\" is missing"))?;
            config["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
        }
        Some(other) => bail!(
            "{path}: metadata key \"{arch}.rope.scaling.type\" is {}; sculpt import supports \"none\" and \"linear\"",
            other.map_or("not a string".to_string(), |s| format!("{s:?}"))
        ),
    }
    if let Some(info) = file.tensor(ROPE_FREQS) {
        if config.get("rope_scaling").is_some() {
            bail!(
                "{path}: both metadata key \"{arch}.rope.scaling.type\" and tensor {ROPE_FREQS:?} set the rope scaling"
            );
        }
        config["rope_scaling"] = llama3_rope_scaling(file, info, shape, rope_theta)?;
    }
    Ok(config)
}

/// llama.cpp stores Llama 3.1's rope scaling as a tensor, not as metadata: per rotary
/// frequency, the divisor applied to it. The scaling is taken as Meta's (low and high frequency
/// factors 1 and 4, original context 8192) with the `factor` the divisors imply, and accepted
/// only if it reproduces every divisor.
fn llama3_rope_scaling(file: &GgufFile, info: &TensorInfo, shape: &Shape, theta: f64) -> Result<serde_json::Value> {
    let path = file.path.display();
    let divisors = info.kind.dequantize(&file.read_bytes(info)?)?;
    let pairs = shape.head_dim / 2;
    if divisors.len() != pairs {
        bail!("{path}: tensor {ROPE_FREQS:?} has {} values but heads have {pairs} rotary frequencies", divisors.len());
    }
    let (low_freq_factor, high_freq_factor, original_context) = (1.0, 4.0, 8192.0);
    let base = inverse_frequencies(shape.head_dim, theta, &RopeScaling::None);
    // The first frequency past the unscaled (short-wavelength) band gives the factor: on the
    // plateau its divisor is the factor, in the blend 1 / ((1 - s) / factor + s).
    let factor = base
        .iter()
        .zip(&divisors)
        .find_map(|(&f, &divisor)| {
            let wavelength = 2.0 * std::f64::consts::PI / f;
            let smooth = (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor);
            match wavelength {
                w if w < original_context / high_freq_factor => None,
                w if w > original_context / low_freq_factor => Some(divisor as f64),
                _ => Some((1.0 - smooth) / (1.0 / divisor as f64 - smooth)),
            }
        })
        .with_context(|| format!("{path}: tensor {ROPE_FREQS:?}: every rotary wavelength is below the scaled band"))?;
    // The f32 divisors carry about 7 digits; the factor is a small round number.
    let factor = (factor * 1e4).round() / 1e4;
    let scaling = RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings: original_context,
    };
    let scaled = inverse_frequencies(shape.head_dim, theta, &scaling);
    for (i, ((f, s), &divisor)) in base.iter().zip(&scaled).zip(&divisors).enumerate() {
        let want = f / s;
        if (want - divisor as f64).abs() > 1e-5 * want {
            bail!(
                "{path}: tensor {ROPE_FREQS:?}: value {i} is {divisor}, but Llama 3 rope scaling with factor {factor}, frequency factors 1 and 4 and original context 8192 gives {want}; other rope scalings are not supported by sculpt import"
            );
        }
    }
    Ok(json!({
        "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
        "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_context as u32,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse of llama.cpp's `permute` (convert_hf_to_gguf.py): rows of each head
    /// reshaped to (2, pairs) and transposed to (pairs, 2).
    fn llama_cpp_permute(values: &[f32], rows: usize, heads: usize) -> Vec<f32> {
        let cols = values.len() / rows;
        let pairs = rows / heads / 2;
        let mut out = Vec::with_capacity(values.len());
        for head in 0..heads {
            for i in 0..pairs {
                for half in 0..2 {
                    let row = head * 2 * pairs + half * pairs + i;
                    out.extend_from_slice(&values[row * cols..(row + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn rotary_rows_are_put_back_in_transformers_order() {
        let (rows, cols, heads) = (12, 2, 3);
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let gguf = llama_cpp_permute(&hf, rows, heads);
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rotary_rows(&gguf, rows, heads), hf);
        // Head 0 of 4 rows: GGUF rows are (pair 0 first half, pair 0 second half, pair 1 ...).
        assert_eq!(&gguf[..8], &[0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
    }
}
