//! `cargo xtask setup` and the build environment every other command runs cargo with.
//!
//! torch-sys 0.24 only accepts PyTorch 2.11.0. Either `LIBTORCH` points at such a
//! libtorch, or the project keeps its own venv at `<root>/.venv` with the PyPI wheel
//! `torch==2.11.0` (the CUDA 13 wheel set, ~4.6 GB, also on CPU-only machines).
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyTorch version tch 0.24 / torch-sys 0.24 is locked to.
pub const TORCH_VERSION: &str = "2.11.0";

/// Where libtorch comes from for this build.
#[derive(Debug, Clone)]
pub enum Torch {
    /// `LIBTORCH` names a libtorch 2.11.0 directory.
    Libtorch { dir: PathBuf, version: String },
    /// The project venv has `torch==2.11.0`.
    Venv {
        venv: PathBuf,
        version: String,
        lib: PathBuf,
    },
}

impl Torch {
    /// One phrase for log lines: which torch, from where.
    pub fn summary(&self) -> String {
        match self {
            Torch::Libtorch { dir, version } => format!("libtorch {version} at {}", dir.display()),
            Torch::Venv { version, lib, .. } => {
                format!("torch {version}, libs in {}", lib.display())
            }
        }
    }
}

/// Does a torch version string (`2.11.0`, `2.11.0+cu130`, ...) match the locked one?
pub fn version_matches(version: &str) -> bool {
    let v = version.trim();
    v == TORCH_VERSION
        || v.strip_prefix(TORCH_VERSION)
            .is_some_and(|rest| rest.starts_with('+'))
}

/// The version a libtorch directory declares in `build-version` (or `version.txt`).
pub fn libtorch_version(dir: &Path) -> Option<String> {
    ["build-version", "version.txt"].iter().find_map(|name| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
}

pub fn venv_dir(root: &Path) -> PathBuf {
    root.join(".venv")
}

pub fn venv_python(root: &Path) -> PathBuf {
    venv_dir(root).join("bin").join("python")
}

/// The Python that non-torch helper steps (pip download) should use.
pub fn helper_python(root: &Path) -> PathBuf {
    let p = venv_python(root);
    if p.exists() {
        p
    } else {
        PathBuf::from("python3")
    }
}

/// What the venv's python says about torch: Ok((version, lib dir)) or Err(reason).
fn probe_venv_torch(python: &Path) -> std::result::Result<(String, PathBuf), String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(torch.__version__); print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!("`import torch` failed ({})", last.trim()));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let version = lines.next().unwrap_or("").trim().to_string();
    let lib = PathBuf::from(lines.next().unwrap_or("").trim());
    Ok((version, lib))
}

fn run_visible(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what} ({cmd:?})"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Idempotent: find a usable libtorch 2.11.0 or install it into `<root>/.venv`.
pub fn setup(root: &Path) -> Result<Torch> {
    if let Some(torch) = libtorch_from_env() {
        return Ok(torch);
    }
    let venv = venv_dir(root);
    let python = venv_python(root);
    if !python.exists() {
        println!("setup: creating the venv {}", venv.display());
        run_visible(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv",
        )
        .context("creating the project venv needs python3 with the venv module (Debian: apt-get install python3-venv)")?;
    }

    match probe_venv_torch(&python) {
        Ok((version, lib)) if version_matches(&version) => {
            return Ok(venv_ready(venv, version, lib));
        }
        Ok((version, _)) => println!(
            "setup: the venv has torch {version}, tch 0.24 needs {TORCH_VERSION}; reinstalling"
        ),
        Err(why) => println!("setup: no usable torch in {} yet: {why}", venv.display()),
    }

    pip_install_torch(&python, &venv)?;
    match probe_venv_torch(&python) {
        Ok((version, lib)) if version_matches(&version) => Ok(venv_ready(venv, version, lib)),
        Ok((version, _)) => bail!(
            "after pip install the venv {} reports torch {version}, not {TORCH_VERSION}",
            venv.display()
        ),
        Err(why) => bail!(
            "after pip install, torch in {} is still unusable: {why}",
            venv.display()
        ),
    }
}

/// The libtorch `LIBTORCH` names, when it is 2.11.0; otherwise says why it is passed over.
fn libtorch_from_env() -> Option<Torch> {
    let dir = PathBuf::from(std::env::var_os("LIBTORCH").filter(|v| !v.is_empty())?);
    match libtorch_version(&dir) {
        Some(v) if version_matches(&v) => {
            println!("setup: using LIBTORCH={} (libtorch {v})", dir.display());
            return Some(Torch::Libtorch { dir, version: v });
        }
        Some(v) => println!(
            "setup: ignoring LIBTORCH={}: it is libtorch {v}, tch 0.24 needs {TORCH_VERSION}; using the project venv",
            dir.display()
        ),
        None => println!(
            "setup: ignoring LIBTORCH={}: no build-version or version.txt there; using the project venv",
            dir.display()
        ),
    }
    None
}

/// The venv's usable torch, announced.
fn venv_ready(venv: PathBuf, version: String, lib: PathBuf) -> Torch {
    println!(
        "setup: torch {version} ready in {} (libs: {})",
        venv.display(),
        lib.display()
    );
    Torch::Venv { venv, version, lib }
}

/// The torch wheel set takes about 4.6 GB installed, and pip holds the ~2.9 GB of downloaded
/// wheels at the same time; below this much free space the install dies half-way with ENOSPC.
const TORCH_INSTALL_BYTES: u64 = 8_000_000_000;

/// Free bytes on the filesystem holding `dir`, from POSIX `df -Pk` (`None` when it cannot say).
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn pip_install_torch(python: &Path, venv: &Path) -> Result<()> {
    if let Some(free) = free_bytes(venv) {
        if free < TORCH_INSTALL_BYTES {
            bail!(
                "{}: {:.1} GB free on this disk; installing torch {TORCH_VERSION} needs about {:.0} GB (4.6 GB installed plus the downloaded wheels)",
                venv.display(),
                free as f64 / 1e9,
                TORCH_INSTALL_BYTES as f64 / 1e9
            );
        }
    }
    println!(
        "setup: pip install torch=={TORCH_VERSION} into {} (PyPI CUDA 13 wheel set, about 4.6 GB; this takes a while)",
        venv.display()
    );
    run_visible(
        Command::new(python)
            // No pip cache: it would hold a second copy of the ~4.6 GB of wheels.
            .args(["-m", "pip", "install", "--no-cache-dir"])
            .arg(format!("torch=={TORCH_VERSION}")),
        "pip install torch",
    )
}

/// A `cargo` command carrying the build environment torch-sys needs.
pub fn cargo(torch: &Torch) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    apply_build_env(&mut cmd, torch);
    cmd
}

/// Sets (and clears) the variables torch-sys reads, so the two ways never mix.
pub fn apply_build_env(cmd: &mut Command, torch: &Torch) {
    match torch {
        Torch::Libtorch { dir, .. } => {
            cmd.env("LIBTORCH", dir).env_remove("LIBTORCH_USE_PYTORCH");
        }
        Torch::Venv { venv, .. } => {
            let bin = venv.join("bin");
            let mut paths = vec![bin];
            if let Some(old) = std::env::var_os("PATH") {
                paths.extend(std::env::split_paths(&old));
            }
            let path =
                std::env::join_paths(paths).unwrap_or_else(|_| venv.join("bin").into_os_string());
            cmd.env("LIBTORCH_USE_PYTORCH", "1")
                .env("VIRTUAL_ENV", venv)
                .env("PATH", path)
                .env_remove("LIBTORCH")
                .env_remove("PYTHONHOME");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_strings() {
        assert!(version_matches("2.11.0"));
        assert!(version_matches("2.11.0+cu130\n"));
        assert!(version_matches("2.11.0+cpu"));
        assert!(!version_matches("2.11.1"));
        assert!(!version_matches("2.11.01"));
        assert!(!version_matches("2.10.0+cu128"));
        assert!(!version_matches(""));
    }

    #[test]
    fn libtorch_version_files() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(libtorch_version(d.path()), None);
        std::fs::write(d.path().join("version.txt"), "2.11.0\n").unwrap();
        assert_eq!(libtorch_version(d.path()).as_deref(), Some("2.11.0"));
        std::fs::write(d.path().join("build-version"), "2.11.0+cu130\n").unwrap();
        assert_eq!(libtorch_version(d.path()).as_deref(), Some("2.11.0+cu130"));
    }

    #[test]
    fn venv_env_puts_venv_first() {
        let torch = Torch::Venv {
            venv: PathBuf::from("/x/.venv"),
            version: "2.11.0".into(),
            lib: PathBuf::from("/x/.venv/lib/torch/lib"),
        };
        let mut cmd = Command::new("true");
        apply_build_env(&mut cmd, &torch);
        let envs: Vec<_> = cmd.get_envs().collect();
        let get = |k: &str| envs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert_eq!(
            get("LIBTORCH_USE_PYTORCH"),
            Some(Some(std::ffi::OsStr::new("1")))
        );
        assert_eq!(
            get("VIRTUAL_ENV"),
            Some(Some(std::ffi::OsStr::new("/x/.venv")))
        );
        assert_eq!(get("LIBTORCH"), Some(None));
        let path = get("PATH").unwrap().unwrap();
        let first = std::env::split_paths(path).next().unwrap();
        assert_eq!(first, PathBuf::from("/x/.venv/bin"));
    }
}
