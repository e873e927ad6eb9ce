//! `cargo xtask bench-serve`: builds `rr` in release, makes the default model (a (1,3,1)
//! retrofit of the shared stories260K) and runs `rr bench-serve` (crates/rr-serve/src/bench.rs),
//! the same benchmark the GPU bundle runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::torch_env::Torch;

#[derive(clap::Args, Debug)]
pub struct BenchServeArgs {
    /// Model directory (default: a (1,3,1) `rr surgery` retrofit of the shared stories260K)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu, cuda or auto
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Concurrent clients, one level each
    #[arg(long, default_value = "1,4,16,64")]
    pub clients: String,
    /// New tokens per request
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Output folder (default: runs/bench-serve)
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(root: &Path, torch: &Torch, args: &BenchServeArgs) -> Result<()> {
    let rr = crate::build_rr_profile(root, torch, true)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("runs/bench-serve"));
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => retrofit(&rr, root, &out)?,
    };
    let status = Command::new(&rr)
        .args([
            "bench-serve",
            "--device",
            &args.device,
            "--clients",
            &args.clients,
        ])
        .args(["--max-tokens", &args.max_tokens.to_string()])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .status()
        .context("cannot run rr bench-serve")?;
    if !status.success() {
        bail!("rr bench-serve failed ({status})");
    }
    Ok(())
}

/// A (1,3,1) retrofit of the shared stories260K in `out`.
fn retrofit(rr: &Path, root: &Path, out: &Path) -> Result<PathBuf> {
    let data = std::env::var_os("RR_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"));
    let source = data.join("models/stories260K/hf");
    if !source.join("config.json").exists() {
        bail!(
            "{}: stories260K not found (set RR_SHARED_DATA or pass --model)",
            source.display()
        );
    }
    let dir = out.join("stories260K-retrofit");
    let status = Command::new(rr)
        .args(["surgery", "--layers", "1,3,1", "--force", "--model"])
        .arg(&source)
        .arg("--out")
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .context("cannot run rr surgery")?;
    if !status.success() {
        bail!("rr surgery failed ({status})");
    }
    Ok(dir)
}
