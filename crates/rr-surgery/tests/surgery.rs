//! Surgery against references: the paper's split tables (method.md §1), the conversion check
//! (all layers kept in order + identity adapter + zero state + r = 1 reproduces the source's
//! logits), and byte-exact save/load round trips.

#[path = "../../rr-model/tests/common/mod.rs"]
mod common;

use std::path::Path;

use proptest::prelude::*;
use rr_model::recurrent::{Depth, InitialState, RecurrentModel};
use rr_model::LlamaModel;
use rr_surgery::{parse_indices, AdapterInit, LayerSelection, Surgery};
use serde_json::json;
use tch::{Device, Kind, Tensor};

#[test]
fn paper_splits_match_the_spec_tables() {
    // method.md §1: (L, p, b, c) -> prelude, core, coda, dropped.
    let cases = [
        (22, 4, 8, 4, "0-3", "10-17", "18-21", "4-9"),
        (16, 4, 6, 4, "0-3", "6-11", "12-15", "4-5"),
        (16, 2, 4, 2, "0-1", "10-13", "14-15", "2-9"),
    ];
    for (l, p, b, c, prelude, core, coda, dropped) in cases {
        let s = LayerSelection::paper(l, p, b, c).unwrap();
        assert_eq!(
            s.prelude,
            parse_indices(prelude).unwrap(),
            "{l}: {p},{b},{c}"
        );
        assert_eq!(s.core, parse_indices(core).unwrap(), "{l}: {p},{b},{c}");
        assert_eq!(s.coda, parse_indices(coda).unwrap(), "{l}: {p},{b},{c}");
        assert_eq!(
            s.dropped(l),
            parse_indices(dropped).unwrap(),
            "{l}: {p},{b},{c}"
        );
    }
}

#[test]
fn bad_selections_are_refused() {
    let err = |r: anyhow::Result<LayerSelection>| format!("{:#}", r.unwrap_err());
    assert!(err(LayerSelection::paper(16, 4, 0, 4)).contains("at least one layer"));
    assert!(err(LayerSelection::paper(16, 8, 6, 4)).contains("needs 18 layers"));
    assert!(err(LayerSelection::explicit(
        16,
        vec![0, 1],
        vec![1, 2],
        vec![15]
    ))
    .contains("layer 1 is in both"));
    assert!(err(LayerSelection::explicit(16, vec![0], vec![5], vec![16])).contains("out of range"));
    assert!(err(LayerSelection::explicit(16, vec![0, 0], vec![5], vec![15])).contains("twice"));
    assert!(
        err(LayerSelection::explicit(16, vec![0], vec![], vec![15])).contains("at least one layer")
    );
    // Repeats in the core are allowed: looping a block twice per iteration.
    assert!(LayerSelection::explicit(16, vec![0], vec![5, 6, 5, 6], vec![15]).is_ok());
    assert!(parse_indices("3-1").is_err());
    assert!(parse_indices("a").is_err());
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Surgery keeping every layer in order, identity adapter, zero state, r = 1: the recurrent
/// model must reproduce the source model's logits. Returns max |Δlogit| and its bound.
///
/// The two models run the same function with sums in other orders (fused q/k/v and gate/up
/// projections against separate ones, another BLAS blocking), so the bound is the reordering
/// bound `common::fp32_tolerance` at the source's depth plus the adapter's sum over 2h.
fn conversion_check(source: &Path, selection: LayerSelection, ids: &[i64]) -> (f64, f64) {
    let surgery = Surgery::new(source, selection, AdapterInit::Identity, 1).unwrap();
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("rec");
    surgery.write(&out, false).unwrap();
    let base = LlamaModel::load(source, Device::Cpu, Kind::Float).unwrap();
    let rec = RecurrentModel::load(&out, Device::Cpu, Kind::Float).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    let layer = common::LayerShape::from_config(&cfg);
    let depth = common::decoder_depth(&cfg, ids.len()) + 2 * layer.hidden;
    let ids = Tensor::from_slice(ids).view([1, -1]);
    tch::no_grad(|| {
        let want = base.forward(&ids, None);
        let out = rec.forward(&ids, None, Depth::recurrence(1), &InitialState::Zeros, None);
        let got = rec.logits(&out.unwrap().hidden);
        (
            max_abs_diff(&want, &got),
            common::fp32_tolerance(&want, depth),
        )
    })
}

#[test]
fn conversion_check_on_stories260k() {
    let Some(shared) = common::shared_data_dir() else {
        return;
    };
    let source = shared.join("models/stories260K/hf");
    let ids: Vec<i64> = vec![1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315];
    for (p, b, c) in [(1, 3, 1), (2, 1, 2), (0, 5, 0), (4, 1, 0)] {
        let sel = LayerSelection::paper(5, p, b, c).unwrap();
        let (diff, tol) = conversion_check(&source, sel, &ids);
        eprintln!("({p},{b},{c}): max |Δlogit| = {diff:.3e}, bound {tol:.3e}");
        assert!(
            diff <= tol,
            "({p},{b},{c}): max |Δlogit| = {diff:e} > bound {tol:.3e}"
        );
    }
}

fn random_config(
    model_type: &str,
    hidden: usize,
    heads: usize,
    kv: usize,
    layers: usize,
) -> serde_json::Value {
    json!({
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2 + 8,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": 61,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": model_type == "llama",
        "hidden_act": "silu"
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn conversion_check_on_random_llama_and_olmo2(
        olmo in any::<bool>(),
        heads_kv in prop::sample::select(vec![(4usize, 2usize), (4, 4), (2, 1)]),
        head_dim in prop::sample::select(vec![8usize, 16]),
        layers in 1usize..6,
        split in (0usize..6, 0usize..6),
        seq in prop::collection::vec(0i64..61, 2..10),
    ) {
        let (heads, kv) = heads_kv;
        let cfg = random_config(if olmo { "olmo2" } else { "llama" }, heads * head_dim, heads, kv, layers);
        let dir = common::write_hf_model_dir(&cfg).unwrap();
        // Any split of all layers in order with a non-empty core.
        let p = split.0 % layers;
        let c = split.1 % (layers - p);
        let b = layers - p - c;
        let sel = LayerSelection::paper(layers, p, b, c).unwrap();
        let (diff, tol) = conversion_check(dir.path(), sel, &seq);
        eprintln!("{} L={layers} ({p},{b},{c}): max |Δlogit| = {diff:.3e}, bound {tol:.3e}", cfg["model_type"]);
        prop_assert!(diff <= tol, "{} L={layers} ({p},{b},{c}): max |Δlogit| = {diff:e} > bound {tol:.3e}", cfg["model_type"]);
    }
}

#[test]
fn save_load_save_is_byte_identical() {
    let cfg = random_config("olmo2", 32, 4, 2, 4);
    let src = common::write_hf_model_dir(&cfg).unwrap();
    let sel = LayerSelection::paper(4, 1, 2, 1).unwrap();
    let surgery = Surgery::new(src.path(), sel, AdapterInit::Default { seed: 3 }, 4).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    surgery.write(&first, false).unwrap();
    let model = RecurrentModel::load(&first, Device::Cpu, Kind::Float).unwrap();
    // Loading keeps every tensor bit-exact.
    let files = rr_model::weights::SafetensorsFiles::open_dir(&first).unwrap();
    for (name, t) in model.named_tensors() {
        let stored = files.tensor(&name).unwrap();
        assert!(t.equal(&stored), "{name} changed on load");
    }
    let second = tmp.path().join("second");
    std::fs::create_dir(&second).unwrap();
    model.save_weights_and_config(&second).unwrap();
    for f in ["model.safetensors", "config.json"] {
        let a = std::fs::read(first.join(f)).unwrap();
        let b = std::fs::read(second.join(f)).unwrap();
        assert!(a == b, "{f} differs after save -> load -> save");
    }
}

#[test]
fn existing_output_is_replaced_only_with_force() {
    let cfg = random_config("llama", 32, 4, 2, 3);
    let src = common::write_hf_model_dir(&cfg).unwrap();
    let sel = LayerSelection::paper(3, 1, 1, 1).unwrap();
    let surgery = Surgery::new(src.path(), sel, AdapterInit::Identity, 2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rec");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = format!("{:#}", surgery.write(&out, false).unwrap_err());
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    surgery.write(&out, true).unwrap();
    assert!(!out.join("keep.txt").exists(), "the old output is gone");
    RecurrentModel::load(&out, Device::Cpu, Kind::Float).unwrap();
    // Nothing beside it: no staging or moved-aside directory.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["rec"]);
}

#[test]
fn default_adapter_is_seeded_uniform_and_identity_is_zero_then_eye() {
    let h = 64;
    let w = AdapterInit::Default { seed: 5 }.weight(h);
    assert_eq!(w.size(), vec![64, 128]);
    let bound = 1.0 / (128f64).sqrt();
    let max = w.abs().max().double_value(&[]);
    assert!(
        max <= bound && max > 0.9 * bound,
        "max {max}, bound {bound}"
    );
    // U(-a, a) has standard deviation a/√3.
    let std = w.std(true).double_value(&[]);
    assert!(
        (std - bound / 3f64.sqrt()).abs() < 0.02 * bound,
        "std {std}"
    );
    assert!(w.equal(&AdapterInit::Default { seed: 5 }.weight(h)));
    assert!(!w.equal(&AdapterInit::Default { seed: 6 }.weight(h)));
    let id = AdapterInit::Identity.weight(4);
    let x = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6., 7., 8.]).view([1, 8]);
    let y = x.linear::<&Tensor>(&id, None);
    assert!(y.equal(&Tensor::from_slice(&[5f32, 6., 7., 8.]).view([1, 4])));
}
use rr_util::test_data::smollm2_dir;

/// Mean next-token NLL of `ids` in one forward pass at recurrence `r` (state seed 0).
fn mean_nll(model: &rr_model::AnyModel, ids: &[i64], r: usize) -> f64 {
    let tt = rr_model::TestTime {
        recurrence: r,
        seed: 0,
    };
    let input = Tensor::from_slice(&ids[..ids.len() - 1]).view([1, -1]);
    let targets = Tensor::from_slice(&ids[1..]).view([-1, 1]);
    let logits = tch::no_grad(|| model.logits(&input, None, tt)).unwrap();
    let logp = logits.get(0).log_softmax(-1, Kind::Float);
    -logp
        .gather(1, &targets, false)
        .mean(Kind::Double)
        .double_value(&[])
}

/// Retrofitted SmolLM2 (2,4,2 and 4,8,4; untrained) scores real text at r = 1, 2, 4, 8. Before
/// training the dropped layers and random adapter make it far worse than the source.
#[test]
fn retrofitted_smollm2_scores_text_at_several_recurrences() {
    let Some(source) = smollm2_dir() else { return };
    let Some(shared) = common::shared_data_dir() else {
        return;
    };
    let text = std::fs::read_to_string(shared.join("tinystories/tinystories_validation_head.txt"))
        .unwrap();
    let tokenizer = rr_model::Tokenizer::from_path(&source).unwrap();
    let ids: Vec<i64> = tokenizer.encode(&text[..2000], true).unwrap();
    assert!(ids.len() < 1024, "one window of the model's context");
    let base = rr_model::AnyModel::load(&source, Device::Cpu, Kind::Float).unwrap();
    let base_nll = mean_nll(&base, &ids, 1);
    assert!(base_nll < 3.0, "source SmolLM2 NLL {base_nll}");
    for (p, b, c) in [(2, 4, 2), (4, 8, 4)] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("rec");
        let sel = LayerSelection::paper(30, p, b, c).unwrap();
        Surgery::new(&source, sel, AdapterInit::Default { seed: 0 }, 4)
            .unwrap()
            .write(&out, false)
            .unwrap();
        for r in [1, 2, 4, 8] {
            let model = rr_model::AnyModel::load(&out, Device::Cpu, Kind::Float).unwrap();
            let nll = mean_nll(&model, &ids, r);
            eprintln!("SmolLM2 ({p},{b},{c}) r={r}: NLL {nll:.3} (source {base_nll:.3})");
            assert!(
                nll.is_finite() && nll > base_nll,
                "({p},{b},{c}) r={r}: NLL {nll}"
            );
        }
    }
}
