//! Running requests through a model: summed log-likelihoods of continuations (multiple
//! choice, perplexity) in padded batches, and greedy generation with stop strings.
//!
//! Every sequence starts with the tokenizer's BOS, as lm-evaluation-harness with
//! `add_bos_token=True` (the authors' setting) encodes it: [`encode_with_bos`].
//!
//! Log-likelihood requests are scored longest first (as the harness orders them) so that a
//! batch holds sequences of similar length; batches are right-padded with an attention mask,
//! and recurrent models draw their initial state per token position from the evaluation seed,
//! so an item scores the same whatever batch it sits in and whatever the order of the items.
//! Only the per-sequence sums leave the device.

use anyhow::{bail, Context, Result};
use rr_model::recurrent::InitialState;
use rr_model::{decode, AnyModel, DecodeOptions, Sampling, TestTime, Tokenizer};
use tch::{Device, Kind, Tensor};

/// One scored continuation: summed log-probability and whether every continuation token was
/// the greedy choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogLikelihood {
    pub sum: f64,
    pub is_greedy: bool,
    pub tokens: usize,
}

/// Token ids of `text` with the tokenizer's BOS in front: what Hugging Face's tokenizer loaded
/// with `add_bos_token=True` returns. A tokenizer whose post-processor already adds the BOS is
/// used as it is; one without a known BOS adds nothing.
pub fn encode_with_bos(tokenizer: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    let mut ids = tokenizer.encode(text, true)?;
    if let Some(bos) = tokenizer.bos_id() {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}

/// Token ids of `context` and of `continuation` as lm-evaluation-harness's `_encode_pair`
/// splits them: trailing whitespace of the context moves to the continuation, the whole
/// string is encoded (BOS first) and the continuation is what follows the context's own
/// encoding.
pub fn split_tokens(
    tokenizer: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<i64>, Vec<i64>)> {
    let trimmed = context.trim_end();
    let continuation = format!("{}{continuation}", &context[trimmed.len()..]);
    let whole = encode_with_bos(tokenizer, &format!("{trimmed}{continuation}"))?;
    let ctx = encode_with_bos(tokenizer, trimmed)?;
    let n = ctx.len().min(whole.len());
    let (ctx, cont) = (whole[..n].to_vec(), whole[n..].to_vec());
    if cont.is_empty() {
        bail!("the continuation {continuation:?} has no tokens of its own");
    }
    if ctx.is_empty() {
        bail!("empty context: the model has nothing to condition on (its tokenizer has no BOS)");
    }
    Ok((ctx, cont))
}

/// One sequence to score: all its ids (inputs are all but the last) and how many of the last
/// ones are the continuation.
struct Scored {
    ids: Vec<i64>,
    n_cont: usize,
}

/// Summed log-likelihood of each `(context, continuation)`, `batch_size` sequences at a time
/// (longest first), keeping at most `max_len` tokens (the context is cut from the left).
pub fn loglikelihoods(
    model: &AnyModel,
    tokenizer: &Tokenizer,
    requests: &[(String, String)],
    batch_size: usize,
    max_len: usize,
    tt: TestTime,
    init: &InitialState,
) -> Result<Vec<LogLikelihood>> {
    let mut seqs = Vec::with_capacity(requests.len());
    for (ctx, cont) in requests {
        let (c, k) = split_tokens(tokenizer, ctx, cont)?;
        let mut all = c;
        all.extend(&k);
        model.check_tokens(&all)?;
        // Inputs are all but the last token; cut from the left to fit the context.
        let keep = (max_len + 1).min(all.len());
        let ids = all[all.len() - keep..].to_vec();
        let n_cont = k.len().min(ids.len() - 1);
        seqs.push(Scored { ids, n_cont });
    }
    let longest = seqs.iter().map(|s| s.ids.len() - 1).max().unwrap_or(0);
    crate::nll::check_state_covers(init, longest)?;
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].ids.len()));
    let _guard = tch::no_grad_guard();
    let mut out = vec![
        LogLikelihood {
            sum: 0.0,
            is_greedy: false,
            tokens: 0
        };
        seqs.len()
    ];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<&Scored> = chunk.iter().map(|&i| &seqs[i]).collect();
        for (&i, ll) in chunk.iter().zip(score_batch(model, &batch, tt, init)?) {
            out[i] = ll;
        }
    }
    Ok(out)
}

/// Scores one right-padded batch; only the sums and greedy flags come back from the device.
fn score_batch(
    model: &AnyModel,
    batch: &[&Scored],
    tt: TestTime,
    init: &InitialState,
) -> Result<Vec<LogLikelihood>> {
    let t = batch.iter().map(|s| s.ids.len() - 1).max().unwrap_or(1);
    let (b, device) = (batch.len(), model.device());
    let mut ids = vec![0i64; b * t];
    let mut mask = vec![0i64; b * t];
    let mut targets = vec![0i64; b * t];
    let mut scored = vec![0f32; b * t];
    for (row, s) in batch.iter().enumerate() {
        let inputs = s.ids.len() - 1;
        for j in 0..inputs {
            ids[row * t + j] = s.ids[j];
            mask[row * t + j] = 1;
            targets[row * t + j] = s.ids[j + 1];
        }
        for j in inputs - s.n_cont..inputs {
            scored[row * t + j] = 1.0;
        }
    }
    let grid = |v: &[i64]| {
        Tensor::from_slice(v)
            .view([b as i64, t as i64])
            .to_device(device)
    };
    let (targets, ids, mask) = (grid(&targets), grid(&ids), grid(&mask));
    let scored = Tensor::from_slice(&scored)
        .view([b as i64, t as i64])
        .to_device(device);
    let logp = model
        .forward(&ids, Some(&mask), None, tt.depth(), init)?
        .logits
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float);
    let token_logp = logp
        .gather(2, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let sums = (&token_logp * &scored)
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
        .to_device(Device::Cpu);
    let missed = logp
        .argmax(-1, false)
        .ne_tensor(&targets)
        .logical_and(&scored.gt(0.5))
        .any_dim(1, false)
        .to_device(Device::Cpu);
    let sums = Vec::<f64>::try_from(&sums).context("log-likelihood sums")?;
    let missed = Vec::<bool>::try_from(&missed).context("greedy flags")?;
    Ok(batch
        .iter()
        .enumerate()
        .map(|(row, s)| LogLikelihood {
            sum: sums[row],
            is_greedy: !missed[row],
            tokens: s.n_cont,
        })
        .collect())
}

/// Greedy continuations of many prompts, `batch_size` at a time (padded batches with masks:
/// each prompt gets what it gets alone), each stopped at EOS or at one of its stop strings,
/// which is cut off. `prompts[i]` is (prompt, stop strings); `base` gives the EOS ids, the
/// new-token limit, the test-time recurrence and the initial state (its sampling and stop
/// strings are replaced by greedy and each prompt's own).
pub fn greedy_until_batch(
    model: &AnyModel,
    tokenizer: &Tokenizer,
    prompts: &[(String, Vec<String>)],
    base: &DecodeOptions,
    batch_size: usize,
) -> Result<Vec<String>> {
    let max_new_tokens = base.max_new_tokens;
    let mut out = Vec::with_capacity(prompts.len());
    let mut start = 0;
    while start < prompts.len() {
        // A batch takes consecutive prompts that share their stop strings.
        let stop = &prompts[start].1;
        let len = prompts[start..]
            .iter()
            .take(batch_size.max(1))
            .take_while(|(_, s)| s == stop)
            .count();
        // As lm-evaluation-harness: a prompt keeps its last (context − new tokens) tokens.
        let keep = model
            .max_context()
            .checked_sub(max_new_tokens)
            .filter(|&k| k > 0);
        let keep = keep.with_context(|| {
            format!(
                "--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context of {}",
                model.max_context()
            )
        })?;
        let ids = prompts[start..start + len]
            .iter()
            .map(|(p, _)| {
                let ids = encode_with_bos(tokenizer, p)?;
                Ok(ids[ids.len().saturating_sub(keep)..].to_vec())
            })
            .collect::<Result<Vec<_>>>()?;
        let opts = DecodeOptions {
            sampling: Sampling::Greedy,
            stop_strings: stop.clone(),
            ..base.clone()
        };
        let decoded = decode(model, Some(tokenizer), &ids, &opts, |_, _| {})?;
        out.extend(decoded.rows.into_iter().map(|g| g.text));
        start += len;
    }
    Ok(out)
}
