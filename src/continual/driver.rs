//! The task loop: before each task the frozen subspaces are refreshed (OSFT) from the
//! current weights, the task is trained, and every task of the stream is evaluated.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::report::Results;
use crate::data::{Example, Task};
use crate::model::t5::{Batch, Gradients, T5Model};
use crate::model::Tokenizer;
use crate::optim::{AdamW, Schedule, Unconstrained, UpdateFilter};
use crate::rng::Rng;
use crate::subspace::rank::normalise_importance;
use crate::subspace::{Mode, RankPolicy, SubspaceSet};
use crate::train::{encode, exact_match, train, Position, TrainOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Constrained full fine-tuning (adaptive SVD).
    Osft,
    /// Plain sequential full fine-tuning.
    Seqft,
}

#[derive(Clone, Debug)]
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
    pub seed: u64,
}

/// Mean cosine similarity between the input and output hidden states of every block
/// (real tokens only) over `samples`, keyed by the block's name prefix
/// ("encoder.block.3."), min-max normalised across all blocks.
pub fn layer_importance(model: &T5Model, tokenizer: &Tokenizer, samples: &[Example]) -> Result<BTreeMap<String, f64>> {
    let c = &model.config;
    let pairs = encode(tokenizer, samples, 512, 128)?.pairs;
    let batch = Batch::new(&pairs, c.pad_token_id, c.decoder_start_token_id)?;
    let out = model.forward(&batch)?;
    let enc_mask: Vec<bool> = batch.attention_mask.iter().map(|&m| m == 1).collect();
    let dec_mask: Vec<bool> = batch.labels.iter().map(|&l| l != -100).collect();
    let mut raw = Vec::new();
    for (prefix, stack, mask) in [("encoder", &out.encoder.stack, &enc_mask), ("decoder", &out.decoder, &dec_mask)] {
        for l in 0..stack.block_outputs.len() {
            let input = if l == 0 { &stack.hidden_states[0] } else { &stack.block_outputs[l - 1] };
            let (x, y) = (input.to_f32()?, stack.block_outputs[l].to_f32()?);
            let d = c.d_model;
            let (mut sum, mut count) = (0.0f64, 0usize);
            for (t, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
                let (a, b) = (&x[t * d..(t + 1) * d], &y[t * d..(t + 1) * d]);
                let dot: f64 = a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum();
                let na = a.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
                let nb = b.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
                sum += dot / (na * nb).max(1e-30);
                count += 1;
            }
            raw.push((format!("{prefix}.block.{l}."), sum / count.max(1) as f64));
        }
    }
    let normalised = normalise_importance(&raw.iter().map(|r| r.1).collect::<Vec<_>>());
    Ok(raw.into_iter().map(|r| r.0).zip(normalised).collect())
}

fn evaluate_all(model: &T5Model, tokenizer: &Tokenizer, tasks: &[Task], max_source_len: usize) -> Result<Vec<f64>> {
    tasks.iter().map(|t| exact_match(model, tokenizer, &t.eval, max_source_len)).collect()
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
        let steps = (options.epochs * task.train.len().div_ceil(options.batch_size)) as u64;
        let warmup = (warmup as f64 / total.max(1) as f64 * steps as f64).round() as u64;
        options.adamw.schedule = Schedule::Linear { warmup, total: steps };
    }
    options
}

/// Trains the tasks in order on `model` and returns the accuracy matrix and its metrics.
pub fn run_stream(
    model: &T5Model,
    tokenizer: &Tokenizer,
    tasks: &[Task],
    options: &StreamOptions,
    mut on_step: impl FnMut(usize, &crate::train::StepLog),
) -> Result<Results> {
    let max_src = options.train.max_source_len;
    let before = evaluate_all(model, tokenizer, tasks, max_src)?;
    let mut accuracy = Vec::with_capacity(tasks.len());
    let grads = Gradients::zeros_like(model)?;
    let mut rng = Rng::new(options.seed);
    for (i, task) in tasks.iter().enumerate() {
        let filter: Box<dyn UpdateFilter> = if options.method == Method::Osft && !(i == 0 && options.free_first_task) {
            // Importance from samples of the previous task (the first task: its own data).
            let source = if i == 0 { &task.train } else { &tasks[i - 1].train };
            let samples = &source[..options.importance_samples.min(source.len())];
            let importance = layer_importance(model, tokenizer, samples)?;
            let of =
                |name: &str| importance.iter().find(|(p, _)| name.starts_with(p.as_str())).map_or(0.5, |(_, v)| *v);
            Box::new(SubspaceSet::build(&model.params, &options.targets, options.policy, options.mode, of)?)
        } else {
            Box::new(Unconstrained)
        };
        let train_options = task_options(&options.train, task);
        let pairs = encode(tokenizer, &task.train, max_src, train_options.max_target_len)?.pairs;
        let mut optimizer = AdamW::new(train_options.adamw, &model.params)?;
        let mut position = Position { epoch: 0, batch: 0, rng: Rng::new(rng.next_u64()) };
        train(model, &pairs, &train_options, &mut optimizer, &grads, filter.as_ref(), &mut position, |log, _| {
            on_step(i, log);
            Ok(true)
        })?;
        accuracy.push(evaluate_all(model, tokenizer, tasks, max_src)?);
    }
    let method = match options.method {
        Method::Osft => "osft",
        Method::Seqft => "seqft",
    };
    Ok(Results::new(method, tasks.iter().map(|t| t.name.clone()).collect(), accuracy, Some(before)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TaskSettings;

    #[test]
    fn task_overrides_replace_the_run_options_and_stretch_the_schedule() {
        let mut run = TrainOptions { epochs: 2, batch_size: 4, ..Default::default() };
        run.adamw.schedule = Schedule::Linear { warmup: 2, total: 20 }; // 2 epochs of 10 batches
        let example = Example { input: "x".into(), target: "y".into() };
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
