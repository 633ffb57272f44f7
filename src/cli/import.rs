use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file to convert (architecture llama, qwen2 or qwen3; F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    /// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K tensors; byte-level BPE or SentencePiece vocabulary).
    #[arg(long)]
    gguf: PathBuf,
    /// The Hugging Face model folder to write (f32 safetensors, config and tokenizer files).
    #[arg(long)]
    out: PathBuf,
    /// Replace OUT if it exists and is not empty.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let summary = crate::model::gguf::import(&args.gguf, &args.out, args.overwrite)?;
    let types: Vec<String> = summary.types.iter().map(|(name, count)| format!("{count} {name}")).collect();
    println!(
        "wrote {}: {} tensors ({}), {} parameters, {} layers, vocabulary {}{}",
        summary.out.display(),
        summary.tensors,
        types.join(", "),
        summary.parameters,
        summary.layers,
        summary.vocab_size,
        if summary.tied_embeddings { ", head tied to the embedding" } else { "" }
    );
    Ok(())
}
