//! Atomic file writes and staging directories: a file or directory appears under its final name
//! only when it is complete, so an interrupted or failed write never leaves half an output
//! behind, and nothing is left beside it either.
//!
//! * [`write_atomic`] / [`write_atomic_with`] / [`write_new_atomic_with`]: one file, written to
//!   a temporary sibling and renamed over the target.
//! * [`StagingDir`]: a whole directory, filled by the caller in a temporary sibling and renamed
//!   into place by [`StagingDir::commit`].
//!
//! Temporaries are created by `tempfile` in the target's own directory (so the final rename
//! stays on one file system): hidden (`.name.XXXXXX.tmp`), with unpredictable names, created
//! exclusively (`O_EXCL`), so a file or symlink planted under a guessable name is never followed
//! or overwritten. Every error names the path concerned.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// Writes `bytes` to `path` atomically, replacing an existing file: see [`write_atomic_with`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| Ok(w.write_all(bytes)?))
}

/// Writes `path` atomically, replacing an existing file: `write` fills a temporary file beside
/// `path` (buffered), which is flushed, synced and renamed over `path`. On any error, including
/// one returned by `write`, the temporary file is removed and `path` is left as it was. A bare
/// I/O error returned by `write` is reported with the path; other errors pass through unchanged.
/// The parent directory must exist. On Unix the file gets the usual `0o666 & !umask` mode.
pub fn write_atomic_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    write_file(path, true, write)
}

/// As [`write_atomic_with`], but refuses to replace anything: an existing `path` (also a
/// dangling symlink) is an error before `write` runs, and the final rename does not overwrite a
/// file that appeared meanwhile.
pub fn write_new_atomic_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    if exists(path) {
        bail!(
            "{}: output already exists (refusing to overwrite)",
            path.display()
        );
    }
    write_file(path, false, write)
}

fn write_file<F>(path: &Path, replace: bool, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    let (parent, name) = split(path)?;
    let mut builder = tempfile::Builder::new();
    let prefix = tmp_prefix(&name);
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // As `File::create`; tempfile's default is 0o600.
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder
        .tempfile_in(&parent)
        .with_context(|| format!("{}: cannot create a temporary file", path.display()))?;
    let io_err = |e: io::Error| anyhow!("{}: cannot write ({e})", path.display());
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        if let Err(e) = write(&mut w) {
            return Err(if e.chain().count() == 1 && e.is::<io::Error>() {
                e.context(format!("{}: cannot write", path.display()))
            } else {
                e
            });
        }
        w.flush().map_err(io_err)?;
    }
    tmp.as_file().sync_all().map_err(io_err)?;
    let persisted = if replace {
        tmp.persist(path)
    } else {
        tmp.persist_noclobber(path)
    };
    persisted.map(drop).map_err(|e| {
        if !replace && e.error.kind() == io::ErrorKind::AlreadyExists {
            anyhow!(
                "{}: output already exists (refusing to overwrite)",
                path.display()
            )
        } else {
            anyhow!("{}: cannot move into place ({})", path.display(), e.error)
        }
    })
}

/// A directory under construction: a hidden temporary sibling of the final path, filled by the
/// caller through [`path`](Self::path) and renamed into place by [`commit`](Self::commit). If it
/// is dropped uncommitted (on any error) it is removed, together with any parent directories
/// [`create`](Self::create) had to make, so a failed write leaves nothing behind.
pub struct StagingDir {
    /// `None` once committed.
    tmp: Option<tempfile::TempDir>,
    out: PathBuf,
    /// Missing parents of `out` that were created, innermost first.
    created_parents: Vec<PathBuf>,
    replace: bool,
}

impl StagingDir {
    /// Stages the directory `out`, which must not exist yet (a dangling symlink counts as
    /// existing); creates its missing parent directories.
    pub fn create(out: &Path) -> Result<Self> {
        if exists(out) {
            bail!(
                "{}: output already exists (refusing to overwrite)",
                out.display()
            );
        }
        Self::new(out, false)
    }

    /// As [`create`](Self::create), but an existing `out` is allowed and replaced by
    /// [`commit`](Self::commit), only once the new directory is complete.
    pub fn replacing(out: &Path) -> Result<Self> {
        Self::new(out, true)
    }

    fn new(out: &Path, replace: bool) -> Result<Self> {
        recover(out)?;
        let (parent, name) = split(out)?;
        let mut created_parents = Vec::new();
        let mut p = parent.as_path();
        while !exists(p) {
            created_parents.push(p.to_path_buf());
            match p.parent() {
                Some(q) if !q.as_os_str().is_empty() => p = q,
                _ => break,
            }
        }
        // Built before anything is created, so that dropping it on an error cleans up.
        let mut staging = Self {
            tmp: None,
            out: out.to_path_buf(),
            created_parents,
            replace,
        };
        fs::create_dir_all(&parent)
            .with_context(|| format!("{}: cannot create directory", parent.display()))?;
        staging.tmp = Some(
            tempfile::Builder::new()
                .prefix(&tmp_prefix(&name))
                .suffix(".tmp")
                .tempdir_in(&parent)
                .with_context(|| {
                    format!(
                        "{}: cannot create a temporary directory in {}",
                        out.display(),
                        parent.display()
                    )
                })?,
        );
        Ok(staging)
    }

    /// Where to write the files (the temporary directory).
    pub fn path(&self) -> &Path {
        self.tmp
            .as_ref()
            .map(|t| t.path())
            .expect("a StagingDir is not used after commit")
    }

    /// Renames the finished directory to its final name. Fails if the output appeared
    /// meanwhile, unless made by [`replacing`](Self::replacing): then an existing output is moved
    /// aside, the new one renamed into place and the old one removed (or moved back if the
    /// rename fails).
    pub fn commit(mut self) -> Result<()> {
        let (parent, name) = split(&self.out)?;
        let tmp = self.tmp.take().expect("a StagingDir is committed once");
        let mut aside = None;
        if exists(&self.out) {
            if !self.replace {
                bail!(
                    "{}: output appeared while it was being written (refusing to overwrite)",
                    self.out.display()
                );
            }
            // The old output goes into a fresh hidden directory of its own, so that it can be
            // removed (or restored) as a whole, whether it is a directory, a file or a symlink.
            let holder = tempfile::Builder::new()
                .prefix(&tmp_prefix(&name))
                .suffix(".old")
                .tempdir_in(&parent)
                .with_context(|| {
                    format!(
                        "{}: cannot create a temporary directory in {}",
                        self.out.display(),
                        parent.display()
                    )
                })?;
            fs::rename(&self.out, holder.path().join(&name))
                .with_context(|| format!("{}: cannot move aside", self.out.display()))?;
            aside = Some(holder);
        }
        let tmp_path = tmp.keep();
        if let Err(e) = fs::rename(&tmp_path, &self.out) {
            let _ = fs::remove_dir_all(&tmp_path);
            if let Some(holder) = &aside {
                let _ = fs::rename(holder.path().join(&name), &self.out);
            }
            return Err(anyhow!(
                "{}: cannot move {} into place ({e})",
                self.out.display(),
                tmp_path.display()
            ));
        }
        self.created_parents.clear();
        if let Some(holder) = aside {
            let old = holder.path().to_path_buf();
            holder
                .close()
                .with_context(|| format!("{}: cannot remove the replaced output", old.display()))?;
        }
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.close();
        }
        // Innermost first; `remove_dir` refuses non-empty directories, which is what we want.
        for p in &self.created_parents {
            let _ = fs::remove_dir(p);
        }
    }
}

/// `.name.`: the start of a temporary sibling's name.
fn tmp_prefix(name: &OsStr) -> String {
    format!(".{}.", name.to_string_lossy())
}

/// Whether anything, even a dangling symlink, is at `path`.
fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// The directory of `path` (`.` for a bare name) and its file name.
fn split(path: &Path) -> Result<(PathBuf, OsString)> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a valid output path", path.display()))?
        .to_owned();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Finishes or rolls back what a writer of `out` that was killed left beside it: a replaced
/// output still held aside (`.name.XXXXXX.old/name`) is put back when `out` is missing (killed
/// between the two renames of [`StagingDir::commit`]) and removed when `out` is there (killed
/// before the clean-up); unfinished temporaries (`.name.XXXXXX.tmp`) are removed.
pub fn recover(out: &Path) -> Result<()> {
    let (parent, name) = split(out)?;
    let Ok(entries) = fs::read_dir(&parent) else {
        return Ok(()); // nothing there yet
    };
    let prefix = tmp_prefix(&name);
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let path = entry.path();
        if rest.ends_with(".old") {
            let held = path.join(&name);
            if !exists(out) && exists(&held) {
                fs::rename(&held, out).with_context(|| {
                    format!(
                        "{}: cannot restore it from {}",
                        out.display(),
                        held.display()
                    )
                })?;
                eprintln!(
                    "warning: {}: restored the previous version left aside by an interrupted replacement",
                    out.display()
                );
            }
            remove_any(&path)?;
        } else if rest.ends_with(".tmp") {
            remove_any(&path)?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.with_context(|| {
        format!(
            "{}: cannot remove a leftover of an interrupted write",
            path.display()
        )
    })
}

/// `path` with symlinks resolved, also when it does not exist yet: its deepest existing
/// ancestor is resolved and the rest appended.
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses an output that is, contains or lies inside one of the inputs (after resolving
/// symlinks): writing it, or replacing it with `--force`, would destroy what it is made from.
pub fn ensure_output_apart(out: &Path, inputs: &[&Path]) -> Result<()> {
    let out_real = resolve(out);
    for input in inputs {
        let in_real = resolve(input);
        if out_real.starts_with(&in_real) || in_real.starts_with(&out_real) {
            bail!(
                "{}: the output would overwrite the input {} (choose another output)",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// An exclusive lock on a directory: the file `.lock` in it, created exclusively with the
/// owner's pid and host, removed on drop. A lock left by a process of this host that no longer
/// exists is stale and taken over.
pub struct DirLock {
    path: PathBuf,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(".lock");
        let me = format!("{} {}\n", std::process::id(), host_name());
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    file.write_all(me.as_bytes())
                        .with_context(|| format!("{}: cannot write", path.display()))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(&path).unwrap_or_default();
                    let mut words = owner.split_whitespace();
                    let pid = words.next().and_then(|p| p.parse::<u32>().ok());
                    let host = words.next().unwrap_or("");
                    let alive = match pid {
                        Some(pid) if host == host_name() => {
                            Path::new(&format!("/proc/{pid}")).exists()
                        }
                        // Another host's process cannot be checked from here.
                        Some(_) => true,
                        None => false,
                    };
                    if alive {
                        bail!(
                            "{}: in use by process {} on {} (if that process is gone, remove {})",
                            dir.display(),
                            pid.unwrap_or(0),
                            host,
                            path.display()
                        );
                    }
                    eprintln!(
                        "warning: {}: taking over a stale lock ({})",
                        dir.display(),
                        owner.trim()
                    );
                    let _ = fs::remove_file(&path);
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("{}: cannot create", path.display()))
                }
            }
        }
        bail!("{}: cannot take the lock", dir.display())
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Reads a UTF-8 text file of at most `limit` bytes; a larger one (or an endless one such
/// as `/dev/zero`) is refused after reading `limit + 1` bytes, never read into memory whole.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let file = fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!(
            "{}: larger than {} MiB; give a smaller file",
            path.display(),
            limit >> 20
        );
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))
}
