//! Running requests through a model: summed log-likelihoods of continuations (multiple
//! choice, perplexity) in padded batches, and greedy generation with stop strings.
//!
//! Batches are right-padded with an attention mask, and recurrent models draw their initial
//! state per token position from the evaluation seed, so an item scores the same whatever
//! batch it sits in and whatever the order of the items.

use anyhow::{bail, Context, Result};
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

/// Token ids of `context` and of `continuation` as lm-evaluation-harness splits them: encode
/// the whole string, and take the part after the context's own encoding as the continuation.
pub fn split_tokens(
    tokenizer: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<i64>, Vec<i64>)> {
    let whole = tokenizer.encode(&format!("{context}{continuation}"), true)?;
    let ctx = tokenizer.encode(context, true)?;
    let n = ctx.len().min(whole.len());
    let (ctx, cont) = (whole[..n].to_vec(), whole[n..].to_vec());
    if cont.is_empty() {
        bail!("the continuation {continuation:?} has no tokens of its own");
    }
    if ctx.is_empty() {
        bail!("empty context: the model has nothing to condition on (its tokenizer adds no BOS)");
    }
    Ok((ctx, cont))
}

/// Summed log-likelihood of each `(context, continuation)`, `batch_size` sequences at a time,
/// keeping at most `max_len` tokens (the context is cut from the left).
pub fn loglikelihoods(
    model: &AnyModel,
    tokenizer: &Tokenizer,
    requests: &[(String, String)],
    batch_size: usize,
    max_len: usize,
    tt: TestTime,
) -> Result<Vec<LogLikelihood>> {
    let mut seqs = Vec::with_capacity(requests.len());
    for (ctx, cont) in requests {
        let (c, k) = split_tokens(tokenizer, ctx, cont)?;
        let mut all = c;
        all.extend(&k);
        model.check_tokens(&all)?;
        // Inputs are all but the last token; cut from the left to fit the context.
        let keep = (max_len + 1).min(all.len());
        let all = all[all.len() - keep..].to_vec();
        let n_cont = k.len().min(all.len() - 1);
        seqs.push((all, n_cont));
    }
    let device = model.device();
    let _guard = tch::no_grad_guard();
    let mut out = vec![
        LogLikelihood {
            sum: 0.0,
            is_greedy: false,
            tokens: 0
        };
        seqs.len()
    ];
    for start in (0..seqs.len()).step_by(batch_size.max(1)) {
        let batch = &seqs[start..(start + batch_size.max(1)).min(seqs.len())];
        let t = batch.iter().map(|(s, _)| s.len() - 1).max().unwrap_or(1);
        let mut ids = vec![0i64; batch.len() * t];
        let mut mask = vec![0i64; batch.len() * t];
        for (row, (s, _)) in batch.iter().enumerate() {
            for (j, &id) in s[..s.len() - 1].iter().enumerate() {
                ids[row * t + j] = id;
                mask[row * t + j] = 1;
            }
        }
        let ids = Tensor::from_slice(&ids)
            .view([batch.len() as i64, t as i64])
            .to_device(device);
        let mask = Tensor::from_slice(&mask)
            .view([batch.len() as i64, t as i64])
            .to_device(device);
        let logp = model
            .logits(&ids, Some(&mask), tt)?
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float)
            .to_device(Device::Cpu);
        for (row, (s, n_cont)) in batch.iter().enumerate() {
            let inputs = s.len() - 1;
            let first = inputs - n_cont;
            let targets = Tensor::from_slice(&s[first + 1..]).view([-1, 1]);
            let rows = logp.get(row as i64).narrow(0, first as i64, *n_cont as i64);
            let sum = rows
                .gather(1, &targets, false)
                .sum(Kind::Double)
                .double_value(&[]);
            let greedy = rows
                .argmax(-1, false)
                .view([-1, 1])
                .eq_tensor(&targets)
                .all()
                .int64_value(&[])
                == 1;
            out[start + row] = LogLikelihood {
                sum,
                is_greedy: greedy,
                tokens: *n_cont,
            };
        }
    }
    Ok(out)
}

/// Greedy continuations of many prompts, `batch_size` at a time (padded batches with masks:
/// each prompt gets what it gets alone), each stopped at EOS or at one of its stop strings,
/// which is cut off. `prompts[i]` is (prompt, stop strings).
pub fn greedy_until_batch(
    model: &AnyModel,
    tokenizer: &Tokenizer,
    prompts: &[(String, Vec<String>)],
    eos_ids: &[i64],
    max_new_tokens: usize,
    batch_size: usize,
    tt: TestTime,
) -> Result<Vec<String>> {
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
                let ids = tokenizer.encode(p, true)?;
                Ok(ids[ids.len().saturating_sub(keep)..].to_vec())
            })
            .collect::<Result<Vec<_>>>()?;
        let opts = DecodeOptions {
            max_new_tokens,
            sampling: Sampling::Greedy,
            eos_ids: eos_ids.to_vec(),
            stop_strings: stop.clone(),
            test_time: tt,
            ..DecodeOptions::default()
        };
        let decoded = decode(model, Some(tokenizer), &ids, &opts, |_, _| {})?;
        out.extend(decoded.rows.into_iter().map(|g| g.text));
        start += len;
    }
    Ok(out)
}
