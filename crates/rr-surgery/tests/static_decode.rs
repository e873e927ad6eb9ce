//! The fixed-shape decode step (preallocated per-iteration buffers, the step a CUDA graph
//! captures) against today's decoding through the growing cache, on real weights:
//! stories260K turned into a recurrent model that computes exactly stories260K (every layer in
//! the core, identity adapter, zero state, r = 1), against llama2.c's golden greedy tokens; and
//! a (1, 3, 1) retrofit of it at r = 4 with a random state, a padded batch, both cache modes
//! and sampling. On CPU the step runs eagerly; with CUDA the graph replay must give the same.

#[path = "../../rr-model/tests/common/mod.rs"]
mod common;

use std::path::Path;

use rr_model::recurrent::{CacheMode, InitialState};
use rr_model::{decode, AnyModel, DecodeOptions, Sampling, TestTime, TokenStep};
use rr_surgery::{AdapterInit, LayerSelection, Surgery};
use tch::{Device, Kind, Tensor};

/// A recurrent model made from stories260K by surgery, loaded on `device`.
fn retrofit(
    source: &Path,
    (p, b, c): (usize, usize, usize),
    adapter: AdapterInit,
    device: Device,
) -> (tempfile::TempDir, AnyModel) {
    let selection = LayerSelection::paper(5, p, b, c).unwrap();
    let surgery = Surgery::new(source, selection, adapter, 4).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    surgery.write(&dir, false).unwrap();
    let model = AnyModel::load(&dir, device, Kind::Float).unwrap();
    (tmp, model)
}

/// Each row's generated ids and per-token logits [V].
fn generate(
    model: &AnyModel,
    prompts: &[Vec<i64>],
    opts: &DecodeOptions,
    step: TokenStep,
) -> Vec<(Vec<i64>, Vec<Tensor>)> {
    let opts = DecodeOptions {
        token_step: step,
        keep_logits: true,
        ..opts.clone()
    };
    decode(model, None, prompts, &opts, |_, _| {})
        .unwrap()
        .rows
        .into_iter()
        .map(|g| (g.ids, g.logits))
        .collect()
}

/// Same tokens; logits within `tolerance` (the two paths sum attention over different key
/// counts, masked columns adding exact zeros, so only the rounding order differs).
fn assert_same(
    what: &str,
    got: &[(Vec<i64>, Vec<Tensor>)],
    want: &[(Vec<i64>, Vec<Tensor>)],
    tolerance: f64,
) {
    assert_eq!(got.len(), want.len());
    for (row, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.0, w.0, "{what}: row {row}'s tokens differ");
        for (t, (gl, wl)) in g.1.iter().zip(&w.1).enumerate() {
            let d = (gl - wl).abs().max().double_value(&[]);
            assert!(
                d <= tolerance,
                "{what}: row {row} token {t}: max |Δlogit| {d:e}"
            );
        }
    }
}

fn golden_greedy_from_bos(shared: &Path) -> Vec<i64> {
    let text = std::fs::read_to_string(shared.join("models/stories260K/golden.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    golden["greedy_from_bos"]["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

fn stories260k_config(shared: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(shared.join("models/stories260K/hf/config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn stories260k_as_a_recurrent_model_gives_its_golden_tokens_on_the_fixed_shape_step() {
    let Some(shared) = common::shared_data_dir() else {
        return;
    };
    let source = shared.join("models/stories260K/hf");
    let (_dir, model) = retrofit(&source, (0, 5, 0), AdapterInit::Identity, Device::Cpu);
    let golden = golden_greedy_from_bos(&shared);
    let new_tokens = 64;
    let opts = DecodeOptions {
        max_new_tokens: new_tokens,
        test_time: TestTime {
            recurrence: 1,
            seed: 0,
        },
        initial_state: Some(InitialState::Zeros),
        ..DecodeOptions::default()
    };
    let prompts = [vec![1i64]];
    let fixed = generate(&model, &prompts, &opts, TokenStep::Static);
    assert_eq!(fixed[0].0, golden[..new_tokens], "llama2.c's greedy tokens");
    let dynamic = generate(&model, &prompts, &opts, TokenStep::Dynamic);
    let cfg = stories260k_config(&shared);
    let depth = common::decoder_depth(&cfg, 1 + new_tokens);
    let tolerance = common::fp32_tolerance(&dynamic[0].1[0], depth);
    assert_same("stories260K", &fixed, &dynamic, tolerance);
}

/// Two prompts of different lengths (the shorter is left-padded).
fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![1, 403, 407, 261, 378, 432, 383, 286],
        vec![1, 261, 376, 298],
    ]
}

fn retrofit_options(mode: CacheMode, sampling: Sampling) -> DecodeOptions {
    DecodeOptions {
        max_new_tokens: 24,
        sampling,
        seed: 5,
        test_time: TestTime {
            recurrence: 4,
            seed: 11,
        },
        cache_mode: mode,
        ..DecodeOptions::default()
    }
}

fn retrofit_cases() -> Vec<(&'static str, DecodeOptions)> {
    let top_p = Sampling::TopP {
        temperature: 0.9,
        top_p: 0.95,
    };
    vec![
        ("full", retrofit_options(CacheMode::Full, Sampling::Greedy)),
        (
            "latest-2",
            retrofit_options(CacheMode::LatestM(2), Sampling::Greedy),
        ),
        ("full, sampled", retrofit_options(CacheMode::Full, top_p)),
    ]
}

#[test]
fn a_retrofit_gives_the_same_tokens_on_the_fixed_shape_step() {
    let Some(shared) = common::shared_data_dir() else {
        return;
    };
    let source = shared.join("models/stories260K/hf");
    let adapter = AdapterInit::Default { seed: 3 };
    let (dir, model) = retrofit(&source, (1, 3, 1), adapter, Device::Cpu);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("rec/config.json")).unwrap())
            .unwrap();
    let depth = common::recurrent_depth(&cfg, 4, 8 + 24);
    for (what, opts) in retrofit_cases() {
        let dynamic = generate(&model, &prompts(), &opts, TokenStep::Dynamic);
        let fixed = generate(&model, &prompts(), &opts, TokenStep::Static);
        let tolerance = common::fp32_tolerance(&dynamic[0].1[0], depth);
        assert_same(what, &fixed, &dynamic, tolerance);
        assert_eq!(fixed[0].0.len(), 24, "{what}: no early stop expected");
    }
    // The tokens above came from the preallocated buffers: 2 rows × 4 kv heads × 8 dims ×
    // 32 columns (the 8-token prompt and 24 new ones) per key or value tensor, in the prelude
    // and coda layers and the 3 core layers of each of the 4 iteration slots.
    let opts = DecodeOptions {
        token_step: TokenStep::Static,
        ..retrofit_cases()[0].1.clone()
    };
    let stats = decode(&model, None, &prompts(), &opts, |_, _| {})
        .unwrap()
        .cache_stats
        .unwrap();
    assert_eq!(stats.core_slots, 4);
    assert_eq!(stats.tensors, 2 * (1 + 4 * 3 + 1));
    assert_eq!(stats.elements, stats.tensors as i64 * 2 * 4 * 8 * 32);
}

#[test]
fn the_fixed_shape_step_refuses_what_it_does_not_cover() {
    let Some(shared) = common::shared_data_dir() else {
        return;
    };
    let source = shared.join("models/stories260K/hf");
    let (_dir, model) = retrofit(&source, (1, 3, 1), AdapterInit::Identity, Device::Cpu);
    let base = DecodeOptions {
        max_new_tokens: 4,
        token_step: TokenStep::Static,
        ..DecodeOptions::default()
    };
    let warm = DecodeOptions {
        warm_start: true,
        ..base.clone()
    };
    let err = decode(&model, None, &prompts(), &warm, |_, _| {})
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("not with adaptive exit, warm start"),
        "{err:#}"
    );
    let graph = DecodeOptions {
        token_step: TokenStep::CudaGraph,
        ..base
    };
    let err = decode(&model, None, &prompts(), &graph, |_, _| {})
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("CUDA graphs need a CUDA device"),
        "{err:#}"
    );
}

#[test]
fn cuda_graph_replay_gives_the_tokens_of_the_eager_steps() {
    if !tch::Cuda::is_available() || !rr_torch_ext::cuda_graph::cuda_graphs_built() {
        println!(
            "skipped: needs CUDA (available: {}) and a build with the CUDA headers (built: {})",
            tch::Cuda::is_available(),
            rr_torch_ext::cuda_graph::cuda_graphs_built()
        );
        return;
    }
    let Some(shared) = common::shared_data_dir() else {
        return;
    };
    let source = shared.join("models/stories260K/hf");
    let adapter = AdapterInit::Default { seed: 3 };
    let (dir, model) = retrofit(&source, (1, 3, 1), adapter, Device::Cuda(0));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("rec/config.json")).unwrap())
            .unwrap();
    let depth = common::recurrent_depth(&cfg, 4, 8 + 24);
    for (what, opts) in retrofit_cases() {
        let dynamic = generate(&model, &prompts(), &opts, TokenStep::Dynamic);
        let eager = generate(&model, &prompts(), &opts, TokenStep::Static);
        let graph = generate(&model, &prompts(), &opts, TokenStep::CudaGraph);
        // The replay runs the eager step's kernels on the same buffers (TF32 is off: fp32).
        let tolerance = common::fp32_tolerance(&eager[0].1[0], depth);
        assert_same(what, &graph, &eager, tolerance);
        for ((g, _), (d, _)) in graph.iter().zip(&dynamic) {
            assert_eq!(g, d, "{what}: graph replay against the growing cache");
        }
    }
}
