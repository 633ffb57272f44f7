//! A run that goes wrong loses nothing: a diverging run stops at its first non-finite
//! step, says so, and leaves the checkpoints written before it loadable.

mod common;

use sculpt::checkpoint;
use sculpt::continual::driver::{run_stream, Method, StreamOptions};
use sculpt::data::synthetic;
use sculpt::model::{load_t5, T5Config, T5Model, Tokenizer};
use sculpt::optim::{AdamWConfig, Schedule};
use sculpt::subspace::{Mode, RankPolicy};
use sculpt::train::TrainOptions;
use sculpt::Gpu;

#[test]
fn a_diverging_run_stops_at_the_first_bad_step_and_keeps_its_checkpoints() {
    let out = common::scratch("failures", "diverge");
    let gpu = Gpu::shared().unwrap();
    std::fs::write(out.join("tokenizer.json"), synthetic::tokenizer_json()).unwrap();
    let vocab = 3 + synthetic::vocabulary().len();
    let tokenizer = Tokenizer::load(&out, vocab).unwrap();
    let model = T5Model::random(&gpu, T5Config::tiny(vocab), true, 0.1, 3).unwrap();
    let tasks: Vec<_> = synthetic::stream(1, 16, 2).into_iter().take(1).collect();
    // Adam moves every weight by about the learning rate in the first step: weights of 1e18
    // overflow the attention scores of the second step.
    let options = StreamOptions {
        method: Method::Seqft,
        policy: RankPolicy::default(),
        mode: Mode::Strict,
        targets: Vec::new(),
        train: TrainOptions {
            epochs: 4,
            batch_size: 4,
            grad_accum: 1,
            max_source_len: 16,
            max_target_len: 16,
            adamw: AdamWConfig { lr: 1e18, schedule: Schedule::Constant, max_grad_norm: 0.0, ..Default::default() },
        },
        importance_samples: 4,
        free_first_task: false,
        freeze_non_targets: false,
        seed: 5,
        eval_every: 0,
        save_every: 1,
    };
    let mut losses = Vec::new();
    let err = run_stream(&model, &tokenizer, &tasks, &options, Some(&out), |_, log| {
        losses.push(log.loss);
        true
    })
    .expect_err("a learning rate of 1e18 diverges");
    let message = format!("{err:#}");
    let bad_step = losses.len() + 1;
    assert!(bad_step >= 2, "the first step is finite: {message}");
    assert!(losses.iter().all(|l| l.is_finite()), "only finite steps are reported: {losses:?}");
    assert!(
        message.contains(&format!("step {bad_step}:")) && message.contains("last checkpoint is kept"),
        "names the step and keeps the checkpoint: {message}"
    );
    let (path, state) = checkpoint::latest(&out).unwrap().expect("the checkpoints before the bad step remain");
    assert_eq!(state.step as usize, bad_step - 1);
    let (loaded, _) = load_t5(&gpu, &path).unwrap();
    for (name, p) in &loaded.params {
        assert!(p.to_f32().unwrap().iter().all(|v| v.is_finite()), "{name} in {} is not finite", path.display());
    }
}

/// Every file of a folder, by name, with its bytes.
fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn a_full_disk_during_a_checkpoint_fails_the_run_and_keeps_the_previous_checkpoint() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let out = common::scratch("failures", "disk-full");
    let run_dir = out.to_string_lossy().to_string();
    let args = ["train", "--method", "seqft", "--train-examples", "16", "--eval-examples", "4", "--batch-size", "8"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_sculpt"))
        .args(args)
        .args(["--epochs", "6", "--out", &run_dir])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the first run with Ctrl-C after a few steps: it saves a checkpoint.
    let start = Instant::now();
    let steps = || common::logged_steps(&out).len();
    while steps() < 2 {
        assert!(start.elapsed() < Duration::from_secs(300), "no training steps logged");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    let (previous, state) = checkpoint::latest(&out).unwrap().expect("a checkpoint at the stop");
    let before = files(&previous);

    // Resumed with files limited to 64 KiB (smaller than the weights), writes past the limit
    // fail with EFBIG: the next checkpoint cannot be written.
    let script =
        format!("ulimit -f 128; trap '' XFSZ; exec '{}' train --resume '{run_dir}'", env!("CARGO_BIN_EXE_sculpt"));
    let resumed = Command::new("sh").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(!resumed.status.success(), "the run fails when a checkpoint cannot be written: {stderr}");
    assert!(
        stderr.contains("writing checkpoint file") && stderr.contains("the previous checkpoint is unchanged"),
        "says what failed and what is kept: {stderr}"
    );
    let (latest, latest_state) = checkpoint::latest(&out).unwrap().expect("the previous checkpoint");
    assert_eq!((&latest, &latest_state), (&previous, &state), "no partial folder is taken for a checkpoint");
    assert_eq!(files(&latest), before, "the previous checkpoint is byte for byte unchanged");
    let names: Vec<String> = std::fs::read_dir(out.join(checkpoint::CHECKPOINTS))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 1, "the failed checkpoint left nothing behind: {names:?}");
    load_t5(&Gpu::shared().unwrap(), &latest).expect("the previous checkpoint loads");
}
