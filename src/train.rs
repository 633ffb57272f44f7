//! Fine-tuning on one task: tokenized examples, shuffled padded batches, forward,
//! backward (accumulated over micro-batches), one (optionally constrained) AdamW step, and
//! evaluation (loss, exact match). A step without accumulation records all its GPU work
//! into one command buffer and reads back two scalars.

use std::sync::Once;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::chat::builtin_prompt;
use crate::data::Example;
use crate::model::family::count_target_tokens;
use crate::model::tokenizer::Tokenizer;
use crate::model::{Gradients, Model, Pair};
use crate::optim::{AdamW, AdamWConfig, UpdateFilter};
use crate::rng::Rng;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    pub epochs: usize,
    /// Examples per micro-batch (one forward and backward).
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Longer sources and targets are cut (keeping the final `</s>`) and counted.
    pub max_source_len: usize,
    pub max_target_len: usize,
    pub adamw: AdamWConfig,
}

fn one() -> usize {
    1
}

impl TrainOptions {
    /// Optimizer steps in one pass over `examples` examples.
    pub fn steps_per_epoch(&self, examples: usize) -> usize {
        examples.div_ceil(self.batch_size * self.grad_accum)
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 1,
            batch_size: 8,
            grad_accum: 1,
            max_source_len: 512,
            max_target_len: 128,
            adamw: AdamWConfig::default(),
        }
    }
}

/// Token ids of examples, with how many were truncated.
pub struct Encoded {
    pub pairs: Vec<Pair>,
    /// Each target's length before it was cut: the budget of a greedy answer.
    pub target_lens: Vec<usize>,
    pub truncated_sources: usize,
    pub truncated_targets: usize,
}

/// Cuts `ids` to `max` tokens, keeping the last one (the end-of-sequence token), and counts it.
fn truncate(mut ids: Vec<u32>, max: usize, count: &mut usize) -> Vec<u32> {
    if ids.len() > max {
        let last = *ids.last().expect("non-empty");
        ids.truncate(max.max(1));
        *ids.last_mut().expect("non-empty") = last;
        *count += 1;
    }
    ids
}

/// The source of `example` cut to `max` tokens. A prompt rendered by a chat template keeps
/// its end (the latest turn and the generation prompt the answer follows), every other
/// source its start and its last token.
fn truncate_source(tokenizer: &Tokenizer, example: &Example, ids: Vec<u32>, max: usize, count: &mut usize) -> Vec<u32> {
    if example.chat.is_none() || tokenizer.chat_template().is_none() || ids.len() <= max {
        return truncate(ids, max, count);
    }
    *count += 1;
    ids[ids.len() - max.max(1)..].to_vec()
}

/// The (source, target) token ids of one example, as training, evaluation and the continual
/// driver all see it. A chat example (one with [`Example::chat`]) for a model with a chat
/// template is the template's rendering split by [`ChatTemplate::split_turn`]
/// (the prompt, then the answer through its end-of-turn marker), tokenized without the
/// tokenizer's added special tokens as transformers' `apply_chat_template` tokenizes (the
/// template writes the ones it wants). Every other example is its input and target, each
/// tokenized with them; a chat example that comes to this for want of a template logs once
/// that the built-in "Role: content" rendering is used.
///
/// [`ChatTemplate::split_turn`]: crate::model::ChatTemplate::split_turn
pub fn encode_example(tokenizer: &Tokenizer, example: &Example) -> Result<Pair> {
    let Some(chat) = &example.chat else {
        return Ok((tokenizer.encode(&example.input)?, tokenizer.encode(&example.target)?));
    };
    let Some(template) = tokenizer.chat_template() else {
        warn_builtin_chat(tokenizer);
        return Ok((tokenizer.encode(&example.input)?, tokenizer.encode(&example.target)?));
    };
    let at = || format!("{}: messages[{}]", chat.origin, chat.messages.len().saturating_sub(1));
    let (prompt, answer) = template.split_turn(&chat.messages).with_context(at)?;
    let target = tokenizer.encode_rendered(&answer)?;
    if target.is_empty() {
        bail!("{}: the chat template {} renders the assistant message as no text", at(), template.origin());
    }
    Ok((tokenizer.encode_rendered(&prompt)?, target))
}

/// Token ids of the prompt for the assistant's next message after `messages` (JSON objects
/// with "role" and "content"): the chat template's rendering with the generation prompt,
/// tokenized without added special tokens, or, for a model without a template, the built-in
/// rendering ([`builtin_prompt`]) tokenized with them. The second value says whether the
/// template was used (the caller tells the user when it was not).
pub fn chat_prompt_ids(tokenizer: &Tokenizer, messages: &[serde_json::Value]) -> Result<(Vec<u32>, bool)> {
    if let Some(template) = tokenizer.chat_template() {
        return Ok((tokenizer.encode_rendered(&template.render(messages, true)?)?, true));
    }
    let turns = messages
        .iter()
        .enumerate()
        .map(|(n, m)| match (m["role"].as_str(), m["content"].as_str()) {
            (Some(role), Some(content)) => Ok((role, content)),
            _ => bail!("messages[{n}] needs string \"role\" and \"content\""),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((tokenizer.encode(&builtin_prompt(turns)?)?, false))
}

/// Logs, once per run, that chat data meets a model without a chat template.
fn warn_builtin_chat(tokenizer: &Tokenizer) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::warn!(
            "{}: the model has no chat template (no chat_template.jinja, no \"chat_template\" in tokenizer_config.json), so chat conversations use the built-in \"Role: content\" rendering",
            tokenizer.files()[0].parent().unwrap_or(std::path::Path::new(".")).display()
        )
    });
}

/// The text of a greedy continuation of `source` of at most `max_new_tokens` tokens: for a
/// model with a chat template, up to its end-of-turn token; without special tokens.
pub fn greedy_text(model: &dyn Model, tokenizer: &Tokenizer, source: &[u32], max_new_tokens: usize) -> Result<String> {
    let mut out = model.generate(source, max_new_tokens)?;
    if let Some(end) = tokenizer.end_of_turn_id().and_then(|eot| out.iter().position(|&t| t == eot)) {
        out.truncate(end);
    }
    tokenizer.decode(&out)
}

/// The source ids of `example` (the prompt a model answers), cut to `max_source_len` as
/// training cuts them.
pub fn encode_source(tokenizer: &Tokenizer, example: &Example, max_source_len: usize) -> Result<Vec<u32>> {
    let (source, _) = encode_example(tokenizer, example)?;
    Ok(truncate_source(tokenizer, example, source, max_source_len, &mut 0))
}

/// Whether a greedy output answers `example`: equal to its target, or for a chat example its
/// assistant message, surrounding whitespace aside.
pub fn is_exact_match(output: &str, example: &Example) -> bool {
    output.trim() == example.answer().trim()
}

pub fn encode(
    tokenizer: &Tokenizer,
    examples: &[Example],
    max_source_len: usize,
    max_target_len: usize,
) -> Result<Encoded> {
    let mut e = Encoded {
        pairs: Vec::with_capacity(examples.len()),
        target_lens: Vec::with_capacity(examples.len()),
        truncated_sources: 0,
        truncated_targets: 0,
    };
    for ex in examples {
        let (source, target) = encode_example(tokenizer, ex)?;
        e.target_lens.push(target.len());
        let source = truncate_source(tokenizer, ex, source, max_source_len, &mut e.truncated_sources);
        let target = truncate(target, max_target_len, &mut e.truncated_targets);
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
    /// Tokens of the step (sources and targets, without padding).
    pub tokens: usize,
}

/// The state that a resumed run needs besides parameters and optimizer moments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: usize,
    /// Batches of the current epoch already trained.
    pub batch: usize,
    pub rng: Rng,
}

/// Trains `epochs` passes over `pairs` from `position`, calling `on_step` after every
/// optimizer step; `on_step` returns false to stop early (the position then says where to
/// resume).
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &dyn Model,
    pairs: &[Pair],
    options: &TrainOptions,
    optimizer: &mut AdamW,
    grads: &Gradients,
    filter: &dyn UpdateFilter,
    position: &mut Position,
    mut on_step: impl FnMut(&StepLog, &Position, &AdamW) -> Result<bool>,
) -> Result<()> {
    if pairs.is_empty() {
        bail!("no training examples");
    }
    if options.batch_size == 0 || options.grad_accum == 0 {
        bail!("the batch size and the number of accumulated micro-batches must be positive");
    }
    let longest = |side: fn(&Pair) -> usize| pairs.iter().map(side).max().unwrap_or(0);
    model.check_batch_buffers(options.batch_size, longest(|p| p.0.len()), longest(|p| p.1.len()))?;
    let per_step = options.batch_size * options.grad_accum;
    let steps = options.steps_per_epoch(pairs.len());
    while position.epoch < options.epochs {
        // The order of an epoch is drawn from the generator state at its start, so a resumed
        // epoch replays the same order.
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        position.rng.clone().shuffle(&mut order);
        while position.batch < steps {
            let chunk = &order[position.batch * per_step..((position.batch + 1) * per_step).min(order.len())];
            let micro_batches: Vec<Vec<Pair>> =
                chunk.chunks(options.batch_size).map(|ids| ids.iter().map(|&i| pairs[i].clone()).collect()).collect();
            let valid =
                micro_batches.iter().map(|b| count_target_tokens(b, model.vocab_size())).collect::<Result<Vec<_>>>()?;
            let total: usize = valid.iter().sum();
            grads.zero()?;
            let mut losses = Vec::with_capacity(micro_batches.len());
            let mut tokens = 0;
            for (i, batch) in micro_batches.iter().enumerate() {
                let grad_scale = valid[i] as f32 / total.max(1) as f32;
                losses.push(model.loss_and_gradients(batch, grad_scale, grads)?);
                tokens += batch.iter().map(|p| p.0.len()).sum::<usize>() + valid[i];
                if i + 1 < valid.len() {
                    // Run each micro-batch as it is recorded, so that only one micro-batch's
                    // activations are alive at a time (the point of accumulating).
                    model.gpu().flush()?;
                }
            }
            let sumsq = optimizer.step(model.params(), &grads.grads, filter)?;
            let mut loss = 0.0;
            for (l, n) in losses.iter().zip(&valid) {
                loss += l.to_f32()?[0] * *n as f32 / total.max(1) as f32;
            }
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
                tokens,
            };
            if !on_step(&log, position, optimizer)? {
                return Ok(());
            }
        }
        position.epoch += 1;
        position.batch = 0;
        position.rng.next_u64();
    }
    Ok(())
}

/// Mean loss per target token over `pairs`, in batches of `batch_size`.
pub fn eval_loss(model: &dyn Model, pairs: &[Pair], batch_size: usize) -> Result<f64> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for chunk in pairs.chunks(batch_size.max(1)) {
        let valid = count_target_tokens(chunk, model.vocab_size())?;
        sum += model.loss(chunk)?.to_f32()?[0] as f64 * valid as f64;
        count += valid;
    }
    Ok(sum / count.max(1) as f64)
}

/// Tokens a greedy answer may run past its target's length in [`exact_match`], so that an
/// answer that goes on where the target ends is seen not to match.
pub const EXTRA_ANSWER_TOKENS: usize = 2;

/// Exact match of greedy outputs against the targets of `examples`, in [0, 1]: each answers
/// its source in `encoded` (the examples' encoding).
pub fn exact_match(model: &dyn Model, tokenizer: &Tokenizer, examples: &[Example], encoded: &Encoded) -> Result<f64> {
    let mut hits = 0;
    for ((ex, (source, _)), target_len) in examples.iter().zip(&encoded.pairs).zip(&encoded.target_lens) {
        let output = greedy_text(model, tokenizer, source, target_len + EXTRA_ANSWER_TOKENS)?;
        hits += usize::from(is_exact_match(&output, ex));
    }
    Ok(hits as f64 / examples.len().max(1) as f64)
}

/// Exact match decided under teacher forcing, in batches of `batch_size`: an example counts
/// when the model's argmax at every position of its target ids (the answer and its end token)
/// is the target's token, which is when greedy decoding would give exactly those tokens and
/// stop. One batched pass per batch instead of a decoding loop per example; stricter than
/// [`exact_match`] only where another tokenization of the same text would also match.
pub fn forced_exact_match(model: &dyn Model, pairs: &[Pair], batch_size: usize) -> Result<f64> {
    Ok(forced_loss_and_matches(model, pairs, batch_size)?.1 as f64 / pairs.len().max(1) as f64)
}

/// Under teacher forcing, in batches of `batch_size`: the mean loss per target token of
/// `pairs`, and how many of them the model gives exactly (see [`forced_exact_match`]).
pub fn forced_loss_and_matches(model: &dyn Model, pairs: &[Pair], batch_size: usize) -> Result<(f64, usize)> {
    let (mut sum, mut count, mut hits) = (0.0f64, 0usize, 0usize);
    for batch in pairs.chunks(batch_size.max(1)) {
        let valid = count_target_tokens(batch, model.vocab_size())?;
        let (loss, argmax) = model.loss_and_target_argmax(batch)?;
        sum += loss.to_f32()?[0] as f64 * valid as f64;
        count += valid;
        hits += argmax.iter().zip(batch).filter(|(choice, (_, target))| choice == &target).count();
    }
    Ok((sum / count.max(1) as f64, hits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::gpu;
    use crate::kernels::testing::assert_close;
    use crate::model::{T5Config, T5Model};
    use crate::optim::Unconstrained;

    /// Gradients and loss of one optimizer step over `pairs`, in micro-batches of `batch_size`.
    fn one_step(pairs: &[Pair], batch_size: usize, grad_accum: usize) -> (Vec<Vec<f32>>, f32) {
        let model = T5Model::random(&gpu(), T5Config::tiny(20), true, 0.1, 9).unwrap();
        let options = TrainOptions { batch_size, grad_accum, ..Default::default() };
        let mut optimizer = AdamW::new(options.adamw, &model.params).unwrap();
        let grads = Gradients::zeros_like(&model).unwrap();
        let mut position = Position { epoch: 0, batch: 0, rng: Rng::new(4) };
        let mut loss = f32::NAN;
        train(&model, pairs, &options, &mut optimizer, &grads, &Unconstrained, &mut position, |log, _, _| {
            loss = log.loss;
            Ok(true)
        })
        .unwrap();
        assert_eq!(optimizer.step, 1);
        (grads.grads.values().map(|g| g.to_f32().unwrap()).collect(), loss)
    }

    #[test]
    fn accumulated_micro_batches_give_the_gradient_of_one_big_batch() {
        let mut rng = Rng::new(11);
        // Uneven lengths, so that micro-batches hold different numbers of target tokens.
        let pairs: Vec<Pair> = (0..7)
            .map(|i| {
                let mut ids = |n: usize| (0..n).map(|_| 3 + rng.below(17) as u32).chain([1]).collect::<Vec<_>>();
                (ids(2 + i % 3), ids(1 + (i * 5) % 4))
            })
            .collect();
        let (big, big_loss) = one_step(&pairs, 7, 1);
        let (accumulated, accumulated_loss) = one_step(&pairs, 2, 4);
        for (a, b) in accumulated.iter().zip(&big) {
            assert_close(a, b, 1e-4);
        }
        assert!((big_loss - accumulated_loss).abs() <= 1e-5 * big_loss.abs(), "{big_loss} vs {accumulated_loss}");
    }
}
