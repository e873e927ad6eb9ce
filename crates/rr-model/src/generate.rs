//! Autoregressive generation for any causal LM: greedy, or temperature with top-p (nucleus)
//! sampling; stops at EOS ids or stop strings; streams decoded text as it grows.
//!
//! Sampling happens on the host with a seeded RNG, so a seed gives the same text on CPU and
//! CUDA as long as the logits agree.

use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use crate::llama::{KvCache, LlamaModel};
use crate::tokenizer::Tokenizer;

/// What generation needs from a model.
pub trait CausalLm {
    type Cache;
    fn new_cache(&self) -> Self::Cache;
    /// Logits [B, T, V] for `ids` [B, T] appended after whatever `cache` holds.
    fn forward_cached(&self, ids: &Tensor, cache: &mut Self::Cache) -> Tensor;
    /// As `forward_cached` for a padded batch: `mask` [B, T] is 1 on real tokens, 0 on padding,
    /// and is remembered by the cache for later calls.
    fn forward_cached_masked(&self, ids: &Tensor, mask: &Tensor, cache: &mut Self::Cache)
        -> Tensor;
    /// Logits [B, T, V] for a whole sequence, no cache.
    fn forward_full(&self, ids: &Tensor) -> Tensor;
    /// Logits [B, T, V] for a padded batch: `mask` [B, T] is 1 on real tokens, 0 on padding;
    /// each row gets exactly what it gets alone.
    fn forward_masked(&self, ids: &Tensor, mask: &Tensor) -> Tensor;
    fn device(&self) -> Device;
    fn vocab_size(&self) -> usize;
}

impl CausalLm for LlamaModel {
    type Cache = KvCache;
    fn new_cache(&self) -> KvCache {
        LlamaModel::new_cache(self)
    }
    fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Tensor {
        self.forward_with_cache(ids, None, cache)
    }
    fn forward_cached_masked(&self, ids: &Tensor, mask: &Tensor, cache: &mut KvCache) -> Tensor {
        self.forward_with_cache(ids, Some(mask), cache)
    }
    fn forward_full(&self, ids: &Tensor) -> Tensor {
        self.forward(ids, None)
    }
    fn forward_masked(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        self.forward(ids, Some(mask))
    }
    fn device(&self) -> Device {
        LlamaModel::device(self)
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
}

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

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    pub eos_ids: Vec<i64>,
    pub stop_strings: Vec<String>,
    /// Recompute the whole sequence each step instead of using the KV cache (slow; a
    /// reference for tests and benchmarks).
    pub use_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            sampling: Sampling::Greedy,
            seed: 0,
            eos_ids: Vec::new(),
            stop_strings: Vec::new(),
            use_cache: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    Eos,
    StopString,
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, without the prompt (an EOS that stopped generation is not included).
    pub ids: Vec<i64>,
    /// Decoded generated text (cut before a stop string), when a tokenizer was given.
    pub text: String,
    pub stop: StopReason,
}

pub fn generate<M: CausalLm>(
    model: &M,
    tokenizer: Option<&Tokenizer>,
    prompt: &[i64],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        bail!("cannot generate from an empty prompt");
    }
    if let Sampling::TopP { temperature, top_p } = opts.sampling {
        if temperature.is_nan()
            || temperature <= 0.0
            || !(0.0..=1.0).contains(&top_p)
            || top_p == 0.0
        {
            bail!("temperature must be > 0 and top-p in (0, 1] (got {temperature}, {top_p})");
        }
    }
    if !opts.stop_strings.is_empty() && tokenizer.is_none() {
        bail!("stop strings need a tokenizer");
    }
    let vocab = model.vocab_size() as i64;
    if let Some(bad) = prompt.iter().find(|&&id| id < 0 || id >= vocab) {
        bail!("token id {bad} is out of range for a vocabulary of {vocab}");
    }
    let device = model.device();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = model.new_cache();
    let mut all: Vec<i64> = prompt.to_vec();
    let mut generated = Vec::new();
    let mut emitted = String::new();
    let mut stop = StopReason::MaxTokens;
    let _no_grad = tch::no_grad_guard();
    for step in 0..opts.max_new_tokens {
        let logits = if !opts.use_cache {
            model.forward_full(&Tensor::from_slice(&all).view([1, -1]).to_device(device))
        } else if step == 0 {
            model.forward_cached(
                &Tensor::from_slice(prompt).view([1, -1]).to_device(device),
                &mut cache,
            )
        } else {
            let last = *all.last().expect("non-empty");
            model.forward_cached(
                &Tensor::from_slice(&[last]).view([1, 1]).to_device(device),
                &mut cache,
            )
        };
        let last_logits: Vec<f32> = Vec::try_from(
            logits
                .get(0)
                .get(-1)
                .to_kind(Kind::Float)
                .to_device(Device::Cpu),
        )?;
        let next = sample(&last_logits, &opts.sampling, &mut rng);
        if opts.eos_ids.contains(&next) {
            stop = StopReason::Eos;
            break;
        }
        all.push(next);
        generated.push(next);
        if let Some(tok) = tokenizer {
            let text = tok.decode(&generated, true)?;
            // Hold back a trailing partial UTF-8 sequence until its bytes are complete.
            if text.ends_with('\u{FFFD}') {
                continue;
            }
            if let Some(cut) = opts
                .stop_strings
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                if cut > emitted.len() && text.is_char_boundary(cut) && text.starts_with(&emitted) {
                    on_text(&text[emitted.len()..cut]);
                }
                emitted = text[..cut].to_string();
                stop = StopReason::StopString;
                break;
            }
            if text.starts_with(&emitted) {
                on_text(&text[emitted.len()..]);
            }
            emitted = text;
        }
    }
    Ok(Generation {
        ids: generated,
        text: emitted,
        stop,
    })
}

/// Greedy generation for several prompts at once, left-padded with an attention mask, so each
/// row gets what it gets alone (the same tokens, up to float rounding of batched matmuls).
/// Each row stops at an EOS id, at a stop string (its text is cut before it), or after
/// `max_new_tokens`; the batch stops when every row has.
pub fn greedy_batch<M: CausalLm>(
    model: &M,
    tokenizer: &Tokenizer,
    prompts: &[Vec<i64>],
    eos_ids: &[i64],
    stop_strings: &[String],
    max_new_tokens: usize,
) -> Result<Vec<Generation>> {
    let vocab = model.vocab_size() as i64;
    for p in prompts {
        if p.is_empty() {
            bail!("cannot generate from an empty prompt");
        }
        if let Some(bad) = p.iter().find(|&&id| id < 0 || id >= vocab) {
            bail!("token id {bad} is out of range for a vocabulary of {vocab}");
        }
    }
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            ids: Vec::new(),
            text: String::new(),
            stop: StopReason::MaxTokens,
        })
        .collect();
    if prompts.is_empty() || max_new_tokens == 0 {
        return Ok(out);
    }
    let device = model.device();
    let b = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * longest);
    let mut mask = Vec::with_capacity(b * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1i64, p.len())));
    }
    let _no_grad = tch::no_grad_guard();
    let mut cache = model.new_cache();
    let mut logits = model.forward_cached_masked(
        &Tensor::from_slice(&ids)
            .view([b as i64, longest as i64])
            .to_device(device),
        &Tensor::from_slice(&mask)
            .view([b as i64, longest as i64])
            .to_device(device),
        &mut cache,
    );
    let step_mask = Tensor::ones([b as i64, 1], (Kind::Int64, device));
    let mut done = vec![false; b];
    for _ in 0..max_new_tokens {
        let last = logits
            .select(1, -1)
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
        let rows: Vec<f32> = Vec::try_from(last.flatten(0, -1))?;
        let mut next = vec![0i64; b];
        for (i, row) in rows.chunks(vocab as usize).enumerate() {
            next[i] = argmax(row);
            if done[i] {
                continue;
            }
            let gen = &mut out[i];
            if eos_ids.contains(&next[i]) {
                gen.stop = StopReason::Eos;
                done[i] = true;
                continue;
            }
            gen.ids.push(next[i]);
            let text = tokenizer.decode(&gen.ids, true)?;
            // As `generate`: wait for the rest of a partial UTF-8 sequence.
            if text.ends_with('\u{FFFD}') {
                continue;
            }
            if let Some(cut) = stop_strings
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                gen.text = text[..cut].to_string();
                gen.stop = StopReason::StopString;
                done[i] = true;
            } else {
                gen.text = text;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        logits = model.forward_cached_masked(
            &Tensor::from_slice(&next)
                .view([b as i64, 1])
                .to_device(device),
            &step_mask,
            &mut cache,
        );
    }
    Ok(out)
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
        // Renormalised: 0.5/0.8 = 0.625 for id 0.
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
}
