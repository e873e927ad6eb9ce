//! Helpers shared by the integration tests of `rr-model` (include with `mod common;`).
//!
//! * [`shared_data_dir`]: where the read-only real data lives (`RR_SHARED_DATA`).
//! * HF parity fixtures (`tests/fixtures/hf/<case>.json`, made by `scripts/make_hf_fixtures.py`):
//!   [`load_hf_fixture`], [`formula_tensor`] and [`write_hf_model_dir`], which rebuilds the
//!   fixture's model as a Hugging Face directory (`config.json` + `model.safetensors`, F32).
//!
//! Weight formula "rr-hf-fixture-v1" (must match `scripts/make_hf_fixtures.py`):
//!
//! ```text
//! seed(N) = FNV-1a-64 of the UTF-8 bytes of the HF tensor name N
//!           (offset basis 0xcbf29ce484222325, prime 0x100000001b3, wrapping)
//! mix(z)  = splitmix64 finaliser: z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27;
//!           z *= 0x94d049bb133111eb; z ^= z >> 31                         (wrapping u64)
//! u_i     = (mix(seed(N) + (i + 1) * 0x9e3779b97f4a7c15) >> 11) * 2^-53   in [0, 1), exact in f64
//! v_i     = 2 * u_i - 1, i = row-major flat index
//! norm weights ("...norm.weight"):   w_i = 1 + 0.1 * v_i
//! model.embed_tokens.weight:         w_i = v_i
//! other 2-D weights [out, in]:       w_i = sqrt(3.0 / in) * v_i
//! ```
//!
//! computed in f64 and cast to f32 (round to nearest even), so both sides agree bit for bit.
#![allow(dead_code)]

pub mod tolerance;
#[allow(unused_imports)] // not every test binary compares floats
pub use tolerance::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub const WEIGHT_FORMULA: &str = "rr-hf-fixture-v1";

#[allow(unused_imports)] // not every test binary needs each
pub use rr_util::test_data::{shared_data as shared_data_dir, workspace_root};

// ----------------------------------------------------------------------------------------------
// HF parity fixtures

pub fn hf_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

/// Reads `tests/fixtures/hf/<case>.json` and checks its weight-formula version.
pub fn load_hf_fixture(case: &str) -> Result<Value> {
    let path = hf_fixture_dir().join(format!("{case}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let formula = v["weight_formula"].as_str().unwrap_or("");
    if formula != WEIGHT_FORMULA {
        bail!(
            "{}: weight_formula {formula:?}, this helper implements {WEIGHT_FORMULA:?}",
            path.display()
        );
    }
    Ok(v)
}

pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in s.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `u_i` for `i in 0..n`: uniform in [0, 1), exact multiples of 2^-53.
pub fn uniform01(name: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(name);
    (0..n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        })
        .collect()
}

/// The formula weights of tensor `name` with `shape`, row-major, f32.
pub fn formula_tensor(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = uniform01(name, n);
    let (scale, offset) = if name.ends_with("norm.weight") {
        (0.1, 1.0)
    } else if name == "model.embed_tokens.weight" {
        (1.0, 0.0)
    } else {
        assert_eq!(shape.len(), 2, "{name}: expected a 2-D weight");
        ((3.0 / shape[1] as f64).sqrt(), 0.0)
    };
    u.into_iter()
        .map(|u| {
            let v = 2.0 * u - 1.0;
            let w = if offset == 0.0 {
                scale * v
            } else {
                offset + scale * v
            };
            w as f32
        })
        .collect()
}

fn cfg_usize(cfg: &Value, key: &str) -> usize {
    cfg[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config.{key} missing or not an integer")) as usize
}

/// The HF tensor names of a Llama (`model_type` "llama") or OLMo-2 ("olmo2") checkpoint.
pub fn hf_tensor_names(cfg: &Value) -> Vec<String> {
    let olmo = cfg["model_type"].as_str() == Some("olmo2");
    let mut names = vec!["model.embed_tokens.weight".to_string()];
    for i in 0..cfg_usize(cfg, "num_hidden_layers") {
        let p = format!("model.layers.{i}.");
        for x in ["q", "k", "v", "o"] {
            names.push(format!("{p}self_attn.{x}_proj.weight"));
        }
        if olmo {
            names.push(format!("{p}self_attn.q_norm.weight"));
            names.push(format!("{p}self_attn.k_norm.weight"));
            names.push(format!("{p}post_attention_layernorm.weight"));
            names.push(format!("{p}post_feedforward_layernorm.weight"));
        } else {
            names.push(format!("{p}input_layernorm.weight"));
            names.push(format!("{p}post_attention_layernorm.weight"));
        }
        for x in ["gate", "up", "down"] {
            names.push(format!("{p}mlp.{x}_proj.weight"));
        }
    }
    names.push("model.norm.weight".to_string());
    if !cfg["tie_word_embeddings"].as_bool().unwrap_or(false) {
        names.push("lm_head.weight".to_string());
    }
    names
}

pub fn hf_tensor_shape(cfg: &Value, name: &str) -> Vec<usize> {
    let h = cfg_usize(cfg, "hidden_size");
    let v = cfg_usize(cfg, "vocab_size");
    let f = cfg_usize(cfg, "intermediate_size");
    let nh = cfg_usize(cfg, "num_attention_heads");
    let nkv = cfg_usize(cfg, "num_key_value_heads");
    let hd = cfg["head_dim"]
        .as_u64()
        .map(|x| x as usize)
        .unwrap_or(h / nh);
    let leaf = name.rsplit('.').nth(1).unwrap_or("");
    match leaf {
        "embed_tokens" | "lm_head" => vec![v, h],
        "q_proj" => vec![nh * hd, h],
        "k_proj" | "v_proj" => vec![nkv * hd, h],
        "o_proj" => vec![h, nh * hd],
        "q_norm" => vec![nh * hd],
        "k_norm" => vec![nkv * hd],
        "input_layernorm" | "post_attention_layernorm" | "post_feedforward_layernorm" | "norm" => {
            vec![h]
        }
        "gate_proj" | "up_proj" => vec![f, h],
        "down_proj" => vec![h, f],
        _ => panic!("unknown tensor {name}"),
    }
}

/// All formula tensors of a config, by HF name.
pub fn formula_weights(cfg: &Value) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    hf_tensor_names(cfg)
        .into_iter()
        .map(|n| {
            let shape = hf_tensor_shape(cfg, &n);
            let data = formula_tensor(&n, &shape);
            (n, shape, data)
        })
        .collect()
}

/// Checks the generated weights against the fixture's `tensors` record (names, shapes, first
/// values bit for bit, f64 sum), so a generator mismatch is reported as such, not as bad logits.
pub fn check_fixture_weights(fixture: &Value) -> Result<()> {
    let record = fixture["tensors"]
        .as_object()
        .context("fixture has no `tensors`")?;
    let weights = formula_weights(&fixture["config"]);
    let mut ours: Vec<&str> = weights.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut theirs: Vec<&str> = record.keys().map(|k| k.as_str()).collect();
    ours.sort_unstable();
    theirs.sort_unstable();
    if ours != theirs {
        bail!("tensor names differ:\n ours   {ours:?}\n python {theirs:?}");
    }
    for (name, shape, data) in &weights {
        let r = &record[name];
        let rshape: Vec<usize> = r["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        if &rshape != shape {
            bail!("{name}: shape {shape:?}, fixture {rshape:?}");
        }
        for (k, x) in r["first"].as_array().unwrap().iter().enumerate() {
            let want = x.as_f64().unwrap() as f32;
            if data[k].to_bits() != want.to_bits() {
                bail!("{name}[{k}]: generated {:e}, fixture {want:e}", data[k]);
            }
        }
        let sum: f64 = data.iter().map(|&x| x as f64).sum();
        let want = r["sum"].as_f64().unwrap();
        if (sum - want).abs() > 1e-9 * (1.0 + want.abs()) {
            bail!("{name}: sum {sum}, fixture {want}");
        }
    }
    Ok(())
}

/// Writes `config.json` (the given HF config verbatim) and `model.safetensors` (formula weights,
/// F32, HF names; no `lm_head.weight` when tied) into a fresh temporary directory.
pub fn write_hf_model_dir(cfg: &Value) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("rr-hf-fixture-")
        .tempdir()?;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(cfg)?,
    )?;
    let weights = formula_weights(cfg);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .into_iter()
        .map(|(n, shape, data)| {
            (
                n,
                shape,
                data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, shape, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)?;
            Ok((n.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(
        views,
        Some(metadata),
        &dir.path().join("model.safetensors"),
    )?;
    Ok(dir)
}

/// A fixture's model directory, from its `config`.
pub fn write_fixture_model_dir(fixture: &Value) -> Result<tempfile::TempDir> {
    write_hf_model_dir(&fixture["config"])
}

// ----------------------------------------------------------------------------------------------
// Raven (recurrent) parity fixtures: `tests/fixtures/raven/<case>.json`, made by
// `scripts/make_raven_fixtures.py`, read by `tests/raven_parity.rs`.
//
// Weight formula "rr-raven-fixture-v1": the "rr-hf-fixture-v1" generator ([`uniform01`]) with a
// classifier for the Raven names (the HF one, `ends_with("norm.weight")`, misses norm_1/norm_2/ln_f):
//
// ```text
// transformer.ln_f.weight, *norm_1.weight, *norm_2.weight, *q_norm.weight, *k_norm.weight:
//                                      w_i = 1 + 0.1 * v_i
// transformer.wte.weight:              w_i = v_i
// other 2-D weights [out, in]:         w_i = sqrt(3.0 / in) * v_i
// ```
//
// The fixtures' initial state is `v_i` of the name `raven_fixture.initial_state` over [1, T, h].

pub const RAVEN_WEIGHT_FORMULA: &str = "rr-raven-fixture-v1";
pub const RAVEN_STATE_NAME: &str = "raven_fixture.initial_state";

pub fn raven_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/raven")
}

/// Reads `tests/fixtures/raven/<case>.json` and checks its weight-formula version.
pub fn load_raven_fixture(case: &str) -> Result<Value> {
    let path = raven_fixture_dir().join(format!("{case}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let formula = v["weight_formula"].as_str().unwrap_or("");
    if formula != RAVEN_WEIGHT_FORMULA {
        bail!(
            "{}: weight_formula {formula:?}, this helper implements {RAVEN_WEIGHT_FORMULA:?}",
            path.display()
        );
    }
    Ok(v)
}

/// Whether a Raven tensor name gets the norm-weight formula.
pub fn raven_is_norm(name: &str) -> bool {
    name == "transformer.ln_f.weight"
        || [
            "norm_1.weight",
            "norm_2.weight",
            "q_norm.weight",
            "k_norm.weight",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// `v_i = 2 u_i - 1` of `name`, cast to f32 (exact in f64 before the cast).
pub fn signed_f32(name: &str, n: usize) -> Vec<f32> {
    uniform01(name, n)
        .into_iter()
        .map(|u| (2.0 * u - 1.0) as f32)
        .collect()
}

/// The "rr-raven-fixture-v1" weights of Raven tensor `name` with `shape`, row-major, f32.
pub fn raven_formula_tensor(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = uniform01(name, n);
    let f: Box<dyn Fn(f64) -> f64> = if raven_is_norm(name) {
        assert_eq!(shape.len(), 1, "{name}: expected a 1-D norm weight");
        Box::new(|v| 1.0 + 0.1 * v)
    } else if name == "transformer.wte.weight" {
        Box::new(|v| v)
    } else {
        assert_eq!(shape.len(), 2, "{name}: expected a 2-D weight");
        let scale = (3.0 / shape[1] as f64).sqrt();
        Box::new(move |v| scale * v)
    };
    u.into_iter().map(|u| f(2.0 * u - 1.0) as f32).collect()
}

/// Tensor names and shapes of a Raven checkpoint for a `config.json` (as JSON), in the order of
/// the tables of `shared/spec/raven-format.md`.
pub fn raven_tensor_shapes(cfg: &Value) -> Vec<(String, Vec<usize>)> {
    let h = cfg_usize(cfg, "n_embd");
    let nq = cfg_usize(cfg, "n_heads");
    let nkv = cfg["num_key_value_heads"]
        .as_u64()
        .map(|x| x as usize)
        .unwrap_or(nq);
    let d = cfg["head_dim"]
        .as_u64()
        .map(|x| x as usize)
        .unwrap_or(h / nq);
    let inter = cfg_usize(cfg, "intermediate_size");
    let vocab = cfg["padded_vocab_size"]
        .as_u64()
        .map(|x| x as usize)
        .unwrap_or_else(|| cfg_usize(cfg, "vocab_size"));
    let olmo = cfg["block_type"].as_str() == Some("olmo2");
    let mut out: Vec<(String, Vec<usize>)> = vec![
        ("transformer.wte.weight".into(), vec![vocab, h]),
        ("lm_head.weight".into(), vec![vocab, h]),
        ("transformer.ln_f.weight".into(), vec![h]),
        ("transformer.adapter.weight".into(), vec![h, 2 * h]),
    ];
    for (stack, key) in [
        ("prelude", "n_layers_in_prelude"),
        ("core_block", "n_layers_in_recurrent_block"),
        ("coda", "n_layers_in_coda"),
    ] {
        for i in 0..cfg_usize(cfg, key) {
            let p = format!("transformer.{stack}.{i}.");
            out.push((format!("{p}norm_1.weight"), vec![h]));
            out.push((format!("{p}attn.Wqkv.weight"), vec![(nq + 2 * nkv) * d, h]));
            out.push((format!("{p}attn.proj.weight"), vec![h, nq * d]));
            if olmo {
                out.push((format!("{p}attn.q_norm.weight"), vec![nq * d]));
                out.push((format!("{p}attn.k_norm.weight"), vec![nkv * d]));
            }
            out.push((format!("{p}norm_2.weight"), vec![h]));
            out.push((format!("{p}mlp.fc.weight"), vec![2 * inter, h]));
            out.push((format!("{p}mlp.proj.weight"), vec![h, inter]));
        }
    }
    out
}

/// All formula tensors of a Raven config.
pub fn raven_formula_weights(cfg: &Value) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    raven_tensor_shapes(cfg)
        .into_iter()
        .map(|(n, shape)| {
            let data = raven_formula_tensor(&n, &shape);
            (n, shape, data)
        })
        .collect()
}

/// Checks one generated tensor against a fixture record `{shape, first, sum}`.
pub fn check_tensor_record(name: &str, shape: &[usize], data: &[f32], r: &Value) -> Result<()> {
    let rshape: Vec<usize> = r["shape"]
        .as_array()
        .with_context(|| format!("{name}: record has no shape"))?
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    if rshape != shape {
        bail!("{name}: shape {shape:?}, fixture {rshape:?}");
    }
    for (k, x) in r["first"].as_array().unwrap().iter().enumerate() {
        let want = x.as_f64().unwrap() as f32;
        if data[k].to_bits() != want.to_bits() {
            bail!("{name}[{k}]: generated {:e}, fixture {want:e}", data[k]);
        }
    }
    let sum: f64 = data.iter().map(|&x| x as f64).sum();
    let want = r["sum"].as_f64().unwrap();
    if (sum - want).abs() > 1e-9 * (1.0 + want.abs()) {
        bail!("{name}: sum {sum}, fixture {want}");
    }
    Ok(())
}

/// Checks the generated Raven weights (names, shapes, first values, sums) and the initial state
/// against the fixture, so a generator mismatch is reported as such, not as bad logits.
pub fn check_raven_fixture_weights(fixture: &Value) -> Result<()> {
    let record = fixture["tensors"]
        .as_object()
        .context("fixture has no `tensors`")?;
    let weights = raven_formula_weights(&fixture["config"]);
    let mut ours: Vec<&str> = weights.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut theirs: Vec<&str> = record.keys().map(|k| k.as_str()).collect();
    ours.sort_unstable();
    theirs.sort_unstable();
    if ours != theirs {
        bail!("tensor names differ:\n ours   {ours:?}\n python {theirs:?}");
    }
    for (name, shape, data) in &weights {
        check_tensor_record(name, shape, data, &record[name])?;
    }
    let st = &fixture["initial_state"];
    if st["name"].as_str() != Some(RAVEN_STATE_NAME) {
        bail!(
            "initial_state.name is {:?}, expected {RAVEN_STATE_NAME:?}",
            st["name"]
        );
    }
    let shape: Vec<usize> = st["shape"]
        .as_array()
        .context("initial_state.shape")?
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let state = signed_f32(RAVEN_STATE_NAME, shape.iter().product());
    check_tensor_record("initial_state", &shape, &state, st)
}

/// Writes F32 tensors (row-major data) into one safetensors file.
pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            (
                n.clone(),
                shape.clone(),
                data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, shape, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)?;
            Ok((n.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(metadata), path)?;
    Ok(())
}

/// Writes `config.json` (the given Raven config verbatim) and `model.safetensors` (formula
/// weights, F32, Raven names) into a fresh temporary directory.
pub fn write_raven_model_dir(cfg: &Value) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("rr-raven-fixture-")
        .tempdir()?;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(cfg)?,
    )?;
    write_f32_safetensors(
        &dir.path().join("model.safetensors"),
        &raven_formula_weights(cfg),
    )?;
    Ok(dir)
}

/// Logits and final latent state of a fresh recurrent forward with `n` iterations without and
/// `k` with gradient.
pub struct Forward {
    pub logits: tch::Tensor,
    pub state: tch::Tensor,
}

pub fn recurrent_forward(
    model: &rr_model::RecurrentModel,
    ids: &tch::Tensor,
    n: usize,
    k: usize,
    init: &rr_model::InitialState,
) -> Forward {
    let depth = rr_model::Depth::Fixed {
        no_grad: n,
        with_grad: k,
    };
    let out = model
        .forward(ids, None, depth, init, None)
        .expect("recurrent forward");
    Forward {
        logits: model.logits(&out.hidden),
        state: out.state,
    }
}
