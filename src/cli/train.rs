//! `sculpt train`: continual fine-tuning of a T5 or Llama model folder on JSONL data, or, with
//! no data arguments, the built-in default — a small T5 (or Llama) made on the spot, the synthetic task
//! stream, both OSFT and sequential fine-tuning from the same start, and the two accuracy
//! matrices side by side. Every run folder holds `run.json` (the arguments), `log.jsonl`,
//! checkpoints and the results; `--resume DIR` continues a stopped run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::continual::checkpoint;
use crate::continual::driver::{run_stream, task_options, ExactMatch, Method, StreamOptions};
use crate::continual::recipe::{Recipe, RecipeValues};
use crate::continual::report::{retention_png, runs_markdown, Results};
use crate::continual::retention::{read_base_answers, write_base_answers, RetentionSet};
use crate::continual::run_dir::{self, RUN_FILE};
use crate::data::{cl_benchmark, read_jsonl, read_prompts, synthetic, Stream, Task, TaskSettings};
use crate::io::write_atomic;
use crate::model::{load_model, DecoderConfig, DecoderModel, Model, T5Config, T5Model, Tokenizer};
use crate::optim::{AdamWConfig, Schedule};
use crate::subspace::{Mode, RankPolicy};
use crate::train::TrainOptions;

#[derive(clap::Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Args {
    /// A Hugging Face T5 or Llama folder (config.json, model.safetensors, tokenizer.json) to
    /// fine-tune on --train, --stream or --preset (`sculpt import` makes one from a GGUF file).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data of one task: JSONL lines {"input": ..., "target": ...} or chat
    /// conversations {"messages": [...]}, rendered with the model's chat template (needs --model).
    #[arg(long, requires = "model", conflicts_with_all = ["stream", "preset"])]
    train: Option<PathBuf>,
    /// A stream file: the tasks in order, each with its data, instruction template, labels
    /// and settings (needs --model).
    #[arg(long, requires = "model", conflicts_with = "preset")]
    stream: Option<PathBuf>,
    /// A CL_Benchmark task order from the literature (order1-3: the standard 4-task
    /// benchmark, order4-6: the long 15-task one) or "trace" (TRACE's 8 tasks) over the data in --data (needs --model).
    #[arg(long, requires_all = ["model", "data"])]
    preset: Option<String>,
    /// The benchmark folder of --preset (O-LoRA's CL_Benchmark, or TRACE's with DATASET/{train,test}.json).
    #[arg(long, requires = "preset")]
    data: Option<PathBuf>,
    /// At most this many training / evaluation examples per --preset task.
    #[arg(long, requires = "preset")]
    max_train: Option<usize>,
    #[arg(long, requires = "preset")]
    max_eval: Option<usize>,
    /// Evaluation data of --train in the same form (default: exact match on up to 64
    /// training examples).
    #[arg(long, requires = "train")]
    eval: Option<PathBuf>,
    /// Continue the stopped run in this folder, with the arguments it was started with.
    #[arg(long)]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// Delete an earlier run in --out and start again.
    #[arg(long)]
    #[serde(skip)]
    overwrite: bool,
    /// Method to run: osft, seqft or both (default: both on the built-in stream, osft on user data).
    #[arg(long, value_enum)]
    method: Option<MethodChoice>,
    /// The run folder (default: runs/default for the built-in job, runs/default-llama with
    /// --arch llama, runs/train otherwise).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training recipe: optimiser, rate, schedule, batch, epochs, length limits and rank policy
    /// (default: builtin for the built-in job; paper-t5 or paper-llama, by the model's family,
    /// for --model). Every flag below overrides its part.
    #[arg(long, value_enum)]
    #[serde(default)]
    recipe: Option<Recipe>,
    /// How many singular directions of each target are frozen: official (the official code's
    /// per-matrix input/output cosine importance on samples of the previous task, divided by
    /// its mean; k = round(d·mrr + I·d·(trr − mrr)) in [1, d]), official-schedule (the released
    /// T5 scripts: the n-th decomposition freezes ⌊n·step·max(m, n)⌋), fixed (--rank-ratio),
    /// block-minmax (sculpt's earlier variant: per-block importance min-max normalised across
    /// blocks; a target outside every block, such as lm_head, counts as most important)
    /// (default: the recipe's).
    #[arg(long, value_enum)]
    #[serde(default)]
    rank_policy: Option<PolicyName>,
    /// Fraction of min(m, n) frozen in every target matrix (implies --rank-policy fixed).
    #[arg(long, conflicts_with = "unfreeze_rank_ratio")]
    rank_ratio: Option<f64>,
    /// The trained fraction instead (mini_trainer's spelling): rank ratio = 1 − this.
    #[arg(long)]
    unfreeze_rank_ratio: Option<f64>,
    /// Minimum and target rank ratios of official (default 0.5, 1) and block-minmax
    /// (default 0.1, 0.8).
    #[arg(long)]
    #[serde(default)]
    mrr: Option<f64>,
    #[arg(long)]
    #[serde(default)]
    trr: Option<f64>,
    /// Share of max(m, n) added per decomposition by official-schedule (default 0.07).
    #[arg(long)]
    #[serde(default)]
    schedule_step: Option<f64>,
    /// Examples of the previous task on which importance is measured (official and
    /// block-minmax; the official code uses 128).
    #[arg(long, default_value_t = 128)]
    #[serde(default = "default_importance_samples")]
    importance_samples: usize,
    /// General prompts (JSON Lines of {"messages": [.., {"role": "user", ..}]} or {"input": ..})
    /// whose greedy answers by the starting model are recorded; after every task the mean loss
    /// of those answers and the share still answered identically are measured and reported.
    #[arg(long)]
    #[serde(default)]
    retention: Option<PathBuf>,
    /// How task accuracy is measured: generated (greedy decoding per example, the text
    /// compared) or forced (the answer's tokens under teacher forcing, batched: the same verdict
    /// unless another tokenization of the answer would also match, and much faster).
    #[arg(long, value_enum, default_value = "generated")]
    #[serde(default = "default_exact_match")]
    exact_match: ExactMatch,
    /// A file of the starting model's retention answers: read when it exists (runs of other
    /// policies or methods from the same model then share them), written when it does not.
    #[arg(long, requires = "retention")]
    #[serde(default)]
    retention_base: Option<PathBuf>,
    /// Longest retention answer, in tokens.
    #[arg(long, default_value_t = 64)]
    #[serde(default = "default_retention_tokens")]
    retention_max_tokens: usize,
    /// strict: (I − UUᵀ) ΔW (I − VVᵀ); paper: ΔW − UUᵀ ΔW VVᵀ.
    #[arg(long, value_enum, default_value = "strict")]
    projection: ProjectionMode,
    /// Also constrain the cross-attention matrices (default: yes for the built-in T5, no
    /// otherwise; `--cross-attention=false` to turn off).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    cross_attention: Option<bool>,
    /// Model family of the built-in job's small model (a --model folder says its own).
    #[arg(long, value_enum, default_value = "t5", conflicts_with = "model")]
    #[serde(default)]
    arch: Arch,
    /// More target matrices (name globs, `*` for any run of characters), e.g. lm_head.weight
    /// (default: lm_head.weight for the built-in job, none otherwise; the flag with no value
    /// for none).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    #[serde(default)]
    extra_targets: Option<Vec<String>>,
    /// Leave the first task unconstrained (default: yes for the built-in job, whose model
    /// starts random, so there is nothing to keep yet; no otherwise).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    free_first_task: Option<bool>,
    /// Train only the target matrices: embeddings, norms and relative position bias (and
    /// cross-attention unless it is a target) get no update, with either method (default: yes
    /// for the built-in job, so that its two methods train the same matrices; no otherwise).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(default)]
    freeze_non_targets: Option<bool>,
    /// Seed of the data order, the built-in stream and the built-in model's weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Several seeds: the run is repeated once per seed (in OUT/seed-N) and ends with the
    /// mean ± sd of AA and BWT per method.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["seed", "resume"])]
    #[serde(skip)]
    seeds: Vec<u64>,
    /// Epochs per task (default: the recipe's; the trace preset: TRACE's own per-dataset
    /// epochs, 5,3,7,5,3,5,5,7, which this flag replaces). A stream file's per-task epochs win.
    #[arg(long)]
    epochs: Option<usize>,
    /// AdamW's learning rate (default: the recipe's).
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long)]
    weight_decay: Option<f32>,
    /// AdamW's second-moment decay.
    #[arg(long)]
    beta2: Option<f32>,
    /// Global gradient-norm clip (0: none).
    #[arg(long)]
    #[serde(default)]
    max_grad_norm: Option<f32>,
    /// Fraction of the steps of a task spent warming the learning rate up, then linear decay
    /// (the paper recipes: none, a constant rate).
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Examples per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches accumulated into one optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Longer sources and targets are cut (and counted).
    #[arg(long)]
    max_source_len: Option<usize>,
    #[arg(long)]
    max_target_len: Option<usize>,
    /// Evaluate the current task every N steps (0: at task ends only).
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Save a checkpoint every N steps (0: after every task only).
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    /// Standard deviation of the built-in model's random initial weights.
    #[arg(long, default_value_t = 0.002)]
    #[serde(default = "default_init_std")]
    init_std: f32,
    /// Training examples per synthetic task (built-in job).
    #[arg(long, default_value_t = 256)]
    train_examples: usize,
    /// Held-out examples per synthetic task (with 32, one example is 3 points of accuracy).
    #[arg(long, default_value_t = 128)]
    eval_examples: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
enum Arch {
    /// Encoder-decoder T5 (T5Config::tiny).
    #[default]
    T5,
    /// Decoder-only Llama with grouped-query attention (DecoderConfig::tiny).
    Llama,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
enum MethodChoice {
    Osft,
    Seqft,
    /// Both from the same start, with the same data order.
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
enum PolicyName {
    Official,
    OfficialSchedule,
    Fixed,
    BlockMinmax,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
enum ProjectionMode {
    Strict,
    Paper,
}

/// The scale of run.json files written before --init-std existed.
fn default_init_std() -> f32 {
    0.02
}

fn default_importance_samples() -> usize {
    128
}

fn default_exact_match() -> ExactMatch {
    ExactMatch::Generated
}

fn default_retention_tokens() -> usize {
    64
}

impl Args {
    fn is_builtin(&self) -> bool {
        self.model.is_none()
    }

    /// The recipe of a run on a model with these default targets.
    fn recipe(&self, encoder_decoder: bool) -> Recipe {
        match (self.recipe, self.is_builtin(), encoder_decoder) {
            (Some(recipe), _, _) => recipe,
            (None, true, _) => Recipe::Builtin,
            (None, false, true) => Recipe::PaperT5,
            (None, false, false) => Recipe::PaperLlama,
        }
    }

    /// The rank policy: the flags over the recipe's.
    fn policy(&self, recipe: &RecipeValues) -> Result<RankPolicy> {
        let name = match (self.rank_policy, self.rank_ratio.or(self.unfreeze_rank_ratio)) {
            (Some(name), _) => name,
            (None, Some(_)) => PolicyName::Fixed,
            (None, None) if self.mrr.is_some() || self.trr.is_some() || self.schedule_step.is_some() => {
                bail!(
                    "--mrr, --trr and --schedule-step need --rank-policy (official, block-minmax or official-schedule)"
                )
            }
            (None, None) => return Ok(recipe.policy),
        };
        let pick = |(mrr, trr): (f64, f64)| (self.mrr.unwrap_or(mrr), self.trr.unwrap_or(trr));
        let policy = match name {
            PolicyName::Fixed => match (self.rank_ratio, self.unfreeze_rank_ratio, recipe.policy) {
                (Some(ratio), _, _) => RankPolicy::Fixed { ratio },
                (None, Some(u), _) => RankPolicy::from_unfreeze_ratio(u)?,
                (None, None, RankPolicy::Fixed { ratio }) => RankPolicy::Fixed { ratio },
                (None, None, _) => bail!("--rank-policy fixed needs --rank-ratio R (or --unfreeze-rank-ratio U)"),
            },
            PolicyName::Official => {
                let (mrr, trr) = pick((0.5, 1.0));
                RankPolicy::Official { mrr, trr }
            }
            PolicyName::BlockMinmax => {
                let (mrr, trr) = pick((0.1, 0.8));
                RankPolicy::BlockMinmax { mrr, trr }
            }
            PolicyName::OfficialSchedule => RankPolicy::OfficialSchedule { step: self.schedule_step.unwrap_or(0.07) },
        };
        if name != PolicyName::Fixed && (self.rank_ratio.is_some() || self.unfreeze_rank_ratio.is_some()) {
            bail!("--rank-ratio and --unfreeze-rank-ratio belong to --rank-policy fixed");
        }
        Ok(policy)
    }

    /// The tasks of --preset; an explicit --epochs replaces a preset's own per-task epochs.
    fn preset_tasks(&self, preset: &str, data: &Path) -> Result<Vec<Task>> {
        let mut tasks = cl_benchmark::preset(preset, data, self.max_train, self.max_eval)?;
        if let Some(epochs) = self.epochs {
            tasks.iter_mut().for_each(|t| t.settings.epochs = Some(epochs));
        }
        Ok(tasks)
    }

    fn methods(&self) -> Vec<Method> {
        match (self.method, self.is_builtin()) {
            (Some(MethodChoice::Osft), _) | (None, false) => vec![Method::Osft],
            (Some(MethodChoice::Seqft), _) => vec![Method::Seqft],
            (Some(MethodChoice::Both), _) | (None, true) => vec![Method::Osft, Method::Seqft],
        }
    }

    fn out(&self) -> PathBuf {
        let default = match (self.is_builtin(), self.arch) {
            (true, Arch::T5) => "runs/default",
            (true, Arch::Llama) => "runs/default-llama",
            (false, _) => "runs/train",
        };
        self.out.clone().unwrap_or_else(|| default.into())
    }

    // The built-in job's recipe (see the flags): the model made on the spot has no pretrained
    // knowledge, so what OSFT keeps is what the earlier tasks taught, through the matrices
    // that learn it, the untied head included.
    fn free_first_task(&self) -> bool {
        self.free_first_task.unwrap_or(self.is_builtin())
    }

    fn freeze_non_targets(&self) -> bool {
        self.freeze_non_targets.unwrap_or(self.is_builtin())
    }

    fn cross_attention(&self) -> bool {
        self.cross_attention.unwrap_or(self.is_builtin() && self.arch == Arch::T5)
    }

    /// `lm_head`: the model's head, which the built-in job constrains too.
    fn extra_targets(&self, lm_head: &str) -> Vec<String> {
        match &self.extra_targets {
            Some(targets) => targets.iter().filter(|t| !t.is_empty()).cloned().collect(),
            None if self.is_builtin() => vec![lm_head.to_string()],
            None => Vec::new(),
        }
    }

    fn stream_options(&self, method: Method, examples: usize, model: &ModelTargets) -> Result<StreamOptions> {
        let recipe = self.recipe(model.encoder_decoder).values();
        let policy = self.policy(&recipe)?;
        policy.validate()?;
        let epochs = self.epochs.unwrap_or(recipe.epochs);
        let batch_size = self.batch_size.unwrap_or(recipe.batch_size);
        if epochs == 0 || batch_size == 0 || self.grad_accum == 0 {
            bail!("--epochs, --batch-size and --grad-accum must be positive");
        }
        let warmup_ratio = self.warmup_ratio.or(recipe.warmup_ratio);
        if let Some(w) = warmup_ratio.filter(|w| !(0.0..1.0).contains(w)) {
            bail!("--warmup-ratio must be in [0, 1), got {w}");
        }
        let mut train = TrainOptions {
            epochs,
            batch_size,
            grad_accum: self.grad_accum,
            max_source_len: self.max_source_len.unwrap_or(recipe.max_source_len),
            max_target_len: self.max_target_len.unwrap_or(recipe.max_target_len),
            adamw: AdamWConfig {
                lr: self.lr.unwrap_or(recipe.adamw.lr),
                weight_decay: self.weight_decay.unwrap_or(recipe.adamw.weight_decay),
                beta2: self.beta2.unwrap_or(recipe.adamw.beta2),
                max_grad_norm: self.max_grad_norm.unwrap_or(recipe.adamw.max_grad_norm),
                ..recipe.adamw
            },
        };
        if let Some(warmup_ratio) = warmup_ratio {
            let steps = (epochs * train.steps_per_epoch(examples)) as u64;
            train.adamw.schedule = Schedule::Linear { warmup: (steps as f64 * warmup_ratio) as u64, total: steps };
        }
        let retention = match &self.retention {
            Some(path) => Some(RetentionSet {
                prompts: read_prompts(path)?,
                max_new_tokens: self.retention_max_tokens,
                max_source_len: train.max_source_len,
                batch_size,
                base: None,
            }),
            None => None,
        };
        let mut targets = model.targets.clone();
        targets.extend(self.extra_targets(model.lm_head));
        Ok(StreamOptions {
            method,
            policy,
            mode: match self.projection {
                ProjectionMode::Strict => Mode::Strict,
                ProjectionMode::Paper => Mode::Paper,
            },
            targets,
            train,
            importance_samples: self.importance_samples,
            free_first_task: self.free_first_task(),
            freeze_non_targets: self.freeze_non_targets(),
            seed: self.seed,
            eval_every: self.eval_every,
            save_every: self.save_every,
            retention,
            exact_match: self.exact_match,
        })
    }

    /// The starting model, its tokenizer and the tasks. The built-in job writes its
    /// tokenizer into `out`.
    fn setup(&self, gpu: &crate::Gpu, out: &Path) -> Result<(Box<dyn Model>, Tokenizer, Vec<Task>)> {
        let Some(model_dir) = &self.model else {
            if self.train_examples == 0 || self.eval_examples == 0 {
                bail!("--train-examples and --eval-examples must be positive");
            }
            write_atomic(&out.join("tokenizer.json"), synthetic::tokenizer_json().as_bytes())?;
            let vocab = 3 + synthetic::vocabulary().len();
            let tokenizer = Tokenizer::load(out, vocab)?;
            // A small initial scale, so that what a task teaches dominates each matrix's top
            // singular directions (the ones OSFT freezes) rather than the random start.
            let model: Box<dyn Model> = match self.arch {
                Arch::T5 => Box::new(T5Model::random(gpu, T5Config::tiny(vocab), true, self.init_std, self.seed)?),
                Arch::Llama => {
                    Box::new(DecoderModel::random(gpu, DecoderConfig::tiny(vocab), self.init_std, self.seed)?)
                }
            };
            return Ok((model, tokenizer, synthetic::stream(self.seed, self.train_examples, self.eval_examples)));
        };
        let (model, tokenizer) = load_model(gpu, model_dir)?;
        if let Some(stream) = &self.stream {
            return Ok((model, tokenizer, Stream::load(stream)?));
        }
        if let (Some(preset), Some(data)) = (&self.preset, &self.data) {
            return Ok((model, tokenizer, self.preset_tasks(preset, data)?));
        }
        let Some(train) = &self.train else {
            bail!("--model needs data: --train FILE.jsonl, --stream STREAM.json or --preset NAME --data DIR");
        };
        let train_examples = read_jsonl(train)?;
        let eval = match &self.eval {
            Some(path) => read_jsonl(path)?,
            None => {
                log::warn!("no --eval file: exact match is measured on training examples");
                train_examples[..train_examples.len().min(64)].to_vec()
            }
        };
        let name = train.file_stem().map_or("task".into(), |s| s.to_string_lossy().to_string());
        let task = Task { name, train: train_examples, eval, labels: None, settings: TaskSettings::default() };
        Ok((model, tokenizer, vec![task]))
    }
}

/// Set by the first Ctrl-C: the run stops at the next step boundary with a checkpoint.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// What a run's options take from its model.
struct ModelTargets {
    /// The model's target patterns ([`Model::targets`]).
    targets: Vec<String>,
    encoder_decoder: bool,
    lm_head: &'static str,
}

impl ModelTargets {
    fn of(model: &dyn Model, cross_attention: bool) -> Result<ModelTargets> {
        Ok(ModelTargets {
            targets: model.targets(cross_attention)?,
            encoder_decoder: !model.cross_attention_targets().is_empty(),
            lm_head: model.lm_head_name(),
        })
    }
}

fn catch_ctrl_c() -> Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint (the previous one is intact)");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: saving a checkpoint at the end of this step (press again to quit at once)");
    })
    .context("cannot install the Ctrl-C handler")
}

/// One method's run in `dir`; None when Ctrl-C stopped it. `retention_base`: the starting
/// model's retention answers, when already known.
fn run_method(
    gpu: &crate::Gpu,
    args: &Args,
    method: Method,
    dir: &Path,
    retention_base: Option<&[Vec<u32>]>,
) -> Result<Option<Results>> {
    let (model, tokenizer, tasks) = args.setup(gpu, dir)?;
    let examples = tasks.iter().map(|t| t.train.len()).max().unwrap_or(0);
    let mut options = args.stream_options(method, examples, &ModelTargets::of(&*model, args.cross_attention())?)?;
    if let Some(set) = &mut options.retention {
        set.base = retention_base.map(<[_]>::to_vec);
    }
    let steps: usize = tasks
        .iter()
        .map(|t| {
            let task = task_options(&options.train, t);
            task.epochs * task.steps_per_epoch(t.train.len())
        })
        .sum();
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}",
    )?);
    bar.set_prefix(format!("{method:?}").to_lowercase());
    let start = std::time::Instant::now();
    let mut tokens = 0usize;
    let results = run_stream(&*model, &tokenizer, &tasks, &options, Some(dir), |task, log| {
        tokens += log.tokens;
        bar.inc(1);
        let rate = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("task {} loss {:.3} {rate:.0} tok/s", tasks[task].name, log.loss));
        !INTERRUPTED.load(Ordering::SeqCst)
    })
    .map_err(|e| match checkpoint::latest(dir) {
        Ok(Some((path, _))) => e.context(format!(
            "the run stopped; its newest checkpoint {} is intact: once the cause below is fixed, `sculpt train --resume {}` continues from it",
            path.display(),
            dir.display()
        )),
        _ => e,
    })?;
    bar.finish_and_clear();
    match &results {
        Some(results) => results.write(dir)?,
        None => println!("stopped with a checkpoint; continue with: sculpt train --resume {}", dir.display()),
    }
    Ok(results)
}

/// The retention answers of the starting model of a --model run, from --retention-base when
/// that file exists (and written there when it does not).
fn starting_retention_answers(gpu: &crate::Gpu, args: &Args) -> Result<Vec<Vec<u32>>> {
    let (prompts, max_new_tokens) = (args.retention.as_ref().context("--retention")?, args.retention_max_tokens);
    if let Some(path) = args.retention_base.as_ref().filter(|p| p.exists()) {
        return read_base_answers(path, prompts, read_prompts(prompts)?.len(), max_new_tokens);
    }
    let (model, tokenizer, _) = args.setup(gpu, &args.out())?;
    let options = args.stream_options(Method::Osft, 0, &ModelTargets::of(&*model, false)?)?;
    let set = options.retention.context("a retention set")?;
    let answers = set.answers(&*model, &set.sources(&tokenizer)?)?;
    if let Some(path) = &args.retention_base {
        let model = args.model.as_deref().context("--model")?;
        write_base_answers(path, model, prompts, max_new_tokens, &answers)?;
    }
    Ok(answers)
}

pub fn run(gpu: &crate::Gpu, args: &Args) -> Result<()> {
    catch_ctrl_c()?;
    if let Some(dir) = &args.resume {
        return resume(gpu, dir);
    }
    let out = args.out();
    let methods = args.methods();
    let seeds = if args.seeds.is_empty() { vec![args.seed] } else { args.seeds.clone() };
    // Every run of a --model folder starts from the same weights: its retention answers are
    // generated once for all of them.
    let retention_base = match (&args.model, &args.retention) {
        (Some(_), Some(_)) if seeds.len() * methods.len() > 1 || args.retention_base.is_some() => {
            Some(starting_retention_answers(gpu, args)?)
        }
        _ => None,
    };
    let mut all: Vec<(u64, Results)> = Vec::new();
    for &seed in &seeds {
        for &method in &methods {
            // One folder per seed (when several) and per method (when several).
            let mut dir = if seeds.len() > 1 { out.join(format!("seed-{seed}")) } else { out.clone() };
            if methods.len() > 1 {
                dir = dir.join(format!("{method:?}").to_lowercase());
            }
            let mut own = args.clone();
            let choice = match method {
                Method::Osft => MethodChoice::Osft,
                Method::Seqft => MethodChoice::Seqft,
            };
            (own.method, own.seed, own.seeds, own.out) = (Some(choice), seed, Vec::new(), Some(dir.clone()));
            run_dir::claim(&dir, &own, args.overwrite)?;
            let Some(results) = run_method(gpu, &own, method, &dir, retention_base.as_deref())? else { return Ok(()) };
            println!("{}", results.markdown());
            all.push((seed, results));
        }
        // Both methods of a seed on one retention figure.
        let of_seed: Vec<Results> = all.iter().filter(|(s, _)| *s == seed).map(|(_, r)| r.clone()).collect();
        if let Some(png) = retention_png(&of_seed)?.filter(|_| of_seed.len() > 1) {
            let dir = if seeds.len() > 1 { out.join(format!("seed-{seed}")) } else { out.clone() };
            write_atomic(&dir.join("retention.png"), &png)?;
        }
    }
    if all.len() > 1 {
        let summary = runs_markdown(&all);
        println!("{summary}");
        write_atomic(&out.join("summary.md"), summary.as_bytes())?;
    }
    println!("results in {}", out.display());
    Ok(())
}

/// Continues the run in `dir` (or, for the built-in job's folder, each method's run in it).
fn resume(gpu: &crate::Gpu, dir: &Path) -> Result<()> {
    let runs: Vec<PathBuf> = if dir.join(RUN_FILE).exists() {
        vec![dir.to_path_buf()]
    } else {
        ["osft", "seqft"].iter().map(|m| dir.join(m)).filter(|d| d.join(RUN_FILE).exists()).collect()
    };
    if runs.is_empty() {
        bail!("{} holds no {RUN_FILE}: not a sculpt run folder (give the --out of the run to continue)", dir.display());
    }
    for run_dir in runs {
        let args: Args = run_dir::read(&run_dir)?;
        // A run folder's run.json names its one method.
        let method = args.methods()[0];
        let Some(results) = run_method(gpu, &args, method, &run_dir, None)? else { return Ok(()) };
        println!("{}", results.markdown());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::t5::TARGETS as T5_TARGETS;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &str) -> Args {
        Cli::try_parse_from(std::iter::once("train").chain(line.split_whitespace())).unwrap().args
    }

    fn recipe(args: &Args) -> (bool, bool, bool, Vec<String>) {
        (args.free_first_task(), args.freeze_non_targets(), args.cross_attention(), args.extra_targets(LM_HEAD))
    }

    const LM_HEAD: &str = "lm_head.weight";

    fn model(targets: &[&str], encoder_decoder: bool) -> ModelTargets {
        ModelTargets { targets: targets.iter().map(|t| t.to_string()).collect(), encoder_decoder, lm_head: LM_HEAD }
    }

    fn policy(line: &str) -> RankPolicy {
        let args = parse(line);
        args.stream_options(Method::Osft, 16, &model(T5_TARGETS, true)).unwrap().policy
    }

    #[test]
    fn builtin_job_freezes_nine_tenths_and_model_runs_take_the_official_rule() {
        assert_eq!(policy(""), RankPolicy::Fixed { ratio: 0.9 });
        assert_eq!(policy("--arch llama"), RankPolicy::Fixed { ratio: 0.9 });
        assert_eq!(policy("--rank-policy block-minmax"), RankPolicy::BLOCK_MINMAX);
        assert_eq!(policy("--rank-policy official --mrr 0.3"), RankPolicy::Official { mrr: 0.3, trr: 1.0 });
        assert_eq!(policy("--rank-policy official-schedule"), RankPolicy::OFFICIAL_SCHEDULE);
        assert_eq!(policy("--rank-ratio 0.5"), RankPolicy::Fixed { ratio: 0.5 });
        assert_eq!(policy("--model m --train t.jsonl"), RankPolicy::OFFICIAL);
        assert_eq!(policy("--model m --train t.jsonl --recipe builtin"), RankPolicy::Fixed { ratio: 0.9 });
        let refused = |line: &str| {
            let args = parse(line);
            args.stream_options(Method::Osft, 16, &model(&[], false)).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(refused("--rank-policy official --rank-ratio 0.5").contains("belong to --rank-policy fixed"));
        assert!(refused("--mrr 0.2").contains("need --rank-policy"));
        assert!(refused("--model m --train t.jsonl --rank-policy fixed").contains("needs --rank-ratio"));
        assert!(refused("--rank-policy official --mrr 0.9 --trr 0.5").contains("0 <= mrr <= trr <= 1"));
    }

    #[test]
    fn model_runs_default_to_the_papers_recipe_of_their_family() {
        let llama = ["model.layers.*.self_attn.q_proj.weight"];
        let t5 = T5_TARGETS;
        let train = |line: &str, targets: &[&str]| {
            let encoder_decoder = targets.iter().any(|t| T5_TARGETS.contains(t));
            parse(line).stream_options(Method::Osft, 16, &model(targets, encoder_decoder)).unwrap().train
        };
        let paper = train("--model m --train t.jsonl", &llama);
        assert_eq!((paper.adamw.lr, paper.adamw.weight_decay, paper.adamw.schedule), (1e-5, 0.01, Schedule::Constant));
        assert_eq!((paper.batch_size, paper.epochs, paper.max_source_len, paper.max_target_len), (8, 1, 256, 16));
        assert_eq!(train("--model m --train t.jsonl", t5).max_source_len, 512);
        let builtin = train("", t5);
        assert_eq!((builtin.adamw.lr, builtin.batch_size, builtin.epochs), (3e-3, 16, 8));
        assert_eq!(builtin.adamw.schedule, Schedule::Linear { warmup: 0, total: 8 });
        let own = train("--model m --train t.jsonl --lr 2e-5 --warmup-ratio 0.5 --batch-size 4 --epochs 2", &llama);
        assert_eq!((own.adamw.lr, own.adamw.schedule), (2e-5, Schedule::Linear { warmup: 4, total: 8 }));
    }

    #[test]
    fn builtin_job_has_its_recipe_and_user_models_the_methods_defaults() {
        let head = vec![LM_HEAD.to_string()];
        assert_eq!(recipe(&parse("")), (true, true, true, head.clone()));
        assert_eq!(recipe(&parse("--arch llama")), (true, true, false, head));
        assert_eq!(recipe(&parse("--model m --train t.jsonl")), (false, false, false, vec![]));
        assert_eq!(
            recipe(&parse("--model m --train t.jsonl --free-first-task --cross-attention --extra-targets a,b")),
            (true, false, true, vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            recipe(&parse(
                "--free-first-task=false --freeze-non-targets=false --cross-attention=false --extra-targets"
            )),
            (false, false, false, vec![])
        );
    }

    #[test]
    fn trace_keeps_its_epochs_unless_epochs_is_given() {
        let dir = crate::data::stream::tests::scratch("trace-epochs");
        crate::data::trace::tests::fake_trace(&dir);
        let epochs = |line: &str| -> Vec<usize> {
            let args = parse(line);
            let options = args.stream_options(Method::Osft, 2, &model(&[], false)).unwrap();
            let tasks = args.preset_tasks("trace", &dir).unwrap();
            tasks.iter().map(|t| task_options(&options.train, t).epochs).collect()
        };
        let line = format!("--model m --preset trace --data {}", dir.display());
        assert_eq!(epochs(&line), [5, 3, 7, 5, 3, 5, 5, 7]);
        assert_eq!(epochs(&format!("{line} --epochs 2")), [2; 8]);
    }

    #[test]
    fn recipe_survives_run_json() {
        let args = parse("--arch llama --freeze-non-targets=false");
        let back: Args = serde_json::from_str(&serde_json::to_string(&args).unwrap()).unwrap();
        assert_eq!(recipe(&back), recipe(&args));
        assert_eq!(back, args);
    }
}
