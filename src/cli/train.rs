//! `sculpt train`: with no arguments, the built-in default — a small T5 made on the spot,
//! the synthetic task stream, both OSFT and sequential fine-tuning from the same start,
//! and the two accuracy matrices side by side.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::continual::driver::{run_stream, Method, StreamOptions};
use crate::data::synthetic;
use crate::model::{T5Config, T5Model, Tokenizer};
use crate::optim::{AdamWConfig, Schedule};
use crate::subspace::targets::T5_DEFAULT;
use crate::subspace::{Mode, RankPolicy};
use crate::train::TrainOptions;

#[derive(clap::Args)]
pub struct Args {
    /// Method to run; without it both run from the same initial weights and are compared.
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Where results.json, results.md and accuracy.png go (one folder per method).
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Fraction of min(m, n) frozen in every target matrix (fixed policy; default: adaptive).
    #[arg(long, conflicts_with = "unfreeze_rank_ratio")]
    rank_ratio: Option<f64>,
    /// The trained fraction instead (mini_trainer's spelling): rank ratio = 1 − this.
    #[arg(long)]
    unfreeze_rank_ratio: Option<f64>,
    /// strict: (I − UUᵀ) ΔW (I − VVᵀ); paper: ΔW − UUᵀ ΔW VVᵀ.
    #[arg(long, value_enum, default_value = "strict")]
    projection: ProjectionMode,
    /// Leave the first task unconstrained.
    #[arg(long)]
    free_first_task: bool,
    /// Seeds of the stream and the initial weights; several (`--seeds 0,1,2`) repeat the run
    /// once per seed and end with the mean ± sd of AA and BWT.
    #[arg(long, alias = "seeds", value_delimiter = ',', default_value = "0")]
    seed: Vec<u64>,
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Training and evaluation examples per synthetic task.
    #[arg(long, default_value_t = 256)]
    train_examples: usize,
    #[arg(long, default_value_t = 32)]
    eval_examples: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProjectionMode {
    Strict,
    Paper,
}

pub fn run(gpu: &crate::Gpu, args: &Args) -> Result<()> {
    let policy = match (args.rank_ratio, args.unfreeze_rank_ratio) {
        (Some(r), _) => RankPolicy::Fixed { ratio: r },
        (None, Some(u)) => RankPolicy::from_unfreeze_ratio(u)?,
        (None, None) => RankPolicy::default(),
    };
    policy.validate()?;
    if args.epochs == 0 || args.train_examples == 0 || args.eval_examples == 0 {
        bail!("--epochs, --train-examples and --eval-examples must be positive");
    }
    if args.seed.is_empty() {
        bail!("--seeds needs at least one seed");
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("tokenizer.json"), synthetic::tokenizer_json())?;
    let vocab = 3 + synthetic::vocabulary().len();
    let tokenizer = Tokenizer::load(&args.out, vocab)?;
    let batch_size = 16;
    let steps = (args.epochs * args.train_examples.div_ceil(batch_size)) as u64;
    let options = |method, seed| StreamOptions {
        method,
        policy,
        mode: match args.projection {
            ProjectionMode::Strict => Mode::Strict,
            ProjectionMode::Paper => Mode::Paper,
        },
        targets: T5_DEFAULT.iter().map(|s| s.to_string()).collect(),
        train: TrainOptions {
            epochs: args.epochs,
            batch_size,
            max_source_len: 32,
            max_target_len: 32,
            adamw: AdamWConfig {
                lr: args.lr,
                // a short memory of squared gradients: each task is only ~130 steps long
                beta2: 0.99,
                weight_decay: 0.0,
                schedule: Schedule::Linear { warmup: steps / 10, total: steps },
                ..Default::default()
            },
        },
        importance_samples: 32,
        free_first_task: args.free_first_task,
        seed,
    };
    let methods = match args.method {
        Some(m) => vec![m],
        None => vec![Method::Osft, Method::Seqft],
    };
    // (seed, method, AA, BWT) of every run
    let mut rows = Vec::new();
    for &seed in &args.seed {
        let tasks = synthetic::stream(seed, args.train_examples, args.eval_examples);
        let out = if args.seed.len() > 1 { args.out.join(format!("seed-{seed}")) } else { args.out.clone() };
        for &method in &methods {
            // A small initial scale, so that what a task teaches dominates each matrix's top
            // singular directions (the ones OSFT freezes) rather than the random start.
            let model = T5Model::random(gpu, T5Config::tiny(vocab), true, 0.02, seed)?;
            let bar = indicatif::ProgressBar::new(steps * tasks.len() as u64);
            bar.set_style(indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")?);
            bar.set_prefix(format!("{method:?} seed {seed}").to_lowercase());
            let results = run_stream(&model, &tokenizer, &tasks, &options(method, seed), |task, log| {
                bar.inc(1);
                bar.set_message(format!("task {task} loss {:.3}", log.loss));
            })?;
            bar.finish_and_clear();
            results.write(&out.join(&results.method))?;
            println!("{}", results.markdown());
            rows.push((seed, results.method.clone(), results.aa, results.bwt));
        }
    }
    if rows.len() > 1 {
        println!("| seed | method | AA | BWT |\n|---|---|---|---|");
        for (seed, method, aa, bwt) in &rows {
            println!("| {seed} | {method} | {:.1} | {:+.1} |", 100.0 * aa, 100.0 * bwt);
        }
    }
    if args.seed.len() > 1 {
        println!("\n| method | AA (mean ± sd) | BWT (mean ± sd) |\n|---|---|---|");
        for &method in &methods {
            let name = format!("{method:?}").to_lowercase();
            let of = |pick: fn(&(u64, String, f64, f64)) -> f64| -> Vec<f64> {
                rows.iter().filter(|r| r.1 == name).map(|r| 100.0 * pick(r)).collect()
            };
            let ((aa, aa_sd), (bwt, bwt_sd)) = (mean_sd(&of(|r| r.2)), mean_sd(&of(|r| r.3)));
            println!("| {name} | {aa:.1} ± {aa_sd:.1} | {bwt:+.1} ± {bwt_sd:.1} |");
        }
    }
    println!("results in {}", args.out.display());
    Ok(())
}

/// Mean and sample standard deviation (0 for a single value).
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}
