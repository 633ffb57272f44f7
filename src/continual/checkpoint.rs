//! Crash-safe checkpoints. Every checkpoint is a new folder built under a hidden
//! `.partial` name and renamed into place only when complete, so a crash at any moment
//! leaves the previous checkpoint intact and never a half-written one under a checkpoint
//! name. A checkpoint is a Hugging Face model folder (config.json, model.safetensors,
//! tokenizer files) that transformers loads as it is, plus the run's training state
//! (training_state.json), the optimizer moments (optimizer.safetensors, mid-task only)
//! and whatever the method adds (the frozen subspace).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::retention::RetentionPoint;
use crate::io::PartialDir;
use crate::model::{weights, Model, Tokenizer};
use crate::optim::AdamW;
use crate::rng::Rng;
use crate::train::Position;

/// Checkpoints of a run live in `RUN/checkpoints/<name>`.
pub const CHECKPOINTS: &str = "checkpoints";
pub const STATE_FILE: &str = "training_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Where a run stands: enough, with the weights and optimizer moments, to continue it
/// exactly as if it had not stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// The task (0-based) the checkpoint belongs to.
    pub task: usize,
    /// The task is finished and evaluated; a resumed run starts the next one.
    pub task_done: bool,
    /// Optimizer steps taken in this task.
    pub step: u64,
    /// Optimizer steps over the whole run.
    pub global_step: u64,
    /// Data order and progress within the task.
    pub position: Position,
    /// The run's generator, from which every task draws its data order.
    pub run_rng: Rng,
    /// Accuracy on every task before training, and after each finished task.
    pub before: Option<Vec<f64>>,
    pub accuracy: Vec<Vec<f64>>,
    /// The base model's answers to the retention prompts, when the run measures retention.
    #[serde(default)]
    pub retention_base: Option<Vec<Vec<u32>>>,
    /// Retention of the base model, then after every finished task.
    #[serde(default)]
    pub retention: Vec<RetentionPoint>,
}

impl TrainingState {
    /// Later checkpoints sort after earlier ones.
    fn order(&self) -> (usize, bool, u64) {
        (self.task, self.task_done, self.step)
    }
}

/// The model files transformers needs, with the tokenizer files beside them.
fn write_model(dir: &PartialDir, model: &dyn Model, tokenizer: &Tokenizer) -> Result<()> {
    for (name, bytes) in model.hf_files()? {
        dir.write(name, &bytes)?;
    }
    for file in tokenizer.files() {
        let name = file.file_name().expect("tokenizer files have names").to_string_lossy().to_string();
        let bytes = fs::read(&file).with_context(|| format!("cannot read tokenizer file {}", file.display()))?;
        dir.write(&name, &bytes)?;
    }
    Ok(())
}

/// Writes checkpoint `name` of the run in `run_dir` and returns its folder. `optimizer`:
/// moments to save (mid-task); `extra`: further files (name, bytes). On any failure (a full
/// disk, weights holding NaN) nothing is published and the previous checkpoint stays.
pub fn save(
    run_dir: &Path,
    name: &str,
    model: &dyn Model,
    tokenizer: &Tokenizer,
    state: &TrainingState,
    optimizer: Option<&AdamW>,
    extra: &[(&str, Vec<u8>)],
) -> Result<PathBuf> {
    let target = run_dir.join(CHECKPOINTS).join(name);
    let write = || -> Result<PathBuf> {
        let dir = PartialDir::new(&target)?;
        write_model(&dir, model, tokenizer)?;
        if let Some(opt) = optimizer {
            let tensors: Vec<(String, &crate::Tensor)> = opt
                .moments
                .iter()
                .flat_map(|(n, m)| [(format!("{n}.exp_avg"), &m.exp_avg), (format!("{n}.exp_avg_sq"), &m.exp_avg_sq)])
                .collect();
            dir.write(OPTIMIZER_FILE, &weights::serialize(&tensors, None)?)?;
        }
        for (file, bytes) in extra {
            dir.write(file, bytes)?;
        }
        // The state goes last: a folder is a checkpoint only once its state file exists.
        dir.write(STATE_FILE, serde_json::to_string_pretty(state)?.as_bytes())?;
        dir.commit()
    };
    write().with_context(|| {
        format!("checkpoint {} was not written; the previous checkpoint is unchanged", target.display())
    })
}

/// Reads a checkpoint's training state.
pub fn read_state(checkpoint: &Path) -> Result<TrainingState> {
    let path = checkpoint.join(STATE_FILE);
    let text = fs::read_to_string(&path).with_context(|| {
        format!("{}: no training state; is {} a sculpt checkpoint?", path.display(), checkpoint.display())
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: damaged training state", path.display()))
}

/// The newest complete checkpoint of a run, if any. Folders are compared by their
/// training state, not by name or time.
pub fn latest(run_dir: &Path) -> Result<Option<(PathBuf, TrainingState)>> {
    let dir = run_dir.join(CHECKPOINTS);
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(None) };
    let mut best: Option<(PathBuf, TrainingState)> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') || !path.join(STATE_FILE).exists() {
            continue;
        }
        let state = read_state(&path)?;
        if best.as_ref().is_none_or(|(_, b)| state.order() > b.order()) {
            best = Some((path, state));
        }
    }
    Ok(best)
}

/// Removes the run's mid-task checkpoints other than `keep` (task-end checkpoints stay).
pub fn prune_mid_task(run_dir: &Path, keep: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(run_dir.join(CHECKPOINTS)) else { return Ok(()) };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep || !path.join(STATE_FILE).exists() {
            continue;
        }
        if !read_state(&path)?.task_done {
            // Out of sight first (one rename), so that a crash while deleting never leaves a
            // half-deleted folder under a checkpoint name; `remove_partials` finishes the job.
            let name = entry.file_name().to_string_lossy().to_string();
            let doomed = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
            fs::rename(&path, &doomed).with_context(|| format!("cannot retire old checkpoint {}", path.display()))?;
            fs::remove_dir_all(&doomed).with_context(|| format!("cannot remove {}", doomed.display()))?;
        }
    }
    Ok(())
}

/// Loads saved optimizer moments into `optimizer` (whose parameters must match).
pub fn load_optimizer(checkpoint: &Path, optimizer: &mut AdamW, step: u64) -> Result<()> {
    let path = checkpoint.join(OPTIMIZER_FILE);
    let bytes = fs::read(&path).with_context(|| format!("{}: cannot read the optimizer state", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: damaged optimizer state", path.display()))?;
    let mut wanted = BTreeMap::new();
    for (name, m) in &optimizer.moments {
        wanted.insert(format!("{name}.exp_avg"), &m.exp_avg);
        wanted.insert(format!("{name}.exp_avg_sq"), &m.exp_avg_sq);
    }
    for (name, tensor) in wanted {
        let view = file
            .tensor(&name)
            .with_context(|| format!("{}: no tensor {name:?}; the checkpoint is of another model", path.display()))?;
        if view.shape() != tensor.shape() || view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "{}: {name:?} is {:?} {:?}, expected F32 {:?}",
                path.display(),
                view.dtype(),
                view.shape(),
                tensor.shape()
            );
        }
        tensor.write(&weights::to_f32(view.dtype(), view.data())?)?;
    }
    optimizer.step = step;
    Ok(())
}
