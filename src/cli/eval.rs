use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::model::Model;
use crate::train::{encode_example, eval_loss, greedy_text, is_exact_match};

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
    /// Longest greedy output for exact match.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Token-level mean loss (as one big batch would give) and exact-match accuracy of greedy outputs.
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
    max_new_tokens: usize,
) -> Result<EvalResult> {
    let pairs = examples.iter().map(|e| encode_example(tokenizer, e)).collect::<Result<Vec<_>>>()?;
    let source = pairs.iter().map(|p| p.0.len()).max().unwrap_or(0);
    let target = pairs.iter().map(|p| p.1.len()).max().unwrap_or(0);
    model
        .check_batch_buffers(batch_size.max(1), source, target.max(max_new_tokens))
        .context("evaluation (in `sculpt eval`: lower --batch-size or --max-new-tokens, or shorten the inputs)")?;
    let loss = eval_loss(model, &pairs, batch_size)?;
    let mut correct = 0usize;
    for (example, (source, _)) in examples.iter().zip(&pairs) {
        let output = greedy_text(model, tokenizer, source, max_new_tokens)?;
        correct += usize::from(is_exact_match(&output, example));
    }
    Ok(EvalResult { examples: examples.len(), loss, exact_match: correct as f64 / examples.len() as f64 })
}

pub fn run(gpu: &crate::Gpu, args: &Args) -> Result<()> {
    let (model, tokenizer) = crate::model::load_model(gpu, &args.model)?;
    let examples = crate::data::jsonl::read_jsonl(&args.data)?;
    let r = evaluate(&*model, &tokenizer, &examples, args.batch_size, args.max_new_tokens)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("examples     {}", r.examples);
        println!("loss         {:.6}", r.loss);
        println!("exact match  {:.4}", r.exact_match);
    }
    Ok(())
}
