//! Layer selection by block influence (ShortGPT's BI = 1 − mean cos(h_in, h_out)) and the random
//! ("takase") initialisation, against references computed here: cosines from the layer inputs
//! and outputs that the model's public blocks give, a zeroed layer (output = input, so BI = 0),
//! hand-made rankings, and the init's published formula with sampling-error bounds.

#[path = "../../rr-model/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use rr_model::llama::Prologue;
use rr_model::recurrent::{Depth, InitialState, RecurrentModel};
use rr_model::{LlamaModel, Tokenizer};
use rr_surgery::influence::{Calibration, Influence, WINDOW_TOKENS};
use rr_surgery::{AdapterInit, LayerSelection, Surgery};
use serde_json::json;
use tch::{Device, Kind, Tensor};

fn stories260k() -> Option<PathBuf> {
    Some(common::shared_data_dir()?.join("models/stories260K/hf"))
}

fn tinystories() -> Option<PathBuf> {
    Some(common::shared_data_dir()?.join("tinystories/tinystories_validation_head.txt"))
}

/// Calibration tokens used with stories260K: 8 windows of 256.
const TOKENS: usize = 2048;

#[test]
fn by_influence_drops_the_lowest_and_keeps_order() {
    // Hand example: keep the 4 highest of 6 (layers 0, 4, 2, 5), in source order.
    let bi = [0.5, 0.1, 0.3, 0.05, 0.4, 0.2];
    let s = LayerSelection::by_influence(&bi, 2, 1, 1).unwrap();
    assert_eq!(
        (s.prelude.clone(), s.core.clone(), s.coda.clone()),
        (vec![0, 2], vec![4], vec![5])
    );
    assert_eq!(s.dropped(6), vec![1, 3]);
    // Keeping everything is the identity split.
    let s = LayerSelection::by_influence(&bi, 1, 4, 1).unwrap();
    assert_eq!(s, LayerSelection::paper(6, 1, 4, 1).unwrap());
    // Ties drop the lower index first.
    let s = LayerSelection::by_influence(&[0.1, 0.1, 0.1], 1, 1, 0).unwrap();
    assert_eq!(s.dropped(3), vec![0]);
    assert_eq!((s.prelude, s.core), (vec![1], vec![2]));
    let err = |r: anyhow::Result<LayerSelection>| format!("{:#}", r.unwrap_err());
    assert!(err(LayerSelection::by_influence(&bi, 2, 0, 1)).contains("at least one layer"));
    assert!(err(LayerSelection::by_influence(&bi, 3, 3, 1)).contains("needs 7 layers"));
}

#[test]
fn influence_on_stories260k_is_bounded_and_deterministic() {
    let (Some(model), Some(text)) = (stories260k(), tinystories()) else {
        return;
    };
    let first = Influence::measure(&model, &text, TOKENS, Device::Cpu).unwrap();
    eprintln!("{}", first.table());
    assert_eq!(first.per_layer.len(), 5);
    assert_eq!((first.windows, first.tokens), (8, TOKENS));
    for (i, bi) in first.per_layer.iter().enumerate() {
        assert!((0.0..=2.0).contains(bi), "layer {i}: BI {bi}");
    }
    let again = Influence::measure(&model, &text, TOKENS, Device::Cpu).unwrap();
    assert_eq!(first, again, "same model, text and machine: same values");
}

/// The hidden state entering and leaving layer `layer` for one window, from the model's
/// public blocks, flattened to [T·h] f32.
fn layer_io(model: &LlamaModel, window: &[i64], layer: usize) -> (Vec<f32>, Vec<f32>) {
    let ids = Tensor::from_slice(window).view([1, -1]);
    let p = Prologue::new(&model.rope, Kind::Float, &ids, None, None);
    let mut x = Tensor::embedding(&model.embed_tokens, &ids, -1, false, false);
    for block in &model.layers[..layer] {
        x = block.forward(&x, &p.cos_sin, &p.mask, None);
    }
    let y = model.layers[layer].forward(&x, &p.cos_sin, &p.mask, None);
    let flat = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    (flat(&x), flat(&y))
}

/// BI of one layer computed here: windows cut by the documented rule (the text's first tokens
/// in chunks of 256, each after BOS 1, the BOS position left out), cosines summed in f64.
fn independent_bi(model: &LlamaModel, tokenizer: &Tokenizer, text: &str, layer: usize) -> f64 {
    let h = model.config.hidden_size;
    let ids = tokenizer.encode(text, false).unwrap();
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in ids[..TOKENS].chunks(WINDOW_TOKENS) {
        let window: Vec<i64> = [1].into_iter().chain(chunk.iter().copied()).collect();
        let (a, b) = layer_io(model, &window, layer);
        for t in 1..window.len() {
            let (a, b) = (&a[t * h..(t + 1) * h], &b[t * h..(t + 1) * h]);
            let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            sum += dot / (na * nb);
            count += 1;
        }
    }
    1.0 - sum / count as f64
}

#[test]
fn each_layer_bi_equals_an_independent_computation() {
    let (Some(dir), Some(text_file)) = (stories260k(), tinystories()) else {
        return;
    };
    let tokenizer = Tokenizer::from_path(&dir).unwrap();
    assert_eq!(
        tokenizer.adds_bos(),
        Some(1),
        "stories260K's tokenizer adds BOS 1"
    );
    let text = std::fs::read_to_string(&text_file).unwrap();
    let model = LlamaModel::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let cal = Calibration::from_text(&tokenizer, &text, TOKENS, WINDOW_TOKENS, "text").unwrap();
    let measured = Influence::of_model(&model, &cal).unwrap();
    // The library runs windows in batches, this test one by one: fp32 states may differ by a
    // few ulps (relative ~1e-6 after 5 layers of width 64), moving a cosine by about as much.
    let tol = 1e-5;
    for layer in 0..5 {
        let want = tch::no_grad(|| independent_bi(&model, &tokenizer, &text, layer));
        let got = measured.per_layer[layer];
        assert!(
            (got - want).abs() <= tol,
            "layer {layer}: BI {got} vs independent {want}"
        );
    }
}

/// A copy of stories260K whose layer `layer` has every projection zeroed: attention and MLP
/// then add exactly 0, so the layer passes the residual stream through unchanged.
fn with_zeroed_layer(source: &Path, layer: usize) -> tempfile::TempDir {
    let model = LlamaModel::load(source, Device::Cpu, Kind::Float).unwrap();
    let prefix = format!("model.layers.{layer}.");
    tch::no_grad(|| {
        for (name, mut t) in model.named_tensors() {
            if name.starts_with(&prefix) && name.contains("proj") {
                let _ = t.zero_();
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    model.save_weights_and_config(dir.path()).unwrap();
    std::fs::copy(
        source.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    dir
}

#[test]
fn a_zeroed_layer_has_zero_influence_and_is_dropped_first() {
    let (Some(source), Some(text)) = (stories260k(), tinystories()) else {
        return;
    };
    // Layer 1 is not the least influential layer of the real model (checked below), so the
    // zeroed copy must move it.
    let real = Influence::measure(&source, &text, TOKENS, Device::Cpu).unwrap();
    assert_ne!(*real.ranking().last().unwrap(), 1);
    let zeroed = with_zeroed_layer(&source, 1);
    let inf = Influence::measure(zeroed.path(), &text, TOKENS, Device::Cpu).unwrap();
    eprintln!("{}", inf.table());
    assert!(inf.per_layer[1].abs() < 1e-12, "BI {}", inf.per_layer[1]);
    assert_eq!(*inf.ranking().last().unwrap(), 1);
    let s = LayerSelection::by_influence(&inf.per_layer, 1, 2, 1).unwrap();
    assert_eq!((s.prelude, s.core, s.coda), (vec![0], vec![2, 3], vec![4]));
}

#[test]
fn calibration_needs_a_full_window() {
    let Some(dir) = stories260k() else { return };
    let tokenizer = Tokenizer::from_path(&dir).unwrap();
    let err = |r: anyhow::Result<Calibration>| format!("{:#}", r.unwrap_err());
    let short = "Once upon a time there was a cat.";
    assert!(err(Calibration::from_text(
        &tokenizer, short, 4096, 256, "f.txt"
    ))
    .contains("f.txt: 10 tokens, fewer than one calibration window (256 tokens)"));
    assert!(err(Calibration::from_text(
        &tokenizer, " \n", 4096, 256, "f.txt"
    ))
    .contains("f.txt: the calibration text is empty"));
    assert!(
        err(Calibration::from_text(&tokenizer, short, 100, 256, "f.txt"))
            .contains("--calibration-tokens 100 is less than one window")
    );
    // A partial last window is dropped: 10 tokens in windows of 4 make 2 windows.
    let cal = Calibration::from_text(&tokenizer, short, 4096, 4, "f.txt").unwrap();
    assert_eq!(cal.windows.len(), 2);
    assert!(cal.windows.iter().all(|w| w.len() == 5 && w[0] == 1));
    assert_eq!(cal.tokens(), 8);
}
use rr_util::test_data::smollm2_dir;

/// SmolLM2's ranking on a short text (3 windows); printed for the record.
#[test]
fn smollm2_influence_ranking() {
    let (Some(source), Some(text)) = (smollm2_dir(), tinystories()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let short = tmp.path().join("short.txt");
    let text = std::fs::read_to_string(text).unwrap();
    std::fs::write(&short, &text[..4000]).unwrap();
    let inf = Influence::measure(&source, &short, 768, Device::Cpu).unwrap();
    eprintln!("SmolLM2-135M-Instruct\n{}", inf.table());
    assert_eq!((inf.per_layer.len(), inf.windows, inf.tokens), (30, 3, 768));
    for (i, bi) in inf.per_layer.iter().enumerate() {
        assert!((0.0..=2.0).contains(bi), "layer {i}: BI {bi}");
    }
    let s = LayerSelection::by_influence(&inf.per_layer, 2, 4, 2).unwrap();
    eprintln!("(2,4,2) by influence: {s:?}");
    let kept: Vec<usize> = [&s.prelude[..], &s.core, &s.coda].concat();
    assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?} in order");
}

// ---------------------------------------------------------------------------------------------
// Random ("takase") initialisation

/// Std of N(0, σ²) truncated at ±3σ, as a multiple of σ: √(1 − 2·3·φ(3) / (2Φ(3) − 1)).
fn truncated_std_factor() -> f64 {
    let phi_3 = (-4.5f64).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mass = 2.0 * 0.998_650_101_968_369_9 - 1.0; // 2Φ(3) − 1
    (1.0 - 6.0 * phi_3 / mass).sqrt()
}

/// The init's σ for rows of a tensor, from the published formula: std = √(2/(5h)) for
/// embedding, head, adapter, Wqkv and the gate half of fc; std / √(2·L_eff) for attn.proj,
/// mlp.proj and the up half of fc; None for norms (block, q/k and final `ln_f`: ones).
fn expected_sigma(name: &str, row: i64, fc_half: i64, h: f64, l_eff: f64) -> Option<f64> {
    let std = (2.0 / (5.0 * h)).sqrt();
    let out_proj = std / (2.0 * l_eff).sqrt();
    let output = name.ends_with("attn.proj.weight")
        || name.ends_with("mlp.proj.weight")
        || (name.ends_with("mlp.fc.weight") && row >= fc_half);
    if name.contains("norm") || name.contains("ln_f") {
        None
    } else if output {
        Some(out_proj)
    } else {
        Some(std)
    }
}

fn random_and_retrofit(source: &Path, sel: LayerSelection, seed: u64, out: &Path) -> PathBuf {
    let retrofit = out.join("retrofit");
    let random = out.join(format!("random-{seed}"));
    Surgery::new(source, sel.clone(), AdapterInit::Identity, 4)
        .unwrap()
        .write(&retrofit, true)
        .unwrap();
    Surgery::new(source, sel, AdapterInit::Identity, 4)
        .unwrap()
        .with_random_weights(seed)
        .write(&random, false)
        .unwrap();
    // Same names and shapes as the retrofit.
    let a = rr_model::weights::SafetensorsFiles::open_dir(&retrofit).unwrap();
    let b = rr_model::weights::SafetensorsFiles::open_dir(&random).unwrap();
    let names = |f: &rr_model::weights::SafetensorsFiles| {
        let mut n: Vec<String> = f.names().map(String::from).collect();
        n.sort();
        n
    };
    assert_eq!(names(&a), names(&b));
    for name in names(&a) {
        assert_eq!(
            a.info(&name).unwrap().shape,
            b.info(&name).unwrap().shape,
            "{name}"
        );
    }
    random
}

/// Checks a block of rows against N(0, σ²) cut at ±3σ: mean within 6 standard errors (σ/√n),
/// std within 6 standard errors of a std estimate (relative 1/√(2n) for a normal; a truncated
/// normal has a lighter tail, so this is an over-estimate), every value within ±3σ.
fn check_block(name: &str, rows: &Tensor, sigma: f64) {
    let n = rows.numel() as f64;
    let rows = rows.to_kind(Kind::Double);
    let mean = rows.mean(Kind::Double).double_value(&[]);
    let std = rows.std(true).double_value(&[]);
    let max = rows.abs().max().double_value(&[]);
    let want = sigma * truncated_std_factor();
    assert!(
        mean.abs() <= 6.0 * sigma / n.sqrt(),
        "{name}: mean {mean}, σ {sigma}"
    );
    assert!(
        (std / want - 1.0).abs() <= 6.0 / (2.0 * n).sqrt(),
        "{name}: std {std}, expected {want} (n = {n})"
    );
    assert!(
        max <= 3.0 * sigma * (1.0 + 1e-6),
        "{name}: max |w| {max} > 3σ"
    );
}

#[test]
fn random_init_follows_the_takase_formula_and_runs() {
    let Some(source) = stories260k() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // stories260K (h = 64), split 1,3,1 at mean recurrence 4: L_eff = 1 + 1 + 3·4 = 14.
    let sel = LayerSelection::paper(5, 1, 3, 1).unwrap();
    let random = random_and_retrofit(&source, sel, 7, tmp.path());
    let (h, l_eff, intermediate) = (64.0, 14.0, 172);
    let files = rr_model::weights::SafetensorsFiles::open_dir(&random).unwrap();
    let mut names: Vec<String> = files.names().map(String::from).collect();
    names.sort();
    for name in &names {
        let t = files.tensor(name).unwrap();
        match expected_sigma(name, 0, intermediate, h, l_eff) {
            None => assert!(t.eq(1.0).all().int64_value(&[]) == 1, "{name}: not ones"),
            Some(_) if name.ends_with("mlp.fc.weight") => {
                let gate = expected_sigma(name, 0, intermediate, h, l_eff).unwrap();
                let up = expected_sigma(name, intermediate, intermediate, h, l_eff).unwrap();
                check_block(name, &t.narrow(0, 0, intermediate), gate);
                check_block(name, &t.narrow(0, intermediate, intermediate), up);
            }
            Some(sigma) => check_block(name, &t, sigma),
        }
    }
    // It loads and runs.
    let model = RecurrentModel::load(&random, Device::Cpu, Kind::Float).unwrap();
    let ids = Tensor::from_slice(&[1i64, 403, 407, 261, 378, 432]).view([1, -1]);
    let out = tch::no_grad(|| {
        let out = model.forward(&ids, None, Depth::recurrence(2), &InitialState::Zeros, None);
        model.logits(&out.unwrap().hidden)
    });
    assert_eq!(out.size(), vec![1, 6, 512]);
    assert!(out.isfinite().all().int64_value(&[]) == 1, "finite logits");
}

#[test]
fn random_init_is_a_function_of_the_seed() {
    let Some(source) = stories260k() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let sel = LayerSelection::paper(5, 1, 3, 1).unwrap();
    let a = random_and_retrofit(&source, sel.clone(), 7, &tmp.path().join("a"));
    let b = random_and_retrofit(&source, sel.clone(), 7, &tmp.path().join("b"));
    let c = random_and_retrofit(&source, sel, 8, &tmp.path().join("c"));
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(bytes(&a) == bytes(&b), "same seed, same bytes");
    let (fa, fc) = (
        rr_model::weights::SafetensorsFiles::open_dir(&a).unwrap(),
        rr_model::weights::SafetensorsFiles::open_dir(&c).unwrap(),
    );
    for name in [
        "transformer.wte.weight",
        "transformer.core_block.2.mlp.fc.weight",
    ] {
        let (x, y) = (fa.tensor(name).unwrap(), fc.tensor(name).unwrap());
        assert!(!x.equal(&y), "{name}: seeds 7 and 8 agree");
    }
}

#[test]
fn random_olmo2_has_the_retrofit_shapes_and_unit_qk_norms() {
    let cfg = json!({
        "model_type": "olmo2", "hidden_size": 32, "intermediate_size": 72,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 61, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu"
    });
    let src = common::write_hf_model_dir(&cfg).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sel = LayerSelection::paper(4, 1, 2, 1).unwrap();
    let random = random_and_retrofit(src.path(), sel, 3, tmp.path());
    let files = rr_model::weights::SafetensorsFiles::open_dir(&random).unwrap();
    for name in ["attn.q_norm.weight", "attn.k_norm.weight"] {
        let t = files
            .tensor(&format!("transformer.core_block.1.{name}"))
            .unwrap();
        assert!(t.eq(1.0).all().int64_value(&[]) == 1, "{name}");
    }
    RecurrentModel::load(&random, Device::Cpu, Kind::Float).unwrap();
}
