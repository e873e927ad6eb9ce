//! Training recipes: one TOML file per run, unknown keys rejected. This crate is the one
//! schema of a recipe, with its defaults and validation; the trainer (`rr-train`), the `rr`
//! binary and `cargo xtask train` all read recipes through [`TrainConfig`]. It has no torch
//! dependency, so xtask can use it before libtorch is installed.
//!
//! ```toml
//! name = "default"
//! seed = 74
//!
//! [model]
//! init = "runs/default/retrofit"  # a recurrent (Raven) directory, or an ordinary one = static baseline
//!
//! [data]
//! train = [{ path = "runs/default/data/synth", weight = 1.0 }]
//! # phases = [{ until_step = 100, train = [...] }, { train = [...] }]   # optional
//!
//! [training]
//! steps = 60
//! micro_batch_size = 4
//! # activation_checkpointing = true   # recurrent models: recompute core iterations in backward
//! ...
//!
//! [curriculum.mean]   # recurrent models only
//! shape = "one_minus_sqrt"
//! target = 4
//! ramp_fraction = 0.75
//!
//! [lr]                # the schedule's shape; the optimizer's lr values are the peaks
//! kind = "warmup_stable_decay"
//! ...
//!
//! [optimizer]
//! kind = "muon"
//! ```
//!
//! Relative paths are resolved against the directory the command runs in. `[prepare]` and
//! `[baseline]` describe how `cargo xtask train` builds the inputs and the static baseline; the
//! trainer itself does not read them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rr_curriculum::{Curriculum, LrSchedule};
use serde::{Deserialize, Serialize};

mod optimizer;

pub use optimizer::{AdamWConfig, MuonConfig, OptimizerConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    pub model: ModelSection,
    pub data: DataSection,
    pub training: TrainingSection,
    /// Required for recurrent models; ignored by the static baseline.
    #[serde(default)]
    pub curriculum: Option<Curriculum>,
    pub lr: LrSchedule,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub prepare: Option<PrepareSection>,
    #[serde(default)]
    pub baseline: Option<BaselineSection>,
    #[serde(default)]
    pub evaluate: Option<EvaluateSection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The model directory training starts from: a retrofit, a static model, or the final
    /// checkpoint of an earlier run (a two-phase run is two recipes chained this way).
    pub init: PathBuf,
    /// A static model with tied embedding and head gets its own head, a copy of the
    /// embedding, before training (set by `[baseline] untie`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untie_head: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// A packed data directory (`rr data pack`).
    pub path: PathBuf,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// The phase runs for optimizer steps `< until_step`; the last phase has none.
    #[serde(default)]
    pub until_step: Option<usize>,
    pub train: Vec<DataSource>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// One mixture for the whole run (ignored when `phases` is given).
    #[serde(default)]
    pub train: Vec<DataSource>,
    /// Mixtures by phase, e.g. healing then math.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// Where the held-out rows come from (default: the first training source).
    #[serde(default)]
    pub heldout: Option<PathBuf>,
}

impl DataSection {
    /// Phases as given, or the single `train` mixture as one phase.
    pub fn phases(&self) -> Vec<Phase> {
        if self.phases.is_empty() {
            vec![Phase {
                until_step: None,
                train: self.train.clone(),
            }]
        } else {
            self.phases.clone()
        }
    }
}

fn default_grad_accum() -> usize {
    1
}
fn default_clip() -> f64 {
    1.0
}
fn default_device() -> String {
    "auto".into()
}
fn default_log_every() -> usize {
    1
}
fn default_keep_last() -> usize {
    2
}
fn default_eval_recurrences() -> Vec<usize> {
    vec![1, 2, 4, 8]
}
fn default_eval_rows() -> usize {
    16
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// Optimizer steps.
    pub steps: usize,
    /// Rows per micro-batch.
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "default_grad_accum")]
    pub grad_accum: usize,
    /// Global gradient-norm clip.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// cpu, cuda, cuda:N or auto.
    #[serde(default = "default_device")]
    pub device: String,
    /// Compute dtype: `f32` (default on CPU) or `bf16`. Master weights and optimizer state are
    /// always fp32.
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Checkpoint every N optimizer steps (0 = only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Checkpoints kept (the newest K).
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// Held-out evaluation every N steps (0 = only before and after training).
    #[serde(default)]
    pub eval_every: usize,
    /// Test recurrences of the held-out evaluation (recurrent models).
    #[serde(default = "default_eval_recurrences")]
    pub eval_recurrences: Vec<usize>,
    /// Held-out rows evaluated each time.
    #[serde(default = "default_eval_rows")]
    pub eval_rows: usize,
    /// Recompute each with-gradient core iteration in the backward pass instead of keeping its
    /// activations (recurrent models): the memory of k iterations becomes that of one plus k
    /// saved states, for one more forward of each. Absent from the hash when off, so existing
    /// runs resume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
}

/// Inputs that `cargo xtask train` prepares before training. The surgery's mean recurrence is
/// not given here: it is `[curriculum.mean] target` ([`TrainConfig::mean_recurrence`]), the one
/// place a recipe states it, so a recipe with `[prepare]` needs a `[curriculum]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareSection {
    /// `smollm2` (fetched and imported) or a model directory (`${RR_SHARED_DATA}` is replaced
    /// as in `inputs`).
    pub source: String,
    /// Where the job copies the source with its context (`max_position_embeddings`) set to
    /// `context`, for a model whose stated context is too short for the data (stories260K
    /// states 512; an 8-step problem and its prompt take about 760 of its tokens). RoPE has no
    /// learned positions; training at `seq_len` teaches the longer ones. The surgery and the
    /// baseline (`[baseline] init`) start from this copy.
    #[serde(default)]
    pub context: Option<ContextCopy>,
    /// Where `rr surgery --init random` writes the from-scratch control (the retrofit's shape
    /// with fresh weights, the paper's Fig. 2), which `rr train --control` trains with the
    /// recipe's own settings; no control when absent.
    #[serde(default)]
    pub control: Option<PathBuf>,
    /// Surgery split P,B,C.
    pub layers: [usize; 3],
    #[serde(default = "default_adapter")]
    pub adapter: String,
    /// Synthetic multi-step arithmetic problems to generate (0 = none).
    #[serde(default)]
    pub synth_problems: usize,
    #[serde(default = "default_synth_steps")]
    pub synth_max_steps: usize,
    /// Extra files to pack; `${RR_SHARED_DATA}` in a path is replaced by that variable
    /// (default `../shared/data`).
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// Format of the files packed (`rr data pack --format`): text, jsonl, gsm8k (the default),
    /// gsm8k-rr (GSM8K-style records, the synthetic problems too, as the `synth` evaluation
    /// prompt continues them) or math.
    #[serde(default = "default_format")]
    pub format: String,
    pub seq_len: usize,
}

/// `[prepare] context`: the source model copied with a longer context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextCopy {
    pub tokens: usize,
    pub out: PathBuf,
}

/// `[evaluate]`: what `cargo xtask train` scores after training, with `rr eval --tasks synth`:
/// held-out synthetic problems (drawn with seed `seed + 1`; training's are drawn with `seed`)
/// of `1..=synth_max_steps` steps, at each test recurrence, for the retrofit, the control and
/// the static baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSection {
    pub synth_problems: usize,
    pub synth_max_steps: usize,
    pub recurrences: Vec<usize>,
    /// `rr eval --max-new-tokens`: room for the longest answer.
    pub max_new_tokens: usize,
    /// `rr eval --batch-size`.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Where the job also copies the plot of accuracy per difficulty against test recurrence
    /// (the README shows the default recipe's, `docs/img/demo-accuracy.svg`).
    #[serde(default)]
    pub plot_copy: Option<PathBuf>,
}

fn default_eval_batch() -> usize {
    8
}

impl EvaluateSection {
    fn validate(&self) -> Result<()> {
        if self.synth_problems == 0 || self.max_new_tokens == 0 || self.batch_size == 0 {
            bail!("evaluate: synth_problems, max_new_tokens and batch_size must be at least 1");
        }
        if !(1..=64).contains(&self.synth_max_steps) {
            bail!("evaluate.synth_max_steps must be between 1 and 64");
        }
        let cap = rr_curriculum::sampler::MAX_CAP;
        if self.recurrences.is_empty() || self.recurrences.iter().any(|&r| r == 0 || r > cap) {
            bail!("evaluate.recurrences: give at least one, each between 1 and {cap}");
        }
        Ok(())
    }
}

fn default_adapter() -> String {
    "default".into()
}
fn default_synth_steps() -> usize {
    4
}
fn default_format() -> String {
    "gsm8k".into()
}

/// The static baseline as the authors train it: the unmodified source model on the same data,
/// schedule and seed, with the same optimizer settings and for the same number of steps
/// (`rr train --baseline`); the report compares it with the retrofit at equal training FLOPs,
/// read off its held-out curve. `--match-flops` instead trains it for as many steps as make
/// its total FLOPs equal to a retrofit run's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSection {
    /// The source model directory.
    pub init: PathBuf,
    /// Optimizer of the baseline (default: the recipe's own `[optimizer]`).
    #[serde(default)]
    pub optimizer: Option<OptimizerConfig>,
    /// Untie a tied embedding and head first, the head a copy of the embedding (Llama-3.2).
    #[serde(default)]
    pub untie: bool,
}

/// The recurrence a recipe trains a recurrent model for, as the model's `config.json` records
/// it (the Raven keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainedRecurrence {
    /// The curriculum's target mean recurrence (`[curriculum.mean] target`).
    pub mean_recurrence: usize,
    /// The backprop depth, the most iterations run with gradient (the sampler caps `k` at
    /// it): `[curriculum.sampler] backprop_depth`, or with a `[curriculum.backprop_ramp]` its
    /// depth at the last optimizer step.
    pub mean_backprop_depth: usize,
}

impl TrainConfig {
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config", path.display()))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| {
            let mut msg = e.to_string().replace('\n', " ");
            if msg.contains("unknown field `mean_recurrence`") {
                msg.push_str(
                    " (a recipe states the mean recurrence once, as [curriculum.mean] target)",
                );
            }
            anyhow::anyhow!("{}: {msg}", path.display())
        })?;
        cfg.validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let t = &self.training;
        let name = &self.name;
        if name.is_empty()
            || name.chars().all(|c| c == '.')
            || name.contains(['/', '\\', '\0'])
            || name.starts_with('-')
        {
            bail!("name `{name}` must be a plain directory name (no separators, not only dots)");
        }
        if t.steps == 0 || t.micro_batch_size == 0 || t.grad_accum == 0 {
            bail!("training.steps, micro_batch_size and grad_accum must be at least 1");
        }
        if t.max_grad_norm.is_nan() || t.max_grad_norm <= 0.0 {
            bail!("training.max_grad_norm must be positive");
        }
        if t.log_every == 0 {
            bail!("training.log_every must be at least 1");
        }
        if t.keep_last == 0 {
            bail!("training.keep_last must be at least 1");
        }
        if t.eval_recurrences.contains(&0) {
            bail!("training.eval_recurrences must be at least 1");
        }
        if let Some(r) = t
            .eval_recurrences
            .iter()
            .find(|&&r| r > rr_curriculum::sampler::MAX_CAP)
        {
            bail!(
                "training.eval_recurrences: {r} is beyond the supported {}",
                rr_curriculum::sampler::MAX_CAP
            );
        }
        if let Some(c) = &self.curriculum {
            c.validate()
                .map_err(|e| anyhow::anyhow!("curriculum: {e}"))?;
        }
        if t.activation_checkpointing && self.curriculum.is_none() {
            bail!(
                "training.activation_checkpointing recomputes the core iterations of a recurrent \
                 model: give a [curriculum] section or leave it off"
            );
        }
        if self.prepare.is_some() && self.curriculum.is_none() {
            bail!(
                "[prepare] builds a recurrent model, whose mean recurrence is \
                 [curriculum.mean] target: give a [curriculum] section"
            );
        }
        if let Some(e) = &self.evaluate {
            e.validate()?;
        }
        self.lr.validate().map_err(|e| anyhow::anyhow!("lr: {e}"))?;
        self.optimizer.validate().context("optimizer")?;
        if let Some(o) = self.baseline.as_ref().and_then(|b| b.optimizer.as_ref()) {
            o.validate().context("baseline.optimizer")?;
        }
        let phases = self.data.phases();
        if phases.iter().any(|p| p.train.is_empty()) {
            bail!("data: give at least one training source (data.train or each phase's train)");
        }
        for (i, p) in phases.iter().enumerate() {
            if p.train.iter().any(|s| s.weight.is_nan() || s.weight <= 0.0) {
                bail!("data: source weights must be positive");
            }
            if i + 1 < phases.len() && p.until_step.is_none() {
                bail!("data.phases: every phase but the last needs until_step");
            }
        }
        Ok(())
    }

    /// The mean recurrence of the recipe: `[curriculum.mean] target`, which the surgery writes
    /// into the retrofit's config and the curriculum trains towards. `None` without a
    /// curriculum.
    pub fn mean_recurrence(&self) -> Option<usize> {
        self.curriculum.as_ref().map(|c| c.mean.target)
    }

    /// What a recurrent model trained with this recipe is trained for, to be written into
    /// every checkpoint's `config.json` (`None` without a curriculum).
    pub fn trained_recurrence(&self) -> Option<TrainedRecurrence> {
        let c = self.curriculum.as_ref()?;
        let steps = self.training.steps;
        Some(TrainedRecurrence {
            mean_recurrence: c.mean.target,
            mean_backprop_depth: c.backprop_depth_at(steps.saturating_sub(1), steps),
        })
    }

    /// The static-baseline recipe: same data, schedule, steps and seed; the source model
    /// (untied when `[baseline] untie`); the recipe's optimizer unless `[baseline]` names
    /// another; no curriculum.
    pub fn baseline_variant(&self) -> Result<TrainConfig> {
        let b = self
            .baseline
            .as_ref()
            .context("this recipe has no [baseline] section")?;
        let mut cfg = self.clone();
        cfg.name = format!("{}-baseline", self.name);
        cfg.model.init = b.init.clone();
        cfg.model.untie_head = b.untie;
        cfg.optimizer = b.optimizer.clone().unwrap_or(self.optimizer.clone());
        cfg.curriculum = None;
        // A static model has no core iterations to recompute.
        cfg.training.activation_checkpointing = false;
        Ok(cfg)
    }

    /// The from-scratch control's recipe: this one, started from `[prepare] control` (the
    /// retrofit's shape with fresh weights) instead of the retrofit.
    pub fn control_variant(&self) -> Result<TrainConfig> {
        let control = self
            .prepare
            .as_ref()
            .and_then(|p| p.control.clone())
            .context("this recipe has no [prepare] control")?;
        let mut cfg = self.clone();
        cfg.name = format!("{}-control", self.name);
        cfg.model.init = control;
        Ok(cfg)
    }

    /// A stable hash of everything that changes the numbers of a run, to refuse resuming with
    /// a changed config.
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = serde_json::to_string(&(
            &self.seed,
            &self.model,
            &self.data,
            &self.training,
            &self.curriculum,
            &self.lr,
            &self.optimizer,
        ))
        .unwrap_or_default();
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}
