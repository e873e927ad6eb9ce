//! The CUDA headers the torch wheel lacks, for the NCCL and CUDA-graph parts of the shim in
//! `crates/rr-torch-ext` (tch-notes §6). The wheel set brings `nvidia/cu13/include` (the runtime,
//! cuBLAS, NCCL) but not `crt/host_config.h` nor `nv/target`, which `cuda_runtime.h` pulls in;
//! the header-only wheels `nvidia-cuda-crt` and `nvidia-cuda-cccl` have them. They are fetched
//! with `pip download --no-deps` and their `nvidia/cu13/include` unpacked into
//! `<root>/.deps/cuda/include` (git-ignored), where the shim's build script looks. Nothing is
//! installed into the venv.
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::torch_env::{self, Torch};

/// The two header-only wheels, pinned to the CUDA 13.0 toolkit the torch 2.11 wheel set uses.
const WHEELS: [&str; 2] = ["nvidia-cuda-crt==13.0.88", "nvidia-cuda-cccl==13.0.85"];

/// The folder inside each wheel that holds its headers.
const WHEEL_INCLUDE: &str = "nvidia/cu13/include/";

/// Where the headers land; the shim's build script reads the same path.
pub fn include_dir(root: &Path) -> PathBuf {
    root.join(".deps/cuda/include")
}

/// Makes sure the headers are there when the torch wheel has CUDA; fetches them otherwise. Any
/// failure is a warning: rr then builds without NCCL and CUDA graphs.
pub fn ensure_headers(root: &Path, torch: &Torch) {
    let Torch::Venv { lib, .. } = torch else {
        return; // a LIBTORCH folder ships no CUDA headers to complete
    };
    if !lib.join("libtorch_cuda.so").exists() {
        return;
    }
    if let Err(e) = fetch(root) {
        eprintln!(
            "warning: CUDA headers for NCCL unavailable ({e:#}); rr will build without NCCL \
             and CUDA graphs"
        );
    }
}

fn fetch(root: &Path) -> Result<()> {
    let dest = include_dir(root);
    if dest.join("crt/host_config.h").exists() && dest.join("nv/target").exists() {
        return Ok(());
    }
    let download = root.join(".deps/download-cuda");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)
        .with_context(|| format!("{}: cannot create", download.display()))?;
    eprintln!(
        "fetching CUDA headers ({}) into {}",
        WHEELS.join(", "),
        dest.display()
    );
    let python = torch_env::helper_python(root);
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(&download)
        .args(WHEELS)
        .status()
        .with_context(|| format!("cannot run {} -m pip", python.display()))?;
    if !status.success() {
        bail!("pip download {} failed ({status})", WHEELS.join(" "));
    }
    // Unpacked beside the destination, then renamed: a half-unpacked folder never looks complete.
    let partial = root.join(".deps/cuda.partial");
    let _ = fs::remove_dir_all(&partial);
    for entry in fs::read_dir(&download)? {
        let wheel = entry?.path();
        if wheel.extension().is_some_and(|x| x == "whl") {
            unpack_includes(&wheel, &partial.join("include"))?;
        }
    }
    let _ = fs::remove_dir_all(root.join(".deps/cuda"));
    fs::rename(&partial, root.join(".deps/cuda"))
        .with_context(|| format!("{}: cannot rename into place", partial.display()))?;
    fs::remove_dir_all(&download).ok();
    crate::gloo::touch_shim(root)
}

/// Every file under the wheel's `nvidia/cu13/include/` into `dest`, same relative paths.
fn unpack_includes(wheel: &Path, dest: &Path) -> Result<()> {
    let file = fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a readable wheel", wheel.display()))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        // enclosed_name refuses absolute paths and `..`.
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let Ok(relative) = name.strip_prefix(WHEEL_INCLUDE) else {
            continue;
        };
        if entry.is_dir() || relative.as_os_str().is_empty() {
            continue;
        }
        let out = dest.join(relative);
        fs::create_dir_all(out.parent().context("a header path has a parent")?)?;
        let mut writer =
            fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
        std::io::copy(&mut entry, &mut writer)
            .with_context(|| format!("unpacking {} from {}", name.display(), wheel.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn only_the_include_folder_is_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        let mut zip = zip::ZipWriter::new(fs::File::create(&wheel).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for (name, body) in [
            ("nvidia/cu13/include/nv/target", "T"),
            ("nvidia/cu13/include/crt/host_config.h", "H"),
            ("nvidia/cu13/lib/cmake/x.cmake", "no"),
            ("nvidia_cuda_crt-13.0.88.dist-info/RECORD", "no"),
        ] {
            zip.start_file(name, opts).unwrap();
            zip.write_all(body.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
        let dest = dir.path().join("include");
        unpack_includes(&wheel, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("nv/target")).unwrap(), "T");
        assert_eq!(
            fs::read_to_string(dest.join("crt/host_config.h")).unwrap(),
            "H"
        );
        let mut top: Vec<_> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        top.sort();
        assert_eq!(top, ["crt", "nv"]);
    }
}
