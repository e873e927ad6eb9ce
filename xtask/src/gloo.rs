//! Gloo's C++ headers for the c10d shim in `crates/rr-torch-ext` (tch-notes §11). The torch
//! wheel has Gloo compiled into libtorch_cpu but not its `gloo/*.h` headers; Debian's
//! `libgloo-dev` has them. Without root: `apt-get download` + `dpkg-deb -x` into
//! `<root>/.deps/gloo` (git-ignored), where the shim's build script looks.
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Makes sure the headers are there (system or project-local); fetches them otherwise. A
/// machine without apt gets a warning: rr then builds for one process only.
pub fn ensure_headers(root: &Path) {
    if let Err(e) = fetch(root) {
        eprintln!("warning: Gloo headers unavailable ({e:#}); rr will train on one process only");
    }
}

fn fetch(root: &Path) -> Result<()> {
    let dest = root.join(".deps/gloo");
    if Path::new("/usr/include/gloo/config.h").exists()
        || dest.join("usr/include/gloo/config.h").exists()
    {
        return Ok(());
    }
    let download = root.join(".deps/download");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("{}: cannot create", download.display()))?;
    eprintln!(
        "fetching Gloo headers (libgloo-dev) into {}",
        dest.display()
    );
    let status = Command::new("apt-get")
        .args(["download", "libgloo-dev"])
        .current_dir(&download)
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get download libgloo-dev failed ({status})");
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&dest)
        .status()
        .context("cannot run dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", deb.display());
    }
    std::fs::remove_dir_all(&download).ok();
    touch_shim(root)
}

/// The shim's build script watches fetched headers only once they exist (cargo reruns a build
/// script on every build while a watched path is missing): after a fetch, make it run again.
pub fn touch_shim(root: &Path) -> Result<()> {
    let shim = root.join("crates/rr-torch-ext/csrc/dist.cpp");
    std::fs::File::options()
        .write(true)
        .open(&shim)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .with_context(|| format!("{}: cannot touch", shim.display()))
}
