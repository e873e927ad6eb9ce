//! The run directory: created with rr's run marker, held under an exclusive lock while a
//! trainer works in it, replaced under `--force` only when it is an rr run (moved aside first,
//! removed once the new run has started), and cleaned of what killed runs left behind.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rr_util::fs::DirLock;

use super::checkpoint::CHECKPOINTS;

/// The file that marks a directory as an rr run directory.
pub const MARKER: &str = ".rr-run";

/// A run directory held by this process.
pub struct RunDir {
    pub path: PathBuf,
    _lock: DirLock,
    /// The run that `--force` replaced, moved aside until the new run has started.
    replaced: Option<PathBuf>,
}

impl RunDir {
    /// An existing run to resume: it must carry the marker; it is locked and cleaned of
    /// unfinished checkpoint directories.
    pub fn resume(path: &Path) -> Result<Self> {
        if !path.join(MARKER).exists() && path.join(CHECKPOINTS).is_dir() {
            // A run of an older rr, which wrote no marker.
            std::fs::write(path.join(MARKER), "rr run directory\n")
                .with_context(|| format!("{}: cannot write", path.join(MARKER).display()))?;
        }
        require_marker(path)?;
        let lock = DirLock::acquire(path)?;
        clean_unfinished(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
            replaced: None,
        })
    }

    /// A fresh run directory. An existing one is refused unless `force`, and then only if it
    /// is an rr run that no other process holds: it is moved aside, not deleted, until
    /// [`RunDir::started`].
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        let mut replaced = None;
        if path.exists() {
            if !force {
                bail!(
                    "{}: run directory exists (use --resume to continue it or --force to start over)",
                    path.display()
                );
            }
            require_marker(path)?;
            let lock = DirLock::acquire(path)?;
            let aside = aside_name(path)?;
            std::fs::rename(path, &aside)
                .with_context(|| format!("{}: cannot move aside", path.display()))?;
            drop(lock);
            let _ = std::fs::remove_file(aside.join(".lock"));
            replaced = Some(aside);
        }
        std::fs::create_dir_all(path.join(CHECKPOINTS))
            .with_context(|| format!("{}: cannot create run directory", path.display()))?;
        std::fs::write(path.join(MARKER), "rr run directory\n")
            .with_context(|| format!("{}: cannot write", path.join(MARKER).display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: DirLock::acquire(path)?,
            replaced,
        })
    }

    /// The new run is set up: the run it replaced can go.
    pub fn started(&mut self) -> Result<()> {
        if let Some(old) = self.replaced.take() {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("{}: cannot remove the replaced run", old.display()))?;
        }
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // Setting up the new run failed: put the replaced one back.
        if let Some(old) = self.replaced.take() {
            if std::fs::remove_dir_all(&self.path).is_ok() {
                let _ = std::fs::rename(&old, &self.path);
            }
        }
    }
}

fn require_marker(path: &Path) -> Result<()> {
    if !path.join(MARKER).exists() {
        bail!(
            "{}: not an rr run directory (no {MARKER}); refusing to touch it",
            path.display()
        );
    }
    Ok(())
}

/// `.name.replaced-PID`, beside `path`.
fn aside_name(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a run directory path", path.display()))?;
    let aside = path.with_file_name(format!(
        ".{}.replaced-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if aside.exists() {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("{}: cannot remove", aside.display()))?;
    }
    Ok(aside)
}

/// Removes the temporary checkpoint directories (`.step-….tmp`) of runs that were killed
/// while writing one; safe under the lock, since no other process writes here.
fn clean_unfinished(path: &Path) -> Result<()> {
    let dir = path.join(CHECKPOINTS);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            std::fs::remove_dir_all(entry.path()).with_context(|| {
                format!(
                    "{}: cannot remove an unfinished checkpoint",
                    entry.path().display()
                )
            })?;
        }
    }
    Ok(())
}
