//! `sculpt verify --before DIR --after DIR`: prints how much of each target matrix's change
//! lies in the frozen subspace saved in the before checkpoint ([`crate::subspace::verify`]).

use std::path::PathBuf;

use anyhow::Result;

use crate::subspace::verify::verify;
use crate::Gpu;

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint the frozen subspaces were built from (an osft run's, with subspace.safetensors).
    #[arg(long)]
    before: PathBuf,
    /// A later checkpoint of the same model.
    #[arg(long)]
    after: PathBuf,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(gpu: &Gpu, args: &Args) -> Result<()> {
    let v = verify(gpu, &args.before, &args.after)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("frozen share of ΔW = after − before ({:?} mode; ratios to ‖ΔW‖_F)", v.mode);
    println!("{:<52} {:>11} {:>5} {:>10} {:>10} {:>10} {:>10}", "matrix", "shape", "k", "‖ΔW‖", "UᵀΔWV", "UᵀΔW", "ΔWV");
    for m in &v.matrices {
        let r = &m.ratios;
        println!(
            "{:<52} {:>11} {:>5} {:>10.3e} {:>10.2e} {:>10.2e} {:>10.2e}",
            m.name,
            format!("{}x{}", m.shape[0], m.shape[1]),
            m.k,
            m.delta_norm,
            r.both,
            r.left,
            r.right
        );
    }
    let r = &v.overall;
    println!(
        "{:<52} {:>11} {:>5} {:>10} {:>10.2e} {:>10.2e} {:>10.2e}",
        "overall", "", "", "", r.both, r.left, r.right
    );
    println!("largest ratio the {:?} projection holds at zero: {:.2e}", v.mode, v.worst());
    Ok(())
}
