//! Fine-tuning: a step records into one command buffer and allocates nothing after the
//! first; a tiny random T5 fits the synthetic copy task (loss falls well below its start).

use std::path::{Path, PathBuf};

use sculpt::data::synthetic;
use sculpt::model::t5::Gradients;
use sculpt::model::{load_t5, T5Config, T5Model, Tokenizer};
use sculpt::optim::{AdamW, AdamWConfig, Schedule, Unconstrained};
use sculpt::rng::Rng;
use sculpt::train::{encode, exact_match, train, Position, TrainOptions};
use sculpt::Gpu;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sculpt-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_step_allocates_nothing_after_the_first_and_submits_once_plus_readbacks() {
    let gpu = Gpu::new(&Default::default()).unwrap(); // own device: counters not shared with other tests
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5_v1_1");
    let (model, tokenizer) = load_t5(&gpu, &dir).unwrap();
    let examples = vec![
        sculpt::data::Example { input: "copy: a b c".into(), target: "a b c".into() },
        sculpt::data::Example { input: "reverse: a b".into(), target: "b a".into() },
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

#[test]
fn a_tiny_model_fits_the_copy_task() {
    let gpu = Gpu::shared().unwrap();
    let dir = scratch("copy");
    std::fs::write(dir.join("tokenizer.json"), synthetic::tokenizer_json()).unwrap();
    let vocab = 3 + synthetic::vocabulary().len();
    let tokenizer = Tokenizer::load(&dir, vocab).unwrap();
    let model = T5Model::random(&gpu, T5Config::tiny(vocab), true, 0.1, 7).unwrap();
    let task = synthetic::stream(3, 400, 24).remove(0);
    assert_eq!(task.name, "copy");
    let pairs = encode(&tokenizer, &task.train, 32, 32).unwrap().pairs;
    let options = TrainOptions {
        epochs: 4,
        batch_size: 16,
        grad_accum: 1,
        max_source_len: 32,
        max_target_len: 32,
        adamw: AdamWConfig {
            lr: 3e-3,
            weight_decay: 0.0,
            schedule: Schedule::Linear { warmup: 10, total: 100 },
            ..Default::default()
        },
    };
    let mut optimizer = AdamW::new(options.adamw, &model.params).unwrap();
    let grads = Gradients::zeros_like(&model).unwrap();
    let mut position = Position { epoch: 0, batch: 0, rng: Rng::new(2) };
    let mut losses = Vec::new();
    train(&model, &pairs, &options, &mut optimizer, &grads, &Unconstrained, &mut position, |log, _, _| {
        losses.push(log.loss);
        Ok(true)
    })
    .unwrap();
    assert_eq!(losses.len(), 100);
    let (first, last) = (losses[0], losses[losses.len() - 5..].iter().sum::<f32>() / 5.0);
    assert!(last < 0.5 * first, "loss went from {first} to {last}");
    // Exact match runs greedy generation end to end and scores in [0, 1].
    let accuracy = exact_match(&model, &tokenizer, &task.eval[..4], 32).unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
}
