//! The trainer, taken apart as torchtitan does it: [`Trainer::new`] checks every input before
//! any compute and starts or resumes a run, [`Trainer::train_step`] is one optimizer step (one
//! recurrence draw per micro-batch: the first n iterations without gradient, the last k with;
//! gradient accumulation; global-norm clipping), and [`Trainer::run`] is the loop with its
//! logging, evaluation and checkpoint cadence. Checkpoints (`checkpoint.rs`), metrics
//! (`metrics.rs`) and mixed precision (`precision.rs`) are separate components.
//!
//! Determinism: every random number is a function of (seed, micro-batch counter) or of the
//! data loader's saved position, so a resumed run repeats the uninterrupted one bit for bit on
//! CPU.
//!
//! No host synchronisation in the step: the losses, the gradient norm and the non-finite
//! flags stay on the device ([`StepOutcome`]) and are read on the host in one read
//! ([`crate::host`]) at a logged step or a checkpoint, every rank at the same steps. A step
//! whose loss or gradient is non-finite is skipped on the device (the optimizer's update is a
//! no-op, [`crate::optim::Optimizer::step_unless`]), as PyTorch's `GradScaler` skips one. At
//! the next read a skipped step with a finite loss is reported (a warning and the metrics
//! line's `skipped`) and training goes on; a non-finite loss stops the run there, naming the
//! first such step and the last good checkpoint (the skipped updates left the parameters as
//! they were, and no checkpoint is written after it).

pub mod checkpoint;
pub mod checkpointing;
pub mod data_parallel;
pub mod metrics;
pub mod precision;
pub mod run_dir;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rr_curriculum::Curriculum;
use rr_data::{Loader, Mixture, PackedSet, Phases, Split};
use rr_eval::compute::{static_training_flops, StackParams};
use rr_model::device::parse_device;
use rr_model::{AnyModel, Depth, InitialState, TestTime, Tokenizer};
use rr_recipe::{OptimizerConfig, TrainConfig};
use tch::{Device, Kind, Tensor};

use crate::optim::{clip_grad_norm_lazy, Optimizer};
use checkpoint::TrainerState;
use data_parallel::DataParallel;
use metrics::{EvalLine, MetricsLine, MetricsLog, StepLine};
use run_dir::RunDir;

pub use crate::report::TrainSummary;
pub use checkpoint::latest_checkpoint;

const METRICS: &str = "metrics.jsonl";

/// Block parameters per stack, for FLOP accounting (a static model is all "prelude").
pub fn stack_params(model: &AnyModel) -> StackParams {
    match model {
        AnyModel::Recurrent(m) => {
            let c = &m.config;
            StackParams::from_layers(
                c.params_per_layer() as u64,
                c.n_layers_in_prelude,
                c.n_layers_in_recurrent_block,
                c.n_layers_in_coda,
            )
        }
        AnyModel::Static(m) => StackParams::from_layers(
            m.config.params_per_layer() as u64,
            m.config.num_hidden_layers,
            0,
            0,
        ),
    }
}

/// Mean cross-entropy of one training forward pass against `labels` [B·T]: `n` iterations
/// without and `k` with gradient, from `init` (in training every row its own draw);
/// computed by the memory-lean chunked loss from the final hidden states (no full logits).
pub(crate) fn training_loss(
    model: &AnyModel,
    input: &Tensor,
    labels: &Tensor,
    (n, k): (usize, usize),
    init: &InitialState,
) -> Result<Tensor> {
    let depth = Depth::Fixed {
        no_grad: n,
        with_grad: k,
    };
    let (hidden, head) = model.hidden_and_head(input, depth, init)?;
    let h = hidden.size()[2];
    Ok(crate::loss::chunked_cross_entropy(
        &hidden.view([-1, h]),
        &head,
        labels,
    ))
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub run_dir: PathBuf,
    pub resume: bool,
    /// Resume despite a changed config, or start over in an existing run directory.
    pub force: bool,
    /// Train for as many steps as spend these FLOPs (compute-matched baselines).
    pub match_flops: Option<f64>,
    /// In a data-parallel run (torchrun's environment), the longest a collective may wait for
    /// the other ranks before this rank stops.
    pub collective_timeout: Duration,
}

/// What one optimizer step did; the tensors stay on the device until a logged step reads them.
#[derive(Debug)]
pub struct StepOutcome {
    /// Each micro-batch's loss (averaged across ranks), f64 [grad_accum].
    pub losses: Tensor,
    /// Global gradient norm before clipping, 0-d fp32.
    pub grad_norm: Tensor,
    /// f64 [2]: whether the update was skipped (a non-finite loss or gradient), whether the
    /// loss was non-finite; 1 or 0.
    pub flags: Tensor,
    pub lr_multiplier: f64,
    /// The curriculum's scheduled mean recurrence (1 for a static model).
    pub mean_recurrence: usize,
    /// The (n, k) drawn for each micro-batch.
    pub draws: Vec<(usize, usize)>,
}

/// What rank 0 alone holds: the locked run directory and the metrics log.
struct Writer {
    /// Held for its lock.
    _run_dir: RunDir,
    metrics: MetricsLog,
}

impl Writer {
    /// Opens the metrics log (cut after `state.step`) and lets go of a replaced run.
    fn start(mut run_dir: RunDir, state: &TrainerState) -> Result<Self> {
        let metrics = MetricsLog::open(&run_dir.path.join(METRICS), state.step)?;
        run_dir.started()?;
        Ok(Self {
            _run_dir: run_dir,
            metrics,
        })
    }
}

/// A run in progress: the model (fp32 parameters, computing in `compute_kind`), optimizer, data, the
/// resumable state and the metrics log.
pub struct Trainer {
    cfg: TrainConfig,
    run_path: PathBuf,
    /// `None` on the ranks other than 0 of a data-parallel run.
    writer: Option<Writer>,
    /// `None` in a single-process run.
    parallel: Option<DataParallel>,
    device: Device,
    model: AnyModel,
    /// Dtype of the training forward and backward (bf16 or fp32; the parameters stay fp32).
    compute_kind: Kind,
    optimizer: Box<dyn Optimizer>,
    /// Parameters that receive gradients, in the optimizer's order.
    params: Vec<Tensor>,
    phases: Phases,
    curriculum: Option<Curriculum>,
    heldout: Arc<PackedSet>,
    state: TrainerState,
    /// The newest checkpoint written or resumed from (named when a step goes non-finite).
    last_good: Option<PathBuf>,
    /// Tokens of one global micro-batch (all ranks together).
    tokens_per_micro: u64,
    heldout_before: BTreeMap<String, f64>,
    started: Instant,
    /// Since the last metrics line: its start, the tokens and the steps.
    window: (Instant, u64),
    window_steps: usize,
    /// [`StepOutcome::flags`] of the steps since the last host read.
    unread_flags: Vec<Tensor>,
    /// The training loss last read (the final loss of a finished run).
    last_loss: f64,
    bar: ProgressBar,
}

/// What the host learns at a logged step or a checkpoint, in one read.
struct Reading {
    /// Mean loss of the step's micro-batches.
    loss: f64,
    grad_norm: f64,
    /// Steps (counted from 1) skipped since the previous read.
    skipped: Vec<usize>,
    /// The first step (counted from 1) since the previous read whose loss is non-finite.
    nonfinite_loss: Option<usize>,
}

/// Runs (or resumes) training as `cfg` describes, writing everything under `opts.run_dir`.
pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    Trainer::new(cfg, opts)?.run()
}

impl Trainer {
    /// Checks every input (run directory, model, data, tokenizer, sizes) before any compute,
    /// then starts the run directory or restores the newest checkpoint. In a data-parallel run
    /// (torchrun's environment) it first joins the process group; rank 0 alone writes, and
    /// every rank refuses to start unless all run the same recipe and model.
    pub fn new(cfg: &TrainConfig, opts: &TrainOptions) -> Result<Self> {
        let started = Instant::now();
        let mut cfg = cfg.clone();
        let device = parse_device(&cfg.training.device)?;
        let mut parallel = DataParallel::from_env(device, opts.collective_timeout)?;
        let device = parallel.as_ref().map_or(device, DataParallel::device);
        let rank = parallel.as_ref().map_or(0, DataParallel::rank);
        if let Some(p) = &parallel {
            data_parallel::shard_rows(cfg.training.micro_batch_size, p.rank(), p.world())?;
        }
        let compute_kind = precision::compute_kind(cfg.training.dtype.as_deref(), device)?;
        let (held, latest) = if rank == 0 {
            open_for_resume(&cfg, opts)?
        } else {
            (None, latest_for_follower(opts)?)
        };
        if rank == 0 {
            eprintln!(
                "{}: device {device:?}, compute {compute_kind:?}, {} process(es); cpu: {}",
                cfg.name,
                parallel.as_ref().map_or(1, DataParallel::world),
                rr_model::device::cpu_capability()
            );
        }
        let init_dir = latest.clone().unwrap_or_else(|| cfg.model.init.clone());
        let (model, heldout, sets) = load_inputs(&cfg, &init_dir, device)?;
        if let Some(flops) = opts.match_flops {
            cfg.training.steps = steps_for_flops(&cfg, &model, heldout.seq_len(), flops)?;
        }
        let curriculum = match (&model, &cfg.curriculum) {
            (AnyModel::Recurrent(_), Some(c)) => Some(*c),
            (AnyModel::Recurrent(_), None) => {
                bail!("a recurrent model needs a [curriculum] section")
            }
            (AnyModel::Static(_), _) => None,
        };
        let mut phases = build_phases(&cfg, &sets)?;
        let mut optimizer = crate::optim::build_for(&cfg.optimizer, model.vs())?;
        let params = optimizer_params(&model);
        if let Some(p) = parallel.as_mut() {
            p.check_same_run(&cfg.hash(), &named_params(&model))?;
            p.broadcast_parameters(&params)?;
        }
        let (writer, state) = match &latest {
            Some(ckpt) => (
                held,
                restore(ckpt, &cfg, opts, optimizer.as_mut(), &mut phases)?,
            ),
            None if rank == 0 => {
                let dir = RunDir::create(&opts.run_dir, opts.force)?;
                write_recipe(&dir.path, &cfg)?;
                (Some(dir), fresh_state(&cfg, &phases))
            }
            None => (None, fresh_state(&cfg, &phases)),
        };
        let writer = writer.map(|dir| Writer::start(dir, &state)).transpose()?;
        Ok(Self {
            run_path: opts.run_dir.clone(),
            writer,
            parallel,
            device,
            params,
            model,
            compute_kind,
            optimizer,
            phases,
            curriculum,
            tokens_per_micro: (cfg.training.micro_batch_size * heldout.seq_len()) as u64,
            heldout,
            state,
            last_good: latest,
            heldout_before: BTreeMap::new(),
            started,
            window: (Instant::now(), 0),
            window_steps: 0,
            unread_flags: Vec::new(),
            last_loss: f64::NAN,
            bar: ProgressBar::hidden(),
            cfg,
        })
    }

    /// Trains to the recipe's last step: held-out loss before (or as logged before a resume),
    /// the steps with their logging, evaluation and checkpoint cadence, the final evaluation
    /// and the run report.
    pub fn run(mut self) -> Result<TrainSummary> {
        let total = self.cfg.training.steps;
        let path = self.run_path.join(METRICS);
        if self.writer.is_some() {
            if self.state.step >= total && metrics::eval_at(&path, total)?.is_some() {
                // A finished run: resuming it changes nothing.
                if let Ok(summary) = read_summary(&self.run_path) {
                    eprintln!(
                        "{}: already finished at step {total}",
                        self.run_path.display()
                    );
                    return Ok(summary);
                }
            }
            self.heldout_before = match metrics::eval_at(&path, 0)? {
                Some(losses) => losses,
                None => self.evaluate_and_log()?,
            };
            let step = self.state.step;
            if self.eval_due(step) && metrics::eval_at(&path, step)?.is_none() {
                // Killed between a checkpoint and its evaluation: redo the evaluation.
                self.evaluate_and_log()?;
            }
        }
        if self.writer.is_some() {
            self.bar = progress_bar(total as u64, self.state.step as u64);
        }
        while self.state.step < total {
            self.step()?;
        }
        self.bar.finish_and_clear();
        let last_loss = self.last_loss;
        self.finish(last_loss)
    }

    /// One step of [`Trainer::run`]'s loop: [`Trainer::train_step`], then the logging,
    /// checkpoint and evaluation due after it.
    pub fn step(&mut self) -> Result<()> {
        let outcome = self.train_step()?;
        self.bar.inc(1);
        self.after_step(&outcome)
    }

    /// One optimizer step: for each micro-batch a recurrence draw (the same on every rank:
    /// seeded by the step and micro-batch counter), forward and backward of this rank's rows;
    /// then the gradients averaged across ranks, the non-finite check, clipping and the update.
    pub fn train_step(&mut self) -> Result<StepOutcome> {
        let step = self.state.step;
        let total = self.cfg.training.steps;
        let grad_accum = self.cfg.training.grad_accum;
        let (rank, world) = self
            .parallel
            .as_ref()
            .map_or((0, 1), |p| (p.rank(), p.world()));
        let rows = data_parallel::shard_rows(self.cfg.training.micro_batch_size, rank, world)?;
        self.model.set_compute_kind(self.compute_kind);
        let mut losses = Vec::with_capacity(grad_accum);
        let mut draws = Vec::with_capacity(grad_accum);
        for _ in 0..grad_accum {
            let batch = self.phases.next_batch(step);
            let (n, k) = match &self.curriculum {
                Some(c) => {
                    let d = c.draw(step, total, self.cfg.seed, self.state.micro_batch);
                    (d.no_grad, d.with_grad)
                }
                None => (0, 0),
            };
            draws.push((n, k));
            let t = batch.seq_len;
            let shard = rows.start * t..rows.end * t;
            let input = upload(&batch.input[shard.clone()], self.device)
                .view([rows.len() as i64, t as i64]);
            let labels = upload(&batch.labels[shard], self.device);
            let init = InitialState::RandomPerRow {
                seed: rr_curriculum::sampler::stream_seed(
                    self.cfg.seed ^ 0x5354_4154_4521,
                    self.state.micro_batch,
                ),
                first_row: rows.start as i64,
            };
            losses.push(backward_micro_batch(
                &self.model,
                (&input, &labels),
                (n, k),
                &init,
                grad_accum,
                self.cfg.training.activation_checkpointing,
            )?);
            self.state.micro_batch += 1;
            self.state.tokens += self.tokens_per_micro;
            self.window.1 += self.tokens_per_micro;
        }
        let losses = Tensor::stack(&losses, 0).to_kind(Kind::Double);
        let lr_multiplier = self.cfg.lr.multiplier_at(step, total);
        let (grad_norm, flags) = self.update(&losses, lr_multiplier)?;
        let mean_recurrence = self
            .curriculum
            .as_ref()
            .map_or(1, |c| c.mean.mean_at(step, total));
        self.state.flops += self.step_flops(mean_recurrence);
        self.state.step += 1;
        Ok(StepOutcome {
            losses,
            grad_norm,
            flags,
            lr_multiplier,
            mean_recurrence,
            draws,
        })
    }

    /// The gradients averaged across ranks (and `losses` with them, in place), clipped, and
    /// the update, skipped on the device when the loss or the gradient is non-finite (both
    /// judged from averaged values, so the same on every rank). Returns the pre-clip norm and
    /// [`StepOutcome::flags`].
    fn update(&mut self, losses: &Tensor, lr_multiplier: f64) -> Result<(Tensor, Tensor)> {
        if let Some(p) = self.parallel.as_mut() {
            // Before clipping, as DDP: the clip sees the global batch's gradient.
            p.average_gradients(&self.params)?;
            p.average(losses)?;
        }
        let grad_norm = clip_grad_norm_lazy(&self.params, self.cfg.training.max_grad_norm)
            .unwrap_or_else(|| Tensor::zeros([], (Kind::Float, self.device)));
        let loss_nonfinite = losses.isfinite().all().logical_not();
        let skip = grad_norm
            .isfinite()
            .logical_not()
            .logical_or(&loss_nonfinite);
        match self.parallel.as_mut() {
            Some(p) => self.optimizer.step_split_unless(lr_multiplier, &skip, p)?,
            None => self.optimizer.step_unless(lr_multiplier, &skip)?,
        }
        self.optimizer.zero_grad();
        let flags = Tensor::stack(&[skip, loss_nonfinite], 0).to_kind(Kind::Double);
        Ok((grad_norm, flags))
    }

    /// Training FLOPs of one step at the scheduled mean recurrence (method.md §7).
    fn step_flops(&self, mean_recurrence: usize) -> f64 {
        let stacks = stack_params(&self.model);
        let tokens = self.tokens_per_micro * self.cfg.training.grad_accum as u64;
        match &self.model {
            AnyModel::Recurrent(_) => stacks.training_flops(tokens, mean_recurrence as f64),
            AnyModel::Static(_) => static_training_flops(stacks.prelude, tokens),
        }
    }

    /// The cadence after a step: a metrics line every `log_every` steps, a checkpoint every
    /// `checkpoint_every`, a held-out evaluation every `eval_every`; all written by rank 0
    /// alone (the other ranks of a data-parallel run hold the same parameters). Before a
    /// metrics line or a checkpoint every rank reads the step's values on the host, and stops
    /// on a non-finite loss since the previous read.
    fn after_step(&mut self, outcome: &StepOutcome) -> Result<()> {
        self.window_steps += 1;
        self.unread_flags.push(outcome.flags.shallow_clone());
        let step = self.state.step;
        let total = self.cfg.training.steps;
        let log_due = step.is_multiple_of(self.cfg.training.log_every) || step == total;
        let every = self.cfg.training.checkpoint_every;
        let checkpoint_due = step == total || (every > 0 && step.is_multiple_of(every));
        if log_due || checkpoint_due {
            let reading = self.read(outcome)?;
            if let Some(bad) = reading.nonfinite_loss {
                bail!(non_finite("loss", bad, &self.last_good));
            }
            self.last_loss = reading.loss;
            if self.writer.is_some() && !reading.skipped.is_empty() {
                eprintln!(
                    "warning: step(s) {:?} skipped: non-finite gradient (the update left the \
                     parameters and optimizer state as they were)",
                    reading.skipped
                );
            }
            if log_due && self.writer.is_some() {
                self.log_step(outcome, &reading)?;
            }
        }
        if self.writer.is_none() {
            return Ok(());
        }
        if checkpoint_due {
            self.state.data = self.phases.state();
            self.last_good = Some(checkpoint::save(
                &self.run_path,
                &self.cfg.model.init,
                &self.model,
                self.optimizer.as_ref(),
                &self.state,
                self.cfg.training.keep_last,
                self.cfg.trained_recurrence(),
            )?);
        }
        if step < total && self.eval_due(step) {
            self.evaluate_and_log()?;
        }
        Ok(())
    }

    fn eval_due(&self, step: usize) -> bool {
        let every = self.cfg.training.eval_every;
        step > 0 && every > 0 && step.is_multiple_of(every) && step < self.cfg.training.steps
    }

    /// The last step's loss and gradient norm and the flags of every step since the previous
    /// read: one host read (the only synchronisation of the steps in between).
    fn read(&mut self, outcome: &StepOutcome) -> Result<Reading> {
        let flags = Tensor::stack(&std::mem::take(&mut self.unread_flags), 0);
        let packed = Tensor::cat(
            &[
                outcome.losses.reshape([-1]),
                outcome.grad_norm.to_kind(Kind::Double).reshape([1]),
                flags.reshape([-1]),
            ],
            0,
        );
        let values = crate::host::read_f64s(&packed)?;
        let micro = outcome.losses.numel();
        let first = self.state.step + 1 - flags.size()[0] as usize;
        let step_flags: Vec<&[f64]> = values[micro + 1..].chunks(2).collect();
        Ok(Reading {
            loss: values[..micro].iter().sum::<f64>() / micro as f64,
            grad_norm: values[micro],
            skipped: (0..step_flags.len())
                .filter(|&i| step_flags[i][0] != 0.0)
                .map(|i| first + i)
                .collect(),
            nonfinite_loss: (0..step_flags.len())
                .find(|&i| step_flags[i][1] != 0.0)
                .map(|i| first + i),
        })
    }

    fn log_step(&mut self, outcome: &StepOutcome, reading: &Reading) -> Result<()> {
        let elapsed = self.window.0.elapsed().as_secs_f64().max(1e-9);
        let line = StepLine {
            step: self.state.step,
            tokens: self.state.tokens,
            loss: reading.loss,
            lr: outcome.lr_multiplier * peak_lr(&self.cfg.optimizer),
            lr_multiplier: outcome.lr_multiplier,
            mean_recurrence: outcome.mean_recurrence,
            n: outcome.draws.iter().map(|d| d.0).collect(),
            k: outcome.draws.iter().map(|d| d.1).collect(),
            grad_norm: reading.grad_norm,
            skipped: reading.skipped.clone(),
            tokens_per_s: self.window.1 as f64 / elapsed,
            flops: self.state.flops,
            comm_s: self
                .parallel
                .as_mut()
                .map(|p| p.take_comm_seconds() / self.window_steps.max(1) as f64),
        };
        if let Some(w) = self.writer.as_mut() {
            w.metrics.log(&MetricsLine::Step(line))?;
        }
        let msg = format!(
            "step {}/{} loss {:.4} r̄ {} grad {:.3}",
            self.state.step,
            self.cfg.training.steps,
            reading.loss,
            outcome.mean_recurrence,
            reading.grad_norm
        );
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.set_message(msg);
        }
        self.window = (Instant::now(), 0);
        self.window_steps = 0;
        Ok(())
    }

    /// Held-out loss at the test recurrences, logged at the current step; computed in the
    /// parameters' dtype (fp32), as before any mixed-precision training.
    fn evaluate_and_log(&mut self) -> Result<BTreeMap<String, f64>> {
        let parameter_kind = self.model.dtype();
        self.model.set_compute_kind(parameter_kind);
        let recurrences = match &self.model {
            AnyModel::Recurrent(_) => self.cfg.training.eval_recurrences.clone(),
            AnyModel::Static(_) => vec![1],
        };
        let losses = heldout_losses(
            &self.model,
            &self.heldout,
            self.cfg.training.eval_rows,
            &recurrences,
            self.cfg.seed,
        )?;
        if let Some(w) = self.writer.as_mut() {
            w.metrics.log(&MetricsLine::Eval(EvalLine {
                step: self.state.step,
                heldout_loss: losses.clone(),
            }))?;
        }
        Ok(losses)
    }

    /// The final evaluation, `summary.json`, `summary.md` and the plots.
    fn finish(mut self, final_loss: f64) -> Result<TrainSummary> {
        let heldout_after = match self.writer {
            Some(_) => self.evaluate_and_log()?,
            None => BTreeMap::new(),
        };
        let summary = TrainSummary {
            name: self.cfg.name.clone(),
            kind: match self.model {
                AnyModel::Recurrent(_) => "recurrent".into(),
                AnyModel::Static(_) => "static".into(),
            },
            steps: self.state.step,
            tokens: self.state.tokens,
            flops: self.state.flops,
            final_loss,
            wall_seconds: self.started.elapsed().as_secs_f64(),
            heldout_before: std::mem::take(&mut self.heldout_before),
            heldout_after,
        };
        if self.writer.is_some() {
            crate::report::write_run_report(&self.run_path, &summary)?;
        }
        Ok(summary)
    }
}

/// The run directory rules before anything else: the output apart from every input, no
/// resume of a missing run, no silent reuse of an existing one. For a resume, the run
/// directory (locked) and its newest intact checkpoint.
fn open_for_resume(
    cfg: &TrainConfig,
    opts: &TrainOptions,
) -> Result<(Option<RunDir>, Option<PathBuf>)> {
    let phases = cfg.data.phases();
    let mut inputs: Vec<&Path> = vec![&cfg.model.init];
    inputs.extend(cfg.data.heldout.iter().map(PathBuf::as_path));
    inputs.extend(
        phases
            .iter()
            .flat_map(|p| p.train.iter().map(|s| s.path.as_path())),
    );
    rr_util::fs::ensure_output_apart(&opts.run_dir, &inputs)?;
    let dir = &opts.run_dir;
    if !opts.resume {
        if dir.exists() && !opts.force {
            bail!(
                "{}: run directory exists (use --resume to continue it or --force to start over)",
                dir.display()
            );
        }
        return Ok((None, None));
    }
    if !dir.exists() {
        bail!("{}: nothing to resume (no such run)", dir.display());
    }
    let held = RunDir::resume(dir)?;
    let latest = checkpoint::latest_intact_checkpoint(&held.path)?.with_context(|| {
        format!(
            "{}: nothing to resume (no complete checkpoint)",
            dir.display()
        )
    })?;
    Ok((Some(held), Some(latest)))
}

/// A rank other than 0 reads the run directory but never writes or locks it: to resume, the
/// newest intact checkpoint there (rank 0 checks everything else).
fn latest_for_follower(opts: &TrainOptions) -> Result<Option<PathBuf>> {
    if !opts.resume {
        return Ok(None);
    }
    let latest = checkpoint::latest_intact_checkpoint(&opts.run_dir)?.with_context(|| {
        format!(
            "{}: nothing to resume (no complete checkpoint)",
            opts.run_dir.display()
        )
    })?;
    Ok(Some(latest))
}

/// The model from `init_dir` and the recipe's data, checked against each other.
fn load_inputs(
    cfg: &TrainConfig,
    init_dir: &Path,
    device: Device,
) -> Result<(AnyModel, Arc<PackedSet>, PackedSets)> {
    if !init_dir.join("config.json").exists() {
        bail!(
            "{}: no model here (config.json missing)",
            init_dir.display()
        );
    }
    let tokenizer = Tokenizer::from_path(&cfg.model.init)?;
    let (sets, heldout) = open_data(cfg, &tokenizer)?;
    let mut model = AnyModel::load(init_dir, device, Kind::Float)?;
    if cfg.model.untie_head {
        match &mut model {
            AnyModel::Static(m) => m.untie_head(),
            AnyModel::Recurrent(_) => {
                bail!("model.untie_head applies to a static model; this one is recurrent")
            }
        }
    }
    check_data_fits(&model, &heldout)?;
    for set in sets.values() {
        set.check_token_ids(model.vocab_size())?;
    }
    Ok((model, heldout, sets))
}

/// The state of a run that has not taken a step.
fn fresh_state(cfg: &TrainConfig, phases: &Phases) -> TrainerState {
    TrainerState {
        step: 0,
        micro_batch: 0,
        tokens: 0,
        flops: 0.0,
        data: phases.state(),
        config_hash: cfg.hash(),
    }
}

/// Restores optimizer, data position and trainer state from `checkpoint`; a changed recipe
/// is refused unless `--force`.
fn restore(
    checkpoint: &Path,
    cfg: &TrainConfig,
    opts: &TrainOptions,
    optimizer: &mut dyn Optimizer,
    phases: &mut Phases,
) -> Result<TrainerState> {
    let saved = checkpoint::restore(checkpoint, optimizer)?;
    let config_hash = cfg.hash();
    if saved.config_hash != config_hash && !opts.force {
        bail!(
            "{}: the config changed since this run started (use --force to resume anyway)",
            opts.run_dir.display()
        );
    }
    phases.restore(&saved.data)?;
    Ok(TrainerState {
        config_hash,
        ..saved
    })
}

/// The recipe as the run uses it, `config.toml` in the run directory.
fn write_recipe(run_dir: &Path, cfg: &TrainConfig) -> Result<()> {
    let path = run_dir.join("config.toml");
    std::fs::write(&path, toml::to_string(cfg)?)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// The packed sets of a recipe, by path.
type PackedSets = BTreeMap<PathBuf, Arc<PackedSet>>;

/// Opens every packed set the recipe names, checked against the model's tokenizer; returns
/// them by path and the held-out set (the first training set when none is named).
fn open_data(cfg: &TrainConfig, tokenizer: &Tokenizer) -> Result<(PackedSets, Arc<PackedSet>)> {
    let phases = cfg.data.phases();
    let mut sets = PackedSets::new();
    let paths = phases
        .iter()
        .flat_map(|p| p.train.iter())
        .map(|s| &s.path)
        .chain(cfg.data.heldout.iter());
    for source in paths {
        if !sets.contains_key(source) {
            let set = PackedSet::open(source)?;
            set.check_tokenizer(tokenizer).with_context(|| {
                format!("{} does not match the model's tokenizer", source.display())
            })?;
            sets.insert(source.clone(), Arc::new(set));
        }
    }
    let heldout_path = cfg
        .data
        .heldout
        .clone()
        .unwrap_or_else(|| phases[0].train[0].path.clone());
    let heldout = sets[&heldout_path].clone();
    if sets.values().any(|s| s.seq_len() != heldout.seq_len()) {
        bail!("data: all packed sets must have the same seq_len");
    }
    Ok((sets, heldout))
}

/// Refuses data the model cannot take: rows longer than its context, a larger vocabulary.
fn check_data_fits(model: &AnyModel, heldout: &PackedSet) -> Result<()> {
    let seq_len = heldout.seq_len();
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
    Ok(())
}

/// As many steps as spend `flops` (compute-matched baselines), at least one; refuses a
/// budget that is not a positive number or would take more than 10^7 steps.
fn steps_for_flops(
    cfg: &TrainConfig,
    model: &AnyModel,
    seq_len: usize,
    flops: f64,
) -> Result<usize> {
    if !(flops.is_finite() && flops > 0.0) {
        bail!("--match-flops: the run's FLOPs ({flops}) are not a positive number");
    }
    let tokens = (cfg.training.micro_batch_size * cfg.training.grad_accum * seq_len) as u64;
    let stacks = stack_params(model);
    let per_step = static_training_flops(stacks.prelude + stacks.core + stacks.coda, tokens);
    let steps = (flops / per_step).round();
    if steps > 1e7 {
        bail!("--match-flops: {flops:e} FLOPs would take {steps:e} steps (at most 10^7)");
    }
    Ok((steps as usize).max(1))
}

fn read_summary(run_dir: &Path) -> Result<TrainSummary> {
    let path = run_dir.join("summary.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))
}

/// The main parameter group's peak learning rate (Muon's for Muon).
fn peak_lr(optimizer: &OptimizerConfig) -> f64 {
    match optimizer {
        OptimizerConfig::AdamW(c) => c.lr,
        OptimizerConfig::Muon(c) => c.lr,
    }
}

/// One micro-batch of a step: forward with `n` iterations without and `k` with gradient (in
/// the model's compute dtype), mean cross-entropy, backward of `loss / grad_accum`; the
/// gradients accumulate on the parameters in their own dtype. Returns the loss as a 0-d tensor (not read here, so
/// the caller decides when to synchronise). Public so that benchmarks and tests run the
/// trainer's own step.
pub fn micro_batch(
    model: &AnyModel,
    input: &Tensor,
    labels: &Tensor,
    (n, k): (usize, usize),
    state_seed: u64,
    grad_accum: usize,
) -> Result<Tensor> {
    let init = InitialState::RandomPerRow {
        seed: state_seed,
        first_row: 0,
    };
    backward_micro_batch(model, (input, labels), (n, k), &init, grad_accum, false)
}

/// [`micro_batch`] from a given initial state (a data-parallel rank's rows of the batch),
/// with the core iterations of a recurrent model recomputed in the backward pass when
/// `checkpointing` ([`checkpointing::checkpointed_backward`]).
fn backward_micro_batch(
    model: &AnyModel,
    (input, labels): (&Tensor, &Tensor),
    (n, k): (usize, usize),
    init: &InitialState,
    grad_accum: usize,
    checkpointing: bool,
) -> Result<Tensor> {
    if let (AnyModel::Recurrent(m), true) = (model, checkpointing) {
        return checkpointing::checkpointed_backward(m, input, labels, (n, k), init, grad_accum);
    }
    let loss = training_loss(model, input, labels, (n, k), init)?;
    (&loss / grad_accum as f64).backward();
    Ok(loss.detach())
}

/// `values` as an int64 tensor on `device`. To a GPU through pinned memory and a
/// non-blocking copy: a copy from pageable memory would wait for the device's queue.
fn upload(values: &[i64], device: Device) -> Tensor {
    let host = Tensor::from_slice(values);
    if device.is_cuda() {
        host.pin_memory(device)
            .to_device_(device, Kind::Int64, true, false)
    } else {
        host
    }
}

/// Parameters that receive gradients, in the optimizer's (sorted-by-name) order.
pub fn optimizer_params(model: &AnyModel) -> Vec<Tensor> {
    named_params(model).into_iter().map(|(_, t)| t).collect()
}

/// [`optimizer_params`] with their names.
fn named_params(model: &AnyModel) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = model
        .vs()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The message that stops a run at `step` (counted from 1).
fn non_finite(what: &str, step: usize, last_good: &Option<PathBuf>) -> String {
    let kept = last_good
        .as_ref()
        .map(|p| format!("the last good checkpoint is {}", p.display()))
        .unwrap_or_else(|| "no checkpoint was written yet".into());
    format!("non-finite {what} at step {step}; stopping ({kept})")
}

fn build_phases(cfg: &TrainConfig, sets: &PackedSets) -> Result<Phases> {
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
    model: &AnyModel,
    set: &PackedSet,
    rows: usize,
    recurrences: &[usize],
    seed: u64,
) -> Result<BTreeMap<String, f64>> {
    let data = rr_eval::evaluate::heldout_rows(set, rows)?;
    let mut out = BTreeMap::new();
    for &recurrence in recurrences {
        let tt = TestTime { recurrence, seed };
        let (total, count) = rr_eval::nll::rows_nll(model, &data, 4, tt, &tt.init())?;
        let key = match model {
            AnyModel::Static(_) => "static".to_string(),
            AnyModel::Recurrent(_) => recurrence.to_string(),
        };
        out.insert(key, total / count as f64);
    }
    Ok(out)
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
