//! Crash-safe files and folders, the ground floor every other layer writes through. A file
//! is written whole beside its final name and renamed into place; a folder is built under a
//! hidden `.partial` name and renamed when complete. A crash at any moment leaves the
//! previous version, never a half-written one, under the final name; [`remove_partials`]
//! clears what such a crash left behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The folder a path lies in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The text of the file at `path`, with an error that names it.
pub fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let mut builder = tempfile::Builder::new();
    // The prefix lets `remove_partials` recognise a temporary file a crash left behind.
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    builder.prefix(&prefix);
    // A temporary file is private (0600); the published file gets what `File::create` gives
    // (0666 less the umask).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let result = builder.tempfile_in(parent_of(path)).and_then(|mut tmp| {
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)
    });
    if let Err(e) = result {
        bail!("writing {} failed: {e}; the previous version (if any) is unchanged", path.display());
    }
    Ok(())
}

/// A folder under construction; [`PartialDir::commit`] publishes it.
#[derive(Debug)]
pub struct PartialDir {
    partial: PathBuf,
    target: PathBuf,
}

impl PartialDir {
    /// Starts `target` (which must not exist yet) as a hidden partial folder beside it.
    pub fn new(target: &Path) -> Result<PartialDir> {
        if target.exists() {
            bail!("{} already exists and is never overwritten", target.display());
        }
        Self::replacing(target)
    }

    /// Starts a hidden partial folder beside `target`; [`PartialDir::commit`] replaces
    /// whatever folder `target` then is.
    pub fn replacing(target: &Path) -> Result<PartialDir> {
        let parent = parent_of(target);
        let name = target.file_name().with_context(|| format!("{} has no folder name", target.display()))?;
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let partial = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
        Ok(PartialDir { partial, target: target.to_path_buf() })
    }

    /// Where the files of the folder are written until it is committed.
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
        result.with_context(|| format!("writing file {} failed", self.target.join(name).display()))
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
        // An abandoned (uncommitted) folder is removed; after a commit the path is gone.
        let _ = fs::remove_dir_all(&self.partial);
    }
}

/// Removes the partial folders and temporary files a crashed writer left in `dir`.
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
        let dir = std::env::temp_dir().join(format!("sculpt-io-{name}-{}", std::process::id()));
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
        assert_eq!(read_text(&p).unwrap(), "two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left behind");
        let missing = read_text(&dir.join("missing.jsonl")).unwrap_err().to_string();
        assert!(missing.starts_with("cannot read ") && missing.ends_with("missing.jsonl"), "{missing}");
    }

    #[cfg(unix)]
    #[test]
    fn an_atomic_write_gets_the_permissions_of_a_plain_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("permissions");
        write_atomic(&dir.join("atomic"), b"x").unwrap();
        fs::write(dir.join("plain"), b"x").unwrap();
        let mode = |name: &str| fs::metadata(dir.join(name)).unwrap().permissions().mode();
        assert_eq!(mode("atomic"), mode("plain"));
    }

    #[test]
    fn a_failed_atomic_write_names_the_file_and_keeps_the_old_one() {
        let dir = scratch("atomic-fail");
        let err = write_atomic(&dir.join("missing").join("x"), b"x").unwrap_err().to_string();
        assert!(err.contains("missing/x") && err.contains("unchanged"), "{err}");
    }

    #[test]
    fn a_partial_folder_is_invisible_until_committed_and_removed_when_abandoned() {
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
        fs::write(dir.join(".latest.tmp-a1B2c3"), b"x").unwrap();
        fs::create_dir(dir.join("task-2")).unwrap();
        remove_partials(&dir).unwrap();
        let names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names, vec!["task-2".to_string()]);
    }
}
