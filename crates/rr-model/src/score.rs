//! Teacher-forced scoring: mean negative log-likelihood and perplexity of a token sequence,
//! windowed over the model's context.

use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::generate::CausalLm;

#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Number of predicted tokens (every token after the first).
    pub tokens: usize,
    /// Sum of negative log-likelihoods, nats.
    pub total_nll: f64,
    /// Mean negative log-likelihood, nats/token.
    pub mean_nll: f64,
    pub perplexity: f64,
    /// Window length and stride used.
    pub window: usize,
    pub stride: usize,
}

/// Scores `ids` with windows of `window` tokens that advance by half a window: each token is
/// predicted exactly once, and after the first window always with at least half a window of
/// context (the usual sliding-window perplexity).
pub fn score_ids<M: CausalLm>(model: &M, ids: &[i64], window: usize) -> Result<Score> {
    if ids.len() < 2 {
        bail!("need at least two tokens to score (got {})", ids.len());
    }
    if window < 2 {
        bail!("window must be at least 2 tokens");
    }
    let vocab = model.vocab_size() as i64;
    if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= vocab) {
        bail!("token id {bad} is out of range for a vocabulary of {vocab}");
    }
    let stride = (window / 2).max(1);
    let _no_grad = tch::no_grad_guard();
    let mut total = 0f64;
    let mut scored = 0usize;
    // `done`: targets [1, done) are already scored.
    let mut done = 1usize;
    let mut start = 0usize;
    while done < ids.len() {
        let end = (start + window).min(ids.len());
        let chunk = Tensor::from_slice(&ids[start..end])
            .view([1, -1])
            .to_device(model.device());
        let logits = model.forward_full(&chunk);
        // Position p in the chunk predicts token start+p+1; keep targets >= done.
        let first = done - start - 1;
        let n = end - done;
        let logp = logits
            .get(0)
            .narrow(0, first as i64, n as i64)
            .log_softmax(-1, Kind::Float);
        let targets = Tensor::from_slice(&ids[done..end])
            .to_device(logp.device())
            .view([-1, 1]);
        let nll = -logp.gather(1, &targets, false).sum(Kind::Double);
        total += f64::try_from(nll)?;
        scored += n;
        done = end;
        start += stride;
        if start + 1 > done {
            start = done - 1;
        }
    }
    let mean = total / scored as f64;
    Ok(Score {
        tokens: scored,
        total_nll: total,
        mean_nll: mean,
        perplexity: mean.exp(),
        window,
        stride,
    })
}
