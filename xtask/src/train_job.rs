//! `cargo xtask train`: the whole job from a recipe. Fetch and import the source model,
//! surgery, synthetic data and packing, training with the curriculum (held-out loss at the
//! test recurrences before and after), the static baseline on the same data with equal FLOPs,
//! and a report, all under `runs/<name>/`. Finished steps are reused when run again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rr_recipe::{PrepareSection, TrainConfig};

use crate::torch_env::Torch;

/// What this job does with a recipe, read through the one recipe schema
/// ([`rr_recipe::TrainConfig`], which validates the whole file and supplies the defaults).
struct Recipe {
    config: TrainConfig,
    prepare: PrepareSection,
    /// The packed data directory to build: the first source of the first data phase.
    packed: PathBuf,
}

fn read_recipe(path: &Path) -> Result<Recipe> {
    let config = TrainConfig::from_path(path)?;
    let prepare = config.prepare.clone().with_context(|| {
        format!(
            "{}: no [prepare] section: `cargo xtask train` needs one (see configs/default.toml)",
            path.display()
        )
    })?;
    // Validation guarantees a first phase with a first source.
    let packed = config.data.phases()[0].train[0].path.clone();
    Ok(Recipe {
        config,
        prepare,
        packed,
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
    let Recipe {
        config: recipe,
        prepare,
        packed,
    } = read_recipe(&config)?;
    let run = root.join("runs").join(&recipe.name);
    let rr = crate::build_rr(root, torch)?;
    let s = |p: &Path| p.to_string_lossy().into_owned();

    let source = if prepare.source == "smollm2" {
        let cache = crate::fetch_model::cache_dir(root, None);
        crate::fetch_model::fetch_smollm2(root, &cache, torch)?
    } else {
        root.join(&prepare.source)
    };
    let init = root.join(&recipe.model.init);
    if !init.join("config.json").exists() {
        let layers = format!(
            "{},{},{}",
            prepare.layers[0], prepare.layers[1], prepare.layers[2]
        );
        // The recipe states the mean recurrence once, as [curriculum.mean] target (validation
        // guarantees a curriculum when there is a [prepare]).
        let mean = recipe
            .mean_recurrence()
            .context("the recipe has no [curriculum.mean] target")?;
        let (seed, mean) = (recipe.seed.to_string(), mean.to_string());
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
                &prepare.adapter,
                "--seed",
                &seed,
                "--mean-recurrence",
                &mean,
                "--out",
                &s(&init),
            ],
        )?;
    }
    let packed = root.join(&packed);
    if !packed.join("manifest.json").exists() {
        let mut inputs: Vec<PathBuf> = prepare
            .inputs
            .iter()
            .map(|p| root.join(expand_shared(&p.to_string_lossy())))
            .collect();
        if prepare.synth_problems > 0 {
            let synth = run.join("data/synth.jsonl");
            if !synth.exists() {
                std::fs::create_dir_all(run.join("data"))?;
                let (n, steps, seed) = (
                    prepare.synth_problems.to_string(),
                    prepare.synth_max_steps.to_string(),
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
            prepare.format.clone(),
            "--seq-len".into(),
            prepare.seq_len.to_string(),
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
    if recipe.baseline.is_some() {
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
    if recipe.baseline.is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn the_default_recipe_reads_through_the_typed_schema() {
        let r = read_recipe(&workspace().join("configs/default.toml")).unwrap();
        assert_eq!(r.config.name, "default");
        assert_eq!(r.packed, Path::new("runs/default/data/packed"));
        assert_eq!(r.prepare.source, "smollm2");
        assert_eq!(r.prepare.layers, [2, 4, 2]);
        assert_eq!(r.prepare.format, "gsm8k");
        assert_eq!(r.config.mean_recurrence(), Some(4));
        assert!(r.config.baseline.is_some());
    }

    #[test]
    fn a_recipe_without_prepare_or_with_unknown_keys_is_refused() {
        let text = std::fs::read_to_string(workspace().join("configs/default.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        let start = text.find("\n[prepare]").unwrap();
        let end = text.find("\n[model]").unwrap();
        std::fs::write(&p, format!("{}{}", &text[..start], &text[end..])).unwrap();
        let err = format!("{:#}", read_recipe(&p).err().unwrap());
        assert!(
            err.contains("r.toml") && err.contains("no [prepare]"),
            "{err}"
        );
        std::fs::write(&p, text.replace("\n[prepare]", "\n[prepare]\nlayer = 3")).unwrap();
        let err = format!("{:#}", read_recipe(&p).err().unwrap());
        assert!(
            err.contains("r.toml") && err.contains("unknown field `layer`"),
            "{err}"
        );
    }
}
