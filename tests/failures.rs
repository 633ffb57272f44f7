//! A run that goes wrong loses nothing: a diverging run, weights holding NaN, a full disk or
//! a lost GPU stops the run with an error that says so, and the checkpoints written before stay loadable;
//! a stream too large for the adapter is refused before any work.

mod common;

use sculpt::continual::checkpoint;
use sculpt::continual::driver::{run_stream, ExactMatch, Method, StreamOptions};
use sculpt::data::synthetic;
use sculpt::model::{load_t5, T5Model, Tokenizer};
use sculpt::optim::{AdamWConfig, Schedule};
use sculpt::subspace::{Mode, RankPolicy};
use sculpt::train::TrainOptions;
use sculpt::{Gpu, GpuOptions};
use std::path::Path;

/// The tiny built-in model and tokenizer on `gpu`, with the tokenizer file in `out`.
fn tiny_model(gpu: &Gpu, out: &Path) -> (Tokenizer, T5Model) {
    (common::synthetic_tokenizer(out), common::tiny_t5(gpu, 3))
}

/// Plain fine-tuning in batches of 4 at a constant `lr`, a checkpoint after every step.
fn every_step_saved(lr: f32, epochs: usize) -> StreamOptions {
    StreamOptions {
        method: Method::Seqft,
        policy: RankPolicy::BLOCK_MINMAX,
        mode: Mode::Strict,
        targets: Vec::new(),
        train: TrainOptions {
            epochs,
            batch_size: 4,
            grad_accum: 1,
            max_source_len: 16,
            max_target_len: 16,
            adamw: AdamWConfig { lr, schedule: Schedule::Constant, max_grad_norm: 0.0, ..Default::default() },
        },
        importance_samples: 4,
        free_first_task: false,
        freeze_non_targets: false,
        seed: 5,
        eval_every: 0,
        save_every: 1,
        retention: None,
        exact_match: ExactMatch::Generated,
    }
}

#[test]
fn a_diverging_run_stops_at_the_first_bad_step_and_keeps_its_checkpoints() {
    let out = common::scratch("failures", "diverge");
    let gpu = Gpu::shared().unwrap();
    let (tokenizer, model) = tiny_model(&gpu, &out);
    let tasks: Vec<_> = synthetic::stream(1, 16, 2).into_iter().take(1).collect();
    // Adam moves every weight by about the learning rate in the first step: weights of 1e18
    // overflow the attention scores of the second step.
    let options = every_step_saved(1e18, 4);
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
    assert_loads_finite(&gpu, &path);
}

/// The checkpoint at `path` loads, and all its weights are finite.
fn assert_loads_finite(gpu: &Gpu, path: &Path) {
    let (loaded, _) = load_t5(gpu, path).unwrap();
    for (name, p) in &loaded.params {
        assert!(p.to_f32().unwrap().iter().all(|v| v.is_finite()), "{name} in {} is not finite", path.display());
    }
}

/// The names of everything in the run's checkpoint folder, hidden partial folders included.
fn checkpoint_folders(out: &Path) -> Vec<String> {
    std::fs::read_dir(out.join(checkpoint::CHECKPOINTS))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect()
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
        stderr.contains("writing file")
            && stderr.contains("the previous checkpoint is unchanged")
            && stderr.contains(&format!("sculpt train --resume {run_dir}")),
        "says what failed and what is kept: {stderr}"
    );
    let (latest, latest_state) = checkpoint::latest(&out).unwrap().expect("the previous checkpoint");
    assert_eq!((&latest, &latest_state), (&previous, &state), "no partial folder is taken for a checkpoint");
    assert_eq!(files(&latest), before, "the previous checkpoint is byte for byte unchanged");
    let names = checkpoint_folders(&out);
    assert_eq!(names.len(), 1, "the failed checkpoint left nothing behind: {names:?}");
    load_t5(&Gpu::shared().unwrap(), &latest).expect("the previous checkpoint loads");
}

#[test]
fn a_lost_device_ends_the_run_with_a_clear_error_and_the_last_checkpoint_intact() {
    let out = common::scratch("failures", "device-lost");
    // A device of its own: losing it leaves the other tests' shared device alone.
    let doomed = Gpu::new(&GpuOptions::from_env()).unwrap();
    let (tokenizer, model) = tiny_model(&doomed, &out);
    let tasks: Vec<_> = synthetic::stream(2, 16, 2).into_iter().take(1).collect();
    let options = every_step_saved(1e-3, 2);
    let err = run_stream(&model, &tokenizer, &tasks, &options, Some(&out), |_, log| {
        if log.step == 3 {
            doomed.lose_device();
        }
        true
    })
    .expect_err("the run cannot go on without its device");
    let message = format!("{err:#}");
    assert!(message.contains("GPU device was lost") && message.contains("run the same command again"), "{message}");
    // Step 3's checkpoint needed the weights back from the lost device: the newest one is step 2's.
    let (path, state) = checkpoint::latest(&out).unwrap().expect("the checkpoints before the loss remain");
    assert_eq!(state.step, 2, "{}", path.display());
    let names = checkpoint_folders(&out);
    assert_eq!(names.len(), 1, "no partial checkpoint is left: {names:?}");
    // A new process (here: a new device) continues the run from it to the end.
    let gpu = Gpu::shared().unwrap();
    let (tokenizer, model) = tiny_model(&gpu, &out);
    let results = run_stream(&model, &tokenizer, &tasks, &options, Some(&out), |_, _| true).unwrap();
    assert_eq!(results.expect("the resumed run finishes").accuracy.len(), 1);
    assert_eq!(common::logged_steps(&out), (1..=8).collect::<Vec<u64>>(), "every step logged once");
}

#[test]
fn nan_injected_into_the_weights_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let out = common::scratch("failures", "nan-weights");
    let gpu = Gpu::shared().unwrap();
    let (tokenizer, model) = tiny_model(&gpu, &out);
    let tasks: Vec<_> = synthetic::stream(4, 16, 2).into_iter().take(1).collect();
    let options = every_step_saved(1e-3, 2);
    let (name, weight) = model.params.iter().find(|(n, _)| n.ends_with("SelfAttention.q.weight")).unwrap();
    let mut steps = Vec::new();
    let err = run_stream(&model, &tokenizer, &tasks, &options, Some(&out), |_, log| {
        steps.push(log.step);
        // After step 3's update, before its checkpoint: as if the update had overflowed.
        if log.step == 3 {
            let mut values = weight.to_f32().unwrap();
            values[7] = f32::NAN;
            weight.write(&values).unwrap();
        }
        true
    })
    .expect_err("a weight holding NaN stops the run");
    let message = format!("{err:#}");
    assert!(
        message.contains("task-00-step-000003")
            && message.contains(name.as_str())
            && message.contains("element 7 is NaN")
            && message.contains("the previous checkpoint is unchanged"),
        "names the step, the tensor and what is kept: {message}"
    );
    assert_eq!(steps, [1, 2, 3], "no step runs after the bad one");
    let (path, state) = checkpoint::latest(&out).unwrap().expect("the checkpoints before the bad step remain");
    assert_eq!(state.step, 2, "{}", path.display());
    let names = checkpoint_folders(&out);
    assert_eq!(names.len(), 1, "no partial checkpoint is left: {names:?}");
    assert_loads_finite(&gpu, &path);
}

#[test]
fn a_stream_whose_evaluation_needs_too_large_a_buffer_is_refused_before_any_work() {
    let out = common::scratch("failures", "too-large");
    let gpu = Gpu::shared().unwrap();
    let (tokenizer, model) = tiny_model(&gpu, &out);
    let mut tasks: Vec<_> = synthetic::stream(3, 8, 2).into_iter().take(2).collect();
    // One evaluation input long enough that its attention probabilities (4 heads × L × L
    // floats) exceed any adapter's binding limit, in the second task only.
    let limit = gpu.limits().max_buffer_size.min(gpu.limits().max_storage_buffer_binding_size);
    let tokens = ((limit / 16) as f64).sqrt() as usize + 1;
    tasks[1].eval[0].input = vec!["a"; tokens].join(" ");
    let mut options = every_step_saved(1e-3, 1);
    options.train.max_source_len = tokens + 1;
    let err = run_stream(&model, &tokenizer, &tasks, &options, Some(&out), |_, _| true)
        .expect_err("the long evaluation input cannot be run");
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!("task {:?}", tasks[1].name))
            && message.contains("attention probabilities")
            && message.contains("--max-source-len"),
        "names the task, the buffer and the flag: {message}"
    );
    let written: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(written, ["tokenizer.json"], "nothing was evaluated, trained or saved");
}
