//! The `sculpt` command line.

mod bench;
pub mod bench_model;
pub mod eval;
pub mod generate;
mod import;
mod info;
pub mod svd;
mod train;
pub mod verify;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sculpt", version, about = "Continual fine-tuning constrained by adaptive SVD, on any GPU")]
pub struct Cli {
    /// Use the adapter whose name contains this text (see `sculpt info`).
    #[arg(long, global = true, env = "SCULPT_ADAPTER")]
    adapter: Option<String>,
    /// Request only WebGPU's baseline limits and features (portable fallback paths).
    #[arg(long, global = true)]
    baseline: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the adapter, backend, driver, limits and features.
    Info(info::Args),
    /// Measure kernel throughput on this adapter (`sculpt bench matmul`).
    Bench(bench::Args),
    /// Convert a llama.cpp GGUF file into a Hugging Face model folder (f32).
    Import(import::Args),
    /// Greedy decoding of one input or chat message with a T5 or Llama model.
    Generate(generate::Args),
    /// Mean loss and exact-match accuracy of a T5 or Llama model on JSONL examples.
    Eval(eval::Args),
    /// Continual fine-tuning over a task stream; with no arguments, the built-in default
    /// (a small T5 or Llama, the synthetic stream, OSFT vs sequential fine-tuning).
    Train(Box<train::Args>),
    /// Singular spectra of a model's or a file's matrices (block Jacobi SVD on the GPU).
    Svd(svd::Args),
    /// How much of the change between two checkpoints lies in the frozen subspaces.
    Verify(verify::Args),
}

impl Cli {
    fn gpu(&self) -> Result<crate::Gpu> {
        crate::Gpu::new(&crate::GpuOptions { adapter_name: self.adapter.clone(), baseline: self.baseline })
    }
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Info(args) => info::run(&cli.gpu()?, args),
        Command::Bench(args) => bench::run(&cli.gpu()?, args),
        Command::Import(args) => import::run(args),
        Command::Generate(args) => generate::run(&cli.gpu()?, args),
        Command::Eval(args) => eval::run(&cli.gpu()?, args),
        Command::Svd(args) => svd::run(&cli.gpu()?, args),
        Command::Train(args) => train::run(&cli.gpu()?, args),
        Command::Verify(args) => verify::run(&cli.gpu()?, args),
    }
}
