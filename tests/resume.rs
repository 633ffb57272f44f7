//! Checkpoints: a run stopped at any step and continued from its run folder ends with
//! the same weights and accuracies as a run that never stopped, and every checkpoint is a
//! Hugging Face folder that loads back with the same weights.

mod common;

use std::path::Path;

use sculpt::continual::checkpoint;
use sculpt::continual::driver::{run_stream, ExactMatch, Method, StreamOptions};
use sculpt::continual::report::Results;
use sculpt::data::synthetic;
use sculpt::model::t5;
use sculpt::model::{load_t5, T5Model};
use sculpt::optim::{AdamWConfig, Schedule};
use sculpt::subspace::{Mode, RankPolicy};
use sculpt::train::TrainOptions;
use sculpt::Gpu;

fn options(method: Method) -> StreamOptions {
    StreamOptions {
        method,
        policy: RankPolicy::BLOCK_MINMAX,
        mode: Mode::Strict,
        targets: t5::TARGETS.iter().map(|s| s.to_string()).collect(),
        train: TrainOptions {
            epochs: 2,
            batch_size: 4,
            grad_accum: 2,
            max_source_len: 16,
            max_target_len: 16,
            adamw: AdamWConfig { lr: 3e-3, schedule: Schedule::Linear { warmup: 1, total: 4 }, ..Default::default() },
        },
        importance_samples: 4,
        free_first_task: false,
        freeze_non_targets: false,
        seed: 5,
        eval_every: 3,
        save_every: 3,
        retention: None,
        exact_match: ExactMatch::Generated,
    }
}

/// Runs two small synthetic tasks (4 steps each) in `out`, stopping after global step
/// `stop_after` when given; returns the final weights and results when the run finished.
fn run(out: &Path, method: Method, stop_after: Option<u64>) -> Option<(Vec<Vec<f32>>, Results)> {
    let gpu = Gpu::shared().unwrap();
    let tokenizer = common::synthetic_tokenizer(out);
    let model = common::tiny_t5(&gpu, 3);
    let tasks: Vec<_> = synthetic::stream(1, 16, 4).into_iter().take(2).collect();
    let mut steps = 0;
    let results = run_stream(&model, &tokenizer, &tasks, &options(method), Some(out), |_, _| {
        steps += 1;
        Some(steps) != stop_after
    })
    .unwrap()?;
    Some((model.params.values().map(|p| p.to_f32().unwrap()).collect(), results))
}

fn check_resume(method: Method) {
    let straight = run(&common::scratch("resume", &format!("{method:?}-straight")), method, None).expect("finished");
    // Stops mid-task (2, 5), at a task's last step (4) and after a saved step (3).
    for stop in [2, 3, 4, 5] {
        let dir = common::scratch("resume", &format!("{method:?}-stop{stop}"));
        assert!(run(&dir, method, Some(stop)).is_none(), "the run stopped");
        let (_, state) = checkpoint::latest(&dir).unwrap().expect("a checkpoint was written at the stop");
        assert_eq!(state.global_step, stop);
        let resumed = run(&dir, method, None).expect("the resumed run finished");
        assert_eq!(resumed.0, straight.0, "{method:?} stopped after step {stop}: weights differ from a straight run");
        assert_eq!(resumed.1, straight.1, "{method:?} stopped after step {stop}: results differ");
        let steps = common::logged_steps(&dir);
        assert_eq!(steps, (1..=8).collect::<Vec<_>>(), "the log has every step once");
    }
}

#[test]
fn a_stopped_seqft_run_resumes_to_the_same_end() {
    check_resume(Method::Seqft);
}

#[test]
fn a_stopped_osft_run_resumes_to_the_same_end() {
    check_resume(Method::Osft);
}

#[test]
fn osft_checkpoints_carry_the_subspaces_that_keep_the_next_task_out_of_them() {
    let dir = common::scratch("resume", "verify");
    run(&dir, Method::Osft, None).unwrap();
    let ckpt = |name: &str| dir.join(checkpoint::CHECKPOINTS).join(name);
    // task-00-end holds the subspaces frozen during task 1.
    let v =
        sculpt::subspace::verify::verify(&Gpu::shared().unwrap(), &ckpt("task-00-end"), &ckpt("task-01-end")).unwrap();
    assert!(!v.matrices.is_empty());
    assert!(v.worst() <= 1e-4, "leakage into the frozen subspaces {}", v.worst());
    assert!(!ckpt("task-01-end").join("subspace.safetensors").exists(), "no task follows the last one");
}

#[test]
fn a_checkpoint_is_a_model_folder_that_loads_back_with_the_same_weights() {
    let dir = common::scratch("resume", "hf");
    let (weights, _) = run(&dir, Method::Seqft, None).unwrap();
    let last = dir.join(checkpoint::CHECKPOINTS).join("task-01-end");
    let names: Vec<String> = std::fs::read_dir(dir.join(checkpoint::CHECKPOINTS))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["task-00-end", "task-01-end"], "mid-task checkpoints are pruned at task ends");
    for file in ["config.json", "model.safetensors", "tokenizer.json", checkpoint::STATE_FILE] {
        assert!(last.join(file).is_file(), "{file} in the checkpoint");
    }
    let gpu = Gpu::shared().unwrap();
    let (model, _) = load_t5(&gpu, &last).unwrap();
    let loaded: Vec<Vec<f32>> = model.params.values().map(|p| p.to_f32().unwrap()).collect();
    assert_eq!(loaded, weights);
}

/// The fixture model saved as a checkpoint loads back with the same logits. The folder is
/// kept in the target dir so that transformers can be checked on it too:
/// `python tools/make_fixtures.py check-checkpoint target/tmp/fixture-checkpoint/checkpoints/t5_v1_1`.
#[test]
fn a_saved_fixture_model_gives_the_same_logits() {
    let gpu = Gpu::shared().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5_v1_1");
    let (model, tokenizer) = load_t5(&gpu, &fixture).unwrap();
    let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixture-checkpoint");
    let _ = std::fs::remove_dir_all(&run_dir);
    let state = checkpoint::TrainingState {
        task: 0,
        task_done: true,
        step: 0,
        global_step: 0,
        position: sculpt::train::Position { epoch: 0, batch: 0, rng: sculpt::rng::Rng::new(0) },
        run_rng: sculpt::rng::Rng::new(0),
        before: None,
        accuracy: Vec::new(),
        retention_base: None,
        retention: Vec::new(),
    };
    let saved = checkpoint::save(&run_dir, "t5_v1_1", &model, &tokenizer, &state, None, &[]).unwrap();
    assert_eq!(checkpoint::read_state(&saved).unwrap(), state);
    let (reloaded, _) = load_t5(&gpu, &saved).unwrap();
    let pairs = vec![(tokenizer.encode("copy: a b c").unwrap(), tokenizer.encode("a b c").unwrap())];
    let batch = sculpt::model::Batch::new(&pairs, 0, 0).unwrap();
    let logits = |m: &T5Model| {
        let out = m.forward(&batch, None).unwrap();
        m.logits_at(&out, &[0, 1, 2, 3]).unwrap().to_f32().unwrap()
    };
    assert_eq!(logits(&reloaded), logits(&model));
}
