//! Config variants that real recurrent checkpoints carry, each with a file of that kind: the
//! model built from the variant must compute what its canonical form computes (the canonical
//! form is checked against an independent PyTorch forward in `raven_parity.rs`).
//!
//! Files: the `raven_llama` fixture's config and formula weights (`tests/common/mod.rs`), with
//! one field changed.

mod common;

use anyhow::Result;
use rr_model::recurrent::{InitialState, RecurrentConfig, RecurrentModel};
use rr_model::{decode, AnyModel, DecodeOptions, Depth, TestTime};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

fn base_config() -> Value {
    common::load_raven_fixture("raven_llama").unwrap()["config"].clone()
}

fn ids() -> Tensor {
    Tensor::from_slice(&[3i64, 17, 42, 5, 88, 60, 21, 9]).view([1, 8])
}

fn load(cfg: &Value) -> Result<(tempfile::TempDir, RecurrentModel)> {
    let dir = common::write_raven_model_dir(cfg)?;
    let model = RecurrentModel::load(dir.path(), Device::Cpu, Kind::Float)?;
    Ok((dir, model))
}

fn logits(model: &RecurrentModel, init: &InitialState) -> Tensor {
    let _g = tch::no_grad_guard();
    let out = model
        .forward(&ids(), None, Depth::recurrence(4), init, None)
        .unwrap();
    model.logits(&out.hidden)
}

fn with(mut cfg: Value, key: &str, value: Value) -> Value {
    cfg[key] = value;
    cfg
}

/// A given O(1) state, so that the state visibly matters.
fn given_state(h: i64) -> InitialState {
    InitialState::Given(Tensor::randn([1, 8, h], (Kind::Float, Device::Cpu)))
}

#[test]
fn num_attention_heads_is_n_heads() {
    let cfg = base_config();
    let mut variant = cfg.clone();
    let heads = variant.as_object_mut().unwrap().remove("n_heads").unwrap();
    variant["num_attention_heads"] = heads;
    let (dir, canonical) = load(&cfg).unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, serde_json::to_string(&variant).unwrap()).unwrap();
    let aliased = RecurrentModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(aliased.config.n_heads, canonical.config.n_heads);
    let init = given_state(64);
    assert!(logits(&aliased, &init).equal(&logits(&canonical, &init)));
}

#[test]
fn disagreeing_n_layers_yields_to_the_three_stacks() {
    let cfg = base_config();
    let variant = with(cfg.clone(), "n_layers", json!(30));
    let mut parsed: RecurrentConfig = serde_json::from_value(variant.clone()).unwrap();
    let notes = parsed.normalize();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("n_layers is 30"), "{}", notes[0]);
    let (_a, canonical) = load(&cfg).unwrap();
    let (_b, loaded) = load(&variant).unwrap();
    assert_eq!(loaded.config.n_layers, 4);
    let init = given_state(64);
    assert!(logits(&loaded, &init).equal(&logits(&canonical, &init)));
}

#[test]
fn absent_rope_theta_is_rope_base_and_said_so() {
    let mut variant = base_config();
    variant.as_object_mut().unwrap().remove("rope_theta");
    variant["rope_base"] = json!(500.0);
    let mut parsed: RecurrentConfig = serde_json::from_value(variant.clone()).unwrap();
    let notes = parsed.normalize();
    assert_eq!(
        notes,
        ["no rope_theta; using RoPE θ 500 from rope_base".to_string()]
    );
    let (_a, theta_500) = load(&with(base_config(), "rope_theta", json!(500.0))).unwrap();
    let (_b, from_base) = load(&variant).unwrap();
    let (_c, theta_10k) = load(&base_config()).unwrap();
    let init = given_state(64);
    assert!(logits(&from_base, &init).equal(&logits(&theta_500, &init)));
    assert!(!logits(&from_base, &init).equal(&logits(&theta_10k, &init)));
}

/// The authors multiply a drawn initial state by `embed_scale` (as they do the embeddings); a
/// given state is used as it is.
#[test]
fn embed_scale_scales_a_drawn_state() {
    let mut cfg = base_config();
    cfg["init_values"]["embed_scale"] = json!(2.0);
    let (_a, model) = load(&cfg).unwrap();
    let std = model.config.init_values.std;
    let positions = Tensor::arange(8, (Kind::Int64, Device::Cpu)).view([1, 8]);
    let like = Tensor::zeros([1, 8, 64], (Kind::Float, Device::Cpu));
    let drawn = InitialState::Random { seed: 3 }.draw(&positions, &like, std);
    let random = logits(&model, &InitialState::Random { seed: 3 });
    let scaled = logits(&model, &InitialState::Given(&drawn * 2.0));
    let unscaled = logits(&model, &InitialState::Given(drawn));
    assert!(random.allclose(&scaled, 1e-6, 1e-6, false));
    assert!(!random.allclose(&unscaled, 1e-3, 1e-3, false));
}

/// `padded_vocab_size` > `vocab_size`: rr (and the Python class rr writes) score and generate
/// over the real vocabulary only, so the padding rows of the head, however large their logits,
/// neither take probability mass nor come out of generation. (The authors' class normalises
/// over the padded rows too; on a padded file its NLL is higher by log(1 + mass of padding).)
#[test]
fn padding_rows_are_neither_scored_nor_generated() {
    let cfg = base_config();
    let padded = with(cfg.clone(), "padded_vocab_size", json!(128));
    let dir = common::write_raven_model_dir(&padded).unwrap();
    // Padding rows that would dominate every softmax they were part of.
    let mut weights = common::raven_formula_weights(&padded);
    for (name, _, data) in weights.iter_mut() {
        if name == "lm_head.weight" {
            data[97 * 64..].iter_mut().for_each(|x| *x *= 1000.0);
        }
    }
    common::write_f32_safetensors(&dir.path().join("model.safetensors"), &weights).unwrap();
    let model = RecurrentModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let (_c, canonical) = load(&cfg).unwrap();
    let init = given_state(64);
    let got = logits(&model, &init);
    assert_eq!(got.size(), [1, 8, 97]);
    assert!(got.equal(&logits(&canonical, &init)));

    let model = AnyModel::Recurrent(model);
    let opts = DecodeOptions {
        max_new_tokens: 16,
        test_time: TestTime {
            recurrence: 4,
            seed: 0,
        },
        ..Default::default()
    };
    let out = decode(&model, None, &[vec![3, 17, 42]], &opts, |_, _| {}).unwrap();
    assert_eq!(out.rows[0].ids.len(), 16);
    assert!(
        out.rows[0].ids.iter().all(|&id| id < 97),
        "{:?}",
        out.rows[0].ids
    );
}
