//! A run folder's `run.json`: the arguments a run was started with (so that it can be
//! continued, and refused when another run's arguments meet it), plus what the run records
//! about itself under its own keys (the settings it resolved, its memory plan).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::checkpoint::CHECKPOINTS;
use crate::io::write_atomic;

pub const RUN_FILE: &str = "run.json";

/// Makes `dir` the folder of a run with `args`: a new folder gets `run.json`; a folder of
/// the same run is continued; another run's folder is refused unless `overwrite`.
pub fn claim<A: Serialize + DeserializeOwned + PartialEq>(dir: &Path, args: &A, overwrite: bool) -> Result<()> {
    let run_file = dir.join(RUN_FILE);
    if run_file.exists() {
        let previous: A = read(dir)?;
        if overwrite {
            std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        } else if previous != *args {
            bail!(
                "{} holds a run with other arguments; continue it with --resume {}, or pass another --out (or --overwrite to delete it)",
                dir.display(),
                dir.display()
            );
        } else {
            log::info!("{} holds this run already: continuing it", dir.display());
        }
    } else if dir.join(CHECKPOINTS).exists() && !overwrite {
        bail!("{} has checkpoints but no {RUN_FILE}; pass another --out", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the run folder {}", dir.display()))?;
    write_atomic(&run_file, serde_json::to_string_pretty(args)?.as_bytes())
}

/// The arguments in `dir/run.json`.
pub fn read<A: DeserializeOwned>(dir: &Path) -> Result<A> {
    let path = dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read; is {} a sculpt run folder?", path.display(), dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: damaged run description", path.display()))
}

/// Sets `key` of `dir/run.json` to `value`, the rest of the file as it is.
pub fn record(dir: &Path, key: &str, value: serde_json::Value) -> Result<()> {
    let path = dir.join(RUN_FILE);
    let mut run: serde_json::Value = read(dir)?;
    run[key] = value;
    write_atomic(&path, serde_json::to_string_pretty(&run)?.as_bytes())
}
