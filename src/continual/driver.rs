//! The task loop: before each task the frozen subspaces are refreshed (OSFT) from the
//! current weights, the task is trained, and every task of the stream is evaluated.
//! With an output folder, the run writes a JSONL log and checkpoints (after every task
//! and every `save_every` steps), and a run started again on the same folder continues
//! from its newest checkpoint to the same end as a run that never stopped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, TrainingState};
use super::memory::{self, MemoryPlan};
use super::report::Results;
use super::retention::RetentionSet;
use super::run_dir;
use crate::data::Task;
use crate::model::weights::Weights;
use crate::model::{Gradients, Model, Pair, Tokenizer};
use crate::optim::{AdamW, Schedule, UpdateFilter};
use crate::rng::Rng;
use crate::subspace::importance::{block_importance, matrix_importance};
use crate::subspace::rank::{normalise_by_mean, normalise_min_max, ImportanceKind};
use crate::subspace::state::SUBSPACE_FILE;
use crate::subspace::targets::is_target;
use crate::subspace::{Mode, RankPolicy, SubspaceSet};
use crate::tensor::Tensor;
use crate::train::{
    encode, eval_loss, exact_match, forced_exact_match, train, Encoded, Position, StepLog, TrainOptions,
    EXTRA_ANSWER_TOKENS,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Constrained full fine-tuning (adaptive SVD).
    Osft,
    /// Plain sequential full fine-tuning.
    Seqft,
}

/// Every setting of a run (recorded whole in run.json under "settings").
#[derive(Clone, Debug, Serialize)]
pub struct StreamOptions {
    pub method: Method,
    pub policy: RankPolicy,
    pub mode: Mode,
    pub targets: Vec<String>,
    pub train: TrainOptions,
    /// Examples of the previous task used to measure layer importance.
    pub importance_samples: usize,
    /// Leave the first task unconstrained.
    pub free_first_task: bool,
    /// Parameters that `targets` does not match (embeddings, norms, relative position
    /// bias, ...) get no update in any task, with either method.
    pub freeze_non_targets: bool,
    pub seed: u64,
    /// Evaluate the current task (loss, exact match) every this many steps; 0: at task ends only.
    pub eval_every: u64,
    /// Write a mid-task checkpoint every this many steps; 0: at task ends only.
    pub save_every: u64,
    /// General prompts whose base-model answers are scored after every task.
    pub retention: Option<RetentionSet>,
    /// How every task's accuracy is measured after each task.
    pub exact_match: ExactMatch,
}

/// How a task's accuracy is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExactMatch {
    /// Greedy decoding per example, the answer's text compared.
    Generated,
    /// The answer's tokens under teacher forcing, batched (see [`forced_exact_match`]).
    Forced,
}

/// A task's examples, encoded once for the whole run with its length limits.
struct EncodedTask {
    train: Encoded,
    eval: Encoded,
}

fn encode_tasks(tokenizer: &Tokenizer, tasks: &[Task], options: &StreamOptions) -> Result<Vec<EncodedTask>> {
    tasks
        .iter()
        .map(|task| {
            let t = task_options(&options.train, task);
            Ok(EncodedTask {
                train: encode(tokenizer, &task.train, t.max_source_len, t.max_target_len)?,
                eval: encode(tokenizer, &task.eval, t.max_source_len, t.max_target_len)?,
            })
        })
        .collect()
}

fn evaluate_all(
    model: &dyn Model,
    tokenizer: &Tokenizer,
    tasks: &[Task],
    encoded: &[EncodedTask],
    options: &StreamOptions,
) -> Result<Vec<f64>> {
    tasks
        .iter()
        .zip(encoded)
        .map(|(task, encoded)| match options.exact_match {
            ExactMatch::Generated => exact_match(model, tokenizer, &task.eval, &encoded.eval),
            ExactMatch::Forced => forced_exact_match(model, &encoded.eval.pairs, options.train.batch_size),
        })
        .collect()
}

/// The memory plan of the stream's largest training batch; refuses, before any GPU work, a
/// stream one of whose passes would need a buffer larger than the adapter allows (every
/// task's training batches and the layer-importance pass over them, evaluation loss and
/// greedy answers), with the plan.
fn plan_memory(
    model: &dyn Model,
    tasks: &[Task],
    encoded: &[EncodedTask],
    retention_sources: Option<&[Vec<u32>]>,
    options: &StreamOptions,
) -> Result<MemoryPlan> {
    let longest = |pairs: &[Pair]| {
        pairs.iter().fold((0, 0), |(s, t), (source, target)| (s.max(source.len()), t.max(target.len())))
    };
    let mut checks = Vec::new();
    // The largest training batch of the stream: (batch size, source length, target length).
    let mut largest = (0, 0, 0);
    for (task, encoded) in tasks.iter().zip(encoded) {
        let t = task_options(&options.train, task);
        let (train, eval) = (longest(&encoded.train.pairs), longest(&encoded.eval.pairs));
        // Layer importance runs on the training batches' shapes, so training covers it.
        let passes = [
            ("training and evaluation", t.batch_size, train.0.max(eval.0), train.1.max(eval.1)),
            // One example at a time; a greedy answer may run EXTRA_ANSWER_TOKENS past its reference.
            ("generating answers", 1, eval.0, eval.1 + EXTRA_ANSWER_TOKENS),
        ];
        let (_, batch, source, target) = passes[0];
        largest = (largest.0.max(batch), largest.1.max(source), largest.2.max(target));
        checks
            .extend(passes.into_iter().map(|(pass, batch, source, target)| (&task.name, pass, batch, source, target)));
    }
    let retention_task = "retention".to_string();
    if let (Some(set), Some(sources)) = (&options.retention, retention_sources) {
        let source = sources.iter().map(Vec::len).max().unwrap_or(0);
        checks.push((&retention_task, "retention answers", 1, source, set.max_new_tokens));
        checks.push((&retention_task, "retention loss", set.batch_size, source, set.max_new_tokens));
    }
    let (batch, source, target) = largest;
    let subspaces =
        (options.method == Method::Osft).then_some((options.targets.as_slice(), options.policy, options.mode));
    let plan = MemoryPlan::new(model, batch, source, target, subspaces);
    log::info!("memory plan: {}", plan.describe());
    for (task, pass, batch, source, target) in checks {
        if batch > 0 {
            model.check_batch_buffers(batch, source, target).with_context(|| {
                format!("task {task:?}, {pass} (memory plan of the run: {}; lower --batch-size, --max-source-len or --max-target-len)", plan.describe())
            })?;
        }
    }
    Ok(plan)
}

/// The frozen subspaces for task `i` (None: the task trains unconstrained).
fn subspaces_for(
    model: &dyn Model,
    tasks: &[Task],
    encoded: &[EncodedTask],
    i: usize,
    options: &StreamOptions,
) -> Result<Option<SubspaceSet>> {
    if options.method != Method::Osft || (i == 0 && options.free_first_task) {
        return Ok(None);
    }
    // Importance is read on samples of the previous task (the first task: its own), with that
    // task's batch size and length limits.
    let previous = i.saturating_sub(1);
    let t = task_options(&options.train, &tasks[previous]);
    let pairs = &encoded[previous].train.pairs;
    let samples = &pairs[..options.importance_samples.min(pairs.len())];
    let kind = options.policy.importance();
    let importance: BTreeMap<String, f64> = match kind {
        ImportanceKind::None => BTreeMap::new(),
        ImportanceKind::PerMatrix => {
            normalise_by_mean(&matrix_importance(model, samples, t.batch_size, &options.targets)?)
        }
        ImportanceKind::PerBlock => {
            let (prefixes, raw): (Vec<String>, Vec<f64>) =
                block_importance(model, samples, t.batch_size)?.into_iter().unzip();
            prefixes.into_iter().zip(normalise_min_max(&raw)).collect()
        }
    };
    let of = |name: &str| match kind {
        ImportanceKind::None => 0.0,
        // Every target has its own.
        ImportanceKind::PerMatrix => importance.get(name).copied().unwrap_or(1.0),
        // A target outside every block (an LM head) is treated as the most important.
        ImportanceKind::PerBlock => {
            importance.iter().find(|(p, _)| name.starts_with(p.as_str())).map_or(1.0, |(_, v)| *v)
        }
    };
    // The n-th decomposition of the run (a free first task has none).
    let decomposition = i + 1 - usize::from(options.free_first_task);
    Ok(Some(SubspaceSet::build(model.params(), &options.targets, options.policy, options.mode, of, decomposition)?))
}

/// A task's update filter: the frozen subspaces (OSFT), and no update at all for the
/// parameters that are not targets when the run freezes them.
struct TaskFilter<'a> {
    subspaces: Option<&'a SubspaceSet>,
    frozen_unless: Option<&'a [String]>,
}

impl UpdateFilter for TaskFilter<'_> {
    fn filters(&self, name: &str) -> bool {
        self.subspaces.is_some_and(|s| s.filters(name))
    }
    fn filter(&self, name: &str, update: &Tensor) -> Result<()> {
        match self.subspaces {
            Some(s) => s.filter(name, update),
            None => Ok(()),
        }
    }
    fn freezes(&self, name: &str) -> bool {
        self.frozen_unless.is_some_and(|targets| !is_target(targets, name))
    }
}

/// One JSON object per line: every step, every evaluation, every task end.
struct Log {
    file: Option<std::fs::File>,
}

impl Log {
    /// Opens `DIR/log.jsonl`, keeping only the records up to `global_step` (a resumed run
    /// rewrites what came after its checkpoint).
    fn open(dir: Option<&Path>, global_step: u64) -> Result<Log> {
        let Some(dir) = dir else { return Ok(Log { file: None }) };
        let path = dir.join("log.jsonl");
        let kept: String = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["global_step"].as_u64())
                    .is_some_and(|s| s <= global_step)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        crate::io::write_atomic(&path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open the log {}", path.display()))?;
        Ok(Log { file: Some(file) })
    }

    fn write(&mut self, record: serde_json::Value) -> Result<()> {
        if let Some(f) = &mut self.file {
            writeln!(f, "{record}").context("cannot write to log.jsonl")?;
        }
        Ok(())
    }
}

/// Puts the weights of `checkpoint` into `model`.
fn restore_weights(model: &dyn Model, checkpoint: &Path) -> Result<()> {
    let weights = Weights::load(checkpoint)?;
    for (name, param) in model.params() {
        param.write(&weights.get(name, param.shape())?.data)?;
    }
    Ok(())
}

/// The run's training options with a task's overrides. A linear schedule runs over the
/// task's own steps, keeping its warmup fraction, since tasks differ in size and epochs.
pub fn task_options(run: &TrainOptions, task: &Task) -> TrainOptions {
    let mut options = run.clone();
    let s = &task.settings;
    options.epochs = s.epochs.unwrap_or(options.epochs);
    options.batch_size = s.batch_size.unwrap_or(options.batch_size);
    options.adamw.lr = s.lr.unwrap_or(options.adamw.lr);
    if let Schedule::Linear { warmup, total } = run.adamw.schedule {
        let steps = (options.epochs * options.steps_per_epoch(task.train.len())) as u64;
        let warmup = (warmup as f64 / total.max(1) as f64 * steps as f64).round() as u64;
        options.adamw.schedule = Schedule::Linear { warmup, total: steps };
    }
    options
}

/// Trains the tasks in order on `model` and returns the accuracy matrix and its metrics.
/// With `out`, writes `out/log.jsonl` and checkpoints under `out/checkpoints`, and, when
/// `out` already holds checkpoints, continues from the newest one. `on_step(task, step)`
/// returns false to stop the run: a checkpoint is written (with `out`) and the result is None.
pub fn run_stream(
    model: &dyn Model,
    tokenizer: &Tokenizer,
    tasks: &[Task],
    options: &StreamOptions,
    out: Option<&Path>,
    mut on_step: impl FnMut(usize, &StepLog) -> bool,
) -> Result<Option<Results>> {
    let resume = match out {
        Some(dir) => {
            crate::io::remove_partials(&dir.join(checkpoint::CHECKPOINTS))?;
            checkpoint::latest(dir)?
        }
        None => None,
    };
    let encoded = encode_tasks(tokenizer, tasks, options)?;
    let retention_sources = options.retention.as_ref().map(|set| set.sources(tokenizer)).transpose()?;
    let plan = plan_memory(model, tasks, &encoded, retention_sources.as_deref(), options)?;
    // run.json is the CLI's; a library caller's folder may lack it.
    let run_file = out.filter(|dir| dir.join("run.json").exists());
    if let Some(dir) = run_file {
        run_dir::record(dir, "settings", serde_json::to_value(options)?)?;
        memory::record(dir, &plan, None)?;
    }
    let mut training_peak = 0;
    let mut state = match &resume {
        Some((path, state)) => {
            log::info!("resuming from {} (task {}, step {})", path.display(), state.task, state.step);
            restore_weights(model, path)?;
            state.clone()
        }
        None => TrainingState {
            task: 0,
            task_done: false,
            step: 0,
            global_step: 0,
            position: Position { epoch: 0, batch: 0, rng: Rng::new(0) },
            run_rng: Rng::new(options.seed),
            before: Some(evaluate_all(model, tokenizer, tasks, &encoded, options)?),
            accuracy: Vec::new(),
            retention_base: None,
            retention: Vec::new(),
        },
    };
    let mut log = Log::open(out, state.global_step)?;
    if let (Some(set), Some(sources), None) = (&options.retention, &retention_sources, &state.retention_base) {
        let base = match &set.base {
            Some(base) => base.clone(),
            None => set.answers(model, sources)?,
        };
        let point = set.measure(model, sources, &base, "base")?;
        log.write(serde_json::json!({"global_step": state.global_step, "retention": point}))?;
        state.retention.push(point);
        state.retention_base = Some(base);
    }
    let grads = Gradients::zeros_like(model)?;
    let first = if state.task_done { state.task + 1 } else { state.task };
    // A checkpoint holds the frozen subspaces of the task that follows it (mid-task: of its
    // own task), so that a resumed run constrains exactly as an uninterrupted one.
    let mut saved_subspaces = match &resume {
        Some((path, _)) if path.join(SUBSPACE_FILE).exists() => {
            Some(SubspaceSet::load(model.gpu(), &path.join(SUBSPACE_FILE))?)
        }
        _ => None,
    };
    for (i, task) in tasks.iter().enumerate().skip(first) {
        let subspaces = match saved_subspaces.take() {
            Some(set) => Some(set),
            None => subspaces_for(model, tasks, &encoded, i, options)?,
        };
        // The decompositions', evaluation's and retention's buffers have sizes that training
        // does not ask for; released here, and again after training, the pool holds one
        // phase's buffers instead of every size the run has seen.
        model.gpu().release_free_buffers();
        let filter = TaskFilter {
            subspaces: subspaces.as_ref(),
            frozen_unless: options.freeze_non_targets.then_some(options.targets.as_slice()),
        };
        // Serialised once per task (a read-back), and only when checkpoints are written.
        let subspace_file = if out.is_some() { subspace_files(subspaces.as_ref())? } else { Vec::new() };
        let train_options = task_options(&options.train, task);
        let train_set = &encoded[i].train;
        let mut optimizer = AdamW::new(train_options.adamw, model.params())?;
        let mid_task = resume.as_ref().filter(|(_, s)| s.task == i && !s.task_done);
        match mid_task {
            Some((path, s)) => checkpoint::load_optimizer(path, &mut optimizer, s.step)?,
            None => {
                report_truncation(&mut log, &state, task, train_set, options)?;
                state.position = Position { epoch: 0, batch: 0, rng: Rng::new(state.run_rng.next_u64()) };
                state.task = i;
                state.task_done = false;
                state.step = 0;
            }
        }
        let mut position = state.position.clone();
        let mut stopped = false;
        model.gpu().reset_peak();
        train(
            model,
            &train_set.pairs,
            &train_options,
            &mut optimizer,
            &grads,
            &filter,
            &mut position,
            |step, position, opt| {
                state.global_step += 1;
                state.step = step.step;
                state.position = position.clone();
                stopped = !on_step(i, step);
                log.write(serde_json::json!({
                    "global_step": state.global_step, "task": task.name, "step": step.step, "epoch": step.epoch,
                    "loss": step.loss, "lr": step.lr, "grad_norm": step.grad_norm, "tokens": step.tokens,
                }))?;
                if options.eval_every > 0 && step.step % options.eval_every == 0 {
                    let record = evaluate_task(model, tokenizer, task, &encoded[i].eval, options)?;
                    log.write(
                        serde_json::json!({"global_step": state.global_step, "task": task.name, "eval": record}),
                    )?;
                }
                let due = options.save_every > 0 && step.step % options.save_every == 0;
                if let Some(dir) = out.filter(|_| due || stopped) {
                    let name = format!("task-{i:02}-step-{:06}", step.step);
                    let saved = checkpoint::save(dir, &name, model, tokenizer, &state, Some(opt), &subspace_file)?;
                    checkpoint::prune_mid_task(dir, &saved)?;
                }
                Ok(!stopped)
            },
        )?;
        training_peak = training_peak.max(model.gpu().pool_stats().peak_bytes_in_use);
        model.gpu().release_free_buffers();
        if let Some(dir) = run_file {
            memory::record(dir, &plan, Some(training_peak))?;
        }
        if stopped {
            return Ok(None);
        }
        let row = evaluate_all(model, tokenizer, tasks, &encoded, options)?;
        log.write(serde_json::json!({"global_step": state.global_step, "task": task.name, "accuracy": row}))?;
        state.accuracy.push(row);
        if let (Some(set), Some(sources), Some(base)) = (&options.retention, &retention_sources, &state.retention_base)
        {
            let point = set.measure(model, sources, base, &task.name)?;
            log.write(serde_json::json!({"global_step": state.global_step, "task": task.name, "retention": point}))?;
            state.retention.push(point);
        }
        state.task_done = true;
        if i + 1 < tasks.len() {
            saved_subspaces = subspaces_for(model, tasks, &encoded, i + 1, options)?;
        }
        if let Some(dir) = out {
            let next = subspace_files(saved_subspaces.as_ref())?;
            let saved = checkpoint::save(dir, &format!("task-{i:02}-end"), model, tokenizer, &state, None, &next)?;
            checkpoint::prune_mid_task(dir, &saved)?;
        }
    }
    let method = match options.method {
        Method::Osft => "osft",
        Method::Seqft => "seqft",
    };
    let mut results =
        Results::new(method, tasks.iter().map(|t| t.name.clone()).collect(), state.accuracy, state.before);
    if options.retention.is_some() {
        results.retention = Some(state.retention);
    }
    Ok(Some(results))
}

/// The checkpoint files of a task's frozen subspaces (none without).
fn subspace_files(set: Option<&SubspaceSet>) -> Result<Vec<(&'static str, Vec<u8>)>> {
    set.map(|s| Ok(vec![(SUBSPACE_FILE, s.to_safetensors()?)])).unwrap_or(Ok(Vec::new()))
}

/// Says (and logs) how many training examples were cut to the length limits.
fn report_truncation(
    log: &mut Log,
    state: &TrainingState,
    task: &Task,
    encoded: &Encoded,
    options: &StreamOptions,
) -> Result<()> {
    let (sources, targets) = (encoded.truncated_sources, encoded.truncated_targets);
    if sources + targets > 0 {
        log::warn!(
            "{}: of {} examples, {sources} sources longer than {} tokens and {targets} targets longer than {} were cut",
            task.name,
            encoded.pairs.len(),
            options.train.max_source_len,
            options.train.max_target_len
        );
    }
    log.write(serde_json::json!({"global_step": state.global_step, "task": task.name,
        "examples": encoded.pairs.len(), "truncated_sources": sources, "truncated_targets": targets}))
}

/// Loss and exact match of the current task's evaluation set.
fn evaluate_task(
    model: &dyn Model,
    tokenizer: &Tokenizer,
    task: &Task,
    eval_set: &Encoded,
    options: &StreamOptions,
) -> Result<serde_json::Value> {
    let loss = eval_loss(model, &eval_set.pairs, options.train.batch_size)?;
    let em = exact_match(model, tokenizer, &task.eval, eval_set)?;
    log::info!("{}: eval loss {loss:.4}, exact match {:.1}%", task.name, 100.0 * em);
    Ok(serde_json::json!({"loss": loss, "exact_match": em}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Example, TaskSettings};

    #[test]
    fn task_overrides_replace_the_run_options_and_stretch_the_schedule() {
        let mut run = TrainOptions { epochs: 2, batch_size: 4, ..Default::default() };
        run.adamw.schedule = Schedule::Linear { warmup: 2, total: 20 }; // 2 epochs of 10 batches
        let example = Example::new("x".into(), "y".into());
        let mut task = Task {
            name: "t".into(),
            train: vec![example; 40],
            eval: Vec::new(),
            labels: None,
            settings: TaskSettings::default(),
        };
        let same = task_options(&run, &task);
        assert_eq!((same.epochs, same.batch_size, same.adamw), (2, 4, run.adamw));
        task.settings = TaskSettings { epochs: Some(3), lr: Some(0.5), batch_size: Some(8) };
        let own = task_options(&run, &task);
        assert_eq!((own.epochs, own.batch_size, own.adamw.lr), (3, 8, 0.5));
        assert_eq!(own.adamw.schedule, Schedule::Linear { warmup: 2, total: 15 });
    }
}
