use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model folder, T5 or Llama (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Text to transform.
    #[arg(long)]
    input: String,
    /// Stop after this many output tokens if `</s>` has not come.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
}

pub fn run(gpu: &crate::Gpu, args: &Args) -> Result<()> {
    let (model, tokenizer) = crate::model::load_model(gpu, &args.model)?;
    let ids = tokenizer.encode(&args.input)?;
    model
        .check_batch_buffers(1, ids.len(), args.max_new_tokens)
        .context("generation (lower --max-new-tokens or shorten the input)")?;
    let output = model.generate(&ids, args.max_new_tokens)?;
    println!("{}", tokenizer.decode(&output)?);
    Ok(())
}
