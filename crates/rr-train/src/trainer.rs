//! The trainer: one recurrence draw per micro-batch (the first n iterations without gradient,
//! the last k with), gradient accumulation, global norm clipping, checkpoints that are directly
//! usable models, exact resumption, held-out loss at test recurrences, metrics, plots.
//!
//! Determinism: every random number is a function of (seed, micro-batch counter) or of the
//! data loader's saved position, so a resumed run repeats the uninterrupted one bit for bit on
//! CPU.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rr_curriculum::Curriculum;
use rr_eval::compute::{static_training_flops, StackParams};
use rr_model::device::{parse_device, parse_dtype};
use rr_model::recurrent::{is_recurrent_dir, InitialState, RecurrentModel};
use rr_model::weights::SafetensorsFiles;
use rr_model::{LlamaModel, Tokenizer};
use rr_util::fs::StagingDir;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::config::TrainConfig;
use crate::data::{Loader, Mixture, PackedSet, Phases, PhasesState, Split};
use crate::optim::{clip_grad_norm, grads_are_finite, Optimizer};

/// The model being trained: a retrofitted recurrent model, or the unmodified source model
/// (the static baseline).
pub enum TrainModel {
    Recurrent(RecurrentModel),
    Static(LlamaModel),
}

impl TrainModel {
    /// Loads with parameters of `kind` (the trainer's master weights are always fp32).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Ok(if is_recurrent_dir(dir) {
            TrainModel::Recurrent(RecurrentModel::load(dir, device, kind)?)
        } else {
            TrainModel::Static(LlamaModel::load(dir, device, kind)?)
        })
    }

    pub fn vs(&self) -> &tch::nn::VarStore {
        match self {
            TrainModel::Recurrent(m) => &m.vs,
            TrainModel::Static(m) => &m.vs,
        }
    }

    pub fn max_context(&self) -> usize {
        match self {
            TrainModel::Recurrent(m) => m.config.max_position_embeddings,
            TrainModel::Static(m) => m.config.max_position_embeddings,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            TrainModel::Recurrent(m) => m.config.vocab_size,
            TrainModel::Static(m) => m.config.vocab_size,
        }
    }

    /// Block parameters per stack, for FLOP accounting (a static model is all "prelude").
    pub fn stack_params(&self) -> StackParams {
        match self {
            TrainModel::Recurrent(m) => {
                let c = &m.config;
                StackParams::from_layers(
                    c.params_per_layer() as u64,
                    c.n_layers_in_prelude,
                    c.n_layers_in_recurrent_block,
                    c.n_layers_in_coda,
                )
            }
            TrainModel::Static(m) => StackParams::from_layers(
                m.config.params_per_layer() as u64,
                m.config.num_hidden_layers,
                0,
                0,
            ),
        }
    }

    /// Mean cross-entropy of one training forward pass against `labels` [B·T], computed by
    /// the memory-lean chunked loss from the final hidden states (no full logits tensor).
    fn loss(
        &self,
        input: &Tensor,
        labels: &Tensor,
        no_grad: usize,
        with_grad: usize,
        state_seed: u64,
    ) -> Tensor {
        let (hidden, head) = match self {
            TrainModel::Static(m) => (m.forward_hidden(input, None), m.lm_head.shallow_clone()),
            TrainModel::Recurrent(m) => (
                m.forward_hidden(
                    input,
                    None,
                    no_grad,
                    with_grad,
                    &InitialState::Given(self.initial_state(m, input, state_seed)),
                ),
                m.head_weight(),
            ),
        };
        let h = hidden.size()[2];
        crate::loss::chunked_cross_entropy(&hidden.view([-1, h]), &head, labels)
    }

    /// A fresh state for every element (as the reference draws it), drawn on the device and
    /// reproducible from the micro-batch's seed.
    pub(crate) fn initial_state(
        &self,
        m: &RecurrentModel,
        input: &Tensor,
        state_seed: u64,
    ) -> Tensor {
        let (b, t) = input.size2().expect("[B, T]");
        crate::noise::truncated_normal(
            state_seed,
            &[b, t, m.config.n_embd as i64],
            m.config.init_values.std,
            m.device(),
        )
    }

    /// Writes the model (config, weights) into the existing directory `dir`.
    fn save(&self, dir: &Path) -> Result<()> {
        match self {
            TrainModel::Recurrent(m) => m.save_weights_and_config(dir),
            TrainModel::Static(m) => m.save_weights_and_config(dir),
        }
    }
}

/// Everything besides model and optimizer that a resumed run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Micro-batches consumed (seeds the recurrence draw and the state).
    pub micro_batch: u64,
    pub tokens: u64,
    pub flops: f64,
    pub data: PhasesState,
    pub config_hash: String,
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub run_dir: PathBuf,
    pub resume: bool,
    /// Resume despite a changed config, or start over in an existing run directory.
    pub force: bool,
    /// Train for as many steps as spend these FLOPs (compute-matched baselines).
    pub match_flops: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub name: String,
    pub kind: String,
    pub steps: usize,
    pub tokens: u64,
    pub flops: f64,
    pub final_loss: f64,
    pub wall_seconds: f64,
    /// Held-out loss per test recurrence (key "static" for the baseline), before and after.
    pub heldout_before: BTreeMap<String, f64>,
    pub heldout_after: BTreeMap<String, f64>,
}

const CHECKPOINTS: &str = "checkpoints";
const METRICS: &str = "metrics.jsonl";

/// Runs (or resumes) training as `cfg` describes, writing everything under `opts.run_dir`.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    let started = Instant::now();
    let mut cfg = cfg.clone();
    let cfg = &mut cfg;
    let run_dir = &opts.run_dir;
    let device = parse_device(&cfg.training.device)?;
    // Compute dtype: bf16 on CUDA and fp32 on CPU unless the recipe says otherwise.
    let compute_kind = match cfg.training.dtype.as_deref() {
        None | Some("auto") => {
            if device.is_cuda() {
                Kind::BFloat16
            } else {
                Kind::Float
            }
        }
        Some(name) => parse_dtype(name)?,
    };

    // Everything that can be wrong with the inputs is checked before any compute.
    let latest = if opts.resume {
        latest_checkpoint(run_dir)?
    } else {
        None
    };
    if opts.resume && latest.is_none() {
        bail!(
            "{}: nothing to resume (no complete checkpoint)",
            run_dir.display()
        );
    }
    if !opts.resume && run_dir.exists() && !opts.force {
        bail!(
            "{}: run directory exists (use --resume to continue it or --force to start over)",
            run_dir.display()
        );
    }
    let init_dir = latest.clone().unwrap_or_else(|| cfg.model.init.clone());
    if !init_dir.join("config.json").exists() {
        bail!(
            "{}: no model here (config.json missing)",
            init_dir.display()
        );
    }
    let tokenizer = Tokenizer::from_path(&cfg.model.init)?;
    let phases_cfg = cfg.data.phases();
    let mut sets: BTreeMap<PathBuf, Arc<PackedSet>> = BTreeMap::new();
    for source in phases_cfg
        .iter()
        .flat_map(|p| p.train.iter())
        .map(|s| &s.path)
        .chain(cfg.data.heldout.iter())
    {
        if !sets.contains_key(source) {
            let set = PackedSet::open(source)?;
            set.check_tokenizer(&tokenizer).with_context(|| {
                format!("{} does not match the model's tokenizer", source.display())
            })?;
            sets.insert(source.clone(), Arc::new(set));
        }
    }
    let heldout_path = cfg
        .data
        .heldout
        .clone()
        .unwrap_or_else(|| phases_cfg[0].train[0].path.clone());
    let heldout = sets[&heldout_path].clone();
    let seq_len = heldout.seq_len();
    if sets.values().any(|s| s.seq_len() != seq_len) {
        bail!("data: all packed sets must have the same seq_len");
    }
    let model = TrainModel::load(&init_dir, device, Kind::Float)?;
    if seq_len > model.max_context() {
        bail!(
            "data: seq_len {seq_len} is beyond the model's context ({})",
            model.max_context()
        );
    }
    if heldout.vocab_size() > model.vocab_size() {
        bail!(
            "data: packed with a vocabulary of {} but the model has {}",
            heldout.vocab_size(),
            model.vocab_size()
        );
    }
    if let Some(flops) = opts.match_flops {
        let tokens = (cfg.training.micro_batch_size * cfg.training.grad_accum * seq_len) as u64;
        let per_step = static_training_flops(
            model.stack_params().prelude + model.stack_params().core + model.stack_params().coda,
            tokens,
        );
        cfg.training.steps = ((flops / per_step).round() as usize).max(1);
    }
    let cfg: &TrainConfig = cfg;
    let curriculum = match (&model, &cfg.curriculum) {
        (TrainModel::Recurrent(_), Some(c)) => Some(*c),
        (TrainModel::Recurrent(_), None) => bail!("a recurrent model needs a [curriculum] section"),
        (TrainModel::Static(_), _) => None,
    };

    // Mixed precision: a second copy of the model in the compute dtype runs forward and
    // backward; its gradients are accumulated in fp32 on the master weights, which the
    // optimizer updates, and the copy is refreshed from the masters before every step.
    let compute = if compute_kind == Kind::Float {
        None
    } else {
        Some(TrainModel::load(&init_dir, device, compute_kind)?)
    };
    let mut phases = build_phases(cfg, &sets)?;
    let mut optimizer = cfg.optimizer.build_for(model.vs())?;
    let mut state = TrainerState {
        step: 0,
        micro_batch: 0,
        tokens: 0,
        flops: 0.0,
        data: phases.state(),
        config_hash: cfg.hash(),
    };
    if let Some(ckpt) = &latest {
        let text = std::fs::read_to_string(ckpt.join("trainer_state.json"))
            .with_context(|| format!("{}: cannot read trainer state", ckpt.display()))?;
        let saved: TrainerState = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid trainer state", ckpt.display()))?;
        if saved.config_hash != state.config_hash && !opts.force {
            bail!(
                "{}: the config changed since this run started (use --force to resume anyway)",
                run_dir.display()
            );
        }
        let files = SafetensorsFiles::open_files(&[ckpt.join("optimizer.safetensors")])?;
        optimizer.load_state(&files)?;
        phases.restore(&saved.data)?;
        state = TrainerState {
            config_hash: state.config_hash,
            ..saved
        };
        truncate_metrics(&run_dir.join(METRICS), state.step)?;
    } else {
        if run_dir.exists() {
            // --force: start over.
            std::fs::remove_dir_all(run_dir)
                .with_context(|| format!("{}: cannot clear", run_dir.display()))?;
        }
        std::fs::create_dir_all(run_dir.join(CHECKPOINTS))
            .with_context(|| format!("{}: cannot create run directory", run_dir.display()))?;
        std::fs::write(run_dir.join("config.toml"), toml::to_string(cfg)?)?;
    }

    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(METRICS))
        .with_context(|| format!("{}: cannot open metrics", run_dir.display()))?;
    let eval_recurrences = match &model {
        TrainModel::Recurrent(_) => cfg.training.eval_recurrences.clone(),
        TrainModel::Static(_) => vec![1],
    };
    let eval = |model: &TrainModel| {
        heldout_losses(
            model,
            &heldout,
            cfg.training.eval_rows,
            &eval_recurrences,
            cfg.seed,
        )
    };
    let heldout_before = if state.step == 0 {
        let losses = eval(&model)?;
        log_eval(&mut metrics, 0, &losses)?;
        losses
    } else {
        read_eval(&run_dir.join(METRICS), 0)?.unwrap_or_default()
    };

    let total = cfg.training.steps;
    let tokens_per_micro = (cfg.training.micro_batch_size * seq_len) as u64;
    let stacks = model.stack_params();
    let params: Vec<Tensor> = optimizer_params(&model);
    let bar = progress_bar(total as u64, state.step as u64);
    let mut last_loss = f64::NAN;
    let mut last_good = latest.clone();
    let mut window_start = Instant::now();
    let mut window_tokens = 0u64;
    while state.step < total {
        let step = state.step;
        let mut loss_sum = 0f64;
        let mut draws = Vec::new();
        if let Some(c) = &compute {
            copy_weights(&model, c);
        }
        for _ in 0..cfg.training.grad_accum {
            let batch = phases.next_batch(step);
            let (n, k) = match &curriculum {
                Some(c) => {
                    let d = c.draw(step, total, cfg.seed, state.micro_batch);
                    (d.no_grad, d.with_grad)
                }
                None => (0, 0),
            };
            draws.push((n, k));
            let input = Tensor::from_slice(&batch.input)
                .view([batch.rows as i64, batch.seq_len as i64])
                .to_device(device);
            let labels = Tensor::from_slice(&batch.labels)
                .view([-1])
                .to_device(device);
            let state_seed =
                rr_curriculum::sampler::stream_seed(cfg.seed ^ 0x5354_4154_4521, state.micro_batch);
            let loss = micro_batch(
                &model,
                compute.as_ref(),
                &input,
                &labels,
                (n, k),
                state_seed,
                cfg.training.grad_accum,
            );
            let value = f64::try_from(&loss)?;
            if !value.is_finite() {
                bail!(non_finite("loss", step, &last_good));
            }
            loss_sum += value;
            state.micro_batch += 1;
            state.tokens += tokens_per_micro;
            window_tokens += tokens_per_micro;
        }
        all_reduce_gradients(&params);
        if !grads_are_finite(&params) {
            bail!(non_finite("gradient", step, &last_good));
        }
        let grad_norm = clip_grad_norm(&params, cfg.training.max_grad_norm);
        let multiplier = cfg.lr.multiplier_at(step, total);
        optimizer.step(multiplier);
        optimizer.zero_grad();

        let mean_r = curriculum
            .as_ref()
            .map(|c: &Curriculum| c.mean.mean_at(step, total))
            .unwrap_or(1);
        let step_tokens = tokens_per_micro * cfg.training.grad_accum as u64;
        state.flops += match &model {
            TrainModel::Recurrent(_) => stacks.training_flops(step_tokens, mean_r as f64),
            TrainModel::Static(_) => static_training_flops(stacks.prelude, step_tokens),
        };
        state.step += 1;
        last_loss = loss_sum / cfg.training.grad_accum as f64;
        bar.inc(1);
        if state.step.is_multiple_of(cfg.training.log_every) || state.step == total {
            let elapsed = window_start.elapsed().as_secs_f64().max(1e-9);
            let line = serde_json::json!({
                "step": state.step,
                "tokens": state.tokens,
                "loss": last_loss,
                "lr": multiplier * peak_lr(&cfg.optimizer),
                "lr_multiplier": multiplier,
                "mean_recurrence": mean_r,
                "n": draws.iter().map(|d| d.0).collect::<Vec<_>>(),
                "k": draws.iter().map(|d| d.1).collect::<Vec<_>>(),
                "grad_norm": grad_norm,
                "tokens_per_s": window_tokens as f64 / elapsed,
                "flops": state.flops,
            });
            writeln!(metrics, "{line}")?;
            metrics.flush()?;
            let msg = format!(
                "step {}/{total} loss {last_loss:.4} r̄ {mean_r} grad {grad_norm:.3}",
                state.step
            );
            if bar.is_hidden() {
                eprintln!("{msg}");
            } else {
                bar.set_message(msg);
            }
            window_start = Instant::now();
            window_tokens = 0;
        }
        let every = cfg.training.checkpoint_every;
        if state.step == total || (every > 0 && state.step.is_multiple_of(every)) {
            state.data = phases.state();
            last_good = Some(save_checkpoint(
                run_dir,
                &cfg.model.init,
                &model,
                optimizer.as_ref(),
                &state,
                cfg.training.keep_last,
            )?);
        }
        let eval_every = cfg.training.eval_every;
        if state.step < total && eval_every > 0 && state.step.is_multiple_of(eval_every) {
            let losses = eval(&model)?;
            log_eval(&mut metrics, state.step, &losses)?;
        }
    }
    bar.finish_and_clear();
    let heldout_after = eval(&model)?;
    log_eval(&mut metrics, state.step, &heldout_after)?;
    drop(metrics);

    let summary = TrainSummary {
        name: cfg.name.clone(),
        kind: match model {
            TrainModel::Recurrent(_) => "recurrent".into(),
            TrainModel::Static(_) => "static".into(),
        },
        steps: state.step,
        tokens: state.tokens,
        flops: state.flops,
        final_loss: last_loss,
        wall_seconds: started.elapsed().as_secs_f64(),
        heldout_before,
        heldout_after,
    };
    crate::report::write_run_report(run_dir, &summary)?;
    Ok(summary)
}

/// The main parameter group's peak learning rate (Muon's for Muon).
fn peak_lr(optimizer: &crate::optim::OptimizerConfig) -> f64 {
    match optimizer {
        crate::optim::OptimizerConfig::AdamW(c) => c.lr,
        crate::optim::OptimizerConfig::Muon(c) => c.lr,
    }
}

/// Copies the fp32 master weights into the compute-dtype model.
pub(crate) fn copy_weights(master: &TrainModel, compute: &TrainModel) {
    let _guard = tch::no_grad_guard();
    let masters = master.vs().variables();
    for (name, mut p) in compute.vs().variables() {
        if let Some(m) = masters.get(&name) {
            p.copy_(m);
        }
    }
}

/// One micro-batch of a step: forward with `n` iterations without and `k` with gradient (on
/// the compute copy when there is one), mean cross-entropy, backward of `loss / grad_accum`;
/// the gradients end on the fp32 masters. Returns the loss as a 0-d tensor (not read here, so
/// the caller decides when to synchronise).
pub(crate) fn micro_batch(
    master: &TrainModel,
    compute: Option<&TrainModel>,
    input: &Tensor,
    labels: &Tensor,
    (n, k): (usize, usize),
    state_seed: u64,
    grad_accum: usize,
) -> Tensor {
    let runner = compute.unwrap_or(master);
    let loss = runner.loss(input, labels, n, k, state_seed);
    (&loss / grad_accum as f64).backward();
    if let Some(c) = compute {
        accumulate_grads(c, master);
    }
    loss.detach()
}

/// Adds the compute model's gradients (cast to fp32) to the master gradients and clears them.
fn accumulate_grads(compute: &TrainModel, master: &TrainModel) {
    let _guard = tch::no_grad_guard();
    let masters = master.vs().variables();
    for (name, p) in compute.vs().variables() {
        let mut g = p.grad();
        if !g.defined() {
            continue;
        }
        if let Some(m) = masters.get(&name) {
            let mut mg = m.grad();
            if mg.defined() {
                let _ = mg.g_add_(&g.to_kind(Kind::Float));
            } else {
                // First gradient of this parameter: define it through a no-op backward.
                tch::with_grad(|| (m * 0.0).sum(Kind::Float)).backward();
                m.grad().copy_(&g.to_kind(Kind::Float));
            }
        }
        let _ = g.zero_();
    }
}

/// Parameters that receive gradients, in the optimizer's (sorted-by-name) order.
pub(crate) fn optimizer_params(model: &TrainModel) -> Vec<Tensor> {
    let mut vars: Vec<(String, Tensor)> = model
        .vs()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().map(|(_, t)| t).collect()
}

/// The one place where a data-parallel run would sum gradients across ranks (after the local
/// micro-batches, before clipping). Single-process training has nothing to do here.
fn all_reduce_gradients(_params: &[Tensor]) {}

fn non_finite(what: &str, step: usize, last_good: &Option<PathBuf>) -> String {
    let kept = last_good
        .as_ref()
        .map(|p| format!("the last good checkpoint is {}", p.display()))
        .unwrap_or_else(|| "no checkpoint was written yet".into());
    format!("non-finite {what} at step {}; stopping ({kept})", step + 1)
}

fn build_phases(cfg: &TrainConfig, sets: &BTreeMap<PathBuf, Arc<PackedSet>>) -> Result<Phases> {
    let mut phases = Vec::new();
    for (i, phase) in cfg.data.phases().iter().enumerate() {
        let mut sources = Vec::new();
        for (j, s) in phase.train.iter().enumerate() {
            // Each source gets its own shuffling stream.
            let seed = cfg.seed ^ ((i as u64) << 32) ^ j as u64;
            sources.push((
                Loader::new(
                    sets[&s.path].clone(),
                    Split::Train,
                    cfg.training.micro_batch_size,
                    seed,
                )?,
                s.weight,
            ));
        }
        phases.push((
            phase.until_step,
            Mixture::new(sources, cfg.seed ^ 0x004d_4958 ^ i as u64)?,
        ));
    }
    Phases::new(phases)
}

/// Mean token loss of the first `rows` held-out rows at each test recurrence, with the initial
/// state seeded so the numbers are comparable across checkpoints.
pub fn heldout_losses(
    model: &TrainModel,
    set: &PackedSet,
    rows: usize,
    recurrences: &[usize],
    seed: u64,
) -> Result<BTreeMap<String, f64>> {
    let rows = rows.min(set.rows(Split::Heldout));
    if rows == 0 {
        bail!("{}: the held-out split is empty", set.dir().display());
    }
    let _guard = tch::no_grad_guard();
    let device = model.vs().device();
    let mut out = BTreeMap::new();
    for &r in recurrences {
        let mut total = 0f64;
        let mut count = 0usize;
        for start in (0..rows).step_by(4) {
            let n = 4.min(rows - start);
            let batch = set
                .sequential_batch(Split::Heldout, start, n)
                .context("held-out rows")?;
            let input = Tensor::from_slice(&batch.input)
                .view([n as i64, batch.seq_len as i64])
                .to_device(device);
            let labels = Tensor::from_slice(&batch.labels)
                .view([-1])
                .to_device(device);
            let logits = match model {
                TrainModel::Static(m) => m.forward(&input, None),
                TrainModel::Recurrent(m) => {
                    m.forward(&input, None, r, 0, &InitialState::Random { seed })
                        .logits
                }
            };
            let vocab = logits.size()[2];
            let loss = logits
                .view([-1, vocab])
                .to_kind(Kind::Float)
                .cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0);
            total += f64::try_from(loss)?;
            count += labels.size()[0] as usize;
        }
        let key = match model {
            TrainModel::Static(_) => "static".to_string(),
            TrainModel::Recurrent(_) => r.to_string(),
        };
        out.insert(key, total / count as f64);
    }
    Ok(out)
}

fn log_eval(
    metrics: &mut std::fs::File,
    step: usize,
    losses: &BTreeMap<String, f64>,
) -> Result<()> {
    writeln!(
        metrics,
        "{}",
        serde_json::json!({"step": step, "heldout_loss": losses})
    )?;
    metrics.flush()?;
    Ok(())
}

/// The held-out losses logged at `step`, if any.
fn read_eval(path: &Path, step: usize) -> Result<Option<BTreeMap<String, f64>>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: corrupt line", path.display()))?;
        if v["step"].as_u64() == Some(step as u64) && v.get("heldout_loss").is_some() {
            return Ok(Some(serde_json::from_value(v["heldout_loss"].clone())?));
        }
    }
    Ok(None)
}

/// Drops metrics logged after `step` (a killed run may have got further than its checkpoint).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    rr_util::fs::write_atomic(path, body.as_bytes())
}

fn checkpoint_dirs(run_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = run_dir.join(CHECKPOINTS);
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Temporary (incomplete) directories start with a dot and are never picked up.
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint of a run.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoint_dirs(run_dir)?.pop().map(|(_, p)| p))
}

/// Writes `checkpoints/step-NNNNNN/` atomically: a usable model directory (config, weights,
/// tokenizer) plus `optimizer.safetensors` and `trainer_state.json`; keeps the newest `keep`.
fn save_checkpoint(
    run_dir: &Path,
    init: &Path,
    model: &TrainModel,
    optimizer: &dyn Optimizer,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    let path = run_dir
        .join(CHECKPOINTS)
        .join(format!("step-{:06}", state.step));
    let staging = StagingDir::create(&path)?;
    model.save(staging.path())?;
    rr_model::weights::write_safetensors(
        &optimizer.state_tensors(),
        &staging.path().join("optimizer.safetensors"),
    )?;
    std::fs::write(
        staging.path().join("trainer_state.json"),
        serde_json::to_string_pretty(state)?,
    )?;
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        let src = init.join(name);
        if src.exists() {
            std::fs::copy(&src, staging.path().join(name))
                .with_context(|| format!("{}: cannot copy", src.display()))?;
        }
    }
    staging.commit()?;
    let all = checkpoint_dirs(run_dir)?;
    if all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(old)
                .with_context(|| format!("{}: cannot remove old checkpoint", old.display()))?;
        }
    }
    Ok(path)
}

fn progress_bar(total: u64, done: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_position(done);
    bar
}

/// Total training FLOPs recorded in a finished run's `summary.json`.
pub fn run_flops(run_dir: &Path) -> Result<f64> {
    let path = run_dir.join("summary.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read (is the run finished?)", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?;
    v["flops"]
        .as_f64()
        .with_context(|| format!("{}: no `flops`", path.display()))
}
