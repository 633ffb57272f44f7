//! The method's invariant: after training with OSFT, the update of every target matrix has
//! no component in its frozen subspace (strict: neither side; paper: not in U_kᵀ·ΔW·V_k),
//! while plain fine-tuning moves those directions freely; for T5 and for decoder-only Llama.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use sculpt::continual::driver::{run_stream, ExactMatch, Method, StreamOptions};
use sculpt::data::synthetic;
use sculpt::model::t5;
use sculpt::model::{load_model, Gradients, T5Model};
use sculpt::optim::{AdamW, AdamWConfig, Schedule, Unconstrained, UpdateFilter};
use sculpt::rng::Rng;
use sculpt::subspace::{Basis, Mode, RankPolicy, SubspaceSet};
use sculpt::train::{encode, train, Position, TrainOptions};
use sculpt::Gpu;

/// ‖Aᵀ M‖_F for row-major A [m, k] and M [m, n].
fn left(a: &[f32], k: usize, m_: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; k * n];
    for i in 0..m {
        for c in 0..k {
            let aic = a[i * k + c] as f64;
            for j in 0..n {
                out[c * n + j] += aic * m_[i * n + j];
            }
        }
    }
    out
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// (‖U_kᵀΔW V_k‖, ‖U_kᵀΔW‖, ‖ΔW V_k‖) / ‖ΔW‖
fn leakage(delta: &[f64], m: usize, n: usize, u: &[f32], v: &[f32], k: usize) -> (f64, f64, f64) {
    let utd = left(u, k, delta, m, n); // [k, n]
    let transpose =
        |x: &[f64], r: usize, c: usize| -> Vec<f64> { (0..c * r).map(|t| x[(t % r) * c + t / r]).collect() };
    let dv = transpose(&left(v, k, &transpose(delta, m, n), n, m), k, m); // (Vᵀ ΔWᵀ)ᵀ = ΔW V, [m, k]
    let utdv = transpose(&left(v, k, &transpose(&utd, k, n), n, k), k, k);
    let d = norm(delta);
    (norm(&utdv) / d, norm(&utd) / d, norm(&dv) / d)
}

/// Trains the fixture model `fixture` (a T5 or Llama folder) on three examples with its
/// default targets' subspaces (`filter`) or unconstrained (None); the leakage per target.
fn run(fixture: &str, filter: Option<Mode>) -> Vec<(String, (f64, f64, f64))> {
    let gpu = Gpu::shared().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
    let (model, tokenizer) = load_model(&gpu, &dir).unwrap();
    let before: BTreeMap<String, Vec<f32>> =
        model.params().iter().map(|(n, p)| (n.clone(), p.to_f32().unwrap())).collect();
    let policy = RankPolicy::Fixed { ratio: 0.5 };
    let mode = filter.unwrap_or(Mode::Strict);
    let set = SubspaceSet::build(model.params(), &model.default_targets(), policy, mode, |_| 0.5, 1).unwrap();
    let examples: Vec<sculpt::data::Example> = ["copy: a b c", "reverse: d e f g", "sort: c a b"]
        .iter()
        .map(|s| sculpt::data::Example::new(s.to_string(), s.split_once(": ").unwrap().1.to_string()))
        .collect();
    let pairs = encode(&tokenizer, &examples, 32, 32).unwrap().pairs;
    let options = TrainOptions {
        epochs: 3,
        batch_size: 2,
        adamw: AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..Default::default() },
        ..Default::default()
    };
    let mut optimizer = AdamW::new(options.adamw, model.params()).unwrap();
    let grads = Gradients::zeros_like(&*model).unwrap();
    let mut position = Position { epoch: 0, batch: 0, rng: Rng::new(5) };
    let f: &dyn UpdateFilter = if filter.is_some() { &set } else { &Unconstrained };
    train(&*model, &pairs, &options, &mut optimizer, &grads, f, &mut position, |_, _, _| Ok(true)).unwrap();
    set.frozen
        .iter()
        .map(|(name, s)| {
            let (Basis::Frozen(u), Basis::Frozen(v)) = (&s.left, &s.right) else {
                panic!("ratio 0.5 keeps U_k and V_k")
            };
            let after = model.params()[name].to_f32().unwrap();
            let delta: Vec<f64> = after.iter().zip(&before[name]).map(|(&a, &b)| a as f64 - b as f64).collect();
            assert!(norm(&delta) > 0.0, "{name} did not move");
            // The bases' width: k and any zero padding columns, which add nothing.
            let width = u.shape()[1];
            (name.clone(), leakage(&delta, s.rows, s.cols, &u.to_f32().unwrap(), &v.to_f32().unwrap(), width))
        })
        .collect()
}

#[test]
fn strict_osft_keeps_both_frozen_sides_fixed_and_seqft_does_not() {
    let strict = run("t5_v1_1", Some(Mode::Strict));
    assert!(strict.len() >= 10, "every default target has a subspace");
    for (name, (both, l, r)) in &strict {
        assert!(*both <= 1e-4 && *l <= 1e-4 && *r <= 1e-4, "{name}: leakage {both:.2e} {l:.2e} {r:.2e}");
    }
    let free = run("t5_v1_1", None);
    let worst = free.iter().map(|(_, (both, _, _))| *both).fold(0.0, f64::max);
    assert!(worst > 0.1, "plain fine-tuning should move the top subspace, largest share {worst}");
}

#[test]
fn paper_mode_keeps_the_frozen_block_fixed() {
    for (name, (both, _, _)) in run("t5_v1_1", Some(Mode::Paper)) {
        assert!(both <= 1e-4, "{name}: ‖U_kᵀ ΔW V_k‖/‖ΔW‖ = {both:.2e}");
    }
}

#[test]
fn osft_on_a_grouped_query_llama_keeps_every_target_fixed_in_both_modes() {
    for mode in [Mode::Strict, Mode::Paper] {
        let constrained = run("llama_gqa", Some(mode));
        assert_eq!(constrained.len(), 2 * 7, "q, k, v, o, gate, up and down of both layers");
        for (name, (both, l, r)) in &constrained {
            let worst = if mode == Mode::Strict { both.max(*l).max(*r) } else { *both };
            assert!(worst <= 1e-4, "{name} ({mode:?}): leakage {both:.2e} {l:.2e} {r:.2e}");
        }
    }
    let worst = run("llama_gqa", None).iter().map(|(_, (both, _, _))| *both).fold(0.0, f64::max);
    assert!(worst > 0.1, "plain fine-tuning should move the top subspace, largest share {worst}");
}

#[test]
fn freezing_non_targets_leaves_them_bit_identical_while_targets_move() {
    let gpu = Gpu::shared().unwrap();
    let dir = common::scratch("osft", "freeze");
    let tokenizer = common::synthetic_tokenizer(&dir);
    let model = common::tiny_t5(&gpu, 3);
    let bits = |m: &T5Model| -> BTreeMap<String, Vec<u32>> {
        m.params.iter().map(|(n, p)| (n.clone(), p.to_vec::<u32>().unwrap())).collect()
    };
    let before = bits(&model);
    let targets: Vec<String> = t5::TARGETS.iter().map(|s| s.to_string()).collect();
    let options = StreamOptions {
        method: Method::Osft,
        policy: RankPolicy::Fixed { ratio: 0.5 },
        mode: Mode::Strict,
        targets: targets.clone(),
        train: TrainOptions {
            epochs: 1,
            batch_size: 4,
            max_source_len: 16,
            max_target_len: 16,
            adamw: AdamWConfig { lr: 1e-2, weight_decay: 0.1, schedule: Schedule::Constant, ..Default::default() },
            ..Default::default()
        },
        importance_samples: 4,
        free_first_task: false,
        freeze_non_targets: true,
        seed: 1,
        eval_every: 0,
        save_every: 0,
        retention: None,
        exact_match: ExactMatch::Generated,
    };
    let tasks: Vec<_> = synthetic::stream(2, 8, 2).into_iter().take(1).collect();
    run_stream(&model, &tokenizer, &tasks, &options, None, |_, _| true).unwrap().unwrap();
    let after = bits(&model);
    let (mut moved, mut kept) = (0, 0);
    for (name, was) in &before {
        if sculpt::subspace::targets::is_target(&targets, name) {
            assert_ne!(&after[name], was, "target {name} did not move");
            moved += 1;
        } else {
            assert_eq!(&after[name], was, "non-target {name} changed");
            kept += 1;
        }
    }
    assert!(moved >= 10 && kept >= 5, "{moved} targets, {kept} non-targets");
}
