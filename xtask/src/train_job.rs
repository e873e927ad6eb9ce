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

/// The path as an argument for `rr`.
fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `--resume` when `dir` already holds checkpoints of an earlier run.
fn resume_flag(dir: &Path) -> Option<&'static str> {
    dir.join("checkpoints").exists().then_some("--resume")
}

pub fn run(root: &Path, torch: &Torch, config: &Path, nproc_per_node: Option<usize>) -> Result<()> {
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
    let job = Job {
        run: root.join("runs").join(&recipe.name),
        rr: crate::build_rr(root, torch)?,
        root,
        torch,
        config,
        recipe,
        prepare,
        nproc_per_node: nproc_per_node.map(|n| n.to_string()),
    };
    let source = job.source_model()?;
    let init = root.join(&job.recipe.model.init);
    if !init.join("config.json").exists() {
        job.surgery(&source, &init)?;
    }
    let packed = root.join(&packed);
    if !packed.join("manifest.json").exists() {
        job.pack(&init, &packed)?;
    }
    let train_dir = job.run.join("train");
    job.train(&train_dir)?;
    let baseline_dir = job.run.join("baseline");
    let baseline = job
        .recipe
        .baseline
        .is_some()
        .then_some(baseline_dir.as_path());
    if let Some(baseline_dir) = baseline {
        job.train_baseline(baseline_dir)?;
    }
    job.report(&train_dir, baseline)?;
    println!(
        "done in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        job.run.join("report.md").display()
    );
    Ok(())
}

/// One run of the job: the recipe and where its steps read and write.
struct Job<'a> {
    root: &'a Path,
    torch: &'a Torch,
    /// The recipe file, absolute.
    config: PathBuf,
    recipe: TrainConfig,
    prepare: PrepareSection,
    /// `runs/<name>`.
    run: PathBuf,
    /// The `rr` binary.
    rr: PathBuf,
    /// `rr train --nproc-per-node` for both trainings (data-parallel on local ranks).
    nproc_per_node: Option<String>,
}

impl Job<'_> {
    fn step(&self, what: &str, args: &[&str]) -> Result<()> {
        rr_step(self.root, &self.rr, what, args)
    }

    /// The model to retrofit: SmolLM2 fetched and imported, or a folder under the workspace.
    fn source_model(&self) -> Result<PathBuf> {
        if self.prepare.source == "smollm2" {
            let cache = crate::fetch_model::cache_dir(self.root, None);
            crate::fetch_model::fetch_smollm2(self.root, &cache, self.torch)
        } else {
            Ok(self.root.join(&self.prepare.source))
        }
    }

    /// `rr surgery` from `source` into `init`, the recipe's starting model.
    fn surgery(&self, source: &Path, init: &Path) -> Result<()> {
        let [prelude, core, coda] = self.prepare.layers;
        let layers = format!("{prelude},{core},{coda}");
        // The recipe states the mean recurrence once, as [curriculum.mean] target (validation
        // guarantees a curriculum when there is a [prepare]).
        let mean = self
            .recipe
            .mean_recurrence()
            .context("the recipe has no [curriculum.mean] target")?;
        let (seed, mean) = (self.recipe.seed.to_string(), mean.to_string());
        let (source, init) = (lossy(source), lossy(init));
        self.step(
            "surgery",
            &[
                "surgery",
                "--model",
                &source,
                "--layers",
                &layers,
                "--adapter",
                &self.prepare.adapter,
                "--seed",
                &seed,
                "--mean-recurrence",
                &mean,
                "--out",
                &init,
            ],
        )
    }

    /// `rr data pack` of the recipe's inputs and synthetic problems, with `init`'s tokenizer.
    fn pack(&self, init: &Path, packed: &Path) -> Result<()> {
        let mut inputs: Vec<PathBuf> = self
            .prepare
            .inputs
            .iter()
            .map(|p| self.root.join(expand_shared(&p.to_string_lossy())))
            .collect();
        if self.prepare.synth_problems > 0 {
            inputs.push(self.synth_problems()?);
        }
        if inputs.is_empty() {
            bail!(
                "{}: no data: set prepare.synth_problems or prepare.inputs",
                self.config.display()
            );
        }
        let mut args = vec![
            "data".to_string(),
            "pack".into(),
            "--tokenizer".into(),
            lossy(init),
            "--format".into(),
            self.prepare.format.clone(),
            "--seq-len".into(),
            self.prepare.seq_len.to_string(),
            "--out".into(),
            lossy(packed),
            "--heldout-fraction".into(),
            "0.05".into(),
            "--input".into(),
        ];
        args.extend(inputs.iter().map(|p| lossy(p)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.step("packing", &args)
    }

    /// `runs/<name>/data/synth.jsonl`, generated unless it is there.
    fn synth_problems(&self) -> Result<PathBuf> {
        let synth = self.run.join("data/synth.jsonl");
        if !synth.exists() {
            std::fs::create_dir_all(self.run.join("data"))?;
            let (n, steps, seed) = (
                self.prepare.synth_problems.to_string(),
                self.prepare.synth_max_steps.to_string(),
                self.recipe.seed.to_string(),
            );
            self.step(
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
                    &lossy(&synth),
                ],
            )?;
        }
        Ok(synth)
    }

    /// `rr train` of the retrofit into `train_dir`, resumed when it has checkpoints.
    fn train(&self, train_dir: &Path) -> Result<()> {
        let config = self.config.to_str().context("config path is not UTF-8")?;
        let train_dir_s = lossy(train_dir);
        let mut args = vec!["train", "--config", config, "--run-dir", &train_dir_s];
        args.extend(resume_flag(train_dir));
        self.extend_parallel(&mut args);
        self.step("training the retrofit", &args)
    }

    /// `rr train --baseline`: the recipe's optimizer settings and steps, as the authors train
    /// it; the report reads it at the retrofit's FLOPs off its held-out curve.
    fn train_baseline(&self, baseline_dir: &Path) -> Result<()> {
        let baseline_s = lossy(baseline_dir);
        let mut args = vec![
            "train",
            "--config",
            self.config.to_str().unwrap_or_default(),
            "--baseline",
            "--run-dir",
            &baseline_s,
        ];
        args.extend(resume_flag(baseline_dir));
        self.extend_parallel(&mut args);
        self.step(
            "training the static baseline (same optimizer and steps)",
            &args,
        )
    }

    fn extend_parallel<'s>(&'s self, args: &mut Vec<&'s str>) {
        if let Some(n) = &self.nproc_per_node {
            args.extend(["--nproc-per-node", n.as_str()]);
        }
    }

    /// `rr report` into `runs/<name>`, against the baseline when there is one.
    fn report(&self, train_dir: &Path, baseline_dir: Option<&Path>) -> Result<()> {
        let (train_s, run_s) = (lossy(train_dir), lossy(&self.run));
        let baseline_s = baseline_dir.map(lossy);
        let mut args = vec!["report", &train_s, "--out", &run_s];
        if let Some(baseline_s) = &baseline_s {
            args.extend(["--baseline", baseline_s]);
        }
        self.step("report", &args)
    }
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
