//! Autoregressive decoding, one loop for static and recurrent models and for one prompt or a
//! batch: greedy or temperature with top-p (nucleus) sampling, stop at EOS ids or stop
//! strings per row, left padding with an attention mask so each row gets what it gets alone,
//! and for recurrent models a fixed recurrence or a per-token exit rule and warm start.
//!
//! Sampling happens on the host, each row with its own generator seeded with the same seed,
//! so a seed gives the same text on CPU and CUDA as long as the logits agree, and a row's
//! text does not depend on its batch.

use anyhow::{bail, ensure, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use crate::any::{AnyCache, AnyModel, TestTime};
use crate::recurrent::{CacheMode, CacheStats, Depth, ExitCriterion, InitialState, StaticDecoder};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax at `temperature`, then sample from the smallest set of tokens whose
    /// probabilities sum to at least `top_p`.
    TopP {
        temperature: f64,
        top_p: f64,
    },
}

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        if let Sampling::TopP { temperature, top_p } = *self {
            ensure!(
                temperature.is_finite() && temperature > 0.0,
                "temperature must be a finite number > 0 (got {temperature})"
            );
            ensure!(
                top_p > 0.0 && top_p <= 1.0,
                "top-p must be in (0, 1] (got {top_p})"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Seed of every row's sampler.
    pub seed: u64,
    pub eos_ids: Vec<i64>,
    /// Stop a row when its text contains one of these (its text is cut before it).
    pub stop_strings: Vec<String>,
    /// False: recompute the whole sequence at each step (a reference for tests and
    /// benchmarks; fixed recurrence only).
    pub use_cache: bool,
    /// Keep each generated token's logits [vocab] (f32, CPU).
    pub keep_logits: bool,
    /// Recurrent models: the core's recurrence for the prompt (and for every token when there
    /// is no exit rule) and the seed of the initial state.
    pub test_time: TestTime,
    /// Recurrent models: per-token adaptive exit for the tokens whose next-token distribution
    /// is generated (the last prompt token and every generated token). The whole batch stops
    /// iterating together, when every row has converged.
    pub exit: Option<ExitCriterion>,
    /// Recurrent models: start each generated token's state from the previous token's final
    /// state instead of the seeded draw (prompt tokens always use the seeded draw).
    pub warm_start: bool,
    pub cache_mode: CacheMode,
    /// Recurrent models: where every token's state starts, in place of `test_time`'s seeded
    /// draw (`rr generate --initial-state`).
    pub initial_state: Option<InitialState>,
    /// Recurrent models: how each generated token runs after the prompt.
    pub token_step: TokenStep,
}

/// How a recurrent model runs each generated token (the prompt always goes through
/// [`crate::RecurrentModel::forward`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenStep {
    /// The forward engine with its growing cache (every option works).
    #[default]
    Dynamic,
    /// The fixed-shape step over preallocated buffers ([`StaticDecoder`]), run eagerly: the
    /// same arithmetic as `Dynamic` (fixed recurrence, no warm start).
    Static,
    /// The fixed-shape step captured once as a CUDA graph and replayed for every token.
    CudaGraph,
}

impl TokenStep {
    /// `CudaGraph` where it applies (a recurrent model on CUDA, a build with CUDA graphs, a
    /// fixed recurrence with the cache and no warm start), `Dynamic` everywhere else.
    pub fn fastest(model: &AnyModel, opts: &DecodeOptions) -> Self {
        let applies = model.is_recurrent()
            && matches!(model.device(), Device::Cuda(_))
            && rr_torch_ext::cuda_graph::cuda_graphs_built()
            && opts.use_cache
            && opts.exit.is_none()
            && !opts.warm_start;
        match applies {
            true => TokenStep::CudaGraph,
            false => TokenStep::Dynamic,
        }
    }
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            sampling: Sampling::Greedy,
            seed: 0,
            eos_ids: Vec::new(),
            stop_strings: Vec::new(),
            use_cache: true,
            keep_logits: false,
            test_time: TestTime {
                recurrence: 4,
                seed: 0,
            },
            exit: None,
            warm_start: false,
            cache_mode: CacheMode::Full,
            initial_state: None,
            token_step: TokenStep::Dynamic,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    Eos,
    StopString,
}

#[derive(Debug)]
pub struct Generation {
    /// Generated ids without the prompt (an EOS that stopped generation is not included).
    pub ids: Vec<i64>,
    /// Decoded generated text (cut before a stop string), when a tokenizer was given.
    pub text: String,
    pub stop: StopReason,
    /// Core iterations behind each generated token's distribution (0 for static models).
    pub steps_per_token: Vec<usize>,
    /// Next-token logits per generated token when `keep_logits`.
    pub logits: Vec<Tensor>,
}

impl Generation {
    pub fn mean_steps(&self) -> f64 {
        if self.steps_per_token.is_empty() {
            return 0.0;
        }
        self.steps_per_token.iter().sum::<usize>() as f64 / self.steps_per_token.len() as f64
    }
}

pub struct Decoded {
    pub rows: Vec<Generation>,
    /// What the KV cache held at the end (recurrent models with a cache).
    pub cache_stats: Option<CacheStats>,
}

/// The growing token matrix of a batch, left-padded so the last column is every row's
/// newest token.
struct Batch {
    rows: Vec<Vec<i64>>,
    masks: Vec<Vec<i64>>,
    padded: bool,
    device: Device,
}

impl Batch {
    fn left_padded(prompts: &[Vec<i64>], device: Device) -> Self {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pad = |p: &Vec<i64>, fill: i64, real: &dyn Fn(&i64) -> i64| -> Vec<i64> {
            let mut row = vec![fill; longest - p.len()];
            row.extend(p.iter().map(real));
            row
        };
        Self {
            rows: prompts.iter().map(|p| pad(p, 0, &|&id| id)).collect(),
            masks: prompts.iter().map(|p| pad(p, 0, &|_| 1)).collect(),
            padded: prompts.iter().any(|p| p.len() != longest),
            device,
        }
    }

    fn len(&self) -> usize {
        self.rows[0].len()
    }

    /// Columns `from..to` of the ids, and of the mask when anything is padded.
    fn columns(&self, from: usize, to: usize) -> (Tensor, Option<Tensor>) {
        let matrix = |rows: &[Vec<i64>]| {
            let flat: Vec<i64> = rows.iter().flat_map(|r| r[from..to].to_vec()).collect();
            Tensor::from_slice(&flat)
                .view([rows.len() as i64, (to - from) as i64])
                .to_device(self.device)
        };
        (matrix(&self.rows), self.padded.then(|| matrix(&self.masks)))
    }

    fn push(&mut self, next: &[i64]) {
        for (row, &tok) in next.iter().enumerate() {
            self.rows[row].push(tok);
            self.masks[row].push(1);
        }
    }
}

/// One row's progress: its sampler, what it generated, and the text already handed out
/// (shared with `rr serve`'s continuous batching, which keeps one per request).
pub struct Row {
    pub rng: StdRng,
    pub generation: Generation,
    emitted: String,
    pub done: bool,
}

impl Row {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            generation: Generation {
                ids: Vec::new(),
                text: String::new(),
                stop: StopReason::MaxTokens,
                steps_per_token: Vec::new(),
                logits: Vec::new(),
            },
            emitted: String::new(),
            done: false,
        }
    }

    /// Takes the next token (stopping at EOS ids and stop strings, holding back a partial
    /// UTF-8 sequence); returns the newly printable text.
    pub fn accept(
        &mut self,
        token: i64,
        opts: &DecodeOptions,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<String> {
        if opts.eos_ids.contains(&token) {
            self.generation.stop = StopReason::Eos;
            self.done = true;
            return Ok(String::new());
        }
        self.generation.ids.push(token);
        let Some(tok) = tokenizer else {
            return Ok(String::new());
        };
        let text = tok.decode(&self.generation.ids, true)?;
        // Hold back a trailing partial UTF-8 sequence until its bytes are complete.
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let cut = opts
            .stop_strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min();
        let end = cut.unwrap_or(text.len());
        let piece = if end > self.emitted.len()
            && text.is_char_boundary(end)
            && text.starts_with(&self.emitted)
        {
            text[self.emitted.len()..end].to_string()
        } else {
            String::new()
        };
        self.emitted = text[..end].to_string();
        self.generation.text = self.emitted.clone();
        if cut.is_some() {
            self.generation.stop = StopReason::StopString;
            self.done = true;
        }
        Ok(piece)
    }
}

/// Refuses prompts and settings `decode` cannot run, before any compute.
pub fn validate(
    model: &AnyModel,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<i64>],
    opts: &DecodeOptions,
) -> Result<()> {
    ensure!(!prompts.is_empty(), "no prompts to generate from");
    let context = model.max_context();
    for p in prompts {
        ensure!(!p.is_empty(), "cannot generate from an empty prompt");
        model.check_tokens(p)?;
        ensure!(
            p.len().saturating_add(opts.max_new_tokens) <= context,
            "a prompt of {} tokens and {} new tokens do not fit the model's context of {context}",
            p.len(),
            opts.max_new_tokens
        );
    }
    opts.sampling.validate()?;
    if !opts.stop_strings.is_empty() && tokenizer.is_none() {
        bail!("stop strings need a tokenizer");
    }
    ensure!(
        opts.test_time.recurrence >= 1,
        "recurrence must be at least 1"
    );
    if !opts.use_cache && (opts.warm_start || opts.exit.is_some()) {
        bail!("warm start and adaptive exit need the cache (use_cache = true)");
    }
    if opts.token_step != TokenStep::Dynamic {
        ensure!(
            model.is_recurrent(),
            "the fixed-shape decode step (CUDA graphs) is for recurrent models"
        );
        ensure!(
            opts.use_cache && opts.exit.is_none() && !opts.warm_start,
            "the fixed-shape decode step (CUDA graphs) runs a fixed recurrence with the cache: \
             not with adaptive exit, warm start or without the cache"
        );
    }
    if opts.token_step == TokenStep::CudaGraph {
        ensure!(
            matches!(model.device(), Device::Cuda(_)),
            "CUDA graphs need a CUDA device (the model is on {:?})",
            model.device()
        );
    }
    let covered = opts
        .initial_state
        .as_ref()
        .and_then(|s| s.positions_covered());
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) + opts.max_new_tokens;
    if let Some(n) = covered.filter(|&n| n < longest) {
        bail!("the initial state covers {n} positions, but generation reaches {longest}");
    }
    Ok(())
}

/// Generates up to `opts.max_new_tokens` tokens after each prompt. `on_text(row, piece)`
/// receives each row's text as it grows (when a tokenizer is given).
pub fn decode(
    model: &AnyModel,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<i64>],
    opts: &DecodeOptions,
    mut on_text: impl FnMut(usize, &str),
) -> Result<Decoded> {
    validate(model, tokenizer, prompts, opts)?;
    let _no_grad = tch::no_grad_guard();
    let mut rows: Vec<Row> = prompts.iter().map(|_| Row::new(opts.seed)).collect();
    let mut batch = Batch::left_padded(prompts, model.device());
    let mut stepper = Stepper::new(model, opts)?;
    // With an exit rule the last prompt token (whose distribution gives the first new token)
    // runs under it, so the rest of the prompt goes first at the fixed recurrence.
    if opts.exit.is_some() && batch.len() > 1 {
        stepper.prefill(&batch, batch.len() - 1)?;
    }
    for step in 0..opts.max_new_tokens {
        let (logits, steps) = stepper.next_logits(&batch, step)?;
        let flat: Vec<f32> = Vec::try_from(logits.flatten(0, -1))?;
        let vocab = flat.len() / rows.len();
        let mut next = Vec::with_capacity(rows.len());
        for (i, (row, row_logits)) in rows.iter_mut().zip(flat.chunks(vocab)).enumerate() {
            let token = sample(row_logits, &opts.sampling, &mut row.rng);
            next.push(token);
            if row.done {
                continue;
            }
            row.generation.steps_per_token.push(steps);
            if opts.keep_logits {
                row.generation.logits.push(logits.get(i as i64));
            }
            let piece = row.accept(token, opts, tokenizer)?;
            if !piece.is_empty() {
                on_text(i, &piece);
            }
        }
        if rows.iter().all(|r| r.done) {
            break;
        }
        batch.push(&next);
    }
    Ok(Decoded {
        cache_stats: match &stepper.fixed {
            Some(decoder) => Some(decoder.stats()),
            None => stepper.cache.as_ref().and_then(AnyCache::stats),
        },
        rows: rows.into_iter().map(|r| r.generation).collect(),
    })
}

/// Runs the model for decoding: the cache, how far the batch has been fed into it, and the
/// latent state that a warm start continues from.
struct Stepper<'a> {
    model: &'a AnyModel,
    opts: &'a DecodeOptions,
    cache: Option<AnyCache>,
    fed: usize,
    prev_state: Option<Tensor>,
    seeded: InitialState,
    token_depth: Depth,
    /// The fixed-shape step, once the prompt is in (`TokenStep::Static` and `CudaGraph`).
    fixed: Option<StaticDecoder>,
}

impl<'a> Stepper<'a> {
    fn new(model: &'a AnyModel, opts: &'a DecodeOptions) -> Result<Self> {
        let cache = match opts.use_cache {
            true => Some(model.new_cache(opts.cache_mode)?),
            false => None,
        };
        Ok(Self {
            model,
            opts,
            cache,
            fed: 0,
            prev_state: None,
            seeded: opts
                .initial_state
                .clone()
                .unwrap_or_else(|| opts.test_time.init()),
            token_depth: match opts.exit {
                Some(exit) => Depth::Adaptive(exit),
                None => opts.test_time.depth(),
            },
            fixed: None,
        })
    }

    /// Feeds the first `upto` columns at the fixed recurrence (needs the cache).
    fn prefill(&mut self, batch: &Batch, upto: usize) -> Result<()> {
        let (ids, mask) = batch.columns(0, upto);
        let depth = self.opts.test_time.depth();
        let out = self.model.forward(
            &ids,
            mask.as_ref(),
            self.cache.as_mut(),
            depth,
            &self.seeded,
        )?;
        self.prev_state = out.state;
        self.fed = upto;
        Ok(())
    }

    /// Next-token logits [B, V] (f32, CPU) for the batch as it stands, and the core
    /// iterations behind them: only the new columns with a cache, everything without.
    fn next_logits(&mut self, batch: &Batch, step: usize) -> Result<(Tensor, usize)> {
        if self.opts.token_step != TokenStep::Dynamic && step > 0 {
            return self.fixed_shape_logits(batch);
        }
        let len = batch.len();
        let (ids, mask) = batch.columns(self.fed, len);
        let warm = match (&self.prev_state, self.opts.warm_start && step > 0) {
            (Some(s), true) => Some(InitialState::Given(s.narrow(1, s.size()[1] - 1, 1))),
            _ => None,
        };
        let out = self.model.forward(
            &ids,
            mask.as_ref(),
            self.cache.as_mut(),
            self.token_depth,
            warm.as_ref().unwrap_or(&self.seeded),
        )?;
        if self.cache.is_some() {
            self.fed = len;
        }
        self.prev_state = out.state;
        let last = out
            .logits
            .select(1, -1)
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
        Ok((last, out.steps))
    }
}

impl Stepper<'_> {
    /// [`Stepper::next_logits`] through the fixed-shape step: the newest column of every row,
    /// written into the preallocated buffers (made from the prompt's cache on first use).
    fn fixed_shape_logits(&mut self, batch: &Batch) -> Result<(Tensor, usize)> {
        let AnyModel::Recurrent(model) = self.model else {
            bail!("the fixed-shape decode step is for recurrent models");
        };
        if self.fixed.is_none() {
            let Some(AnyCache::Recurrent(cache)) = self.cache.take() else {
                bail!("the fixed-shape decode step continues a recurrent cache");
            };
            // Every column a token can be written to: the prompt's and one per new token.
            let capacity = (batch.len() - 1 + self.opts.max_new_tokens) as i64;
            let recurrence = self.opts.test_time.recurrence;
            let decoder = StaticDecoder::new(model, cache, capacity, recurrence, &self.seeded)?;
            self.fixed = Some(decoder);
        }
        let decoder = self.fixed.as_mut().expect("made above");
        let newest = batch.len() - 1;
        ensure!(
            decoder.len() == newest as i64,
            "the fixed-shape cache is out of step"
        );
        let ids: Vec<i64> = batch.rows.iter().map(|r| r[newest]).collect();
        // A token's position counts the real tokens before it (as `Prologue` does).
        let positions: Vec<i64> = batch
            .masks
            .iter()
            .map(|m| m[..newest].iter().sum())
            .collect();
        let graph = self.opts.token_step == TokenStep::CudaGraph;
        let logits = decoder.step(model, &ids, &positions, graph)?;
        self.fed = batch.len();
        Ok((
            logits.to_device(Device::Cpu),
            self.opts.test_time.recurrence,
        ))
    }
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], sampling: &Sampling, rng: &mut StdRng) -> i64 {
    match *sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::TopP { temperature, top_p } => {
            let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let mut probs: Vec<(usize, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i, ((l as f64 - max) / temperature).exp()))
                .collect();
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut kept = 0.0;
            let mut cut = probs.len();
            for (i, (_, p)) in probs.iter().enumerate() {
                kept += p / total;
                if kept >= top_p {
                    cut = i + 1;
                    break;
                }
            }
            let nucleus = &probs[..cut];
            let mass: f64 = nucleus.iter().map(|p| p.1).sum();
            let mut u = rng.random::<f64>() * mass;
            for &(i, p) in nucleus {
                if u < p {
                    return i as i64;
                }
                u -= p;
            }
            nucleus.last().map_or(0, |p| p.0 as i64)
        }
    }
}

/// Index of the first maximum (ties go to the lowest id, as llama2.c and torch do).
pub fn argmax(values: &[f32]) -> i64 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities 0.5, 0.3, 0.2 at temperature 1: top-p 0.75 keeps ids 0 and 1 only.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let sampling = Sampling::TopP {
            temperature: 1.0,
            top_p: 0.75,
        };
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[sample(&logits, &sampling, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        // Renormalised: 0.5/0.8 = 0.625 for id 0; 20,000 draws give a standard error of
        // 0.0034, so 0.015 is over 4 of them.
        let frac = counts[0] as f64 / 20_000.0;
        assert!((frac - 0.625).abs() < 0.015, "{frac}");
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = Sampling::TopP {
            temperature: 0.8,
            top_p: 0.9,
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| sample(&logits, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn sampling_settings_are_checked() {
        for (temperature, top_p) in [
            (f64::NAN, 0.9),
            (f64::INFINITY, 0.9),
            (0.0, 0.9),
            (1.0, f64::NAN),
            (1.0, 0.0),
            (1.0, 1.5),
        ] {
            assert!(
                Sampling::TopP { temperature, top_p }.validate().is_err(),
                "{temperature} {top_p}"
            );
        }
        assert!(Sampling::TopP {
            temperature: 0.7,
            top_p: 1.0
        }
        .validate()
        .is_ok());
    }
}
