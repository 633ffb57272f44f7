//! Crash safety: a run killed with SIGKILL at random moments (during steps and during
//! checkpoint writes) always leaves a newest complete checkpoint that loads, never a partial
//! folder under a checkpoint name, and continuing it after every kill ends with the same
//! results as a run that was never killed.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sculpt::continual::checkpoint;
use sculpt::rng::Rng;

const KILLS: usize = 20;

/// A small built-in OSFT run (subspace files in every checkpoint) that checkpoints every step.
fn command(out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sculpt"));
    cmd.args(["train", "--method", "osft", "--train-examples", "16", "--eval-examples", "4", "--batch-size", "8"])
        .args(["--epochs", "6", "--save-every", "1", "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Every visible checkpoint folder is complete, and the newest one loads.
fn check_checkpoints(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join(checkpoint::CHECKPOINTS)) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue; // a partial folder: never taken for a checkpoint
        }
        for file in ["config.json", "model.safetensors", "tokenizer.json", checkpoint::STATE_FILE] {
            assert!(entry.path().join(file).is_file(), "checkpoint {name} lacks {file}");
        }
    }
    if let Some((newest, _)) = checkpoint::latest(dir).unwrap() {
        sculpt::model::load_t5(&sculpt::Gpu::shared().unwrap(), &newest).unwrap();
    }
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_same_results() {
    let straight = common::scratch("crash", "straight");
    let start = Instant::now();
    let out = command(&straight).output().unwrap();
    let whole = start.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = common::scratch("crash", "killed");
    let mut rng = Rng::new(42);
    let mut finished = false;
    let mut progress = Vec::new();
    for kill in 0..KILLS {
        // The first start makes the run; later ones continue it, by --resume once it has its run.json.
        let mut cmd = if dir.join("run.json").exists() {
            let mut c = Command::new(env!("CARGO_BIN_EXE_sculpt"));
            c.args(["train", "--resume"]).arg(&dir).stdout(Stdio::null()).stderr(Stdio::piped());
            c
        } else {
            command(&dir)
        };
        let resumed_at = progress.last().copied().unwrap_or(0);
        let mut child = cmd.spawn().unwrap();
        // Kill once training is under way again, a random moment later: mid-step or
        // mid-checkpoint-write (every step writes one). The log may still hold one step past
        // the checkpoint from the killed process; a second new step means this one trains.
        let start = Instant::now();
        while common::logged_steps(&dir).len() as u64 <= resumed_at + 1 && child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < whole * 3, "no progress after kill {kill}");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(whole.mul_f64(0.02 * rng.uniform() as f64));
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(status.success(), "run {kill} failed: {}", String::from_utf8_lossy(&out.stderr));
            finished = true;
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        check_checkpoints(&dir);
        progress.push(checkpoint::latest(&dir).unwrap().map_or(0, |(_, s)| s.global_step));
    }
    eprintln!("global step of the newest checkpoint after each kill: {progress:?} (finished early: {finished})");
    assert!(finished || progress.len() == KILLS);
    assert!(progress.windows(2).all(|w| w[1] >= w[0]), "checkpoints never go back: {progress:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_sculpt")).args(["train", "--resume"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        common::results(&dir),
        common::results(&straight),
        "results after kills {progress:?} differ from an unkilled run"
    );
    let steps = common::logged_steps(&dir);
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>(), "the log has every step once, in order");
    assert_eq!(steps.len(), 48);
}
