//! The library API in one run: load a T5 folder, describe a small task stream in code,
//! train it with OSFT and print the accuracy matrix, AA and BWT.
//!
//! `cargo run --release --example continual [MODEL_DIR]` (default: the tiny test fixture,
//! whose random weights make the accuracies small; the point is the API).

use std::path::PathBuf;

use anyhow::Result;
use sculpt::continual::driver::{run_stream, ExactMatch, Method, StreamOptions};
use sculpt::data::{Example, Task, TaskSettings};
use sculpt::model::load_t5;
use sculpt::model::t5;
use sculpt::optim::AdamWConfig;
use sculpt::rng::Rng;
use sculpt::subspace::{Mode, RankPolicy};
use sculpt::train::TrainOptions;
use sculpt::Gpu;

/// A task whose answer is a function of a short word sequence.
fn task(name: &str, rng: &mut Rng, answer: impl Fn(&[&str]) -> String) -> Task {
    const WORDS: [&str; 6] = ["red", "green", "blue", "cat", "dog", "sun"];
    let mut example = || {
        let words: Vec<&str> = (0..3).map(|_| WORDS[rng.below(WORDS.len())]).collect();
        Example::new(format!("{name}: {}", words.join(" ")), answer(&words))
    };
    let train = (0..24).map(|_| example()).collect();
    let eval = (0..8).map(|_| example()).collect();
    // This task asks for more epochs than the run's default.
    Task {
        name: name.into(),
        train,
        eval,
        labels: None,
        settings: TaskSettings { epochs: Some(3), ..Default::default() },
    }
}

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5_v1_0"));
    let gpu = Gpu::shared()?;
    let (model, tokenizer) = load_t5(&gpu, &dir)?;
    let mut rng = Rng::new(0);
    let tasks = vec![
        task("copy", &mut rng, |w| w.join(" ")),
        task("first", &mut rng, |w| w[0].to_string()),
        task("last", &mut rng, |w| w[w.len() - 1].to_string()),
    ];
    let options = StreamOptions {
        method: Method::Osft,
        policy: RankPolicy::OFFICIAL, // the official per-matrix rule
        mode: Mode::Strict,
        targets: t5::TARGETS.iter().map(|s| s.to_string()).collect(),
        train: TrainOptions {
            epochs: 2,
            batch_size: 8,
            grad_accum: 1,
            max_source_len: 32,
            max_target_len: 16,
            adamw: AdamWConfig { lr: 3e-3, weight_decay: 0.0, ..Default::default() },
        },
        importance_samples: 8,
        free_first_task: false,
        freeze_non_targets: false,
        seed: 0,
        eval_every: 0,
        save_every: 0,
        retention: None,
        exact_match: ExactMatch::Generated,
    };
    // No run folder: nothing is written (give one to get checkpoints, a log and resuming).
    let results = run_stream(&model, &tokenizer, &tasks, &options, None, |task, log| {
        if log.step % 5 == 0 {
            println!("task {task} step {} loss {:.3}", log.step, log.loss);
        }
        true // false would stop the run
    })?
    .expect("the run was not stopped");
    println!("{}", results.markdown());
    println!("AA {:.3}  BWT {:+.3}", results.aa, results.bwt);
    Ok(())
}
