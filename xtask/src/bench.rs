//! `cargo xtask bench-recurrence`: rr's benchmark and the PyTorch reference on the same points,
//! side by side, and `cargo xtask gpu-bundle`: everything a GPU machine without cargo needs
//! to run them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::torch_env::{self, Torch};

/// Arguments shared with `rr bench recurrence`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// cpu, cuda or auto
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// tiny, smollm2, tinyllama or llama3.2-1b
    #[arg(long, default_value = "tiny")]
    pub shape: String,
    /// Layers prelude,core,coda (default: the shape's)
    #[arg(long)]
    pub layers: Option<String>,
    #[arg(long, default_value = "1,2,4,8,16,32")]
    pub recurrences: String,
    /// Iterations with gradient of the training points
    #[arg(long, default_value = "4,8")]
    pub backprop: String,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// PyTorch modes to run: eager, compile (default: eager,compile on CUDA, eager on CPU,
    /// where torch.compile's C++ build takes minutes per point)
    #[arg(long)]
    pub torch_modes: Option<String>,
    /// Skip the PyTorch reference
    #[arg(long)]
    pub no_reference: bool,
    /// Output folder (default: runs/bench/<shape>-<cpu|cuda>)
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(root: &Path, torch: &Torch, args: &BenchArgs) -> Result<()> {
    let rr = crate::build_rr_profile(root, torch, true)?;
    let bench_dir = root.join("runs/bench");
    std::fs::create_dir_all(&bench_dir)
        .with_context(|| format!("{}: cannot create", bench_dir.display()))?;
    // rr's result first (it resolves `--device auto`), then the folder named after it.
    let rr_tmp = bench_dir.join(format!(".{}-{}.rr.json", args.shape, std::process::id()));
    let mut cmd = Command::new(&rr);
    cmd.args(["bench", "recurrence", "--device", &args.device])
        .args(["--shape", &args.shape])
        .args(["--recurrences", &args.recurrences])
        .args(["--backprop", &args.backprop])
        .args(["--batch", &args.batch.to_string()])
        .args(["--seq", &args.seq.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--repeats", &args.repeats.to_string()])
        .arg("--out")
        .arg(&rr_tmp);
    if let Some(layers) = &args.layers {
        cmd.args(["--layers", layers]);
    }
    run_step(&mut cmd, "rr bench recurrence")?;
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&rr_tmp)
            .with_context(|| format!("{}: cannot read", rr_tmp.display()))?,
    )?;
    let device = result["spec"]["device"]
        .as_str()
        .unwrap_or("cpu")
        .to_string();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| bench_dir.join(format!("{}-{device}", args.shape)));
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    let rr_json = out.join("rr.json");
    std::fs::rename(&rr_tmp, &rr_json)
        .with_context(|| format!("{}: cannot write", rr_json.display()))?;

    let mut report = Command::new(&rr);
    report
        .args(["bench", "report"])
        .arg(&rr_json)
        .arg("--out")
        .arg(&out);
    if !args.no_reference {
        match reference_python(root) {
            Some(python) => {
                let modes = args.torch_modes.clone().unwrap_or_else(|| {
                    if device == "cuda" { "eager,compile" } else { "eager" }.to_string()
                });
                let torch_json = out.join("pytorch.json");
                let mut py = Command::new(&python);
                py.arg(root.join("bench/recurrent_ref.py"))
                    .arg("--spec")
                    .arg(&rr_json)
                    .arg("--out")
                    .arg(&torch_json)
                    .args(["--modes", &modes]);
                run_step(&mut py, "bench/recurrent_ref.py")?;
                report.arg("--reference").arg(&torch_json);
            }
            None => println!(
                "bench: no Python with torch found (run `cargo xtask setup`); rows carry no PyTorch ratio"
            ),
        }
    }
    run_step(&mut report, "rr bench report")?;
    Ok(())
}

/// The project venv's Python when it has torch (the same 2.11.0 that rr links).
fn reference_python(root: &Path) -> Option<PathBuf> {
    let python = torch_env::venv_python(root);
    let ok = Command::new(&python)
        .args(["-c", "import torch"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(python)
}

fn run_step(cmd: &mut Command, what: &str) -> Result<()> {
    println!("bench: {what}");
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The GPU run, one script under 10 minutes on an H200 (issues 12 and 15): a CUDA smoke test
/// of every command on a stories260K retrofit, CUDA-graph against eager decoding, NCCL at
/// world 1 with the trainer's all-reduce time, then the benchmarks beside the PyTorch
/// reference. Every step is logged and timed; a failing step does not stop the others.
const GPU_SCRIPT: &str = include_str!("gpu_run.sh");

/// Builds `rr` in release and writes `<target>/gpu-bundle/` with the binary, the PyTorch
/// reference and `run.sh`.
pub fn gpu_bundle(root: &Path, torch: &Torch) -> Result<PathBuf> {
    let rr = crate::build_rr_profile(root, torch, true)?;
    let dir = crate::target_dir(root).join("gpu-bundle");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("{}: cannot clear", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    std::fs::copy(&rr, dir.join("rr")).context("copying rr")?;
    std::fs::copy(
        root.join("bench/recurrent_ref.py"),
        dir.join("recurrent_ref.py"),
    )
    .context("copying bench/recurrent_ref.py")?;
    copy_smoke_assets(&dir.join("smoke"));
    let script = dir.join("run.sh");
    std::fs::write(&script, GPU_SCRIPT).context("writing run.sh")?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    let size: u64 = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "gpu-bundle: {} ({:.1} MB): run `./run.sh` there (needs Python torch 2.11.0 with CUDA)",
        dir.display(),
        size as f64 / 1e6
    );
    Ok(dir)
}

/// stories260K (HF layout) and 60 kB of TinyStories from the shared data, for the smoke and
/// data-parallel steps; without them run.sh skips those steps and says so.
fn copy_smoke_assets(smoke: &Path) {
    let shared = std::env::var_os("RR_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let copied = (|| -> Result<()> {
        let model = shared.join("models/stories260K/hf");
        std::fs::create_dir_all(smoke.join("stories260K"))?;
        for entry in std::fs::read_dir(&model).with_context(|| model.display().to_string())? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::copy(
                    &path,
                    smoke.join("stories260K").join(path.file_name().unwrap()),
                )?;
            }
        }
        let text =
            std::fs::read_to_string(shared.join("tinystories/tinystories_validation_head.txt"))?;
        let cut = (0..=60_000.min(text.len()))
            .rev()
            .find(|&i| text.is_char_boundary(i));
        std::fs::write(smoke.join("stories.txt"), &text[..cut.unwrap_or(0)])?;
        Ok(())
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(smoke);
        println!(
            "gpu-bundle: no smoke assets ({e:#}; set RR_SHARED_DATA): run.sh will skip those steps"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GPU script parses as bash and runs every step the issue asks for.
    #[test]
    fn gpu_script_is_valid_bash_and_complete() {
        let dir = std::env::temp_dir().join(format!("rr-gpu-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("run.sh");
        std::fs::write(&script, GPU_SCRIPT).unwrap();
        let status = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .status()
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert!(status.success(), "bash -n run.sh failed");
        for needle in [
            "LD_LIBRARY_PATH",
            "bench recurrence",
            "recurrent_ref.py",
            "bench report",
            "--batch \"${BATCH:-8}\" --seq \"${SEQ:-1024}\"",
            "--cuda-graphs \"$1\"",
            "gen off",
            "gen on",
            "WORLD_SIZE=1",
            "comm_s",
            "bench-serve --model",
        ] {
            assert!(GPU_SCRIPT.contains(needle), "run.sh lacks {needle}");
        }
    }
}
