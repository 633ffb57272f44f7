use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::train::{chat_prompt_ids, greedy_text};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("prompt").required(true).args(["input", "chat"])))]
pub struct Args {
    /// Hugging Face model folder, T5 or Llama (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Raw text to continue (Llama) or transform (T5), tokenized as it is.
    #[arg(long)]
    input: Option<String>,
    /// One user message, rendered with the model's chat template (tokenizer_config.json or
    /// chat_template.jinja) and its generation prompt; the answer ends at the end-of-turn
    /// token. A model without a template gets the built-in "User: ...\nAssistant:" rendering.
    #[arg(long)]
    chat: Option<String>,
    /// A system message before the --chat message.
    #[arg(long)]
    system: Option<String>,
    /// Stop after this many output tokens if the end token has not come.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
}

/// The messages of `--chat TEXT [--system TEXT]`.
pub fn chat_messages(system: Option<&str>, user: &str) -> Vec<serde_json::Value> {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": user}));
    messages
}

pub fn run(gpu: &crate::Gpu, args: &Args) -> Result<()> {
    if args.system.is_some() && args.chat.is_none() {
        bail!("--system is the system message of a --chat prompt; with --input, put it in the text");
    }
    let (model, tokenizer) = crate::model::load_model(gpu, &args.model)?;
    let ids = match (&args.input, &args.chat) {
        (Some(input), None) => tokenizer.encode(input)?,
        (None, Some(chat)) => {
            let (ids, templated) = chat_prompt_ids(&tokenizer, &chat_messages(args.system.as_deref(), chat))?;
            if !templated {
                eprintln!(
                    "note: {} has no chat template; --chat uses the built-in \"User: ...\\nAssistant:\" rendering",
                    args.model.display()
                );
            }
            ids
        }
        _ => bail!("give either --input or --chat"),
    };
    model
        .check_batch_buffers(1, ids.len(), args.max_new_tokens)
        .context("generation (lower --max-new-tokens or shorten the input)")?;
    println!("{}", greedy_text(&*model, &tokenizer, &ids, args.max_new_tokens)?);
    Ok(())
}
