//! Fine-tuning: a step records into one command buffer and allocates nothing after the
//! first; a tiny random T5 learns to copy inputs it never saw.

mod common;

use std::path::Path;

use sculpt::data::{synthetic, Example};
use sculpt::model::Gradients;
use sculpt::model::{load_t5, T5Config, T5Model, Tokenizer};
use sculpt::optim::{AdamW, AdamWConfig, Schedule, Unconstrained};
use sculpt::rng::Rng;
use sculpt::train::{
    encode, eval_loss, exact_match, forced_exact_match, forced_loss_and_matches, train, Position, TrainOptions,
};
use sculpt::Gpu;

#[test]
fn a_step_allocates_nothing_after_the_first_and_submits_once_plus_readbacks() {
    let gpu = Gpu::new(&Default::default()).unwrap(); // own device: counters not shared with other tests
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5_v1_1");
    let (model, tokenizer) = load_t5(&gpu, &dir).unwrap();
    let examples = vec![
        sculpt::data::Example::new("copy: a b c".into(), "a b c".into()),
        sculpt::data::Example::new("reverse: a b".into(), "b a".into()),
    ];
    let pairs = encode(&tokenizer, &examples, 64, 64).unwrap().pairs;
    let options = TrainOptions { epochs: 4, batch_size: 2, ..Default::default() };
    let mut optimizer = AdamW::new(options.adamw, &model.params).unwrap();
    let grads = Gradients::zeros_like(&model).unwrap();
    let mut position = Position { epoch: 0, batch: 0, rng: Rng::new(1) };
    let mut seen = Vec::new();
    train(&model, &pairs, &options, &mut optimizer, &grads, &Unconstrained, &mut position, |log, _, _| {
        seen.push((gpu.pool_stats().allocations, gpu.submissions(), log.loss));
        Ok(true)
    })
    .unwrap();
    assert_eq!(seen.len(), 4);
    for w in seen.windows(2).skip(1) {
        assert_eq!(w[1].0, w[0].0, "a step after the first allocated GPU buffers: {seen:?}");
        assert!(
            w[1].1 - w[0].1 <= 2,
            "a step submitted more than one command buffer plus the loss/norm read-backs: {seen:?}"
        );
    }
    assert!(seen[3].2 < seen[0].2, "the loss went down: {seen:?}");
}

/// Copy over a small alphabet, 2 to 4 symbols: `n_train` training and `n_eval` held-out
/// examples, all inputs distinct.
fn copy_examples(seed: u64, n_train: usize, n_eval: usize) -> (Vec<Example>, Vec<Example>) {
    let mut rng = Rng::new(seed);
    let mut seen = std::collections::HashSet::new();
    let mut examples = Vec::new();
    while examples.len() < n_train + n_eval {
        let symbols: Vec<&str> = (0..2 + rng.below(3)).map(|_| COPY_SYMBOLS[rng.below(COPY_SYMBOLS.len())]).collect();
        let body = symbols.join(" ");
        if seen.insert(body.clone()) {
            examples.push(Example::new(format!("copy: {body}"), body));
        }
    }
    let eval = examples.split_off(n_train);
    (examples, eval)
}

const COPY_SYMBOLS: &[&str] = &["a", "b", "c", "d", "e", "f"];

/// A one-layer, 32-wide T5 learns copying (a positional task: it needs the relative position
/// buckets) well enough to copy every held-out input exactly.
#[test]
fn a_tiny_model_learns_to_copy_held_out_inputs() {
    let gpu = Gpu::shared().unwrap();
    let dir = common::scratch("train", "copy");
    let words: Vec<String> = std::iter::once("copy:").chain(COPY_SYMBOLS.iter().copied()).map(String::from).collect();
    std::fs::write(dir.join("tokenizer.json"), synthetic::word_tokenizer_json(&words)).unwrap();
    let vocab = 3 + words.len();
    let tokenizer = Tokenizer::load(&dir, vocab).unwrap();
    let mut config = T5Config::tiny(vocab);
    (config.d_model, config.d_ff, config.num_heads, config.d_kv, config.num_layers) = (32, 64, 2, 16, 1);
    config.set_num_decoder_layers(1);
    let model = T5Model::random(&gpu, config, true, 0.02, 0).unwrap();
    let (train_set, eval_set) = copy_examples(1, 1000, 48);
    let pairs = encode(&tokenizer, &train_set, 16, 16).unwrap().pairs;
    let steps = 500;
    let options = TrainOptions {
        epochs: 8,
        batch_size: 16,
        grad_accum: 1,
        max_source_len: 16,
        max_target_len: 16,
        adamw: AdamWConfig {
            lr: 5e-3,
            beta2: 0.99,
            weight_decay: 0.0,
            schedule: Schedule::Linear { warmup: steps / 10, total: steps },
            ..Default::default()
        },
    };
    let mut optimizer = AdamW::new(options.adamw, &model.params).unwrap();
    let grads = Gradients::zeros_like(&model).unwrap();
    let mut position = Position { epoch: 0, batch: 0, rng: Rng::new(2) };
    let mut losses = Vec::new();
    train(&model, &pairs, &options, &mut optimizer, &grads, &Unconstrained, &mut position, |log, _, _| {
        losses.push(log.loss);
        Ok(log.step < steps)
    })
    .unwrap();
    assert_eq!(losses.len() as u64, steps);
    let accuracy = exact_match(&model, &tokenizer, &eval_set, &encode(&tokenizer, &eval_set, 16, 16).unwrap()).unwrap();
    assert_eq!(accuracy, 1.0, "held-out copy accuracy {accuracy}; losses {:?}", &losses[losses.len() - 5..]);
    // Exact match under teacher forcing gives the same verdicts: every other target is
    // replaced by the next example's, which the model does not answer.
    let mixed: Vec<Example> = eval_set
        .iter()
        .enumerate()
        .map(|(i, e)| match i % 2 {
            0 => e.clone(),
            _ => Example::new(e.input.clone(), eval_set[(i + 1) % eval_set.len()].target.clone()),
        })
        .collect();
    let mixed_encoded = encode(&tokenizer, &mixed, 16, 16).unwrap();
    let generated = exact_match(&model, &tokenizer, &mixed, &mixed_encoded).unwrap();
    let forced = forced_exact_match(&model, &mixed_encoded.pairs, 8).unwrap();
    assert_eq!((generated, forced), (0.5, 0.5));
    // The same pass gives the loss, as the loss alone gives it.
    let (forced_loss, matches) = forced_loss_and_matches(&model, &mixed_encoded.pairs, 8).unwrap();
    assert_eq!(matches, mixed.len() / 2);
    let loss = eval_loss(&model, &mixed_encoded.pairs, 8).unwrap();
    assert!((forced_loss - loss).abs() < 1e-6 && loss > 0.1, "{forced_loss} vs {loss}");
}
