//! `cargo xtask train`: the whole job from a recipe. The source model (fetched and imported,
//! or a folder, copied with a longer context when the recipe says so), surgery (and the
//! from-scratch control's, `rr surgery --init random`), synthetic data and packing, training
//! with the curriculum (held-out loss at the test recurrences before and after), the control
//! and the static baseline on the same data for the same steps, `rr eval --tasks synth` of all
//! three on held-out problems at the test recurrences (`[evaluate]`), and a report putting them
//! side by side, all under `runs/<name>/`. Finished steps are reused when run again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rr_recipe::{EvaluateSection, PrepareSection, TrainConfig};

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
        job.surgery(&source, &init, None)?;
    }
    let control = job.prepare.control.as_ref().map(|c| root.join(c));
    if let Some(control) = control.as_ref().filter(|c| !c.join("config.json").exists()) {
        job.surgery(&source, control, Some("random"))?;
    }
    let packed = root.join(&packed);
    if !packed.join("manifest.json").exists() {
        job.pack(&init, &packed)?;
    }
    let train_dir = job.run.join("train");
    job.train(&train_dir, false)?;
    let control_dir = job.run.join("control");
    if control.is_some() {
        job.train(&control_dir, true)?;
    }
    let baseline_dir = job.run.join("baseline");
    let baseline = job
        .recipe
        .baseline
        .is_some()
        .then_some(baseline_dir.as_path());
    if let Some(baseline_dir) = baseline {
        job.train_baseline(baseline_dir)?;
    }
    let evals = match &job.recipe.evaluate {
        Some(e) => Some(job.evaluate(e, &train_dir, &control_dir, control.is_some(), baseline)?),
        None => None,
    };
    job.report(&train_dir, baseline, evals.as_ref())?;
    println!(
        "done in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        job.run.join("report.md").display()
    );
    Ok(())
}

/// The `rr eval` results the report puts side by side.
struct Evals {
    retrofit: PathBuf,
    /// The control's run directory and results.
    control: Option<(PathBuf, PathBuf)>,
}

/// A finished run's last checkpoint, `checkpoints/step-NNNNNN`.
fn final_checkpoint(run_dir: &Path, steps: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{steps:06}"))
}

/// Copies the model folder `source` (its regular files) into `out` with `config.json`'s
/// `max_position_embeddings` set to `tokens`.
fn copy_with_context(source: &Path, out: &Path, tokens: usize) -> Result<()> {
    let config_path = source.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{}: cannot read", config_path.display()))?;
    let mut config: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", config_path.display()))?;
    config["max_position_embeddings"] = tokens.into();
    let staging = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("{}: cannot create", staging.display()))?;
    for entry in std::fs::read_dir(source).with_context(|| format!("{}", source.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.file_name() != "config.json" {
            std::fs::copy(entry.path(), staging.join(entry.file_name()))
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    std::fs::write(
        staging.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    std::fs::rename(&staging, out).with_context(|| format!("{}: cannot write", out.display()))
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
            return crate::fetch_model::fetch_smollm2(self.root, &cache, self.torch);
        }
        let source = self.root.join(expand_shared(&self.prepare.source));
        match &self.prepare.context {
            None => Ok(source),
            Some(c) => {
                let out = self.root.join(&c.out);
                if !out.join("config.json").exists() {
                    copy_with_context(&source, &out, c.tokens)?;
                }
                Ok(out)
            }
        }
    }

    /// `rr surgery` from `source` into `init`, the recipe's starting model, or with
    /// `weights = Some("random")` the from-scratch control of the same shape.
    fn surgery(&self, source: &Path, init: &Path, weights: Option<&str>) -> Result<()> {
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
        let mut args = vec![
            "surgery",
            "--model",
            &source,
            "--layers",
            &layers,
            "--seed",
            &seed,
            "--mean-recurrence",
            &mean,
            "--out",
            &init,
        ];
        match weights {
            // The control's adapter is drawn with the rest (Takase init), never the identity.
            Some(w) => args.extend(["--init", w]),
            None => args.extend(["--adapter", self.prepare.adapter.as_str()]),
        }
        let what = if weights.is_some() {
            "surgery (from-scratch control)"
        } else {
            "surgery"
        };
        self.step(what, &args)
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

    /// `rr train` of the retrofit (or with `control` the from-scratch control) into
    /// `train_dir`, resumed when it has checkpoints.
    fn train(&self, train_dir: &Path, control: bool) -> Result<()> {
        let config = self.config.to_str().context("config path is not UTF-8")?;
        let train_dir_s = lossy(train_dir);
        let mut args = vec!["train", "--config", config, "--run-dir", &train_dir_s];
        args.extend(resume_flag(train_dir));
        if control {
            args.push("--control");
        }
        self.extend_parallel(&mut args);
        let what = if control {
            "training the from-scratch control (same recipe)"
        } else {
            "training the retrofit"
        };
        self.step(what, &args)
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

    /// `rr report` into `runs/<name>`, against the baseline when there is one, with the
    /// evaluations side by side when there are some.
    fn report(
        &self,
        train_dir: &Path,
        baseline_dir: Option<&Path>,
        evals: Option<&Evals>,
    ) -> Result<()> {
        let (train_s, run_s) = (lossy(train_dir), lossy(&self.run));
        let baseline_s = baseline_dir.map(lossy);
        let mut args = vec!["report".to_string(), train_s, "--out".into(), run_s];
        if let Some(baseline_s) = baseline_s {
            args.extend(["--baseline".into(), baseline_s]);
        }
        if let Some(e) = evals {
            args.extend(["--eval".into(), lossy(&e.retrofit)]);
            if let Some((control_dir, control_eval)) = &e.control {
                args.extend(["--control".into(), lossy(control_dir)]);
                args.extend(["--control-eval".into(), lossy(control_eval)]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.step("report", &args)?;
        if let Some(copy) = self
            .recipe
            .evaluate
            .as_ref()
            .and_then(|e| e.plot_copy.as_ref())
        {
            let plot = self.run.join("accuracy_by_difficulty.svg");
            std::fs::copy(&plot, self.root.join(copy))
                .with_context(|| format!("cannot copy {} to {}", plot.display(), copy.display()))?;
        }
        Ok(())
    }

    /// `rr eval --tasks synth` on held-out problems (seed + 1; training's have the recipe's
    /// seed) at every test recurrence: the retrofit with the baseline beside it, then the
    /// control. Results already there are reused.
    fn evaluate(
        &self,
        e: &EvaluateSection,
        train_dir: &Path,
        control_dir: &Path,
        control: bool,
        baseline_dir: Option<&Path>,
    ) -> Result<Evals> {
        let test = self.run.join("data/test.jsonl");
        if !test.exists() {
            let (n, steps, seed) = (
                e.synth_problems.to_string(),
                e.synth_max_steps.to_string(),
                (self.recipe.seed + 1).to_string(),
            );
            let test_s = lossy(&test);
            let args = [
                "data",
                "synth-math",
                "--problems",
                &n,
                "--max-steps",
                &steps,
            ];
            let args = [&args[..], &["--seed", &seed, "--out", &test_s]].concat();
            self.step("held-out problems", &args)?;
        }
        let eval_dir = self.run.join("eval");
        let steps = self.recipe.training.steps;
        let retrofit = eval_dir.join("retrofit.json");
        let baseline = baseline_dir.map(|b| final_checkpoint(b, steps));
        self.eval(
            e,
            &test,
            &final_checkpoint(train_dir, steps),
            &retrofit,
            baseline.as_deref(),
        )?;
        // The control at r = 1 and at the trained mean only: its whole sweep would double the
        // evaluation's cost, and the comparison is at the mean.
        let control = if control {
            let out = eval_dir.join("control.json");
            let mean = self.recipe.mean_recurrence().unwrap_or(1);
            let mut recurrences = vec![1, mean];
            recurrences.dedup();
            let at = EvaluateSection {
                recurrences,
                ..e.clone()
            };
            self.eval(
                &at,
                &test,
                &final_checkpoint(control_dir, steps),
                &out,
                None,
            )?;
            Some((control_dir.to_path_buf(), out))
        } else {
            None
        };
        Ok(Evals { retrofit, control })
    }

    /// One `rr eval --tasks synth` of `model` into `out`, unless `out` is there.
    fn eval(
        &self,
        e: &EvaluateSection,
        test: &Path,
        model: &Path,
        out: &Path,
        baseline: Option<&Path>,
    ) -> Result<()> {
        if out.exists() {
            return Ok(());
        }
        let recurrences: Vec<String> = e.recurrences.iter().map(|r| r.to_string()).collect();
        let mut args = vec![
            "eval".to_string(),
            "--model".into(),
            lossy(model),
            "--tasks".into(),
            "synth".into(),
            "--data".into(),
            lossy(test),
            "--recurrences".into(),
            recurrences.join(","),
            "--max-new-tokens".into(),
            e.max_new_tokens.to_string(),
            "--batch-size".into(),
            e.batch_size.to_string(),
            "--out".into(),
            lossy(out),
        ];
        if let Some(b) = baseline {
            args.extend(["--baseline".into(), lossy(b)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.step("evaluation on held-out problems", &args)
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
        assert_eq!(r.prepare.source, "${RR_SHARED_DATA}/models/stories260K/hf");
        assert_eq!(r.prepare.layers, [1, 3, 1]);
        assert_eq!(r.prepare.format, "gsm8k-rr");
        assert_eq!(r.prepare.synth_max_steps, 4);
        assert_eq!(r.config.mean_recurrence(), Some(4));
        // The source copied with a context that holds an 8-step problem and its prompt; the
        // baseline starts from that copy, the control from its own surgery.
        let context = r.prepare.context.as_ref().unwrap();
        assert_eq!(context.tokens, 1024);
        assert_eq!(r.config.baseline.as_ref().unwrap().init, context.out);
        let control = r.config.control_variant().unwrap();
        assert_eq!(Some(&control.model.init), r.prepare.control.as_ref());
        assert_eq!(control.training, r.config.training);
        let e = r.config.evaluate.as_ref().unwrap();
        assert_eq!((e.synth_max_steps, e.recurrences.last()), (8, Some(&32)));
    }

    #[test]
    fn a_source_is_copied_with_its_context_and_nothing_else_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("src"), dir.path().join("out"));
        std::fs::create_dir(&src).unwrap();
        std::fs::write(
            src.join("config.json"),
            r#"{"max_position_embeddings": 512, "vocab_size": 512}"#,
        )
        .unwrap();
        std::fs::write(src.join("model.safetensors"), b"weights").unwrap();
        copy_with_context(&src, &out, 1024).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            config,
            serde_json::json!({"max_position_embeddings": 1024, "vocab_size": 512})
        );
        assert_eq!(
            std::fs::read(out.join("model.safetensors")).unwrap(),
            b"weights"
        );
        assert!(!out.with_extension("partial").exists());
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
