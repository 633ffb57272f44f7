//! Broken model folders (copies of a fixture with one thing wrong) give errors that name
//! the file and the tensor or field at fault.

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use sculpt::model::load_t5;
use sculpt::Gpu;

const TENSOR: &str = "encoder.block.1.layer.0.SelfAttention.q.weight";

/// A fresh copy of the v1.0 fixture folder.
fn fixture_copy(tag: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5_v1_0");
    let dir = std::env::temp_dir().join(format!("sculpt-t5-errors-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    dir
}

/// Rewrites DIR/model.safetensors through `edit(name, shape, bytes)`; None drops a tensor.
fn rewrite_weights(dir: &Path, edit: impl Fn(&str, Vec<usize>, Vec<u8>) -> Option<(Vec<usize>, Vec<u8>)>) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, v)| edit(&name, v.shape().to_vec(), v.data().to_vec()).map(|(s, b)| (name, s, b)))
        .collect();
    let views: Vec<_> = kept
        .iter()
        .map(|(n, s, b)| (n.as_str(), TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
}

fn load_error(dir: &Path) -> String {
    let gpu = Gpu::shared().unwrap();
    match load_t5(&gpu, dir) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[track_caller]
fn assert_mentions(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "error {err:?} does not mention {part:?}");
    }
}

#[test]
fn the_intact_copy_loads() {
    let dir = fixture_copy("intact");
    let (model, tokenizer) = load_t5(&Gpu::shared().unwrap(), &dir).unwrap();
    assert_eq!(model.config.vocab_size, 128);
    assert_eq!(tokenizer.encode("a").unwrap().last(), Some(&1));
}

#[test]
fn missing_config_names_the_file() {
    let dir = fixture_copy("no-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert_mentions(&load_error(&dir), &["config.json"]);
}

#[test]
fn missing_weights_name_the_files_looked_for() {
    let dir = fixture_copy("no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_mentions(&load_error(&dir), &[&dir.display().to_string(), "model.safetensors", "index.json"]);
}

#[test]
fn missing_tensor_is_named() {
    let dir = fixture_copy("missing-tensor");
    rewrite_weights(&dir, |name, shape, bytes| (name != TENSOR).then_some((shape, bytes)));
    assert_mentions(&load_error(&dir), &["model.safetensors", TENSOR, "missing", "[32, 32]"]);
}

#[test]
fn wrong_shape_is_named() {
    let dir = fixture_copy("wrong-shape");
    rewrite_weights(&dir, |name, shape, bytes| {
        if name == TENSOR {
            Some((vec![16, 32], bytes[..16 * 32 * 4].to_vec()))
        } else {
            Some((shape, bytes))
        }
    });
    assert_mentions(&load_error(&dir), &["model.safetensors", TENSOR, "[16, 32]", "[32, 32]"]);
}

#[test]
fn a_weight_holding_nan_is_named_with_its_element() {
    let dir = fixture_copy("nan");
    rewrite_weights(&dir, |name, shape, mut bytes| {
        if name == TENSOR {
            bytes[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        Some((shape, bytes))
    });
    assert_mentions(&load_error(&dir), &["model.safetensors", TENSOR, "NaN", "element 5", "damaged"]);
}

#[test]
fn unknown_feed_forward_proj_is_named() {
    let dir = fixture_copy("feed-forward");
    edit_config(&dir, "feed_forward_proj", "gated-swish".into());
    assert_mentions(&load_error(&dir), &["config.json", "gated-swish", "feed_forward_proj"]);
}

#[test]
fn tokenizer_larger_than_the_embedding_is_refused() {
    // An embedding of 100 rows cannot hold the tokenizer's 120 ids.
    let dir = fixture_copy("vocab");
    edit_config(&dir, "vocab_size", 100.into());
    rewrite_weights(&dir, |name, shape, bytes| {
        if name == "shared.weight" {
            Some((vec![100, shape[1]], bytes[..100 * shape[1] * 4].to_vec()))
        } else {
            Some((shape, bytes))
        }
    });
    assert_mentions(&load_error(&dir), &["tokenizer.json", "120", "100", "embedding"]);
}

#[test]
fn a_model_too_large_for_the_adapter_is_refused_before_its_weights_are_read() {
    // An embedding table beyond the adapter's binding limit (with the widest d_model the
    // config accepts); the weights file, which holds the small model, is never read.
    let dir = fixture_copy("too-large");
    let gpu = Gpu::shared().unwrap();
    let limit = gpu.limits().max_buffer_size.min(gpu.limits().max_storage_buffer_binding_size);
    let d_model = 1usize << 16;
    let vocab = (limit / (4 * d_model as u64)) as usize + 1;
    edit_config(&dir, "d_model", d_model.into());
    edit_config(&dir, "vocab_size", vocab.into());
    let err = load_error(&dir);
    assert_mentions(&err, &[&dir.display().to_string(), "shared.weight", &format!("[{vocab}, {d_model}]"), "bytes"]);
}
