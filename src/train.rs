//! Fine-tuning on one task: tokenized examples, shuffled padded batches, forward,
//! backward, one (optionally constrained) AdamW step per batch, and exact-match evaluation.
//! A step records all its GPU work into one command buffer and reads back two scalars.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::data::Example;
use crate::model::t5::{Batch, Gradients, T5Model};
use crate::model::tokenizer::Tokenizer;
use crate::optim::{AdamW, AdamWConfig, UpdateFilter};
use crate::rng::Rng;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// Longer sources and targets are cut (keeping the final `</s>`) and counted.
    pub max_source_len: usize,
    pub max_target_len: usize,
    pub adamw: AdamWConfig,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 1,
            batch_size: 8,
            max_source_len: 512,
            max_target_len: 128,
            adamw: AdamWConfig::default(),
        }
    }
}

/// Token ids of examples, with how many were truncated.
pub struct Encoded {
    pub pairs: Vec<(Vec<u32>, Vec<u32>)>,
    pub truncated_sources: usize,
    pub truncated_targets: usize,
}

fn truncate(mut ids: Vec<u32>, max: usize, count: &mut usize) -> Vec<u32> {
    if ids.len() > max {
        let last = *ids.last().expect("non-empty");
        ids.truncate(max.max(1));
        *ids.last_mut().expect("non-empty") = last;
        *count += 1;
    }
    ids
}

pub fn encode(
    tokenizer: &Tokenizer,
    examples: &[Example],
    max_source_len: usize,
    max_target_len: usize,
) -> Result<Encoded> {
    let mut e = Encoded { pairs: Vec::with_capacity(examples.len()), truncated_sources: 0, truncated_targets: 0 };
    for ex in examples {
        let source = truncate(tokenizer.encode(&ex.input)?, max_source_len, &mut e.truncated_sources);
        let target = truncate(tokenizer.encode(&ex.target)?, max_target_len, &mut e.truncated_targets);
        e.pairs.push((source, target));
    }
    Ok(e)
}

/// What one optimizer step reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLog {
    pub step: u64,
    pub epoch: usize,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens: usize,
}

/// The state that a resumed run needs besides parameters and optimizer moments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Position {
    pub epoch: usize,
    /// Batches of the current epoch already trained.
    pub batch: usize,
    pub rng: Rng,
}

/// Trains `epochs` passes over `pairs` from `position`, calling `on_step` after every step;
/// `on_step` returns false to stop early (the position then says where to resume).
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &T5Model,
    pairs: &[(Vec<u32>, Vec<u32>)],
    options: &TrainOptions,
    optimizer: &mut AdamW,
    grads: &Gradients,
    filter: &dyn UpdateFilter,
    position: &mut Position,
    mut on_step: impl FnMut(&StepLog, &Position) -> Result<bool>,
) -> Result<()> {
    if pairs.is_empty() {
        bail!("no training examples");
    }
    let c = &model.config;
    let batches = pairs.len().div_ceil(options.batch_size);
    while position.epoch < options.epochs {
        // The order of an epoch is drawn from the generator state at its start, so a resumed
        // epoch replays the same order.
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        position.rng.clone().shuffle(&mut order);
        while position.batch < batches {
            let chunk = &order
                [position.batch * options.batch_size..((position.batch + 1) * options.batch_size).min(order.len())];
            let examples: Vec<(Vec<u32>, Vec<u32>)> = chunk.iter().map(|&i| pairs[i].clone()).collect();
            let batch = Batch::new(&examples, c.pad_token_id, c.decoder_start_token_id)?;
            grads.zero()?;
            let out = model.forward(&batch)?;
            model.backward(&batch, &out, grads)?;
            let sumsq = optimizer.step(&model.params, &grads.grads, filter)?;
            let loss = out.loss.as_ref().expect("training batches have labels").to_f32()?[0];
            let grad_norm = sumsq.to_f32()?[0].sqrt();
            if !loss.is_finite() || !grad_norm.is_finite() {
                bail!(
                    "step {}: the loss is {loss} and the gradient norm {grad_norm}; training stopped (lower the learning rate, check the data); the last checkpoint is kept",
                    optimizer.step
                );
            }
            position.batch += 1;
            let log = StepLog {
                step: optimizer.step,
                epoch: position.epoch,
                loss,
                lr: optimizer.config.step(optimizer.step).lr,
                grad_norm,
                tokens: batch.input_ids.len() + batch.labels.len(),
            };
            if !on_step(&log, position)? {
                return Ok(());
            }
        }
        position.epoch += 1;
        position.batch = 0;
        position.rng.next_u64();
    }
    Ok(())
}

/// Exact match of greedy outputs against the targets, in [0, 1].
pub fn exact_match(model: &T5Model, tokenizer: &Tokenizer, examples: &[Example], max_source_len: usize) -> Result<f64> {
    let mut hits = 0;
    for ex in examples {
        let mut n = 0;
        let source = truncate(tokenizer.encode(&ex.input)?, max_source_len, &mut n);
        let budget = tokenizer.encode(&ex.target)?.len() + 2;
        let out = model.generate(&source, budget)?;
        hits += usize::from(tokenizer.decode(&out)?.trim() == ex.target.trim());
    }
    Ok(hits as f64 / examples.len().max(1) as f64)
}
