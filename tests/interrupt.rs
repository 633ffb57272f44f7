//! `sculpt train` as a user runs it: Ctrl-C (SIGINT) stops at a step boundary with a
//! checkpoint and a clean exit, and `--resume` finishes the run with the same results as
//! a run that was never stopped.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sculpt(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sculpt"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// A built-in run small enough for a software GPU, in `out`.
fn train_args(out: &Path, epochs: usize, lr: f32) -> Vec<String> {
    let fixed = ["train", "--method", "seqft", "--train-examples", "16", "--eval-examples", "4", "--batch-size", "8"];
    let (epochs, lr, out) = (epochs.to_string(), lr.to_string(), out.to_string_lossy().to_string());
    fixed
        .iter()
        .map(|s| s.to_string())
        .chain(["--epochs", &epochs, "--lr", &lr, "--out", &out].map(String::from))
        .collect()
}

fn run(args: &[String]) -> std::process::Output {
    sculpt(&args.iter().map(String::as_str).collect::<Vec<_>>()).output().unwrap()
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_ends_where_a_straight_run_does() {
    let straight = common::scratch("interrupt", "straight");
    let out = run(&train_args(&straight, 6, 3e-3));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let stopped = common::scratch("interrupt", "stopped");
    let args = train_args(&stopped, 6, 3e-3);
    let mut child = sculpt(&args.iter().map(String::as_str).collect::<Vec<_>>()).spawn().unwrap();
    let start = Instant::now();
    while common::logged_steps(&stopped).len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(300), "no training steps logged");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a clean exit: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("--resume"), "says how to continue: {stdout}");
    assert!(!stopped.join("results.json").exists(), "stopped before the end");
    let (_, state) = sculpt::continual::checkpoint::latest(&stopped).unwrap().expect("a checkpoint at the stop");
    assert!(state.global_step >= 3);

    let out = sculpt(&["train", "--resume", &stopped.to_string_lossy()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(common::results(&stopped), common::results(&straight));
}

#[test]
fn a_second_run_with_other_arguments_in_the_same_folder_is_refused() {
    let dir = common::scratch("interrupt", "refuse");
    let out = run(&train_args(&dir, 1, 3e-3));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&train_args(&dir, 1, 0.1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--resume") && stderr.contains("--overwrite"), "{stderr}");
    assert!(dir.join("results.json").exists(), "the earlier run is untouched");
}
