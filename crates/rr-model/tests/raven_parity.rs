//! Parity of the recurrent model (`rr_model::recurrent`) with an independent PyTorch
//! implementation of `shared/spec/method.md` §1-2 (fp32, CPU), and the checkpoint layout of
//! `shared/spec/raven-format.md`.
//!
//! Fixtures: `tests/fixtures/raven/<case>.json`, made by `scripts/make_raven_fixtures.py` (see
//! there and `tests/common/mod.rs` for the weight formula "rr-raven-fixture-v1" and the initial
//! state). Each parity test rebuilds the model directory (`config.json` from the fixture,
//! `model.safetensors` F32 from the formula), loads it with `RecurrentModel::load` and compares the
//! logits at recurrence 1, 4 and 8 from the fixture's given initial state, at r = 4 from a zero
//! state, and at r = 4 split into 2 no-grad + 2 with-grad iterations.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use rr_model::recurrent::{InitialState, RecurrentConfig, RecurrentModel};
use rr_model::ModelType;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const CASES: [&str; 2] = ["raven_llama", "raven_olmo2"];
const RECURRENCES: [usize; 3] = [1, 4, 8];

fn ids_tensor(v: &Value) -> Tensor {
    let rows: Vec<Vec<i64>> = v
        .as_array()
        .expect("array of rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_i64().expect("int"))
                .collect()
        })
        .collect();
    let (b, t) = (rows.len() as i64, rows[0].len() as i64);
    let flat: Vec<i64> = rows.into_iter().flatten().collect();
    Tensor::from_slice(&flat).view([b, t])
}

fn logits_tensor(v: &Value) -> Tensor {
    let b = v.as_array().expect("logits: [B][T][V]");
    let t = b[0].as_array().unwrap();
    let vocab = t[0].as_array().unwrap().len() as i64;
    let mut flat = Vec::new();
    for row in b {
        for pos in row.as_array().unwrap() {
            let p = pos.as_array().unwrap();
            assert_eq!(p.len() as i64, vocab);
            flat.extend(p.iter().map(|x| x.as_f64().expect("number") as f32));
        }
    }
    Tensor::from_slice(&flat).view([b.len() as i64, t.len() as i64, vocab])
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn per_position(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let d = (a - b).abs().amax([-1i64].as_slice(), false);
    Vec::<f64>::try_from(d.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// The fixture's initial state, [1, T, h] f32, rebuilt from its definition.
fn given_state(fx: &Value) -> Tensor {
    let shape: Vec<i64> = fx["initial_state"]["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let n = shape.iter().product::<i64>() as usize;
    Tensor::from_slice(&common::signed_f32(common::RAVEN_STATE_NAME, n)).view(shape.as_slice())
}

fn reference(fx: &Value, r: usize) -> Tensor {
    logits_tensor(&fx["logits"][r.to_string()])
}

/// The reference must be able to make the test fail: spread-out logits, positions that differ,
/// and a recurrence (and initial state) that changes them substantially.
fn sanity_check_reference(case: &str, fx: &Value) {
    for r in RECURRENCES {
        let want = reference(fx, r);
        let std = want.std(true).double_value(&[]);
        let maxabs = want.abs().max().double_value(&[]);
        assert!(
            std > 0.3 && maxabs > 1.0,
            "{case} r={r}: degenerate logits (std {std}, max {maxabs})"
        );
        let t = want.size()[1];
        let d = max_abs(&want.narrow(1, 0, 1), &want.narrow(1, t - 1, 1));
        assert!(
            d > 0.1,
            "{case} r={r}: first and last positions nearly equal ({d})"
        );
    }
    let d18 = max_abs(&reference(fx, 1), &reference(fx, 8));
    let d48 = max_abs(&reference(fx, 4), &reference(fx, 8));
    assert!(
        d18 > 0.5,
        "{case}: r=1 and r=8 reference logits differ by only {d18}"
    );
    assert!(
        d48 > 1e-2,
        "{case}: r=4 and r=8 reference logits differ by only {d48}"
    );
    let dz = max_abs(
        &reference(fx, 4),
        &logits_tensor(&fx["zero_state"]["logits"]),
    );
    assert!(
        dz > 1e-2,
        "{case}: the given state barely matters at r=4 ({dz})"
    );
}

/// Allowed |rr − torch| at recurrence `r`: two fp32 evaluations of one function with sums in
/// other orders, so `common::fp32_tolerance` at the model's depth at r.
fn tolerance(fx: &Value, want: &Tensor, r: usize) -> f64 {
    let t = fx["input_ids"][0].as_array().unwrap().len();
    common::fp32_tolerance(want, common::recurrent_depth(&fx["config"], r, t))
}

/// The bound sits between what fp32 rounding does and what a bug does: above the generator's
/// own fp32-vs-fp64 difference, and ten times below the smallest change it measured from a wrong
/// recurrence, a wrong initial state or swapped adapter halves.
fn check_bound_discriminates(case: &str, fx: &Value) {
    let r = *RECURRENCES.iter().max().unwrap();
    let tol = tolerance(fx, &reference(fx, r), r);
    let sens = fx["sensitivity"].as_object().expect("fixture sensitivity");
    let rounding = sens["max_abs_float32_vs_float64"].as_f64().unwrap();
    let smallest_bug = sens
        .iter()
        .filter(|(k, _)| *k != "max_abs_float32_vs_float64")
        .map(|(_, v)| v.as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    eprintln!(
        "{case}: bound at r={r} {tol:.3e}; fp32 vs fp64 {rounding:.3e}; smallest bug change {smallest_bug:.3}"
    );
    assert!(
        rounding < tol && tol < smallest_bug / 10.0,
        "{case}: bound {tol:.3e} not between fp32 rounding {rounding:.3e} and a bug {smallest_bug:.3}"
    );
}

fn run(
    model: &RecurrentModel,
    ids: &Tensor,
    no_grad: usize,
    with_grad: usize,
    init: &InitialState,
) -> Tensor {
    let out = if with_grad == 0 {
        tch::no_grad(|| common::recurrent_forward(model, ids, no_grad, 0, init))
    } else {
        common::recurrent_forward(model, ids, no_grad, with_grad, init)
    };
    assert_eq!(out.logits.kind(), Kind::Float);
    assert_eq!(
        out.state.size(),
        out.logits.size()[..2]
            .iter()
            .copied()
            .chain([model.config.n_embd as i64])
            .collect::<Vec<_>>()
    );
    out.logits.detach().to_device(Device::Cpu)
}

fn check_case(case: &str) -> Result<()> {
    let fx = common::load_raven_fixture(case)?;
    common::check_raven_fixture_weights(&fx)
        .with_context(|| format!("{case}: Rust weight generator disagrees with the fixture"))?;
    sanity_check_reference(case, &fx);
    check_bound_discriminates(case, &fx);
    let dir = common::write_raven_model_dir(&fx["config"])?;
    let model = RecurrentModel::load(dir.path(), Device::Cpu, Kind::Float)
        .with_context(|| format!("{case}: RecurrentModel::load"))?;
    let ids = ids_tensor(&fx["input_ids"]);
    let state = given_state(&fx);
    let (t, h) = (ids.size()[1], fx["config"]["n_embd"].as_i64().unwrap());
    assert_eq!(state.size(), vec![1, t, h]);
    let vocab = fx["config"]["vocab_size"].as_i64().unwrap();

    let mut got_by_r = BTreeMap::new();
    for r in RECURRENCES {
        let got = run(
            &model,
            &ids,
            r,
            0,
            &InitialState::Given(state.shallow_clone()),
        );
        assert_eq!(got.size(), vec![1, t, vocab], "{case}: logits shape");
        let want = reference(&fx, r);
        let d = max_abs(&got, &want);
        let tol = tolerance(&fx, &want, r);
        eprintln!("{case}: r={r}, given state: max |rr - torch| = {d:.3e} (bound {tol:.3e})");
        assert!(
            d <= tol,
            "{case}: r={r} differs from the PyTorch reference by {d:.3e} > {tol:.3e}; per position: {:?}",
            per_position(&got, &want)
        );
        got_by_r.insert(r, got);
    }
    // The comparison discriminates: rr's r=1 logits are far from the r=8 reference.
    let d = max_abs(&got_by_r[&1], &reference(&fx, 8));
    assert!(d > 0.5, "{case}: rr r=1 vs reference r=8 only {d}");

    // Zero initial state.
    let zr = fx["zero_state"]["r"].as_u64().unwrap() as usize;
    let got = run(&model, &ids, zr, 0, &InitialState::Zeros);
    let want = logits_tensor(&fx["zero_state"]["logits"]);
    let d = max_abs(&got, &want);
    let tol = tolerance(&fx, &want, zr);
    eprintln!("{case}: r={zr}, zero state: max |rr - torch| = {d:.3e} (bound {tol:.3e})");
    assert!(
        d <= tol,
        "{case}: zero state r={zr} differs by {d:.3e} > {tol:.3e}; per position: {:?}",
        per_position(&got, &want)
    );

    // r = 4 as 2 iterations without gradient + 2 with: the same function.
    let got = run(
        &model,
        &ids,
        2,
        2,
        &InitialState::Given(state.shallow_clone()),
    );
    let want = reference(&fx, 4);
    let d = max_abs(&got, &want);
    let tol = tolerance(&fx, &want, 4);
    eprintln!(
        "{case}: r=2+2 (no-grad + grad), given state: max |rr - torch| = {d:.3e} (bound {tol:.3e})"
    );
    assert!(
        d <= tol,
        "{case}: 2 no-grad + 2 grad steps differ from the r=4 reference by {d:.3e} > {tol:.3e}"
    );
    Ok(())
}

#[test]
fn raven_parity_llama() -> Result<()> {
    check_case("raven_llama")
}

#[test]
fn raven_parity_olmo2() -> Result<()> {
    check_case("raven_olmo2")
}

/// The config keys raven-format.md lists (`rope_scaling` only for Llama-3 sources), plus ours,
/// `block_type`.
const SPEC_CONFIG_KEYS: [&str; 28] = [
    "architectures",
    "model_type",
    "auto_map",
    "n_embd",
    "n_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "n_layers",
    "n_layers_in_prelude",
    "n_layers_in_recurrent_block",
    "n_layers_in_coda",
    "vocab_size",
    "padded_vocab_size",
    "norm_eps",
    "rope_theta",
    "max_position_embeddings",
    "block_size",
    "tie_embeddings",
    "bias",
    "qk_bias",
    "mean_recurrence",
    "mean_backprop_depth",
    "injection_type",
    "state_init",
    "init_values",
    "torch_dtype",
    "block_type",
];

fn spec_shapes(cfg: &Value) -> BTreeMap<String, Vec<i64>> {
    common::raven_tensor_shapes(cfg)
        .into_iter()
        .map(|(n, s)| (n, s.into_iter().map(|x| x as i64).collect()))
        .collect()
}

/// `RecurrentModel::new` creates exactly the tensors of the spec tables (names, shapes, f32), and
/// the fixture configs hold exactly the spec's fields with the spec's constant values.
#[test]
fn raven_variables_and_config_match_spec() -> Result<()> {
    for case in CASES {
        let fx = common::load_raven_fixture(case)?;
        let cfg_json = &fx["config"];

        let keys: BTreeSet<&str> = cfg_json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let spec: BTreeSet<&str> = SPEC_CONFIG_KEYS.into_iter().collect();
        assert_eq!(keys, spec, "{case}: fixture config fields");
        assert_eq!(
            cfg_json["architectures"],
            serde_json::json!(["RavenForCausalLM"])
        );
        assert_eq!(cfg_json["model_type"], "huginn_raven");
        assert_eq!(
            cfg_json["auto_map"]["AutoConfig"],
            "raven_config_minimal.RavenConfig"
        );
        assert_eq!(
            cfg_json["auto_map"]["AutoModelForCausalLM"],
            "raven_modeling_minimal.RavenForCausalLM"
        );
        assert_eq!(
            cfg_json["init_values"]["std"].as_f64(),
            Some(0.008703882797784892)
        );
        assert_eq!(
            cfg_json["init_values"]["out_proj"].as_f64(),
            Some(0.0005356869554443541)
        );

        let cfg: RecurrentConfig = serde_json::from_value(cfg_json.clone())?;
        cfg.validate()?;
        let want_type = if case.ends_with("olmo2") {
            ModelType::Olmo2
        } else {
            ModelType::Llama
        };
        assert_eq!(cfg.block_type, want_type, "{case}");
        assert_eq!(
            cfg.n_layers,
            cfg.n_layers_in_prelude + cfg.n_layers_in_recurrent_block + cfg.n_layers_in_coda
        );

        let model = RecurrentModel::new(tch::nn::VarStore::new(Device::Cpu), cfg.clone());
        let got: BTreeMap<String, Vec<i64>> = model
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| {
                assert_eq!(t.kind(), Kind::Float, "{case}: {n} is {:?}", t.kind());
                (n, t.size())
            })
            .collect();
        let want = spec_shapes(cfg_json);
        assert_eq!(
            got, want,
            "{case}: RecurrentModel::new variables vs the raven-format.md tables"
        );
        // The Python generator derived the same list independently.
        let py: BTreeMap<String, Vec<i64>> = fx["tensors"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(n, r)| {
                (
                    n.clone(),
                    r["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_i64().unwrap())
                        .collect(),
                )
            })
            .collect();
        assert_eq!(py, want, "{case}: fixture tensor list");
        // Spot checks of the table formulas at this config: h 64, 4 q / 2 kv heads of 16, I 96.
        assert_eq!(
            want["transformer.core_block.1.attn.Wqkv.weight"],
            vec![128, 64]
        );
        assert_eq!(want["transformer.adapter.weight"], vec![64, 128]);
        assert_eq!(want["transformer.coda.0.mlp.fc.weight"], vec![192, 64]);
        assert_eq!(want["transformer.prelude.0.mlp.proj.weight"], vec![64, 96]);
        assert_eq!(
            want.contains_key("transformer.core_block.0.attn.k_norm.weight"),
            case.ends_with("olmo2")
        );
        let per_layer: i64 = want
            .iter()
            .filter(|(n, _)| n.starts_with("transformer.coda.0."))
            .map(|(_, s)| s.iter().product::<i64>())
            .sum();
        assert_eq!(
            per_layer as usize,
            cfg.params_per_layer(),
            "{case}: params per layer"
        );

        // The authors' files have no `block_type`: absent means Llama.
        let mut without = cfg_json.clone();
        without.as_object_mut().unwrap().remove("block_type");
        let c: RecurrentConfig = serde_json::from_value(without)?;
        assert_eq!(c.block_type, ModelType::Llama);
    }
    Ok(())
}

/// What rr writes back (`save_weights_and_config`) is the spec layout: exactly the spec's tensors
/// (names, shapes, F32) with the loaded values, and a config.json equal to the fixture's.
#[test]
fn raven_saved_checkpoint_matches_spec() -> Result<()> {
    for case in CASES {
        let fx = common::load_raven_fixture(case)?;
        let cfg_json = &fx["config"];
        let dir = common::write_raven_model_dir(cfg_json)?;
        let model = RecurrentModel::load(dir.path(), Device::Cpu, Kind::Float)?;
        let out = tempfile::tempdir()?;
        model.save_weights_and_config(out.path())?;

        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json"))?)?;
        assert_eq!(
            &written, cfg_json,
            "{case}: config.json written by rr differs from the fixture's"
        );

        let bytes = std::fs::read(out.path().join("model.safetensors"))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        let want = spec_shapes(cfg_json);
        assert_eq!(
            names,
            want.keys().cloned().collect::<Vec<_>>(),
            "{case}: written tensor names"
        );
        for (name, shape, data) in common::raven_formula_weights(cfg_json) {
            let view = st.tensor(&name)?;
            assert_eq!(
                view.dtype(),
                safetensors::Dtype::F32,
                "{case}: {name} dtype"
            );
            assert_eq!(view.shape(), shape.as_slice(), "{case}: {name} shape");
            let want_bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            assert!(
                view.data() == want_bytes.as_slice(),
                "{case}: {name} values changed in the round trip"
            );
        }
    }
    Ok(())
}
