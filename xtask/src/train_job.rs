//! `cargo xtask train`: the whole job from a recipe. Fetch and import the source model,
//! surgery, synthetic data and packing, training with the curriculum (held-out loss at the
//! test recurrences before and after), the static baseline on the same data with equal FLOPs,
//! and a report, all under `runs/<name>/`. Finished steps are reused when run again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::torch_env::Torch;

/// The parts of a recipe this job needs (the trainer validates the whole file).
struct Recipe {
    name: String,
    seed: u64,
    source: String,
    layers: [u64; 3],
    adapter: String,
    mean_recurrence: u64,
    synth_problems: u64,
    synth_max_steps: u64,
    inputs: Vec<PathBuf>,
    format: String,
    seq_len: u64,
    init: PathBuf,
    packed: PathBuf,
    has_baseline: bool,
}

fn read_recipe(path: &Path) -> Result<Recipe> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let v: toml::Value = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().replace('\n', " ")))?;
    let ctx = |what: &str| format!("{}: {what}", path.display());
    let prep = v.get("prepare").with_context(|| {
        ctx("no [prepare] section: `cargo xtask train` needs one (see configs/default.toml)")
    })?;
    let int = |t: &toml::Value, k: &str| t.get(k).and_then(|x| x.as_integer()).map(|x| x as u64);
    let s = |t: &toml::Value, k: &str| t.get(k).and_then(|x| x.as_str()).map(String::from);
    let layers: Vec<u64> = prep
        .get("layers")
        .and_then(|l| l.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_integer())
                .map(|x| x as u64)
                .collect()
        })
        .unwrap_or_default();
    if layers.len() != 3 {
        bail!(ctx("prepare.layers must be [P, B, C]"));
    }
    let train = v
        .get("data")
        .and_then(|d| d.get("train"))
        .and_then(|t| t.as_array());
    let packed = train
        .and_then(|t| t.first())
        .and_then(|t| s(t, "path"))
        .with_context(|| ctx("data.train[0].path is missing"))?;
    Ok(Recipe {
        name: s(&v, "name").with_context(|| ctx("name is missing"))?,
        seed: int(&v, "seed").unwrap_or(0),
        source: s(prep, "source").with_context(|| ctx("prepare.source is missing"))?,
        layers: [layers[0], layers[1], layers[2]],
        adapter: s(prep, "adapter").unwrap_or_else(|| "default".into()),
        mean_recurrence: int(prep, "mean_recurrence")
            .with_context(|| ctx("prepare.mean_recurrence is missing"))?,
        synth_problems: int(prep, "synth_problems").unwrap_or(0),
        synth_max_steps: int(prep, "synth_max_steps").unwrap_or(4),
        inputs: prep
            .get("inputs")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .map(|p| PathBuf::from(expand_shared(p)))
                    .collect()
            })
            .unwrap_or_default(),
        format: s(prep, "format").unwrap_or_else(|| "gsm8k".into()),
        seq_len: int(prep, "seq_len").with_context(|| ctx("prepare.seq_len is missing"))?,
        init: PathBuf::from(
            v.get("model")
                .and_then(|m| s(m, "init"))
                .with_context(|| ctx("model.init is missing"))?,
        ),
        packed: PathBuf::from(packed),
        has_baseline: v.get("baseline").is_some(),
    })
}

/// Replaces `${RR_SHARED_DATA}` with that variable, or `../shared/data` beside the workspace.
fn expand_shared(path: &str) -> String {
    let shared = std::env::var("RR_SHARED_DATA").unwrap_or_else(|_| "../shared/data".into());
    path.replace("${RR_SHARED_DATA}", &shared)
}

fn rr_step(root: &Path, rr: &Path, what: &str, args: &[&str]) -> Result<()> {
    println!("== {what}: rr {}", args.join(" "));
    let status = Command::new(rr)
        .current_dir(root)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", rr.display()))?;
    if !status.success() {
        bail!("{what} failed ({status}); see the message above");
    }
    Ok(())
}

pub fn run(root: &Path, torch: &Torch, config: &Path) -> Result<()> {
    let started = Instant::now();
    let config = if config.is_absolute() {
        config.to_path_buf()
    } else {
        root.join(config)
    };
    let recipe = read_recipe(&config)?;
    let run = root.join("runs").join(&recipe.name);
    let rr = crate::build_rr(root, torch)?;
    let s = |p: &Path| p.to_string_lossy().into_owned();

    let source = if recipe.source == "smollm2" {
        let cache = crate::fetch_model::cache_dir(root, None);
        crate::fetch_model::fetch_smollm2(root, &cache, torch)?
    } else {
        root.join(&recipe.source)
    };
    let init = root.join(&recipe.init);
    if !init.join("config.json").exists() {
        let layers = format!(
            "{},{},{}",
            recipe.layers[0], recipe.layers[1], recipe.layers[2]
        );
        let (seed, mean) = (recipe.seed.to_string(), recipe.mean_recurrence.to_string());
        rr_step(
            root,
            &rr,
            "surgery",
            &[
                "surgery",
                "--model",
                &s(&source),
                "--layers",
                &layers,
                "--adapter",
                &recipe.adapter,
                "--seed",
                &seed,
                "--mean-recurrence",
                &mean,
                "--out",
                &s(&init),
            ],
        )?;
    }
    let packed = root.join(&recipe.packed);
    if !packed.join("manifest.json").exists() {
        let mut inputs: Vec<PathBuf> = recipe.inputs.iter().map(|p| root.join(p)).collect();
        if recipe.synth_problems > 0 {
            let synth = run.join("data/synth.jsonl");
            if !synth.exists() {
                std::fs::create_dir_all(run.join("data"))?;
                let (n, steps, seed) = (
                    recipe.synth_problems.to_string(),
                    recipe.synth_max_steps.to_string(),
                    recipe.seed.to_string(),
                );
                rr_step(
                    root,
                    &rr,
                    "synthetic problems",
                    &[
                        "data",
                        "synth-math",
                        "--problems",
                        &n,
                        "--max-steps",
                        &steps,
                        "--seed",
                        &seed,
                        "--out",
                        &s(&synth),
                    ],
                )?;
            }
            inputs.push(synth);
        }
        if inputs.is_empty() {
            bail!(
                "{}: no data: set prepare.synth_problems or prepare.inputs",
                config.display()
            );
        }
        let mut args = vec![
            "data".to_string(),
            "pack".into(),
            "--tokenizer".into(),
            s(&init),
            "--format".into(),
            recipe.format.clone(),
            "--seq-len".into(),
            recipe.seq_len.to_string(),
            "--out".into(),
            s(&packed),
            "--heldout-fraction".into(),
            "0.05".into(),
            "--input".into(),
        ];
        args.extend(inputs.iter().map(|p| s(p)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rr_step(root, &rr, "packing", &args)?;
    }
    let train_dir = run.join("train");
    let resume = |dir: &Path| {
        if dir.join("checkpoints").exists() {
            vec!["--resume"]
        } else {
            vec![]
        }
    };
    let mut args = vec![
        "train",
        "--config",
        config.to_str().context("config path is not UTF-8")?,
    ];
    let train_s = s(&train_dir);
    args.extend(["--run-dir", &train_s]);
    args.extend(resume(&train_dir));
    rr_step(root, &rr, "training the retrofit", &args)?;
    let baseline_dir = run.join("baseline");
    let baseline_s = s(&baseline_dir);
    if recipe.has_baseline {
        let mut args = vec![
            "train",
            "--config",
            config.to_str().unwrap_or_default(),
            "--baseline",
            "--match-flops",
            &train_s,
            "--run-dir",
            &baseline_s,
        ];
        args.extend(resume(&baseline_dir));
        rr_step(
            root,
            &rr,
            "training the static baseline (equal FLOPs)",
            &args,
        )?;
    }
    let run_s = s(&run);
    let mut args = vec!["report", &train_s, "--out", &run_s];
    if recipe.has_baseline {
        args.extend(["--baseline", &baseline_s]);
    }
    rr_step(root, &rr, "report", &args)?;
    println!(
        "done in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        run.join("report.md").display()
    );
    Ok(())
}
