//! Inference for the depth-recurrent model (method.md §9): greedy generation over a per-
//! (iteration, core layer) KV cache, a bounded "latest-m" cache, per-token adaptive exit and
//! warm start.
//!
//! # The cache and what each iteration attends to
//!
//! The prelude and coda have one K/V slot per layer, as in a plain transformer. The core has
//! *iteration slots*; slot `s` holds one `LayerKv` per core layer with keys/values for every
//! cached position. When a token runs iteration `i`, each core layer attends to
//!
//! * its own (and its chunk's) keys/values of iteration `i`, computed now, and
//! * for every earlier token, the keys/values stored in slot `slot(i)`.
//!
//! [`CacheMode::Full`]: `slot(i) = i`; memory grows with the deepest iteration run.
//! [`CacheMode::LatestM`]`(m)`: `slot(i) = i mod m`; a token's iteration `i` *overwrites* its
//! own entry in slot `i mod m`, so after a token is done, slot `s` holds, for that token, the
//! keys/values of the **latest iteration `j` with `j ≡ s (mod m)`** it ran. A later token at
//! iteration `i` therefore sees, for each earlier token, the most recent iteration with the same
//! residue. Memory is `m` slots per core layer whatever r is (Huginn's "latest-m4" with m = 4).
//! With `m ≥ r` no slot is ever overwritten and the mode equals `Full` exactly.
//!
//! # Tokens that ran fewer iterations (adaptive exit, or a shallower prompt)
//!
//! A later token may run more iterations than an earlier one did. Every slot must then still
//! hold an entry for every earlier position. Rule ("last computed"): when a chunk of tokens
//! finishes after `k` iterations, every slot it did not write gets a copy of the keys/values of
//! its **last** iteration `k − 1`; a slot created later (a token going deeper than any before)
//! starts as a copy of the previous slot, which by the same rule holds every earlier token's
//! last iteration. In `Full` mode this means: slot `j` holds, for token `t` that ran `k_t`
//! iterations, the keys/values of iteration `min(j, k_t − 1)` — what Huginn's lookup of the
//! latest available step returns. Copies are of K/V only; nothing is recomputed.
//!
//! Invariant: after every call, every slot (prelude, core, coda) holds exactly `len` positions.

use anyhow::{bail, ensure, Result};
use tch::{Device, Kind, Tensor};

use crate::llama::{positions_and_mask, LayerKv};
use crate::recurrent::{InitialState, RecurrentCache, RecurrentModel};

/// How the core's iteration slots are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// One slot per iteration: exact, memory grows with r.
    Full,
    /// `m` slots per core layer, iteration `i` reads and writes slot `i mod m` (module docs).
    LatestM(usize),
}

impl CacheMode {
    fn slot(self, iteration: usize) -> usize {
        match self {
            CacheMode::Full => iteration,
            CacheMode::LatestM(m) => iteration % m,
        }
    }

    /// Slots that `k` iterations write: `0..written(k)`.
    fn written(self, k: usize) -> usize {
        match self {
            CacheMode::Full => k,
            CacheMode::LatestM(m) => k.min(m),
        }
    }
}

/// A recurrent KV cache together with its slot policy.
#[derive(Debug)]
pub struct InferCache {
    pub kv: RecurrentCache,
    pub mode: CacheMode,
}

/// How much an [`InferCache`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Core iteration slots in use.
    pub core_slots: usize,
    /// Stored key and value tensors (prelude, core and coda).
    pub tensors: usize,
    /// Elements in those tensors.
    pub elements: i64,
}

impl InferCache {
    pub fn new(model: &RecurrentModel, mode: CacheMode) -> Result<Self> {
        if let CacheMode::LatestM(m) = mode {
            ensure!(m >= 1, "latest-m cache needs m >= 1");
        }
        Ok(Self {
            kv: model.new_cache(),
            mode,
        })
    }

    /// Number of cached positions.
    pub fn len(&self) -> i64 {
        self.kv.len
    }

    pub fn is_empty(&self) -> bool {
        self.kv.len == 0
    }

    pub fn stats(&self) -> CacheStats {
        let mut tensors = 0;
        let mut elements = 0;
        let all = self
            .kv
            .prelude
            .iter()
            .chain(self.kv.core.iter().flatten())
            .chain(self.kv.coda.iter());
        for layer in all {
            if let Some((k, v)) = &layer.kv {
                tensors += 2;
                elements += k.numel() as i64 + v.numel() as i64;
            }
        }
        CacheStats {
            core_slots: self.kv.core.len(),
            tensors,
            elements,
        }
    }
}

/// When to stop iterating the core for a token (method.md §9, Huginn's KL criterion).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExitCriterion {
    /// Stop once KL(p_{i−1} ‖ p_i) between successive next-token distributions is below this.
    pub threshold: f64,
    /// Never stop before this many iterations (at least 2 are needed to compare anything).
    pub min_steps: usize,
    /// Always stop after this many.
    pub max_steps: usize,
}

impl Default for ExitCriterion {
    fn default() -> Self {
        Self {
            threshold: 1e-3,
            min_steps: 1,
            max_steps: 32,
        }
    }
}

/// How many core iterations a call runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Steps {
    Fixed(usize),
    /// Probe the next-token distribution (coda + ln_f + head) after every iteration and stop
    /// when the criterion holds for **every** position of the chunk (for one decoded token of
    /// one sequence that is exactly per-token exit).
    Adaptive(ExitCriterion),
}

pub struct StepOutput {
    /// [B, T, vocab]
    pub logits: Tensor,
    /// Final latent state [B, T, h].
    pub state: Tensor,
    /// Core iterations run.
    pub steps: usize,
}

/// KL(p ‖ q) per position from log-probabilities [.., V], reduced by max over everything.
fn max_kl(log_p: &Tensor, log_q: &Tensor) -> f64 {
    (log_p.exp() * (log_p - log_q))
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
        .max()
        .double_value(&[])
}

fn kv_len(layer: &LayerKv) -> i64 {
    layer.kv.as_ref().map_or(0, |(k, _)| k.size()[2])
}

fn shallow(layer: &LayerKv) -> LayerKv {
    LayerKv {
        kv: layer
            .kv
            .as_ref()
            .map(|(k, v)| (k.shallow_clone(), v.shallow_clone())),
    }
}

/// Runs `ids` [B, T] (padding marked 0 in `attention_mask`) on top of `cache`, starting the
/// state from `init`, for `steps` core iterations; appends to the cache by its mode's rules
/// (module docs). No gradient is built.
pub fn forward_step(
    model: &RecurrentModel,
    ids: &Tensor,
    attention_mask: Option<&Tensor>,
    init: &InitialState,
    steps: Steps,
    cache: &mut InferCache,
) -> Result<StepOutput> {
    tch::no_grad(|| forward_step_impl(model, ids, attention_mask, init, steps, cache))
}

fn forward_step_impl(
    model: &RecurrentModel,
    ids: &Tensor,
    attention_mask: Option<&Tensor>,
    init: &InitialState,
    steps: Steps,
    cache: &mut InferCache,
) -> Result<StepOutput> {
    let (b, t) = ids.size2()?;
    let device = model.device();
    let mode = cache.mode;
    let c = &mut cache.kv;
    let past = c.len;
    let max_steps = match steps {
        Steps::Fixed(r) => r,
        Steps::Adaptive(e) => {
            ensure!(
                e.min_steps <= e.max_steps,
                "exit criterion: min_steps > max_steps"
            );
            e.max_steps
        }
    };
    ensure!(max_steps >= 1, "at least one core iteration is needed");

    let key_mask =
        crate::llama::extend_key_mask(c.key_mask.as_ref(), attention_mask, b, past, t, device);
    let (positions, mask) = positions_and_mask(b, t, past, key_mask.as_ref(), device);
    let cos_sin = model.rope.cos_sin(&positions, model.dtype());

    let mut e = Tensor::embedding(&model.wte, &ids.to_device(device), -1, false, false);
    if model.config.init_values.embed_scale != 1.0 {
        e *= model.config.init_values.embed_scale;
    }
    for (i, block) in model.prelude.iter().enumerate() {
        e = block.forward(&e, &cos_sin, &mask, Some(&mut c.prelude[i]));
    }
    let mut state = model.initial_state(init, &positions, &e);

    let vocab = model.config.vocab_size as i64;
    let head = |h: &Tensor| {
        let logits = model
            .ln_f
            .forward(h)
            .linear::<&Tensor>(&model.lm_head, None);
        if logits.size()[2] > vocab {
            logits.narrow(-1, 0, vocab)
        } else {
            logits
        }
    };
    // Coda on a scratch copy of its cache, so probing after each iteration appends nothing;
    // the copy of the final probe becomes the cache.
    let coda = |state: &Tensor, coda_kv: &[LayerKv]| {
        let mut scratch: Vec<LayerKv> = coda_kv.iter().map(shallow).collect();
        let mut h = state.shallow_clone();
        for (i, block) in model.coda.iter().enumerate() {
            h = block.forward(&h, &cos_sin, &mask, Some(&mut scratch[i]));
        }
        (head(&h), scratch)
    };

    let n_core = model.core_block.len();
    let mut probe: Option<(Tensor, Vec<LayerKv>)> = None;
    let mut prev_log_probs: Option<Tensor> = None;
    let mut k = 0;
    while k < max_steps {
        let slot = mode.slot(k);
        if slot >= c.core.len() {
            // A slot deeper than any before: earlier tokens' last computed K/V is in the
            // previous slot (module docs); an empty cache starts empty.
            let fresh = match c.core.last() {
                Some(prev) if past > 0 => prev.iter().map(shallow).collect(),
                _ => (0..n_core).map(|_| LayerKv::default()).collect(),
            };
            c.core.push(fresh);
        }
        for layer in c.core[slot].iter_mut() {
            // Latest-m: this chunk's own entry from an earlier iteration is overwritten.
            if kv_len(layer) > past {
                let (pk, pv) = layer.kv.take().expect("non-empty");
                layer.kv = Some((pk.narrow(2, 0, past), pv.narrow(2, 0, past)));
            }
        }
        state = model.core_step(&state, &e, &cos_sin, &mask, Some(&mut c.core[slot]));
        k += 1;
        if let Steps::Adaptive(crit) = steps {
            let (logits, scratch) = coda(&state, &c.coda);
            let log_probs = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
            let converged = match &prev_log_probs {
                Some(prev) => k >= crit.min_steps && max_kl(prev, &log_probs) < crit.threshold,
                None => false,
            };
            probe = Some((logits, scratch));
            prev_log_probs = Some(log_probs);
            if converged {
                break;
            }
        }
    }

    // Fill the slots this chunk did not write with its last iteration's K/V.
    let last = mode.slot(k - 1);
    for s in mode.written(k)..c.core.len() {
        for j in 0..n_core {
            let (lk, lv) = c.core[last][j].kv.as_ref().expect("written");
            let (nk, nv) = (lk.narrow(2, past, t), lv.narrow(2, past, t));
            let _ = c.core[s][j].append(nk, nv);
        }
    }

    let (logits, coda_kv) = match probe {
        Some(p) => p,
        None => coda(&state, &c.coda),
    };
    c.coda = coda_kv;
    c.len = past + t;
    c.key_mask = key_mask;
    debug_assert!(c
        .core
        .iter()
        .flatten()
        .chain(c.prelude.iter())
        .all(|l| kv_len(l) == c.len));
    Ok(StepOutput {
        logits,
        state,
        steps: k,
    })
}

/// Options of [`generate_recurrent`].
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Core iterations for the prompt, and for every token when `exit` is None.
    pub recurrence: usize,
    pub cache_mode: CacheMode,
    /// Per-token adaptive exit for the tokens whose next-token distribution is generated
    /// (the last prompt token and every generated token).
    pub exit: Option<ExitCriterion>,
    /// Start each generated token's state from the previous token's final state instead of
    /// the seeded draw (prompt tokens always use the seeded draw).
    pub warm_start: bool,
    /// Seed of the initial state (`InitialState::Random`).
    pub seed: u64,
    /// False: recompute the whole sequence at each step (a reference and a benchmark; only
    /// fixed recurrence and no warm start).
    pub use_cache: bool,
    /// Keep each step's next-token logits [vocab] in the result.
    pub keep_logits: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            recurrence: 32,
            cache_mode: CacheMode::Full,
            exit: None,
            warm_start: false,
            seed: 0,
            use_cache: true,
            keep_logits: false,
        }
    }
}

#[derive(Debug)]
pub struct RecurrentGeneration {
    /// Generated ids (the prompt excluded), ending with the EOS id if one was produced.
    pub ids: Vec<i64>,
    /// Core iterations behind each generated token's distribution.
    pub steps_per_token: Vec<usize>,
    /// Next-token logits [vocab] (f32, CPU) per generated token when `keep_logits`.
    pub logits: Vec<Tensor>,
    /// What the cache held at the end (the whole batch's cache); None without a cache.
    pub cache_stats: Option<CacheStats>,
}

impl RecurrentGeneration {
    pub fn mean_steps(&self) -> f64 {
        if self.steps_per_token.is_empty() {
            return 0.0;
        }
        self.steps_per_token.iter().sum::<usize>() as f64 / self.steps_per_token.len() as f64
    }
}

/// Greedy generation from one prompt.
pub fn generate_recurrent(
    model: &RecurrentModel,
    prompt_ids: &[i64],
    max_new_tokens: usize,
    eos_ids: &[i64],
    opts: &DecodeOptions,
) -> Result<RecurrentGeneration> {
    let mut out =
        generate_recurrent_batch(model, &[prompt_ids.to_vec()], max_new_tokens, eos_ids, opts)?;
    Ok(out.remove(0))
}

/// Greedy generation for several prompts at once, left-padded with an attention mask, so that
/// with a fixed recurrence each row gets what it gets alone. With `exit`, the whole batch
/// stops iterating together (when every row has converged), so rows then differ from their
/// solo runs.
pub fn generate_recurrent_batch(
    model: &RecurrentModel,
    prompts: &[Vec<i64>],
    max_new_tokens: usize,
    eos_ids: &[i64],
    opts: &DecodeOptions,
) -> Result<Vec<RecurrentGeneration>> {
    ensure!(!prompts.is_empty(), "no prompts");
    ensure!(opts.recurrence >= 1, "recurrence must be at least 1");
    let vocab = model.config.vocab_size as i64;
    for p in prompts {
        ensure!(!p.is_empty(), "empty prompt");
        if let Some(bad) = p.iter().find(|&&id| id < 0 || id >= vocab) {
            bail!("token id {bad} is out of range for a vocabulary of {vocab}");
        }
    }
    if !opts.use_cache && (opts.warm_start || opts.exit.is_some()) {
        bail!("warm start and adaptive exit need the cache (use_cache = true)");
    }
    let b = prompts.len();
    let t_max = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let padded = prompts.iter().any(|p| p.len() != t_max);
    // Left padding: the last column is every row's last prompt token.
    let mut rows: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            let mut r = vec![0; t_max - p.len()];
            r.extend_from_slice(p);
            r
        })
        .collect();
    let mut masks: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            let mut m = vec![0; t_max - p.len()];
            m.extend(std::iter::repeat_n(1, p.len()));
            m
        })
        .collect();
    let to_tensor = |rows: &[Vec<i64>], from: usize, to: usize| {
        let flat: Vec<i64> = rows.iter().flat_map(|r| r[from..to].to_vec()).collect();
        Tensor::from_slice(&flat).view([b as i64, (to - from) as i64])
    };

    let mut results: Vec<RecurrentGeneration> = (0..b)
        .map(|_| RecurrentGeneration {
            ids: Vec::new(),
            steps_per_token: Vec::new(),
            logits: Vec::new(),
            cache_stats: None,
        })
        .collect();
    let mut done = vec![false; b];
    if max_new_tokens == 0 {
        return Ok(results);
    }
    let seeded = InitialState::Random { seed: opts.seed };
    let decode_steps = match opts.exit {
        Some(e) => Steps::Adaptive(e),
        None => Steps::Fixed(opts.recurrence),
    };

    let mut cache = InferCache::new(model, opts.cache_mode)?;
    // The prompt but its last token at the fixed recurrence; then one token per call.
    let mut prev_state: Option<Tensor> = None;
    if opts.use_cache && t_max > 1 {
        let ids = to_tensor(&rows, 0, t_max - 1);
        let mask = padded.then(|| to_tensor(&masks, 0, t_max - 1));
        let out = forward_step(
            model,
            &ids,
            mask.as_ref(),
            &seeded,
            Steps::Fixed(opts.recurrence),
            &mut cache,
        )?;
        prev_state = Some(out.state.narrow(1, t_max as i64 - 2, 1));
    }
    let mut fed = if opts.use_cache { t_max - 1 } else { 0 };
    let mut is_prompt_token = true;
    for _ in 0..max_new_tokens {
        let len = rows[0].len();
        let (logits, steps) = if opts.use_cache {
            let ids = to_tensor(&rows, fed, len);
            let mask = padded.then(|| to_tensor(&masks, fed, len));
            let init = match (&prev_state, opts.warm_start && !is_prompt_token) {
                (Some(s), true) => InitialState::Given(s.shallow_clone()),
                _ => InitialState::Random { seed: opts.seed },
            };
            let out = forward_step(model, &ids, mask.as_ref(), &init, decode_steps, &mut cache)?;
            fed = len;
            prev_state = Some(out.state.narrow(1, out.state.size()[1] - 1, 1));
            (out.logits, out.steps)
        } else {
            let ids = to_tensor(&rows, 0, len);
            let mask = padded.then(|| to_tensor(&masks, 0, len));
            let out =
                tch::no_grad(|| model.forward(&ids, mask.as_ref(), opts.recurrence, 0, &seeded));
            (out.logits, opts.recurrence)
        };
        is_prompt_token = false;
        let last = logits
            .select(1, logits.size()[1] - 1)
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
        let next: Vec<i64> = Vec::try_from(last.argmax(-1, false))?;
        for (row, &tok) in next.iter().enumerate() {
            rows[row].push(tok);
            masks[row].push(1);
            if done[row] {
                continue;
            }
            let res = &mut results[row];
            res.ids.push(tok);
            res.steps_per_token.push(steps);
            if opts.keep_logits {
                res.logits.push(last.get(row as i64));
            }
            if eos_ids.contains(&tok) {
                done[row] = true;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    if opts.use_cache {
        let stats = cache.stats();
        for r in results.iter_mut() {
            r.cache_stats = Some(stats);
        }
    }
    Ok(results)
}
