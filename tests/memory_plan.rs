//! The memory plan against what the buffer pool really held at its peak over one OSFT training
//! step (frozen subspaces built, gradients, AdamW moments, the step's activations), for both
//! families, on models large enough that the pool's 256-byte rounding does not matter.

use sculpt::continual::memory::MemoryPlan;
use sculpt::model::{DecoderConfig, DecoderModel, Gradients, Model, Pair, T5Config, T5Model};
use sculpt::optim::{AdamW, AdamWConfig};
use sculpt::rng::Rng;
use sculpt::subspace::{Mode, RankPolicy, SubspaceSet};
use sculpt::Gpu;

fn random_pairs(batch: usize, source: usize, target: usize, vocab: usize) -> Vec<Pair> {
    let mut rng = Rng::new(3);
    let mut ids = |n: usize| (0..n).map(|_| 3 + rng.below(vocab - 3) as u32).collect::<Vec<_>>();
    (0..batch).map(|_| (ids(source), ids(target))).collect()
}

/// Peak bytes in use over building the subspaces and one step, against the plan: within 20%.
fn check_plan(gpu: &Gpu, model: &dyn Model, pairs: &[Pair]) {
    let (source, target) = (pairs[0].0.len(), pairs[0].1.len());
    let targets = model.default_targets();
    let (policy, mode) = (RankPolicy::Fixed { ratio: 0.5 }, Mode::Strict);
    let plan = MemoryPlan::new(model, pairs.len(), source, target, Some((&targets, policy, mode)));
    let subspaces = SubspaceSet::build(model.params(), &targets, policy, mode, |_| 0.5, 1).unwrap();
    let grads = Gradients::zeros_like(model).unwrap();
    let mut optimizer = AdamW::new(AdamWConfig::default(), model.params()).unwrap();
    // The SVD pass has its own, transient scratch: the plan is of the training steps.
    gpu.reset_peak();
    let loss = model.loss_and_gradients(pairs, 1.0, &grads).unwrap();
    optimizer.step(model.params(), &grads.grads, &subspaces).unwrap();
    assert!(loss.to_f32().unwrap()[0].is_finite());
    let peak = gpu.pool_stats().peak_bytes_in_use as f64;
    let ratio = plan.total as f64 / peak;
    eprintln!("plan {} vs peak {peak}: {ratio:.3}; {}", plan.total, plan.describe());
    assert!((0.8..=1.2).contains(&ratio), "plan {} is not within 20% of the measured peak {peak}", plan.total);
    assert!(plan.weights > 0 && plan.subspaces > 0 && plan.activations > 0, "{}", plan.describe());
}

#[test]
fn the_llama_plan_is_within_a_fifth_of_the_pool_peak() {
    let gpu = Gpu::new(&Default::default()).unwrap(); // own device: its pool holds only this test's buffers
    let config = DecoderConfig::from_json(
        r#"{"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 4000, "tie_word_embeddings": true, "eos_token_id": 1}"#,
    )
    .unwrap();
    let model = DecoderModel::random(&gpu, config, 0.02, 1).unwrap();
    check_plan(&gpu, &model, &random_pairs(4, 40, 24, 4000));
}

#[test]
fn the_t5_plan_is_within_a_fifth_of_the_pool_peak() {
    let gpu = Gpu::new(&Default::default()).unwrap();
    let mut config = T5Config::tiny(4000);
    config.d_model = 128;
    config.d_ff = 344;
    let model = T5Model::random(&gpu, config, true, 0.02, 1).unwrap();
    check_plan(&gpu, &model, &random_pairs(4, 40, 24, 4000));
}
