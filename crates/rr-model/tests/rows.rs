//! `AnyModel::step_rows` (continuous batching) against each row run alone through
//! `AnyModel::forward` with its own cache: rows at different lengths, recurrences, exit rules
//! and cache modes, one joining the batch late, must get the logits and iteration counts they
//! get alone, and their caches must hold what a lone run's cache holds. The model is the
//! `raven_llama` fixture (formula weights, fp32, CPU; prelude 1, core 2, coda 1).

mod common;

use anyhow::Result;
use rr_model::rows::RowStep;
use rr_model::{AnyCache, AnyModel, CacheMode, Depth, ExitCriterion, InitialState, RecurrentModel};
use tch::{Device, Kind, Tensor};

const SEED: u64 = 1234;

fn fixture_model() -> Result<(tempfile::TempDir, AnyModel, serde_json::Value)> {
    let fx = common::load_raven_fixture("raven_llama")?;
    let dir = common::write_raven_model_dir(&fx["config"])?;
    let model = RecurrentModel::load(dir.path(), Device::Cpu, Kind::Float)?;
    Ok((dir, AnyModel::Recurrent(model), fx["config"].clone()))
}

/// Positions here: the longest prompt (9) plus 4 tokens, rounded up.
const MAX_POSITIONS: usize = 16;
/// The deepest any token runs.
const MAX_ITERATIONS: usize = 6;

fn ids(tokens: &[i64]) -> Tensor {
    Tensor::from_slice(tokens).view([1, tokens.len() as i64])
}

/// Exits after exactly `k` iterations (every KL is below infinity once `min_steps` = k).
fn exit_after(k: usize) -> Depth {
    Depth::Adaptive(ExitCriterion {
        threshold: f64::INFINITY,
        min_steps: k,
        max_steps: 6,
    })
}

/// Never exits early (no KL is below a negative threshold): runs all 5.
fn never_exits() -> Depth {
    Depth::Adaptive(ExitCriterion {
        threshold: -1.0,
        min_steps: 1,
        max_steps: 5,
    })
}

struct Sequence {
    prompt: Vec<i64>,
    /// The tokens fed after the prompt, one per step (teacher forcing).
    tokens: Vec<i64>,
    prompt_recurrence: usize,
    depths: Vec<Depth>,
    mode: CacheMode,
    init: InitialState,
}

fn sequences() -> Vec<Sequence> {
    let seq = |prompt: &[i64], r: usize, depths: Vec<Depth>, mode| Sequence {
        prompt: prompt.to_vec(),
        tokens: (0..depths.len() as i64)
            .map(|i| (prompt[0] * 7 + i * 13) % 97)
            .collect(),
        prompt_recurrence: r,
        depths,
        mode,
        init: InitialState::Random { seed: SEED },
    };
    vec![
        seq(
            &[1, 17, 42, 5, 96, 33, 8, 71, 23],
            3,
            vec![Depth::recurrence(3); 4],
            CacheMode::Full,
        ),
        seq(&[7], 1, vec![Depth::recurrence(1); 4], CacheMode::Full),
        seq(
            &[50, 2, 64, 11],
            4,
            vec![exit_after(2), exit_after(4), never_exits(), exit_after(1)],
            CacheMode::Full,
        ),
        seq(
            &[9, 8, 7, 6, 5, 4],
            4,
            vec![Depth::recurrence(5); 4],
            CacheMode::LatestM(2),
        ),
        // Joins late: its steps are the batch's last two.
        seq(
            &[3, 14, 15],
            2,
            vec![Depth::recurrence(6), exit_after(3)],
            CacheMode::Full,
        ),
    ]
}

/// Prefills a sequence's prompt into a new cache at its prompt recurrence.
fn prefill(model: &AnyModel, s: &Sequence) -> Result<AnyCache> {
    let mut cache = model.new_cache(s.mode)?;
    model.forward(
        &ids(&s.prompt),
        None,
        Some(&mut cache),
        Depth::recurrence(s.prompt_recurrence),
        &s.init,
    )?;
    Ok(cache)
}

/// Logits [V] and iterations of each step of a sequence run alone, and its cache at the end.
fn alone(model: &AnyModel, s: &Sequence) -> Result<(Vec<(Tensor, usize)>, AnyCache)> {
    let mut cache = prefill(model, s)?;
    let mut out = Vec::new();
    for (&token, &depth) in s.tokens.iter().zip(&s.depths) {
        let step = model.forward(&ids(&[token]), None, Some(&mut cache), depth, &s.init)?;
        out.push((step.logits.select(1, -1).squeeze_dim(0), step.steps));
    }
    Ok((out, cache))
}

#[test]
fn a_batch_of_rows_gets_what_each_row_gets_alone() -> Result<()> {
    let (_dir, model, cfg) = fixture_model()?;
    let _no_grad = tch::no_grad_guard();
    let seqs = sequences();
    let want: Vec<(Vec<(Tensor, usize)>, AnyCache)> = seqs
        .iter()
        .map(|s| alone(&model, s))
        .collect::<Result<_>>()?;

    let steps = 4;
    let late = seqs.len() - 1;
    let joins_at = steps - seqs[late].tokens.len();
    let mut caches: Vec<Option<AnyCache>> = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        caches.push((i != late).then(|| prefill(&model, s)).transpose()?);
    }
    for step in 0..steps {
        if step == joins_at {
            caches[late] = Some(prefill(&model, &seqs[late])?);
        }
        // (row, its step index) for the rows taking part in this step.
        let taking: Vec<(usize, usize)> = (0..seqs.len())
            .filter(|&i| caches[i].is_some())
            .map(|i| (i, if i == late { step - joins_at } else { step }))
            .collect();
        let mut rows: Vec<RowStep> = Vec::new();
        for (cache, (i, k)) in caches
            .iter_mut()
            .filter_map(Option::as_mut)
            .zip(taking.iter().copied())
        {
            rows.push(RowStep {
                token: seqs[i].tokens[k],
                cache,
                depth: seqs[i].depths[k],
                init: &seqs[i].init,
            });
        }
        let out = model.step_rows(&mut rows)?;
        for (j, &(i, k)) in taking.iter().enumerate() {
            let (logits, iterations) = &want[i].0[k];
            assert_eq!(out.steps[j], *iterations, "row {i} step {k}");
            // The same sums in another order (a stacked batch, padded keys): docs/TESTING.md.
            let bound = common::fp32_tolerance(
                logits,
                common::recurrent_depth(&cfg, MAX_ITERATIONS, MAX_POSITIONS),
            );
            let got = out.logits.get(j as i64);
            common::assert_within(&format!("row {i} step {k}"), &got, logits, bound);
        }
    }
    for (i, (cache, (_, lone))) in caches.iter().zip(&want).enumerate() {
        assert_eq!(
            cache.as_ref().unwrap().stats(),
            lone.stats(),
            "row {i}: the batched cache holds what the lone one does"
        );
    }
    Ok(())
}
