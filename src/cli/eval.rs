use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::model::Model;
use crate::train::{encode, eval_loss, exact_match, EXTRA_ANSWER_TOKENS};

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model folder, T5 or Llama (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// JSON Lines of {"input": ..., "target": ...} or chat conversations {"messages": [...]}
    /// (each assistant message one example, rendered with the model's chat template).
    #[arg(long)]
    data: PathBuf,
    /// Examples per forward pass for the loss.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Token-level mean loss (as one big batch would give) and exact-match accuracy of greedy
/// outputs, measured as training measures them ([`exact_match`]).
#[derive(Debug, serde::Serialize)]
pub struct EvalResult {
    pub examples: usize,
    pub loss: f64,
    pub exact_match: f64,
}

pub fn evaluate(
    model: &dyn Model,
    tokenizer: &crate::model::Tokenizer,
    examples: &[crate::data::jsonl::Example],
    batch_size: usize,
) -> Result<EvalResult> {
    // Nothing is cut: `sculpt eval` has no length limits.
    let encoded = encode(tokenizer, examples, usize::MAX, usize::MAX)?;
    let pairs = &encoded.pairs;
    let source = pairs.iter().map(|p| p.0.len()).max().unwrap_or(0);
    let target = pairs.iter().map(|p| p.1.len()).max().unwrap_or(0);
    model
        .check_batch_buffers(batch_size.max(1), source, target + EXTRA_ANSWER_TOKENS)
        .context("evaluation (in `sculpt eval`: lower --batch-size, or shorten the inputs)")?;
    let loss = eval_loss(model, pairs, batch_size)?;
    let exact_match = exact_match(model, tokenizer, examples, &encoded)?;
    Ok(EvalResult { examples: examples.len(), loss, exact_match })
}

pub fn run(gpu: &crate::Gpu, args: &Args) -> Result<()> {
    let (model, tokenizer) = crate::model::load_model(gpu, &args.model)?;
    let examples = crate::data::jsonl::read_jsonl(&args.data)?;
    let r = evaluate(&*model, &tokenizer, &examples, args.batch_size)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("examples     {}", r.examples);
        println!("loss         {:.6}", r.loss);
        println!("exact match  {:.4}", r.exact_match);
    }
    Ok(())
}
