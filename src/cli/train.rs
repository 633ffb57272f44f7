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
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Training and evaluation examples per synthetic task.
    #[arg(long, default_value_t = 96)]
    train_examples: usize,
    #[arg(long, default_value_t = 24)]
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
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("tokenizer.json"), synthetic::tokenizer_json())?;
    let vocab = 3 + synthetic::vocabulary().len();
    let tokenizer = Tokenizer::load(&args.out, vocab)?;
    let tasks = synthetic::stream(args.seed, args.train_examples, args.eval_examples);
    let batch_size = 16;
    let steps = (args.epochs * args.train_examples.div_ceil(batch_size)) as u64;
    let options = |method| StreamOptions {
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
                weight_decay: 0.0,
                schedule: Schedule::Linear { warmup: steps / 10, total: steps },
                ..Default::default()
            },
        },
        importance_samples: 32,
        free_first_task: args.free_first_task,
        seed: args.seed,
    };
    let methods = match args.method {
        Some(m) => vec![m],
        None => vec![Method::Osft, Method::Seqft],
    };
    let mut all = Vec::new();
    for method in methods {
        let model = T5Model::random(gpu, T5Config::tiny(vocab), true, 0.1, args.seed)?;
        let bar = indicatif::ProgressBar::new(steps * tasks.len() as u64);
        bar.set_style(indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")?);
        bar.set_prefix(format!("{method:?}").to_lowercase());
        let results = run_stream(&model, &tokenizer, &tasks, &options(method), |task, log| {
            bar.inc(1);
            bar.set_message(format!("task {task} loss {:.3}", log.loss));
        })?;
        bar.finish_and_clear();
        results.write(&args.out.join(&results.method))?;
        println!("{}", results.markdown());
        all.push(results);
    }
    if all.len() == 2 {
        println!("| method | AA | BWT |\n|---|---|---|");
        for r in &all {
            println!("| {} | {:.1} | {:+.1} |", r.method, 100.0 * r.aa, 100.0 * r.bwt);
        }
    }
    println!("results in {}", args.out.display());
    Ok(())
}
