//! Teacher-forced negative log-likelihood, the one implementation behind `rr score`,
//! `rr eval --heldout` and the trainer's held-out loss: a token sequence scored with sliding
//! windows over the model's context, or packed rows scored as they are.

use anyhow::{bail, Result};
use rr_model::recurrent::{Depth, InitialState};
use rr_model::{AnyModel, TestTime};
use serde::Serialize;
use tch::{Kind, Tensor};

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
pub fn score_text(model: &AnyModel, ids: &[i64], window: usize, tt: TestTime) -> Result<Score> {
    score_text_from(model, ids, window, tt.depth(), &tt.init())
}

/// [`score_text`] from a chosen initial state (`rr score --initial-state`).
pub fn score_text_from(
    model: &AnyModel,
    ids: &[i64],
    window: usize,
    depth: Depth,
    init: &InitialState,
) -> Result<Score> {
    check_state_covers(init, ids.len())?;
    if ids.len() < 2 {
        bail!("need at least two tokens to score (got {})", ids.len());
    }
    if window < 2 {
        bail!("window must be at least 2 tokens");
    }
    model.check_tokens(ids)?;
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
        let logits = model.forward(&chunk, None, None, depth, init)?.logits;
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
    ensure_finite(total)?;
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

/// Logits [T, vocab_size] (fp32) of `ids` in one forward pass from `init`, and each token's
/// negative log-likelihood given the tokens before it (T − 1 values): what
/// `rr score --dump-logits` writes.
pub fn token_logits(
    model: &AnyModel,
    ids: &[i64],
    depth: Depth,
    init: &InitialState,
) -> Result<(Tensor, Vec<f64>)> {
    if ids.len() < 2 {
        bail!("need at least two tokens to score (got {})", ids.len());
    }
    if ids.len() > model.max_context() {
        bail!(
            "{} tokens do not fit the model's context ({}) in one forward pass",
            ids.len(),
            model.max_context()
        );
    }
    check_state_covers(init, ids.len())?;
    model.check_tokens(ids)?;
    let _no_grad = tch::no_grad_guard();
    let input = Tensor::from_slice(ids)
        .view([1, -1])
        .to_device(model.device());
    let logits = model.forward(&input, None, None, depth, init)?.logits;
    let logits = logits
        .get(0)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    let t = ids.len() as i64;
    let targets = Tensor::from_slice(&ids[1..]).view([-1, 1]);
    let nll = -logits
        .narrow(0, 0, t - 1)
        .log_softmax(-1, Kind::Float)
        .gather(1, &targets, false)
        .view([-1]);
    let nll = Vec::<f64>::try_from(nll.to_kind(Kind::Double))?;
    ensure_finite(nll.iter().sum())?;
    Ok((logits, nll))
}

/// A per-position initial state must have a row for every token.
pub(crate) fn check_state_covers(init: &InitialState, tokens: usize) -> Result<()> {
    match init.positions_covered() {
        Some(n) if n < tokens => {
            bail!("the initial state covers {n} positions, but the text has {tokens} tokens")
        }
        _ => Ok(()),
    }
}

/// Summed negative log-likelihood and token count of packed rows (input = row[..T], labels =
/// row[1..]), `batch_size` rows at a time.
pub fn rows_nll(
    model: &AnyModel,
    rows: &[Vec<i64>],
    batch_size: usize,
    tt: TestTime,
    init: &InitialState,
) -> Result<(f64, usize)> {
    let _guard = tch::no_grad_guard();
    let (mut total, mut count) = (0f64, 0usize);
    for batch in rows.chunks(batch_size.max(1)) {
        let t = batch[0].len().saturating_sub(1);
        if t == 0 || batch.iter().any(|r| r.len() != t + 1) {
            bail!("packed rows must all have the same length of at least 2");
        }
        model.check_tokens(batch.iter().flatten())?;
        check_state_covers(init, t)?;
        let input: Vec<i64> = batch.iter().flat_map(|r| r[..t].iter().copied()).collect();
        let labels: Vec<i64> = batch.iter().flat_map(|r| r[1..].iter().copied()).collect();
        let ids = Tensor::from_slice(&input)
            .view([batch.len() as i64, t as i64])
            .to_device(model.device());
        let logits = model.forward(&ids, None, None, tt.depth(), init)?.logits;
        let loss = logits
            .view([-1, logits.size()[2]])
            .to_kind(Kind::Float)
            .cross_entropy_loss::<Tensor>(
                &Tensor::from_slice(&labels).to_device(model.device()),
                None,
                tch::Reduction::Sum,
                -100,
                0.0,
            );
        total += loss.double_value(&[]);
        count += labels.len();
    }
    ensure_finite(total)?;
    Ok((total, count))
}

/// A NaN or infinite negative log-likelihood is an error, not a result: the weights hold
/// non-finite values (`rr inspect` names them) or the logits overflow.
fn ensure_finite(total: f64) -> Result<()> {
    if !total.is_finite() {
        bail!(
            "the negative log-likelihood is not finite ({total}): the model gives non-finite \
             logits (rr inspect lists non-finite weights)"
        );
    }
    Ok(())
}
