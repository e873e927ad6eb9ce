//! The engine: one thread owns the model (its tensors never leave it) and runs the
//! continuous batch. HTTP handlers hand it [`Job`]s through a bounded queue and read each
//! job's [`Event`]s from its own channel.
//!
//! At every token boundary the engine admits waiting jobs (prefill, each with its own KV
//! cache), runs one [`AnyModel::step_rows`] over every running row (shared prelude, coda and
//! head; the core only over rows still iterating), samples and stop-checks each row with
//! `rr generate`'s own [`Row`], and retires rows that finished, whose client went away, or
//! whose deadline passed. A retired row's cache is dropped with it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rr_model::decode::{sample, validate, Row};
use rr_model::rows::RowStep;
use rr_model::{AnyCache, AnyModel, DecodeOptions, Depth, InitialState, StopReason, Tokenizer};
use tch::{Device, Kind, Tensor};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// What a running request produces, in order: text pieces, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Finish),
    Failed(Failure),
}

#[derive(Debug, Clone)]
pub struct Finish {
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Generated tokens (an EOS that stopped generation is not one).
    pub completion_tokens: usize,
    /// Core iterations behind every sampled token's distribution (0 for a static model).
    pub iterations: usize,
    /// `iterations` per sampled token.
    pub mean_iterations: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The request's deadline passed (waiting or running).
    Timeout,
    /// Something the checks before the queue did not catch, or a model error.
    Internal(String),
}

/// One request for the engine: a tokenised prompt and the settings `rr generate` would use.
pub struct Job {
    pub prompt: Vec<i64>,
    pub options: DecodeOptions,
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
}

/// What the HTTP layer needs to know about the model, read once on the engine thread.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub recurrent: bool,
    /// The recurrence a request gets by default (the config's `mean_recurrence`; 1 if static).
    pub default_recurrence: usize,
    pub max_context: usize,
    pub eos_ids: Vec<i64>,
}

/// The HTTP layer's handle: submit jobs, read the metrics.
#[derive(Clone)]
pub struct Engine {
    queue: SyncSender<Job>,
    pub metrics: Arc<Metrics>,
}

/// Why a job was not queued.
pub enum Rejected {
    QueueFull,
    Stopped,
}

impl Engine {
    /// Loads the model on a new engine thread and starts the loop; returns the handle, what
    /// the model is, and the thread (which ends once every handle is dropped and the last
    /// job is done).
    pub fn start(
        dir: PathBuf,
        device: Device,
        dtype: Kind,
        tokenizer: Arc<Tokenizer>,
        max_batch: usize,
        max_queue: usize,
    ) -> Result<(Engine, ModelInfo, JoinHandle<()>)> {
        let (queue, jobs) = mpsc::sync_channel::<Job>(max_queue);
        let metrics = Arc::new(Metrics::default());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<ModelInfo>>();
        let engine_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("rr-engine".into())
            .spawn(move || {
                let model = match AnyModel::load(&dir, device, dtype) {
                    Ok(model) => model,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(model_info(&dir, &model, &tokenizer)));
                let mut engine = Batch {
                    model,
                    tokenizer,
                    metrics: engine_metrics,
                    max_batch,
                    running: Vec::new(),
                };
                engine.run(jobs);
            })
            .context("cannot start the engine thread")?;
        let info = ready_rx
            .recv()
            .context("the engine thread stopped while loading the model")??;
        Ok((Engine { queue, metrics }, info, thread))
    }

    /// Queues a job, or says why not (the queue is full, or the engine stopped).
    pub fn submit(&self, job: Job) -> std::result::Result<(), Rejected> {
        Metrics::add(&self.metrics.queue_depth, 1);
        let refused = match self.queue.try_send(job) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(_)) => Rejected::QueueFull,
            Err(TrySendError::Disconnected(_)) => Rejected::Stopped,
        };
        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        Err(refused)
    }
}

fn model_info(dir: &std::path::Path, model: &AnyModel, tokenizer: &Tokenizer) -> ModelInfo {
    let mut eos_ids = model.eos_token_ids();
    eos_ids.extend(tokenizer.eos_id());
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    ModelInfo {
        name,
        recurrent: model.is_recurrent(),
        default_recurrence: model.recurrence(None).unwrap_or(1),
        max_context: model.max_context(),
        eos_ids,
    }
}

/// The first token's logits (f32, CPU) and the core iterations behind them.
type FirstLogits = (Vec<f32>, usize);

/// A request in the running batch.
struct Running {
    job: Job,
    cache: AnyCache,
    row: Row,
    /// The token the next step feeds (the last prompt token or the last generated one).
    next_token: i64,
    depth: Depth,
    init: InitialState,
}

impl Running {
    fn finished(&self) -> bool {
        self.row.done
            || self.row.generation.steps_per_token.len() >= self.job.options.max_new_tokens
    }
}

struct Batch {
    model: AnyModel,
    tokenizer: Arc<Tokenizer>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    running: Vec<Running>,
}

impl Batch {
    fn run(&mut self, jobs: Receiver<Job>) {
        let _no_grad = tch::no_grad_guard();
        loop {
            if self.running.is_empty() {
                match jobs.recv_timeout(Duration::from_millis(50)) {
                    Ok(job) => self.admit(job),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while self.running.len() < self.max_batch {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => break,
                }
            }
            self.retire();
            if self.running.is_empty() {
                continue;
            }
            if let Err(e) = self.step() {
                for r in self.running.drain(..) {
                    Metrics::add(&self.metrics.requests_failed, 1);
                    let _ = r
                        .job
                        .events
                        .send(Event::Failed(Failure::Internal(format!("{e:#}"))));
                }
            }
            self.retire();
        }
    }

    /// Prefills a job into its own cache and adds it to the running batch (or answers it
    /// at once: expired, or failed).
    fn admit(&mut self, job: Job) {
        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        if job.events.is_closed() {
            Metrics::add(&self.metrics.requests_cancelled, 1);
            return;
        }
        if Instant::now() >= job.deadline {
            Metrics::add(&self.metrics.requests_timed_out, 1);
            let _ = job.events.send(Event::Failed(Failure::Timeout));
            return;
        }
        let first = match self.prefill(&job) {
            Ok(prefilled) => prefilled,
            Err(e) => {
                Metrics::add(&self.metrics.requests_failed, 1);
                let _ = job
                    .events
                    .send(Event::Failed(Failure::Internal(format!("{e:#}"))));
                return;
            }
        };
        Metrics::add(&self.metrics.prompt_tokens, job.prompt.len() as u64);
        let (cache, first_logits) = first;
        let opts = &job.options;
        let mut running = Running {
            row: Row::new(opts.seed),
            cache,
            next_token: *job.prompt.last().expect("validated: non-empty"),
            depth: opts.exit.map_or(opts.test_time.depth(), Depth::Adaptive),
            init: opts.test_time.init(),
            job,
        };
        if let Some((logits, steps)) = first_logits {
            if let Err(e) = self.take_token(&mut running, &logits, steps) {
                let message = format!("{e:#}");
                Metrics::add(&self.metrics.requests_failed, 1);
                let _ = running
                    .job
                    .events
                    .send(Event::Failed(Failure::Internal(message)));
                return;
            }
        }
        self.running.push(running);
        self.metrics
            .batch_size
            .store(self.running.len() as u64, Ordering::Relaxed);
    }

    /// Runs the prompt into a new cache as `rr generate` does: with an exit rule, all but
    /// the last token at the fixed recurrence (the last one then runs under the rule in the
    /// batch's next step); without one, the whole prompt, whose last logits (returned with
    /// their iterations) give the first token.
    fn prefill(&self, job: &Job) -> Result<(AnyCache, Option<FirstLogits>)> {
        let opts = &job.options;
        validate(
            &self.model,
            Some(&self.tokenizer),
            std::slice::from_ref(&job.prompt),
            opts,
        )?;
        let mut cache = self.model.new_cache(opts.cache_mode)?;
        let n = job.prompt.len();
        let upto = if opts.exit.is_some() { n - 1 } else { n };
        if upto == 0 {
            return Ok((cache, None));
        }
        let ids = Tensor::from_slice(&job.prompt[..upto])
            .view([1, upto as i64])
            .to_device(self.model.device());
        let init = opts.test_time.init();
        let out =
            self.model
                .forward(&ids, None, Some(&mut cache), opts.test_time.depth(), &init)?;
        if opts.exit.is_some() {
            return Ok((cache, None));
        }
        let last = out.logits.select(1, -1).to_kind(Kind::Float).flatten(0, -1);
        let logits: Vec<f32> = Vec::try_from(last.to_device(Device::Cpu))?;
        Ok((cache, Some((logits, out.steps))))
    }

    /// One token for every running row.
    fn step(&mut self) -> Result<()> {
        let mut rows: Vec<RowStep> = self
            .running
            .iter_mut()
            .map(|r| RowStep {
                token: r.next_token,
                cache: &mut r.cache,
                depth: r.depth,
                init: &r.init,
            })
            .collect();
        let out = self.model.step_rows(&mut rows)?;
        drop(rows);
        Metrics::add(&self.metrics.batch_steps, 1);
        Metrics::add(&self.metrics.batch_rows, self.running.len() as u64);
        let flat: Vec<f32> = Vec::try_from(out.logits.flatten(0, -1))?;
        let vocab = flat.len() / self.running.len();
        let mut running = std::mem::take(&mut self.running);
        let mut result = Ok(());
        for ((r, logits), &steps) in running.iter_mut().zip(flat.chunks(vocab)).zip(&out.steps) {
            if let Err(e) = self.take_token(r, logits, steps) {
                result = Err(e);
            }
        }
        self.running = running;
        result
    }

    /// Samples a row's next token from its logits, hands out the new text, and counts it.
    fn take_token(&self, r: &mut Running, logits: &[f32], steps: usize) -> Result<()> {
        let opts = &r.job.options;
        let token = sample(logits, &opts.sampling, &mut r.row.rng);
        r.row.generation.steps_per_token.push(steps);
        let piece = r.row.accept(token, opts, Some(&self.tokenizer))?;
        if !piece.is_empty() {
            let _ = r.job.events.send(Event::Text(piece));
        }
        r.next_token = token;
        Metrics::add(&self.metrics.completion_tokens, 1);
        Metrics::add(&self.metrics.core_iterations, steps as u64);
        Ok(())
    }

    /// Answers and drops the rows that are done, cancelled or out of time. (Every outcome is
    /// counted before it is sent, so a client that reads /metrics after its answer sees it.)
    fn retire(&mut self) {
        let now = Instant::now();
        let metrics = &self.metrics;
        let prompt_tokens = |r: &Running| r.job.prompt.len();
        self.running.retain(|r| {
            if r.job.events.is_closed() {
                Metrics::add(&metrics.requests_cancelled, 1);
                metrics.batch_size.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
            if r.finished() {
                let g = &r.row.generation;
                Metrics::add(&metrics.requests_ok, 1);
                metrics.batch_size.fetch_sub(1, Ordering::Relaxed);
                let _ = r.job.events.send(Event::Done(Finish {
                    stop: g.stop,
                    prompt_tokens: prompt_tokens(r),
                    completion_tokens: g.ids.len(),
                    iterations: g.steps_per_token.iter().sum(),
                    mean_iterations: g.mean_steps(),
                }));
                return false;
            }
            if now >= r.job.deadline {
                Metrics::add(&metrics.requests_timed_out, 1);
                metrics.batch_size.fetch_sub(1, Ordering::Relaxed);
                let _ = r.job.events.send(Event::Failed(Failure::Timeout));
                return false;
            }
            true
        });
        metrics
            .batch_size
            .store(self.running.len() as u64, Ordering::Relaxed);
    }
}
