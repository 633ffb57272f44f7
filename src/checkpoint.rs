//! Crash-safe checkpoint files. Every checkpoint is a new folder built under a hidden
//! `.partial` name and renamed into place only when complete, and the `latest` pointer
//! is replaced by rename, so a crash at any moment leaves the previous checkpoint
//! intact and never a half-written one under a checkpoint name.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

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
        let parent = target.parent().unwrap_or(Path::new("."));
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
        result.with_context(|| {
            format!(
                "writing checkpoint file {} failed; the previous checkpoint is unchanged",
                self.target.join(name).display()
            )
        })
    }

    /// Renames the complete folder to its final name.
    pub fn commit(self) -> Result<PathBuf> {
        fs::rename(&self.partial, &self.target)
            .with_context(|| format!("cannot publish checkpoint {}", self.target.display()))?;
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
        if name.starts_with('.') && (name.contains(".partial-") || name.contains(".tmp-")) {
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
