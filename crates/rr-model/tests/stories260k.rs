//! The real `stories260K` (llama2.c, trained on TinyStories) against its golden outputs:
//! greedy ids from BOS and from a prompt, and logits at the first positions.

mod common;

use rr_model::{decode, AnyModel, DecodeOptions, LlamaModel, TestTime, Tokenizer};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn setup() -> Option<(AnyModel, Tokenizer, Value)> {
    let dir = common::shared_data_dir()?.join("models/stories260K");
    let model =
        AnyModel::Static(LlamaModel::load(&dir.join("hf"), Device::Cpu, Kind::Float).unwrap());
    let tokenizer = Tokenizer::from_path(&dir.join("tokenizer.json")).unwrap();
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    Some((model, tokenizer, golden))
}

/// llama2.c's run.c semantics: greedy argmax, stop when BOS (1) comes out.
fn greedy(model: &AnyModel, prompt: &[i64], n: usize, use_cache: bool) -> Vec<i64> {
    let opts = DecodeOptions {
        max_new_tokens: n,
        eos_ids: vec![1],
        use_cache,
        ..Default::default()
    };
    let mut out = decode(model, None, &[prompt.to_vec()], &opts, |_, _| {}).unwrap();
    out.rows.remove(0).ids
}

#[test]
fn greedy_from_bos_matches_golden_ids() {
    let Some((model, _, golden)) = setup() else {
        return;
    };
    let case = &golden["greedy_from_bos"];
    let expected = ids(&case["generated_ids"]);
    let got = greedy(&model, &ids(&case["input_ids"]), expected.len(), true);
    assert_eq!(got, expected);
}

#[test]
fn greedy_from_prompt_matches_golden_ids_and_text() {
    let Some((model, tokenizer, golden)) = setup() else {
        return;
    };
    let case = &golden["greedy_from_prompt"];
    let prompt = case["prompt"].as_str().unwrap();
    assert_eq!(
        tokenizer.encode(prompt, true).unwrap(),
        ids(&case["input_ids"])
    );
    let expected = ids(&case["generated_ids"]);
    let got = greedy(&model, &ids(&case["input_ids"]), expected.len(), true);
    assert_eq!(got, expected);
    // Full recomputation gives the same tokens as the KV cache.
    assert_eq!(
        greedy(&model, &ids(&case["input_ids"]), expected.len(), false),
        expected
    );
    let text = tokenizer.decode(&got, true).unwrap();
    assert_eq!(text, case["text"].as_str().unwrap());
}

#[test]
fn logits_match_golden_to_1e4() {
    let Some((model, _, golden)) = setup() else {
        return;
    };
    let input = ids(&golden["logits_input_ids_positions_0_to_3"]);
    let expected: Vec<Vec<f32>> = golden["logits_from_bos_greedy_positions_0_to_3"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let tt = TestTime {
        recurrence: 1,
        seed: 0,
    };
    let logits =
        tch::no_grad(|| model.logits(&Tensor::from_slice(&input).view([1, -1]), None, tt)).unwrap();
    for (pos, row) in expected.iter().enumerate() {
        let got: Vec<f32> = Vec::try_from(logits.get(0).get(pos as i64)).unwrap();
        let max_diff = got
            .iter()
            .zip(row)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_diff <= 1e-4, "position {pos}: max abs diff {max_diff}");
    }
}
