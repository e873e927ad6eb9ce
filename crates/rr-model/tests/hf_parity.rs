//! Parity with Hugging Face `transformers` (fp32, CPU) on small deterministic models.
//!
//! Fixtures: `tests/fixtures/hf/<case>.json`, made by `scripts/make_hf_fixtures.py` (see there and
//! `tests/common/mod.rs` for the weight formula). Each test rebuilds the model directory
//! (`config.json` + `model.safetensors`), loads it with `LlamaModel::load`, and compares logits for a
//! single sequence and for a right-padded batch (real positions only), and checks that every padded
//! row equals the same row run alone.

mod common;

use anyhow::{Context, Result};
use rr_model::LlamaModel;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

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

/// Per-position max abs difference, for failure messages.
fn per_position(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let d = (a - b).abs().amax([-1i64].as_slice(), false);
    Vec::<f64>::try_from(d.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// The fixture's logits must be able to make the test fail: not all equal, not near zero.
fn sanity_check_reference(case: &str, want: &Tensor) {
    let std = want.std(true).double_value(&[]);
    let maxabs = want.abs().max().double_value(&[]);
    assert!(
        std > 0.1 && maxabs > 1.0,
        "{case}: fixture logits look degenerate (std {std}, max |x| {maxabs})"
    );
    // Different positions must have different logits (attention and RoPE matter).
    let t = want.size()[1];
    let d = max_abs(&want.narrow(1, 0, 1), &want.narrow(1, t - 1, 1));
    assert!(
        d > 0.1,
        "{case}: first and last position logits nearly equal ({d})"
    );
}

fn forward(model: &LlamaModel, ids: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let out = tch::no_grad(|| model.forward(ids, mask));
    assert_eq!(out.kind(), Kind::Float);
    out.to_device(Device::Cpu)
}

fn check_case(case: &str) -> Result<()> {
    let fx = common::load_hf_fixture(case)?;
    common::check_fixture_weights(&fx)
        .with_context(|| format!("{case}: Rust weight generator disagrees with the fixture"))?;
    let dir = common::write_fixture_model_dir(&fx)?;
    let model = LlamaModel::load(dir.path(), Device::Cpu, Kind::Float)
        .with_context(|| format!("{case}: LlamaModel::load"))?;
    let vocab = fx["config"]["vocab_size"].as_i64().unwrap();

    // (a) single sequence, with an all-ones mask and with no mask.
    let ids = ids_tensor(&fx["single"]["input_ids"]);
    let mask = ids_tensor(&fx["single"]["attention_mask"]);
    let want = logits_tensor(&fx["single"]["logits"]);
    sanity_check_reference(case, &want);
    let got = forward(&model, &ids, Some(&mask));
    assert_eq!(
        got.size(),
        vec![ids.size()[0], ids.size()[1], vocab],
        "{case}: logits shape"
    );
    // Every comparison below is two fp32 evaluations of the same function with sums in other
    // orders (HF against rr; a padded batch against a row alone: another BLAS blocking), so the
    // bound is the reordering bound of `common::fp32_tolerance` at this model's depth.
    let depth = common::decoder_depth(&fx["config"], ids.size()[1] as usize);
    let d = max_abs(&got, &want);
    let tol = common::fp32_tolerance(&want, depth);
    eprintln!("{case}: single sequence, max |rr - hf| = {d:.3e} (tolerance {tol:.1e})");
    assert!(
        d <= tol,
        "{case}: single sequence differs from HF by {d:.3e} > {tol:.1e}; per position: {:?}",
        per_position(&got, &want)
    );
    let got_nomask = forward(&model, &ids, None);
    let d = max_abs(&got_nomask, &want);
    assert!(
        d <= tol,
        "{case}: single sequence without mask differs from HF by {d:.3e} > {tol:.1e}"
    );

    // (b) right-padded batch: real positions against HF, and each row against itself run alone.
    let ids = ids_tensor(&fx["batch"]["input_ids"]);
    let mask = ids_tensor(&fx["batch"]["attention_mask"]);
    let depth = common::decoder_depth(&fx["config"], ids.size()[1] as usize);
    let want = logits_tensor(&fx["batch"]["logits"]);
    let got = forward(&model, &ids, Some(&mask));
    assert_eq!(got.size(), want.size(), "{case}: batch logits shape");
    let lens: Vec<i64> =
        Vec::<i64>::try_from(mask.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)).unwrap();
    let t = ids.size()[1];
    assert!(
        lens.iter().any(|&l| l < t),
        "{case}: batch fixture has no padding"
    );
    for (r, &len) in lens.iter().enumerate() {
        let r = r as i64;
        let got_r = got.get(r).narrow(0, 0, len);
        let want_r = want.get(r).narrow(0, 0, len);
        let d = max_abs(&got_r, &want_r);
        let tol = common::fp32_tolerance(&want_r, depth);
        eprintln!(
            "{case}: batch row {r} (len {len}/{t}), max |rr - hf| = {d:.3e} (tolerance {tol:.1e})"
        );
        assert!(
            d <= tol,
            "{case}: batch row {r} (len {len}) differs from HF by {d:.3e} > {tol:.1e}; per position: {:?}",
            per_position(&got_r, &want_r)
        );
        let ids_r = ids.get(r).narrow(0, 0, len).unsqueeze(0);
        let alone = forward(
            &model,
            &ids_r,
            Some(&Tensor::ones([1, len], (Kind::Int64, Device::Cpu))),
        )
        .get(0);
        let d = max_abs(&got_r, &alone);
        let tol = common::fp32_tolerance(&alone, depth);
        eprintln!(
            "{case}: batch row {r} against itself alone, max diff {d:.3e} (tolerance {tol:.1e})"
        );
        assert!(
            d <= tol,
            "{case}: batch row {r} differs from the same row run alone by {d:.3e} > {tol:.1e}"
        );
    }
    Ok(())
}

#[test]
fn hf_parity_llama_gqa_untied() -> Result<()> {
    check_case("llama")
}

#[test]
fn hf_parity_llama_tied_explicit_head_dim() -> Result<()> {
    check_case("llama_tied")
}

#[test]
fn hf_parity_llama3_rope_scaling() -> Result<()> {
    check_case("llama3")
}

#[test]
fn hf_parity_olmo2() -> Result<()> {
    check_case("olmo2")
}

/// The llama3 fixture is sensitive to the frequency scaling: the same weights without
/// `rope_scaling` give logits far from the reference (so ignoring the scaling cannot pass), and
/// they match the plain `llama` fixture (same weights, same θ).
#[test]
fn llama3_fixture_depends_on_rope_scaling() -> Result<()> {
    let fx = common::load_hf_fixture("llama3")?;
    let mut cfg = fx["config"].clone();
    cfg["rope_scaling"] = Value::Null;
    let dir = common::write_hf_model_dir(&cfg)?;
    let model = LlamaModel::load(dir.path(), Device::Cpu, Kind::Float)?;
    let ids = ids_tensor(&fx["single"]["input_ids"]);
    let got = forward(&model, &ids, None);
    let tol = common::fp32_tolerance(&got, common::decoder_depth(&cfg, ids.size()[1] as usize));
    let d = max_abs(&got, &logits_tensor(&fx["single"]["logits"]));
    assert!(
        d > 10.0 * tol,
        "llama3 logits without rope scaling are within {d:.3e} of the scaled reference (bound {tol:.3e})"
    );
    let plain = common::load_hf_fixture("llama")?;
    assert_eq!(plain["single"]["input_ids"], fx["single"]["input_ids"]);
    let plain_logits = logits_tensor(&plain["single"]["logits"]);
    let d = max_abs(&got, &plain_logits);
    eprintln!("llama3 weights without scaling vs the llama fixture: {d:.3e} (bound {tol:.3e})");
    assert!(
        d <= tol,
        "llama3 weights without scaling differ from the llama fixture by {d:.3e} > {tol:.3e}"
    );
    Ok(())
}

#[allow(clippy::excessive_precision)]
/// The weight generator is pinned: a known value, so a silent change of formula is caught even if
/// fixtures were regenerated with it.
#[test]
fn weight_formula_is_pinned() {
    assert_eq!(common::fnv1a64(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(common::fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
    let u = common::uniform01("model.norm.weight", 3);
    assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    // Values from scripts/make_hf_fixtures.py (rr-hf-fixture-v1), exact f32.
    let pinned: [(&str, &[usize], [f32; 2]); 3] = [
        (
            "model.embed_tokens.weight",
            &[97, 64],
            [-0.25741904973983765, -0.359963595867157],
        ),
        (
            "model.norm.weight",
            &[64],
            [0.9097375869750977, 0.9275640249252319],
        ),
        (
            "model.layers.0.mlp.down_proj.weight",
            &[64, 96],
            [-0.023281225934624672, 0.1598658561706543],
        ),
    ];
    for (name, shape, want) in pinned {
        let w = common::formula_tensor(name, shape);
        assert_eq!(
            [w[0].to_bits(), w[1].to_bits()],
            [want[0].to_bits(), want[1].to_bits()],
            "{name}"
        );
    }
    for case in ["llama", "llama_tied", "llama3", "olmo2"] {
        let fx = common::load_hf_fixture(case).unwrap();
        common::check_fixture_weights(&fx).unwrap();
    }
}
