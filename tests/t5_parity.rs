//! Forward pass and greedy generation against the float64 PyTorch references of the two
//! fixture models (tests/fixtures/README.md).

mod common;

use common::reference::{fixture, relative_norm_error, Reference};
use sculpt::model::{load_t5, Batch, ForwardOutput, T5Model, Tokenizer};
use sculpt::{Gpu, Tensor};

/// The logits of every decoder position, [B, S_tgt, vocab] (the fixtures' vocabulary is tiny).
fn all_logits(model: &T5Model, out: &ForwardOutput, batch: &Batch) -> Tensor {
    let rows: Vec<u32> = (0..(batch.batch_size * batch.target_len) as u32).collect();
    let logits = model.logits_at(out, &rows).unwrap();
    logits.reshape(&[batch.batch_size, batch.target_len, model.config.vocab_size]).unwrap()
}

fn reference_batch(r: &Reference) -> Batch {
    let (shape, _) = r.tensor("input_ids");
    let (target_shape, _) = r.tensor("labels");
    let u = |name: &str| r.ints(name).into_iter().map(|v| v as u32).collect::<Vec<_>>();
    Batch {
        batch_size: shape[0],
        source_len: shape[1],
        target_len: target_shape[1],
        input_ids: u("input_ids"),
        attention_mask: u("attention_mask"),
        decoder_input_ids: u("decoder_input_ids"),
        labels: r.ints("labels").into_iter().map(|v| v as i32).collect(),
        grad_scale: 1.0,
    }
}

fn load(model_name: &str) -> (T5Model, Tokenizer, Reference) {
    let dir = fixture(model_name);
    let (model, tokenizer) = load_t5(&Gpu::shared().unwrap(), &dir).unwrap();
    (model, tokenizer, Reference::load(&dir))
}

fn check_forward(model_name: &str) {
    let (model, tokenizer, r) = load(model_name);
    let batch = reference_batch(&r);

    // The tokenizer and batching reproduce transformers' padded batch.
    let c = &model.config;
    let pairs = r.pairs(&tokenizer);
    assert_eq!(Batch::new(&pairs, c.pad_token_id, c.decoder_start_token_id).unwrap(), batch, "{model_name}: batch");

    let out = model.forward(&batch, None).unwrap();
    let mut report = Vec::new();
    r.check(model_name, &all_logits(&model, &out, &batch), "logits", 1e-4, &mut report);
    for (stack, states, blocks) in [
        ("encoder", out.encoder_hidden_states(), &out.encoder.stack.block_outputs),
        ("decoder", out.decoder_hidden_states(), &out.decoder.block_outputs),
    ] {
        assert_eq!(states.len(), r.json[format!("num_{stack}_hidden_states")].as_u64().unwrap() as usize);
        for (i, t) in states.iter().enumerate() {
            r.check(model_name, t, &format!("{stack}_hidden_states.{i}"), 1e-4, &mut report);
        }
        for (i, t) in blocks.iter().enumerate() {
            r.check(model_name, t, &format!("{stack}_block_output.{i}"), 1e-4, &mut report);
        }
    }
    r.assert_loss(model_name, out.loss.as_ref().unwrap(), &report);
}

fn check_generate(model_name: &str) {
    let (model, tokenizer, r) = load(model_name);
    r.assert_generations(model_name, &model, &tokenizer);
}

#[test]
fn t5_v1_0_forward_matches_pytorch() {
    check_forward("t5_v1_0");
}

#[test]
fn t5_v1_1_forward_matches_pytorch() {
    check_forward("t5_v1_1");
}

#[test]
fn t5_v1_0_greedy_generation_matches_transformers() {
    check_generate("t5_v1_0");
}

#[test]
fn t5_v1_1_greedy_generation_matches_transformers() {
    check_generate("t5_v1_1");
}

#[test]
fn eval_reports_loss_and_exact_match() {
    let (model, tokenizer, r) = load("t5_v1_0");
    // The reference batch's examples give the reference loss (token-level mean over the
    // whole set, even when split into batches of 2 and 1).
    let result = sculpt::cli::eval::evaluate(&model, &tokenizer, &r.examples(), 2).unwrap();
    let want = r.tensor("loss").1[0];
    assert!((result.loss - want).abs() / want < 1e-5, "{} vs {want}", result.loss);
    // A generation case as its own target: greedy output matches exactly.
    let case = &r.json["generate"][0];
    let hit = sculpt::data::jsonl::Example::new(
        case["input"].as_str().unwrap().into(),
        case["output_text"].as_str().unwrap().into(),
    );
    let miss = sculpt::data::jsonl::Example::new(hit.input.clone(), "not the output".into());
    let result = sculpt::cli::eval::evaluate(&model, &tokenizer, &[hit, miss], 8).unwrap();
    assert_eq!((result.examples, result.exact_match), (2, 0.5));
}

fn check_gradients_and_adamw(model_name: &str) {
    use sculpt::model::Gradients;
    use sculpt::optim::{AdamW, AdamWConfig, Schedule, Unconstrained};

    let (model, _, r) = load(model_name);
    let batch = reference_batch(&r);
    let grads = Gradients::zeros_like(&model).unwrap();

    let out = model.forward(&batch, Some(&grads)).unwrap();
    model.backward(&batch, &out, &grads).unwrap();
    r.assert_gradients(model_name, &grads);

    // Three AdamW steps with weight decay, clipping and warmup, on the same batch.
    let a = &r.json["adamw"];
    let f = |k: &str| a[k].as_f64().unwrap() as f32;
    let config = AdamWConfig {
        lr: f("lr"),
        beta1: a["betas"][0].as_f64().unwrap() as f32,
        beta2: a["betas"][1].as_f64().unwrap() as f32,
        eps: f("eps"),
        weight_decay: f("weight_decay"),
        max_grad_norm: f("max_grad_norm"),
        schedule: Schedule::Linear { warmup: a["warmup_steps"].as_u64().unwrap(), total: 1_000_000 },
    };
    let mut optimizer = AdamW::new(config, &model.params).unwrap();
    for s in 0..3 {
        grads.zero().unwrap();
        let out = model.forward(&batch, Some(&grads)).unwrap();
        model.backward(&batch, &out, &grads).unwrap();
        let sumsq = optimizer.step(&model.params, &grads.grads, &Unconstrained).unwrap();
        let loss = out.loss.unwrap().to_f32().unwrap()[0] as f64;
        let want_loss = r.tensor(&format!("adamw_loss.{s}")).1[0];
        assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "step {s}: loss {loss} vs {want_loss}");
        let norm = (sumsq.to_f32().unwrap()[0] as f64).sqrt();
        let want_norm = r.tensor(&format!("adamw_grad_norm.{s}")).1[0];
        assert!((norm - want_norm).abs() <= 1e-4 * want_norm, "step {s}: grad norm {norm} vs {want_norm}");
    }
    for (name, p) in &model.params {
        let err = relative_norm_error(&p.to_f32().unwrap(), &r.tensor(&format!("adamw.{name}")).1);
        assert!(err <= 1e-5, "{model_name}: {name} after 3 AdamW steps off by {err:.2e} relative");
    }
}

#[test]
fn t5_v1_0_gradients_and_adamw_match_pytorch() {
    check_gradients_and_adamw("t5_v1_0");
}

#[test]
fn t5_v1_1_gradients_and_adamw_match_pytorch() {
    check_gradients_and_adamw("t5_v1_1");
}
