//! Every decoder-only family against the float64 transformers references of its fixture models
//! (tests/fixtures/README.md: Llama, Qwen2, Qwen3, Mistral): forward, loss, hidden states, every
//! gradient, greedy generation and a `sculpt train` run on each; plus checkpoint round trips and
//! the refusal of unsupported configs.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::reference::{fixture, Reference};
use sculpt::model::{load_decoder, CausalBatch, DecoderForwardOutput, DecoderModel, Gradients, Model, Tokenizer};
use sculpt::{Gpu, Tensor};

/// The logits of every position, [B, S, vocab] (the fixtures' vocabulary is tiny).
fn all_logits(model: &DecoderModel, out: &DecoderForwardOutput, batch: &CausalBatch) -> Tensor {
    let rows: Vec<u32> = (0..(batch.batch_size * batch.seq_len) as u32).collect();
    let logits = model.logits_at(out, &rows).unwrap();
    logits.reshape(&[batch.batch_size, batch.seq_len, model.config.vocab_size]).unwrap()
}

fn load(model_name: &str) -> (DecoderModel, Tokenizer, Reference) {
    let dir = fixture(model_name);
    let (model, tokenizer) = load_decoder(&Gpu::shared().unwrap(), &dir).unwrap();
    (model, tokenizer, Reference::load(&dir))
}

/// The reference batch, checked against what the tokenizer and [`CausalBatch::new`] make of
/// the reference examples.
fn reference_batch(model_name: &str, model: &DecoderModel, tokenizer: &Tokenizer, r: &Reference) -> CausalBatch {
    let (shape, _) = r.tensor("input_ids");
    let u = |name: &str| r.ints(name).into_iter().map(|v| v as u32).collect::<Vec<_>>();
    // transformers shifts its labels inside the loss: position t predicts labels[t + 1].
    let hf_labels = r.ints("labels");
    let labels =
        (0..hf_labels.len()).map(|i| if (i + 1) % shape[1] == 0 { -100 } else { hf_labels[i + 1] as i32 }).collect();
    let want = CausalBatch {
        batch_size: shape[0],
        seq_len: shape[1],
        input_ids: u("input_ids"),
        attention_mask: u("attention_mask"),
        labels,
        grad_scale: 1.0,
    };
    let pad = model.config.padding_id().unwrap();
    assert_eq!(pad as u64, r.json["batch"]["pad_token_id"].as_u64().unwrap());
    assert_eq!(CausalBatch::new(&r.pairs(tokenizer), pad).unwrap(), want, "{model_name}: batch");
    want
}

fn check_forward(model_name: &str) {
    let (model, tokenizer, r) = load(model_name);
    let batch = reference_batch(model_name, &model, &tokenizer, &r);

    let (_, inv_freq) = r.tensor("inv_freq");
    for (i, (&got, &want)) in model.inv_freq().iter().zip(&inv_freq).enumerate() {
        // transformers derives them in float32
        assert!((got - want).abs() <= 1e-6 * want, "{model_name}: inv_freq[{i}] {got} vs {want}");
    }
    assert_eq!(model.inv_freq().len(), inv_freq.len());

    let out = model.forward(&batch, None).unwrap();
    let mut report = Vec::new();
    r.check(model_name, &all_logits(&model, &out, &batch), "logits", 1e-4, &mut report);
    assert_eq!(out.hidden_states.len(), r.json["num_hidden_states"].as_u64().unwrap() as usize);
    for (i, t) in out.hidden_states.iter().enumerate() {
        r.check(model_name, t, &format!("hidden_states.{i}"), 1e-4, &mut report);
    }
    for (i, t) in out.layer_outputs.iter().enumerate() {
        r.check(model_name, t, &format!("layer_output.{i}"), 1e-4, &mut report);
    }
    r.assert_loss(model_name, out.loss.as_ref().unwrap(), &report);
}

fn check_gradients(model_name: &str) {
    let (model, tokenizer, r) = load(model_name);
    let batch = reference_batch(model_name, &model, &tokenizer, &r);
    let grads = Gradients::zeros_like(&model).unwrap();
    let out = model.forward(&batch, Some(&grads)).unwrap();
    model.backward(&batch, &out, &grads).unwrap();
    r.assert_gradients(model_name, &grads);
}

fn check_generate(model_name: &str) {
    let (model, tokenizer, r) = load(model_name);
    r.assert_generations(model_name, &model, &tokenizer);
}

/// `sculpt train --model DIR --train F.jsonl` runs one epoch on the fixture.
fn check_train(model_name: &str) {
    let dir = common::scratch("decoder-train", model_name);
    let train = dir.join("train.jsonl");
    let lines = ["copy: a b c\ta b c", "reverse: a b\tb a", "what is the first letter\ta"];
    let jsonl: Vec<String> = lines
        .iter()
        .map(|l| l.split_once('\t').unwrap())
        .map(|(i, t)| serde_json::json!({"input": i, "target": t}).to_string())
        .collect();
    std::fs::write(&train, jsonl.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sculpt"))
        .args(["train", "--method", "osft", "--epochs", "1", "--batch-size", "2", "--model"])
        .arg(fixture(model_name))
        .arg("--train")
        .arg(&train)
        .arg("--out")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{model_name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The parity tests of each fixture, in a module named after it.
macro_rules! parity {
    ($($fixture:ident),*) => {$(
        mod $fixture {
            #[test]
            fn forward_matches_pytorch() {
                super::check_forward(stringify!($fixture));
            }

            #[test]
            fn gradients_match_pytorch() {
                super::check_gradients(stringify!($fixture));
            }

            #[test]
            fn greedy_generation_matches_transformers() {
                super::check_generate(stringify!($fixture));
            }

            #[test]
            fn sculpt_train_runs() {
                super::check_train(stringify!($fixture));
            }
        }
    )*};
}

parity!(llama_gqa, llama_tied, qwen2, qwen3, mistral);

fn host_params(model: &DecoderModel) -> BTreeMap<String, Vec<f32>> {
    model.params.iter().map(|(n, t)| (n.clone(), t.to_f32().unwrap())).collect()
}

#[test]
fn saved_and_sharded_checkpoints_load_back_unchanged() {
    let gpu = Gpu::shared().unwrap();
    let model = DecoderModel::load(&gpu, &fixture("llama_gqa")).unwrap();
    let want = host_params(&model);

    let saved = common::scratch("llama", "saved");
    for (file, bytes) in model.hf_files().unwrap() {
        std::fs::write(saved.join(file), bytes).unwrap();
    }
    let reloaded = DecoderModel::load(&gpu, &saved).unwrap();
    assert_eq!(host_params(&reloaded), want);
    assert_eq!(reloaded.config.to_hf_json().unwrap(), model.config.to_hf_json().unwrap());

    // The same tensors split over two shards with an index.
    let sharded = common::scratch("llama", "sharded");
    std::fs::copy(saved.join("config.json"), sharded.join("config.json")).unwrap();
    let names: Vec<&String> = model.params.keys().collect();
    let mut weight_map = serde_json::Map::new();
    for (n, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", n + 1);
        let tensors: Vec<(String, &Tensor)> = part.iter().map(|&name| (name.clone(), &model.params[name])).collect();
        sculpt::model::weights::save(&sharded.join(&file), &tensors).unwrap();
        for &name in part {
            weight_map.insert(name.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(host_params(&DecoderModel::load(&gpu, &sharded).unwrap()), want);
}

#[test]
fn unsupported_configs_are_refused_naming_the_field() {
    let gpu = Gpu::shared().unwrap();
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama_gqa").join("config.json")).unwrap()).unwrap();
    let cases: [(&str, serde_json::Value, &str); 3] = [
        ("attention_bias", serde_json::json!(true), "attention_bias is true"),
        ("mlp_bias", serde_json::json!(true), "mlp_bias is true"),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}),
            "rope_parameters.rope_type \"yarn\" is not supported",
        ),
    ];
    for (field, value, want) in cases {
        let dir = common::scratch("llama-refused", field);
        let mut config = original.clone();
        config[field] = value;
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::copy(fixture("llama_gqa").join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        let err = format!("{:#}", DecoderModel::load(&gpu, &dir).err().expect("refused"));
        assert!(err.contains(want) && err.contains("config.json"), "{field}: {err}");
    }
}

#[test]
fn sequences_longer_than_the_sliding_window_are_refused_by_name() {
    let (model, _, r) = load("mistral");
    let window = r.json["config"]["sliding_window"].as_u64().unwrap() as usize;
    let err = model.generate(&vec![3; window + 1], 1).unwrap_err().to_string();
    assert!(err.contains(&format!("{} tokens", window + 1)) && err.contains("sliding_window"), "{err}");
    let long = vec![(vec![3; window / 2 + 1], vec![4; window / 2])];
    let err = model.loss(&long).unwrap_err().to_string();
    assert!(err.contains("sliding_window"), "{err}");
}

#[test]
fn an_unknown_model_type_is_refused_naming_the_supported_ones() {
    let dir = common::scratch("decoder-refused", "model_type");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gemma2"}"#).unwrap();
    let err = format!("{:#}", sculpt::model::load_model(&Gpu::shared().unwrap(), &dir).err().expect("refused"));
    assert!(err.contains("\"gemma2\"") && err.contains("\"qwen3\"") && err.contains("\"t5\""), "{err}");
}
