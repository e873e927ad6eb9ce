//! Recurrent decoding (`rr_model::decode` over `RecurrentModel::forward` with its cache): cached
//! greedy generation against full recomputation, padded batches, the bounded latest-m cache,
//! per-token adaptive exit with the "last computed" fill rule, and warm start. The model is the `raven_llama` fixture (formula
//! weights, fp32, CPU; prelude 1, core 2, coda 1).

mod common;

use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Result;
use rr_model::recurrent::CacheStats;
use rr_model::{
    decode, AnyCache, AnyModel, CacheMode, DecodeOptions, Depth, ExitCriterion, InitialState,
    RecurrentModel, TestTime,
};
use tch::{Device, Kind, Tensor};

/// Positions in these tests: the longest prompt (9) plus at most 12 new tokens, rounded up.
const MAX_POSITIONS: usize = 32;
const SEED: u64 = 1234;

fn fixture_model() -> Result<(tempfile::TempDir, AnyModel)> {
    let fx = common::load_raven_fixture("raven_llama")?;
    let dir = common::write_raven_model_dir(&fx["config"])?;
    let model = RecurrentModel::load(dir.path(), Device::Cpu, Kind::Float)?;
    Ok((dir, AnyModel::Recurrent(model)))
}

/// One row's generation and what the batch's cache held at the end.
struct RecurrentGeneration {
    ids: Vec<i64>,
    steps_per_token: Vec<usize>,
    logits: Vec<Tensor>,
    cache_stats: Option<CacheStats>,
}

impl RecurrentGeneration {
    fn mean_steps(&self) -> f64 {
        self.steps_per_token.iter().sum::<usize>() as f64 / self.steps_per_token.len() as f64
    }
}

fn generate_recurrent_batch(
    model: &AnyModel,
    prompts: &[Vec<i64>],
    max_new_tokens: usize,
    eos_ids: &[i64],
    opts: &DecodeOptions,
) -> Result<Vec<RecurrentGeneration>> {
    let opts = DecodeOptions {
        max_new_tokens,
        eos_ids: eos_ids.to_vec(),
        ..opts.clone()
    };
    let out = decode(model, None, prompts, &opts, |_, _| {})?;
    Ok(out
        .rows
        .into_iter()
        .map(|g| RecurrentGeneration {
            ids: g.ids,
            steps_per_token: g.steps_per_token,
            logits: g.logits,
            cache_stats: out.cache_stats,
        })
        .collect())
}

fn generate_recurrent(
    model: &AnyModel,
    prompt: &[i64],
    max_new_tokens: usize,
    eos_ids: &[i64],
    opts: &DecodeOptions,
) -> Result<RecurrentGeneration> {
    let mut rows =
        generate_recurrent_batch(model, &[prompt.to_vec()], max_new_tokens, eos_ids, opts)?;
    Ok(rows.remove(0))
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![1, 17, 42, 5, 96, 33, 8, 71, 23],
        vec![7],
        vec![50, 2, 64, 11],
    ]
}

fn opts(r: usize) -> DecodeOptions {
    DecodeOptions {
        test_time: TestTime {
            recurrence: r,
            seed: SEED,
        },
        keep_logits: true,
        ..DecodeOptions::default()
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Allowed logit difference between two runs at recurrence `r` whose sums run in other orders
/// (cache against recomputation, a batch row against the row alone): the reordering bound
/// `common::fp32_tolerance` at the fixture model's depth.
fn tolerance(want: &Tensor, r: usize) -> f64 {
    static CONFIG: OnceLock<serde_json::Value> = OnceLock::new();
    let cfg = CONFIG.get_or_init(|| {
        common::load_raven_fixture("raven_llama").expect("raven_llama fixture")["config"].clone()
    });
    common::fp32_tolerance(want, common::recurrent_depth(cfg, r, MAX_POSITIONS))
}

/// Smallest gap between the largest and second-largest logit.
fn top2_gap(logits: &Tensor) -> f64 {
    let (top, _) = logits.topk(2, -1, true, true);
    (top.select(-1, 0) - top.select(-1, 1))
        .min()
        .double_value(&[])
}

/// Largest per-step logit difference of two runs at recurrence `r`, each step within
/// [`tolerance`]. Greedy ids must agree wherever the reference's top-two gap exceeds twice the
/// bound (no rounding within it can swap them); ids parting at a closer tie end the comparison.
fn assert_same(a: &RecurrentGeneration, b: &RecurrentGeneration, r: usize, what: &str) -> f64 {
    let mut worst: f64 = 0.0;
    for (step, (x, y)) in a.logits.iter().zip(&b.logits).enumerate() {
        let (d, tol) = (max_abs(x, y), tolerance(y, r));
        assert!(
            d <= tol,
            "{what}: token {step}: logits differ by {d:.3e} > bound {tol:.3e}"
        );
        worst = worst.max(d);
        if a.ids[step] != b.ids[step] {
            let gap = top2_gap(y);
            assert!(
                gap <= 2.0 * tol,
                "{what}: token {step}: ids {} vs {} though the top-two gap {gap:.3e} > 2 × bound {tol:.3e}",
                a.ids[step],
                b.ids[step]
            );
            eprintln!("{what}: token {step}: near tie (gap {gap:.1e}), the runs part here");
            return worst;
        }
    }
    assert_eq!(a.ids, b.ids, "{what}: token ids differ");
    assert_eq!(a.logits.len(), b.logits.len(), "{what}");
    let tol = b
        .logits
        .iter()
        .map(|y| tolerance(y, r))
        .fold(f64::INFINITY, f64::min);
    eprintln!("{what}: max |Δlogit| {worst:.3e} (smallest bound {tol:.3e})");
    worst
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_slice(v).view([1, v.len() as i64])
}

#[test]
fn cached_greedy_equals_recomputation() -> Result<()> {
    let (_dir, model) = fixture_model()?;
    let mut by_r = Vec::new();
    for r in [1, 4, 8] {
        for p in prompts() {
            let cached = generate_recurrent(&model, &p, 10, &[], &opts(r))?;
            let full = generate_recurrent(
                &model,
                &p,
                10,
                &[],
                &DecodeOptions {
                    use_cache: false,
                    ..opts(r)
                },
            )?;
            assert_eq!(cached.ids.len(), 10);
            let d = assert_same(&cached, &full, r, &format!("r={r} prompt {p:?}"));
            eprintln!(
                "r={r} prompt {p:?}: {:?} (max |Δlogit| {d:.2e})",
                cached.ids
            );
            assert!(cached.steps_per_token.iter().all(|&s| s == r));
            if p.len() == 9 {
                by_r.push(cached);
            }
        }
    }
    // The comparison has teeth: recurrence changes the logits by far more than the bound.
    let d = max_abs(&by_r[0].logits[0], &by_r[2].logits[0]);
    let tol = tolerance(&by_r[2].logits[0], 8);
    assert!(
        d > 100.0 * tol,
        "r=1 and r=8 logits differ by only {d:.3e} (bound {tol:.3e})"
    );
    Ok(())
}

#[test]
fn eos_stops_generation() -> Result<()> {
    let (_dir, model) = fixture_model()?;
    let p = &prompts()[0];
    let all = generate_recurrent(&model, p, 6, &[], &opts(4))?;
    let eos = all.ids[2];
    let stop = generate_recurrent(&model, p, 6, &[eos], &opts(4))?;
    // Generation stops at the first EOS, which is not part of the output.
    let first = all.ids.iter().position(|&t| t == eos).unwrap();
    assert_eq!(stop.ids, all.ids[..first]);
    Ok(())
}

#[test]
fn padded_batch_rows_equal_solo_runs() -> Result<()> {
    let (_dir, model) = fixture_model()?;
    for r in [1, 4] {
        let batch = generate_recurrent_batch(&model, &prompts(), 8, &[], &opts(r))?;
        for (p, got) in prompts().iter().zip(&batch) {
            let alone = generate_recurrent(&model, p, 8, &[], &opts(r))?;
            let d = assert_same(got, &alone, r, &format!("batch row {p:?} r={r}"));
            eprintln!("batch r={r} row {p:?}: max |Δlogit| vs alone {d:.2e}");
        }
        // And the uncached path with the same padding agrees too.
        let full = generate_recurrent_batch(
            &model,
            &prompts(),
            8,
            &[],
            &DecodeOptions {
                use_cache: false,
                ..opts(r)
            },
        )?;
        for (a, b) in batch.iter().zip(&full) {
            assert_same(a, b, r, &format!("batch cached vs recomputed r={r}"));
        }
    }
    Ok(())
}

#[test]
fn latest_m_with_m_at_least_r_equals_full() -> Result<()> {
    let (_dir, model) = fixture_model()?;
    for (r, m) in [(4, 4), (4, 8), (1, 1)] {
        for p in prompts() {
            let full = generate_recurrent(&model, &p, 8, &[], &opts(r))?;
            let lm = generate_recurrent(
                &model,
                &p,
                8,
                &[],
                &DecodeOptions {
                    cache_mode: CacheMode::LatestM(m),
                    ..opts(r)
                },
            )?;
            assert_same(&full, &lm, r, &format!("latest-{m} vs full, r={r}"));
            assert_eq!(lm.cache_stats.unwrap(), full.cache_stats.unwrap());
        }
    }
    Ok(())
}

#[test]
fn latest_m_memory_is_bounded_by_m() -> Result<()> {
    let (_dir, model) = fixture_model()?;
    let p = &prompts()[0];
    let n_new = 6;
    let run = |r: usize, mode: CacheMode| {
        generate_recurrent(
            &model,
            p,
            n_new,
            &[],
            &DecodeOptions {
                cache_mode: mode,
                ..opts(r)
            },
        )
        .unwrap()
    };
    let m4_r8 = run(8, CacheMode::LatestM(4));
    let m4_r16 = run(16, CacheMode::LatestM(4));
    let m4_r32 = run(32, CacheMode::LatestM(4));
    let full_r16 = run(16, CacheMode::Full);
    let full_r32 = run(32, CacheMode::Full);
    let (s8, s16, s32) = (
        m4_r8.cache_stats.unwrap(),
        m4_r16.cache_stats.unwrap(),
        m4_r32.cache_stats.unwrap(),
    );
    assert_eq!(s8.core_slots, 4);
    assert_eq!(s8, s16);
    assert_eq!(s16, s32);
    let (f16, f32_) = (full_r16.cache_stats.unwrap(), full_r32.cache_stats.unwrap());
    assert_eq!(f16.core_slots, 16);
    assert_eq!(f32_.core_slots, 32);
    // prelude 1 + coda 1 + core 2 per slot, K and V each.
    assert_eq!(s16.tensors, 2 * (1 + 1 + 2 * 4));
    assert_eq!(f32_.tensors, 2 * (1 + 1 + 2 * 32));
    let per_layer = f32_.elements / (f32_.tensors as i64 / 2);
    assert_eq!(s32.elements, per_layer * (s32.tensors as i64 / 2));
    eprintln!(
        "cache elements after {} positions: latest-4 (r=8/16/32) {}; full r=16 {}, r=32 {}",
        p.len() + n_new - 1,
        s32.elements,
        f16.elements,
        f32_.elements
    );
    // With m < r the mode is an approximation: it must still run and generally differ.
    let exact = run(16, CacheMode::Full);
    let d = exact
        .logits
        .iter()
        .zip(&m4_r16.logits)
        .map(|(a, b)| max_abs(a, b))
        .fold(0.0, f64::max);
    eprintln!(
        "latest-4 vs full at r=16: max |Δlogit| {d:.3e}, ids {:?} vs {:?}",
        m4_r16.ids, exact.ids
    );
    // More than rounding: the bound of the full run's first token.
    let tol = tolerance(&exact.logits[0], 16);
    assert!(
        d > tol,
        "latest-4 differs from full by {d:.3e}, within the bound {tol:.3e}"
    );
    Ok(())
}

/// Runs `tokens` one by one after a prompt at `prompt_r`, token i at the fixed recurrence
/// `iters[i]`: the reference for an adaptive run whose tokens exit after those iterations.
fn fixed_reference(
    model: &AnyModel,
    prompt: &[i64],
    prompt_r: usize,
    tokens: &[i64],
    iters: &[usize],
) -> Result<Tensor> {
    let init = InitialState::Random { seed: SEED };
    let mut cache = model.new_cache(CacheMode::Full)?;
    let _no_grad = tch::no_grad_guard();
    let run = |cache: &mut AnyCache, ids: &Tensor, r: usize| {
        model.forward(ids, None, Some(cache), Depth::recurrence(r), &init)
    };
    let mut logits = run(&mut cache, &ids(prompt), prompt_r)?.logits;
    for (&tok, &r) in tokens.iter().zip(iters) {
        logits = run(&mut cache, &ids(&[tok]), r)?.logits;
    }
    Ok(logits)
}

/// The "last computed" rule on the cache itself: slot j holds, for a position that ran d
/// iterations, the keys and values of iteration min(j, d − 1).
fn assert_last_computed_fill(cache: &AnyCache, depth_per_position: &[usize]) {
    let AnyCache::Recurrent(c) = cache else {
        panic!("a recurrent cache")
    };
    for j in 0..c.core.len() {
        for (l, layer) in c.core[j].iter().enumerate() {
            let (k, v) = layer.kv.as_ref().expect("every slot holds every position");
            for (p, &d) in depth_per_position.iter().enumerate() {
                let (wk, wv) = c.core[j.min(d - 1)][l].kv.as_ref().unwrap();
                let at = |x: &Tensor| x.narrow(2, p as i64, 1);
                assert!(
                    at(k).equal(&at(wk)) && at(v).equal(&at(wv)),
                    "slot {j}, core layer {l}, position {p} (ran {d}): not iteration {}",
                    j.min(d - 1)
                );
            }
        }
    }
}

#[test]
fn exited_tokens_fill_skipped_iterations_with_last_computed() -> Result<()> {
    let (_dir, model) = fixture_model()?;
    let prompt = [1, 17, 42, 5, 96];
    let tokens = [33, 8, 71];
    // Token 0 exits after 2 iterations (any KL passes), token 1 after 3, token 2 runs all 8
    // (no KL passes a negative threshold): it reads slots 2..8 of tokens that never ran them
    // and slots 3..8 of the prompt (run at r = 3).
    let crit = |threshold: f64, min_steps: usize| ExitCriterion {
        threshold,
        min_steps,
        max_steps: 8,
    };
    let schedule = [
        crit(f64::INFINITY, 2),
        crit(f64::INFINITY, 3),
        crit(-1.0, 1),
    ];
    let want = fixed_reference(&model, &prompt, 3, &tokens, &[2, 3, 8])?;
    for mode in [CacheMode::Full, CacheMode::LatestM(8)] {
        let mut cache = model.new_cache(mode)?;
        let init = InitialState::Random { seed: SEED };
        let _no_grad = tch::no_grad_guard();
        model.forward(
            &ids(&prompt),
            None,
            Some(&mut cache),
            Depth::recurrence(3),
            &init,
        )?;
        let mut steps = Vec::new();
        let mut logits = None;
        for (&tok, &c) in tokens.iter().zip(&schedule) {
            let out = model.forward(
                &ids(&[tok]),
                None,
                Some(&mut cache),
                Depth::Adaptive(c),
                &init,
            )?;
            steps.push(out.steps);
            logits = Some(out.logits);
        }
        assert_eq!(steps, [2, 3, 8]);
        let got = logits.unwrap();
        let d = max_abs(&got, &want);
        let tol = tolerance(&want, 8);
        eprintln!("{mode:?}: adaptive exit vs fixed depth: {d:.3e} (bound {tol:.3e})");
        assert!(
            d <= tol,
            "{mode:?}: adaptive exit differs from the fixed-depth reference by {d:.3e} > {tol:.3e}"
        );
        assert_last_computed_fill(&cache, &[3, 3, 3, 3, 3, 2, 3, 8]);
        assert_eq!(cache.stats().unwrap().core_slots, 8);
        // The rule has teeth: a token's entry in a slot past its depth differs from the
        // other iterations' entries.
        let AnyCache::Recurrent(c) = &cache else {
            unreachable!()
        };
        let (k0, _) = c.core[0][0].kv.as_ref().unwrap();
        let (k7, _) = c.core[7][0].kv.as_ref().unwrap();
        assert!(!k0.narrow(2, 5, 1).equal(&k7.narrow(2, 5, 1)));
    }
    Ok(())
}

#[test]
fn adaptive_exit_steps_and_mean() -> Result<()> {
    let (_dir, model) = fixture_model()?;
    let mut all = Vec::new();
    for p in prompts() {
        let g = generate_recurrent(
            &model,
            &p,
            12,
            &[],
            &DecodeOptions {
                exit: Some(ExitCriterion::default()),
                ..opts(8)
            },
        )?;
        assert!(g.steps_per_token.iter().all(|&s| (2..=32).contains(&s)));
        eprintln!(
            "exit 1e-3, prompt {p:?}: steps {:?}, mean {:.2}",
            g.steps_per_token,
            g.mean_steps()
        );
        all.extend(g.steps_per_token);
    }
    eprintln!(
        "mean steps per token (KL < 1e-3, max 32): {:.2} over {} tokens",
        all.iter().sum::<usize>() as f64 / all.len() as f64,
        all.len()
    );
    // The fixture's formula weights are no trained model: its latent rarely settles.
    for threshold in [1e-1, 1e-2, 1e-3] {
        let g = generate_recurrent(
            &model,
            &prompts()[0],
            12,
            &[],
            &DecodeOptions {
                exit: Some(ExitCriterion {
                    threshold,
                    ..ExitCriterion::default()
                }),
                ..opts(8)
            },
        )?;
        eprintln!(
            "KL < {threshold:e}: mean steps {:.2} {:?}",
            g.mean_steps(),
            g.steps_per_token
        );
    }
    // A threshold nothing meets runs max_steps; min_steps is honoured.
    let never = ExitCriterion {
        threshold: -1.0,
        min_steps: 1,
        max_steps: 5,
    };
    let g = generate_recurrent(
        &model,
        &prompts()[0],
        4,
        &[],
        &DecodeOptions {
            exit: Some(never),
            ..opts(4)
        },
    )?;
    assert_eq!(g.steps_per_token, [5; 4]);
    let always = ExitCriterion {
        threshold: f64::INFINITY,
        min_steps: 3,
        max_steps: 5,
    };
    let g = generate_recurrent(
        &model,
        &prompts()[0],
        4,
        &[],
        &DecodeOptions {
            exit: Some(always),
            ..opts(4)
        },
    )?;
    assert_eq!(g.steps_per_token, [3; 4]);
    // Adaptive exit that runs exactly r steps equals the fixed-r run.
    let fixed = ExitCriterion {
        threshold: -1.0,
        min_steps: 4,
        max_steps: 4,
    };
    let a = generate_recurrent(
        &model,
        &prompts()[0],
        6,
        &[],
        &DecodeOptions {
            exit: Some(fixed),
            ..opts(4)
        },
    )?;
    let b = generate_recurrent(&model, &prompts()[0], 6, &[], &opts(4))?;
    assert_same(&a, &b, 4, "adaptive with min = max = r vs fixed r");
    Ok(())
}

#[test]
fn warm_start_is_deterministic_and_changes_results() -> Result<()> {
    let (_dir, model) = fixture_model()?;
    for r in [2, 8] {
        let warm = DecodeOptions {
            warm_start: true,
            ..opts(r)
        };
        let p = &prompts()[0];
        let a = generate_recurrent(&model, p, 8, &[], &warm)?;
        let b = generate_recurrent(&model, p, 8, &[], &warm)?;
        assert_eq!(a.ids, b.ids);
        for (x, y) in a.logits.iter().zip(&b.logits) {
            assert_eq!(max_abs(x, y), 0.0, "warm start is not deterministic");
        }
        let cold = generate_recurrent(&model, p, 8, &[], &opts(r))?;
        // The first token comes from the prompt (seeded state either way).
        assert_eq!(max_abs(&a.logits[0], &cold.logits[0]), 0.0);
        let d = max_abs(&a.logits[1], &cold.logits[1]);
        eprintln!(
            "r={r}: warm {:?} vs cold {:?}; |Δlogit| at token 2: {d:.3e}",
            a.ids, cold.ids
        );
        // More than rounding: warm start really changes the computation.
        let tol = tolerance(&cold.logits[1], r);
        assert!(
            d > 10.0 * tol,
            "warm start barely changes the logits ({d:.3e}, bound {tol:.3e})"
        );
    }
    // Warm start together with adaptive exit.
    let g = generate_recurrent(
        &model,
        &prompts()[0],
        8,
        &[],
        &DecodeOptions {
            warm_start: true,
            exit: Some(ExitCriterion::default()),
            ..opts(8)
        },
    )?;
    eprintln!(
        "warm start + exit: steps {:?}, mean {:.2}",
        g.steps_per_token,
        g.mean_steps()
    );
    Ok(())
}

/// CPU throughput, cached vs recomputed: `cargo test --release ... -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_tokens_per_second() -> Result<()> {
    let fx = common::load_raven_fixture("raven_llama")?;
    let mut bigger = fx["config"].clone();
    bigger["n_embd"] = 256.into();
    bigger["head_dim"] = 64.into();
    bigger["intermediate_size"] = 768.into();
    bigger["vocab_size"] = 512.into();
    bigger["padded_vocab_size"] = 512.into();
    for (name, cfg) in [
        ("fixture h=64", fx["config"].clone()),
        ("h=256 V=512", bigger),
    ] {
        let dir = common::write_raven_model_dir(&cfg)?;
        let model =
            AnyModel::Recurrent(RecurrentModel::load(dir.path(), Device::Cpu, Kind::Float)?);
        let prompt: Vec<i64> = (1..17).collect();
        let n = 48;
        for r in [1, 4, 16] {
            for use_cache in [true, false] {
                let o = DecodeOptions {
                    use_cache,
                    keep_logits: false,
                    ..opts(r)
                };
                let t0 = Instant::now();
                let g = generate_recurrent(&model, &prompt, n, &[], &o)?;
                let s = t0.elapsed().as_secs_f64();
                eprintln!(
                    "{name}: r={r:2} cache={use_cache:5}: {:.1} tok/s ({} tokens, prompt 16)",
                    g.ids.len() as f64 / s,
                    g.ids.len()
                );
            }
        }
    }
    Ok(())
}
