//! Crash-safe checkpoints. Every checkpoint is a new folder built under a hidden
//! `.partial` name and renamed into place only when complete, so a crash at any moment
//! leaves the previous checkpoint intact and never a half-written one under a checkpoint
//! name. A checkpoint is a Hugging Face model folder (config.json, model.safetensors,
//! tokenizer files) that transformers loads as it is, plus the run's training state
//! (training_state.json), the optimizer moments (optimizer.safetensors, mid-task only)
//! and whatever the method adds (the frozen subspace).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::continual::retention::RetentionPoint;
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

/// Writes `bytes` to `path` through a temporary file in the same folder, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        bail!("writing {} failed: {e}; the previous version (if any) is unchanged", path.display());
    }
    Ok(())
}

/// A checkpoint folder under construction; [`PartialDir::commit`] publishes it.
#[derive(Debug)]
pub struct PartialDir {
    partial: PathBuf,
    target: PathBuf,
}

impl PartialDir {
    /// Starts `target` (which must not exist yet) as a hidden partial folder beside it.
    pub fn new(target: &Path) -> Result<PartialDir> {
        if target.exists() {
            bail!("checkpoint {} already exists; checkpoints are never overwritten", target.display());
        }
        Self::replacing(target)
    }

    /// Starts a hidden partial folder beside `target`; [`PartialDir::commit`] replaces
    /// whatever folder `target` then is.
    pub fn replacing(target: &Path) -> Result<PartialDir> {
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = target.file_name().with_context(|| format!("{} has no folder name", target.display()))?;
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let partial = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
        Ok(PartialDir { partial, target: target.to_path_buf() })
    }

    /// Where the files of the checkpoint are written until it is committed.
    pub fn path(&self) -> &Path {
        &self.partial
    }

    /// Writes one file into the partial folder, synced.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.partial.join(name);
        let result = (|| -> std::io::Result<()> {
            let mut f = fs::File::create(&path)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        result.with_context(|| format!("writing checkpoint file {} failed", self.target.join(name).display()))
    }

    /// Renames the complete folder to its final name. A folder already there is first moved
    /// aside under a hidden name and removed once the new one is in place.
    pub fn commit(self) -> Result<PathBuf> {
        let previous = self.partial.with_file_name(
            self.partial.file_name().expect("named in new()").to_string_lossy().replace(".partial-", ".previous-"),
        );
        let replaced = self.target.exists();
        if replaced {
            fs::rename(&self.target, &previous)
                .with_context(|| format!("cannot move {} aside to replace it", self.target.display()))?;
        }
        if let Err(e) = fs::rename(&self.partial, &self.target) {
            if replaced {
                let _ = fs::rename(&previous, &self.target);
            }
            return Err(e).with_context(|| format!("cannot publish {}", self.target.display()));
        }
        if replaced {
            let _ = fs::remove_dir_all(&previous);
        }
        if let Some(parent) = self.target.parent() {
            // Make the rename itself durable.
            if let Ok(dir) = fs::File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(self.target.clone())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        // An abandoned (uncommitted) checkpoint is removed; after a commit the path is gone.
        let _ = fs::remove_dir_all(&self.partial);
    }
}

/// Removes partial folders left by a crashed run in `dir`.
pub fn remove_partials(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.')
            && (name.contains(".partial-") || name.contains(".previous-") || name.contains(".tmp-"))
        {
            let path = entry.path();
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sculpt-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = scratch("atomic");
        let p = dir.join("latest");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_partial_checkpoint_is_invisible_until_committed_and_removed_when_abandoned() {
        let dir = scratch("partial");
        let target = dir.join("task-0");
        let partial = PartialDir::new(&target).unwrap();
        partial.write("model.safetensors", b"weights").unwrap();
        assert!(!target.exists());
        let committed = partial.commit().unwrap();
        assert_eq!(fs::read(committed.join("model.safetensors")).unwrap(), b"weights");
        assert!(PartialDir::new(&target).unwrap_err().to_string().contains("never overwritten"));

        let abandoned = PartialDir::new(&dir.join("task-1")).unwrap();
        abandoned.write("x", b"y").unwrap();
        let path = abandoned.path().to_path_buf();
        drop(abandoned);
        assert!(!path.exists() && !dir.join("task-1").exists());
    }

    #[test]
    fn a_replacing_partial_folder_swaps_out_the_old_one_whole() {
        let dir = scratch("replacing");
        let target = dir.join("model");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("old.txt"), b"old").unwrap();
        let partial = PartialDir::replacing(&target).unwrap();
        partial.write("new.txt", b"new").unwrap();
        assert!(target.join("old.txt").exists(), "untouched until the commit");
        partial.commit().unwrap();
        let names: Vec<String> =
            fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names, vec!["new.txt".to_string()]);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no partial or previous folder left behind");
    }

    #[test]
    fn leftovers_of_a_crash_are_cleaned() {
        let dir = scratch("leftovers");
        fs::create_dir(dir.join(".task-3.partial-999")).unwrap();
        fs::write(dir.join(".latest.tmp-999"), b"x").unwrap();
        fs::create_dir(dir.join("task-2")).unwrap();
        remove_partials(&dir).unwrap();
        let names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names, vec!["task-2".to_string()]);
    }
}
