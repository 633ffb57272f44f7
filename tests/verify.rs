//! `sculpt verify` on checkpoints written the way a run writes them: a tiny model, a frozen
//! subspace set saved beside the before weights, a few training steps, the after weights.
//! OSFT leaves the frozen directions untouched; an unconstrained update moves them.

mod common;

use std::path::Path;

use sculpt::data::{synthetic, Example};
use sculpt::model::t5;
use sculpt::model::weights::{save, WEIGHTS_FILE};
use sculpt::model::Gradients;
use sculpt::model::{T5Model, Tokenizer};
use sculpt::optim::{AdamW, AdamWConfig, Unconstrained, UpdateFilter};
use sculpt::rng::Rng;
use sculpt::subspace::state::SUBSPACE_FILE;
use sculpt::subspace::verify::verify;
use sculpt::subspace::{Mode, RankPolicy, SubspaceSet};
use sculpt::train::{encode, train, Position, TrainOptions};
use sculpt::Gpu;

fn save_weights(model: &T5Model, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let tensors: Vec<(String, &sculpt::Tensor)> = model.params.iter().map(|(n, t)| (n.clone(), t)).collect();
    save(&dir.join(WEIGHTS_FILE), &tensors).unwrap();
}

/// Trains a fresh tiny model (same seed every time) a few steps through `filter`.
fn train_steps(gpu: &Gpu, tokenizer: &Tokenizer, model: &T5Model, filter: &dyn UpdateFilter) {
    let examples: Vec<Example> = synthetic::stream(1, 8, 1).remove(0).train;
    let pairs = encode(tokenizer, &examples, 32, 32).unwrap().pairs;
    let options = TrainOptions {
        epochs: 1,
        batch_size: 4,
        adamw: AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..Default::default() },
        ..Default::default()
    };
    let mut optimizer = AdamW::new(options.adamw, &model.params).unwrap();
    let grads = Gradients::zeros_like(model).unwrap();
    let mut position = Position { epoch: 0, batch: 0, rng: Rng::new(3) };
    train(model, &pairs, &options, &mut optimizer, &grads, filter, &mut position, |_, _, _| Ok(true)).unwrap();
    gpu.flush().unwrap();
}

#[test]
fn osft_checkpoints_verify_clean_and_unconstrained_ones_do_not() {
    let gpu = Gpu::shared().unwrap();
    let dir = common::scratch("verify", "run");
    let tokenizer = common::synthetic_tokenizer(&dir);
    let fresh = || common::tiny_t5(&gpu, 11);
    let targets: Vec<String> = t5::TARGETS.iter().map(|s| s.to_string()).collect();

    let model = fresh();
    let set = SubspaceSet::build(&model.params, &targets, RankPolicy::Fixed { ratio: 0.5 }, Mode::Strict, |_| 0.5, 1)
        .unwrap();
    save_weights(&model, &dir.join("before"));
    set.save(&dir.join("before").join(SUBSPACE_FILE)).unwrap();
    train_steps(&gpu, &tokenizer, &model, &set);
    save_weights(&model, &dir.join("osft"));
    let free = fresh();
    train_steps(&gpu, &tokenizer, &free, &Unconstrained);
    save_weights(&free, &dir.join("seqft"));

    let osft = verify(&gpu, &dir.join("before"), &dir.join("osft")).unwrap();
    assert_eq!(osft.matrices.len(), set.frozen.len());
    assert!(osft.matrices.iter().all(|m| m.delta_norm > 0.0), "every target matrix moved");
    assert!(osft.worst() <= 1e-4, "osft leaked into the frozen subspace: {:#?}", osft.overall);
    let o = osft.overall;
    assert!(o.both <= 1e-4 && o.left <= 1e-4 && o.right <= 1e-4, "{o:?}");

    let seqft = verify(&gpu, &dir.join("before"), &dir.join("seqft")).unwrap();
    assert!(
        seqft.worst() > 0.1 && seqft.overall.left > 0.1,
        "unconstrained updates should move the top subspace: {:?}",
        seqft.overall
    );

    let err = format!("{:#}", verify(&gpu, &dir.join("seqft"), &dir.join("osft")).unwrap_err());
    assert!(err.contains(SUBSPACE_FILE) && err.contains("osft run"), "{err}");
}
