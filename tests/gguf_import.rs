//! `sculpt import --gguf`: the tiny GGUF fixture (tests/fixtures/gguf, made by
//! tools/make_gguf_fixtures.py) becomes a folder sculpt loads, with transformers' tensors and
//! token ids; broken or unsupported files are refused naming the file and the key or tensor.

mod common;

use std::path::{Path, PathBuf};

use sculpt::model::gguf::import;
use sculpt::model::load_model;
use sculpt::Gpu;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

/// `{:#}`: the error with its whole context chain.
fn import_error(gguf: &Path, out: &Path) -> String {
    format!("{:#}", import(gguf, out, false).unwrap_err())
}

/// Imports fixture `name`.gguf and checks the folder against `name`_reference.json
/// (transformers' conversion): config, every tensor's sum, token ids; the model loads and
/// generates. Returns the folder.
fn import_and_compare(name: &str) -> PathBuf {
    let dir = common::scratch("gguf", name);
    let out = dir.join("model");
    import(&fixture(&format!("{name}.gguf")), &out, false).unwrap();
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names, ["model"], "no partial folder left beside it");

    let read_json =
        |path: PathBuf| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap() };
    let reference = read_json(fixture(&format!("{name}_reference.json")));
    let config = read_json(out.join("config.json"));
    for (key, want) in reference["config"].as_object().unwrap() {
        assert_eq!(&config[key], want, "config {key}");
    }

    let (model, tokenizer) = load_model(&Gpu::shared().unwrap(), &out).unwrap();
    let params = model.params();
    let tensors = reference["tensors"].as_object().unwrap();
    assert_eq!(params.len(), tensors.len());
    for (name, want) in tensors {
        let values = params.get(name).unwrap_or_else(|| panic!("{name} is missing")).to_f32().unwrap();
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let abs_sum: f64 = values.iter().map(|&v| (v as f64).abs()).sum();
        let (want_sum, want_abs) = (want["sum"].as_f64().unwrap(), want["abs_sum"].as_f64().unwrap());
        assert!((sum - want_sum).abs() <= 1e-4 * want_abs && (abs_sum - want_abs).abs() <= 1e-5 * want_abs, "{name}");
    }
    for (text, ids) in reference["token_ids"].as_object().unwrap() {
        let want: Vec<u32> = ids.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tokenizer.encode(text).unwrap(), want, "{text:?}");
    }
    let vocab_size = config["vocab_size"].as_u64().unwrap() as u32;
    let generated = model.generate(&tokenizer.encode("the cat").unwrap(), 3).unwrap();
    assert!(!generated.is_empty() && generated.iter().all(|&id| id < vocab_size), "{generated:?}");
    out
}

#[test]
fn the_tiny_byte_level_model_imports_into_a_folder_sculpt_loads_with_transformers_values() {
    let out = import_and_compare("tiny");
    // Whole tensors: the un-permuted query (F16) and key (Q4_0) rows, and a Q4_0 matrix.
    let (model, _) = load_model(&Gpu::shared().unwrap(), &out).unwrap();
    let bytes = std::fs::read(fixture("tiny_reference.safetensors")).unwrap();
    let whole = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in whole.tensors() {
        let want: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
        assert_eq!(model.params()[&name].to_f32().unwrap(), want, "{name}");
    }
    let tokenizer_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(
        (&tokenizer_config["bos_token"], &tokenizer_config["eos_token"], &tokenizer_config["pad_token"]),
        (&"<|im_start|>".into(), &"<|im_end|>".into(), &"<|endoftext|>".into())
    );
    assert!(tokenizer_config["chat_template"].as_str().unwrap().contains("<|im_start|>"));
}

#[test]
fn the_tiny_sentencepiece_model_imports_with_transformers_token_ids_and_llama3_rope_scaling() {
    let out = import_and_compare("tiny_sp");
    let tokenizer_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tokenizer_config["add_bos_token"], true, "SentencePiece vocabularies add BOS by default");
    assert_eq!((&tokenizer_config["bos_token"], &tokenizer_config["unk_token"]), (&"<s>".into(), &"<unk>".into()));
    // Its rope_freqs.weight (llama.cpp's form of Llama 3.1 rope scaling) is read back into the config.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["rope_scaling"],
        serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192})
    );
}

#[test]
fn the_tiny_qwen2_model_imports_with_its_attention_biases() {
    let out = import_and_compare("tiny_qwen2");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!((&config["model_type"], &config["architectures"][0]), (&"qwen2".into(), &"Qwen2ForCausalLM".into()));
}

#[test]
fn an_existing_folder_is_replaced_only_with_overwrite() {
    let dir = common::scratch("gguf", "overwrite");
    let out = dir.join("model");
    std::fs::create_dir(&out).unwrap();
    import(&fixture("tiny.gguf"), &out, false).expect("an empty folder is filled");
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = import_error(&fixture("tiny.gguf"), &out);
    assert!(err.contains(&out.display().to_string()) && err.contains("--overwrite"), "{err}");
    import(&fixture("tiny.gguf"), &out, true).unwrap();
    assert!(!out.join("notes.txt").exists() && out.join("model.safetensors").exists());
}

/// A GGUF file's bytes, written field by field.
struct GgufBytes(Vec<u8>);

impl GgufBytes {
    fn header(tensors: u64, kvs: u64) -> GgufBytes {
        let mut b = GgufBytes(b"GGUF".to_vec());
        b.u32(3).u64(tensors).u64(kvs);
        b
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
        self
    }
    fn kv_string(&mut self, key: &str, value: &str) -> &mut Self {
        self.string(key).u32(8).string(value)
    }
    /// A 2-D tensor info at data offset 0.
    fn tensor(&mut self, name: &str, dims: [u64; 2], kind: u32) -> &mut Self {
        self.string(name).u32(2).u64(dims[0]).u64(dims[1]).u32(kind).u64(0)
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn broken_and_unsupported_files_are_refused_naming_the_file_and_the_key_or_tensor() {
    let dir = common::scratch("gguf", "errors");
    let out = dir.join("out");
    let tiny = std::fs::read(fixture("tiny.gguf")).unwrap();

    let path = write(&dir, "bad_magic.gguf", &[b"GGML", &tiny[4..]].concat());
    let err = import_error(&path, &out);
    assert!(err.contains("bad_magic.gguf") && err.contains("bad magic"), "{err}");

    let path = write(&dir, "cut_metadata.gguf", &tiny[..200]);
    let err = import_error(&path, &out);
    assert!(err.contains("cut_metadata.gguf") && err.contains("metadata key") && err.contains("truncated"), "{err}");

    let path = write(&dir, "cut_data.gguf", &tiny[..tiny.len() - 1000]);
    let err = import_error(&path, &out);
    assert!(err.contains("cut_data.gguf") && err.contains("tensor \"blk.1.") && err.contains("truncated"), "{err}");

    let mut gemma = GgufBytes::header(0, 1);
    gemma.kv_string("general.architecture", "gemma2");
    let path = write(&dir, "gemma.gguf", &gemma.0);
    let err = import_error(&path, &out);
    assert!(
        err.contains("gemma.gguf")
            && err.contains(
                "general.architecture \"gemma2\" is not supported by sculpt import; supported: llama, qwen2, qwen3"
            ),
        "{err}"
    );

    let mut odd_type = GgufBytes::header(1, 1);
    odd_type.kv_string("general.architecture", "llama").tensor("blk.0.attn_q.weight", [32, 32], 99);
    let path = write(&dir, "odd_type.gguf", &odd_type.0);
    let err = import_error(&path, &out);
    assert!(
        err.contains("odd_type.gguf") && err.contains("tensor \"blk.0.attn_q.weight\"") && err.contains("ggml type 99"),
        "{err}"
    );

    let mut twice = GgufBytes::header(2, 1);
    twice.kv_string("general.architecture", "llama");
    twice.tensor("output.weight", [32, 8], 0).tensor("output.weight", [32, 8], 0);
    let path = write(&dir, "twice.gguf", &twice.0);
    let err = import_error(&path, &out);
    assert!(err.contains("twice.gguf") && err.contains("tensor \"output.weight\" is listed twice"), "{err}");

    let mut no_key = GgufBytes::header(0, 1);
    no_key.kv_string("general.architecture", "llama");
    let path = write(&dir, "no_key.gguf", &no_key.0);
    let err = import_error(&path, &out);
    assert!(err.contains("no_key.gguf") && err.contains("metadata key \"llama.embedding_length\" is missing"), "{err}");

    assert!(!out.exists(), "nothing is written for a refused file");
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(names.iter().all(|n| n.ends_with(".gguf")), "no partial folder left: {names:?}");
}
