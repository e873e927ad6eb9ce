//! The runner on a real model (stories260K and a recurrent retrofit of it): an item's
//! log-likelihood does not depend on the batch it sits in, its padding or the order.

use std::path::PathBuf;

use rr_eval::runner::loglikelihoods;
use rr_model::{AnyModel, TestTime, Tokenizer};
use tch::{Device, Kind};

fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("RR_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if dir.join("models/stories260K/hf").exists() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("shared data missing at {}", dir.display());
    }
    eprintln!("skipping: shared data missing at {}", dir.display());
    None
}

fn tt(recurrence: usize, seed: u64) -> TestTime {
    TestTime { recurrence, seed }
}

fn requests() -> Vec<(String, String)> {
    let ctxs = [
        "Once upon a time",
        "The cat sat",
        "Lily wanted to play with her friend Tom in the park, but",
        "A",
    ];
    let conts = [
        " there was a girl.",
        " on the mat and slept all day long.",
        " it rained.",
        " big dog ran.",
    ];
    ctxs.iter()
        .flat_map(|c| conts.iter().map(move |k| (c.to_string(), k.to_string())))
        .collect()
}

fn check_batch_invariance(model: &AnyModel, tok: &Tokenizer, tt: TestTime) {
    let reqs = requests();
    let one: Vec<f64> = loglikelihoods(model, tok, &reqs, 1, 512, tt)
        .unwrap()
        .iter()
        .map(|l| l.sum)
        .collect();
    let five: Vec<f64> = loglikelihoods(model, tok, &reqs, 5, 512, tt)
        .unwrap()
        .iter()
        .map(|l| l.sum)
        .collect();
    let mut reversed = reqs.clone();
    reversed.reverse();
    let mut rev: Vec<f64> = loglikelihoods(model, tok, &reversed, 16, 512, tt)
        .unwrap()
        .iter()
        .map(|l| l.sum)
        .collect();
    rev.reverse();
    for i in 0..reqs.len() {
        assert!(
            one[i].is_finite() && one[i] < 0.0,
            "{:?}: {}",
            reqs[i],
            one[i]
        );
        assert!(
            (one[i] - five[i]).abs() < 1e-4,
            "{:?}: alone {} vs batch of 5 {}",
            reqs[i],
            one[i],
            five[i]
        );
        assert!(
            (one[i] - rev[i]).abs() < 1e-4,
            "{:?}: alone {} vs reversed batch {}",
            reqs[i],
            one[i],
            rev[i]
        );
    }
    // The scores are informative: continuations differ.
    assert!((one[0] - one[1]).abs() > 0.1);
}

#[test]
fn scores_do_not_depend_on_the_batch() {
    let Some(shared) = shared() else { return };
    let hf = shared.join("models/stories260K/hf");
    let tok = Tokenizer::from_path(&hf).unwrap();
    let model = AnyModel::load(&hf, Device::Cpu, Kind::Float).unwrap();
    check_batch_invariance(&model, &tok, tt(1, 0));

    // A recurrent retrofit at r = 4 with a seeded state.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rec");
    let cfg = rr_model::LlamaConfig::from_path(&hf).unwrap();
    let rc = rr_model::RecurrentConfig::from_source(&cfg, 1, 3, 1, 4);
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Float);
    let rec = rr_model::RecurrentModel::new(vs, rc);
    // Deterministic small weights: only invariance is tested here.
    tch::no_grad(|| {
        for (_, mut t) in rec.vs.variables() {
            let n = t.numel() as i64;
            t.copy_(
                &(tch::Tensor::arange(n, (Kind::Float, Device::Cpu))
                    .view(t.size().as_slice())
                    .sin()
                    * 0.05),
            );
        }
    });
    std::fs::create_dir_all(&out).unwrap();
    rec.save_weights_and_config(&out).unwrap();
    std::fs::copy(hf.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    let model = AnyModel::load(&out, Device::Cpu, Kind::Float).unwrap();
    check_batch_invariance(&model, &tok, tt(4, 7));
}

/// Held-out loss of packed rows agrees with sliding-window scoring of the same tokens.
#[test]
fn packed_rows_loss_equals_text_scoring() {
    let Some(shared) = shared() else { return };
    let hf = shared.join("models/stories260K/hf");
    let tok = Tokenizer::from_path(&hf).unwrap();
    let model = AnyModel::load(&hf, Device::Cpu, Kind::Float).unwrap();
    let a = tok
        .encode(
            "Once upon a time, there was a little girl named Lily. She loved to play.",
            true,
        )
        .unwrap();
    let b = tok
        .encode(
            "The sun was shining and the birds were singing in the big green tree.",
            true,
        )
        .unwrap();
    let n = a.len().min(b.len());
    let rows = vec![a[..n].to_vec(), b[..n].to_vec()];
    let (nll, count) = rr_eval::nll::rows_nll(&model, &rows, 2, tt(1, 0)).unwrap();
    assert_eq!(count, 2 * (n - 1));
    let by_text: f64 = rows
        .iter()
        .map(|r| {
            rr_eval::nll::score_text(&model, r, 512, tt(1, 0))
                .unwrap()
                .total_nll
        })
        .sum();
    assert!((nll - by_text).abs() < 1e-3, "{nll} vs {by_text}");
}

/// Batched greedy generation gives every prompt the text it gets alone, for an ordinary model
/// and a recurrent one, whatever the batch and the padding.
#[test]
fn batched_generation_equals_generation_alone() {
    use rr_eval::runner::greedy_until_batch;
    let Some(shared) = shared() else { return };
    let hf = shared.join("models/stories260K/hf");
    let tok = Tokenizer::from_path(&hf).unwrap();
    let prompts: Vec<(String, Vec<String>)> = [
        "Once upon a time",
        "Lily wanted to play with her friend Tom in the park, but",
        "The cat",
        "One day, a little boy named Tim went to the store with his mom. He saw",
        "A",
    ]
    .iter()
    .map(|p| (p.to_string(), vec![".".to_string()]))
    .collect();
    let eos = [2i64];
    let check = |model: &AnyModel| {
        let alone = greedy_until_batch(model, &tok, &prompts, &eos, 24, 1, tt(1, 0)).unwrap();
        for batch in [2, 5] {
            let got = greedy_until_batch(model, &tok, &prompts, &eos, 24, batch, tt(1, 0)).unwrap();
            assert_eq!(got, alone, "batch size {batch}");
        }
        // Rows stop at different points (some at the stop string, some later).
        assert!(alone.iter().any(|t| !t.is_empty()));
        let lens: std::collections::BTreeSet<usize> = alone.iter().map(String::len).collect();
        assert!(lens.len() > 1, "{alone:?}");
    };
    check(&AnyModel::load(&hf, Device::Cpu, Kind::Float).unwrap());
    // stories260K through surgery (prelude 0, core 1-3, coda 4, identity adapter) at r = 2:
    // a recurrent model with the real weights, so its generations are text, not near-ties.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rec");
    let selection = rr_surgery::LayerSelection::paper(5, 1, 3, 1).unwrap();
    rr_surgery::Surgery::new(&hf, selection, rr_surgery::AdapterInit::Identity, 2)
        .unwrap()
        .write(&out, false)
        .unwrap();
    let model = AnyModel::load(&out, Device::Cpu, Kind::Float).unwrap();
    let alone_rec = greedy_until_batch(&model, &tok, &prompts, &eos, 16, 1, tt(2, 7)).unwrap();
    for batch in [2, 5] {
        let got = greedy_until_batch(&model, &tok, &prompts, &eos, 16, batch, tt(2, 7)).unwrap();
        assert_eq!(got, alone_rec, "recurrent, batch size {batch}");
    }
    assert!(
        alone_rec.iter().filter(|t| t.len() > 3).count() >= 3,
        "{alone_rec:?}"
    );
    assert_eq!(alone_rec.len(), prompts.len());
}

/// BOS as Hugging Face's tokenizer with `add_bos_token=True`: a tokenizer without a BOS
/// post-processor (SmolLM2's kind) gets `bos_token` from `tokenizer_config.json` in front,
/// giving the same ids as the Llama 3 tokenizer whose post-processor adds it; one that adds it
/// itself is not given a second. The harness's `_encode_pair`: trailing context spaces move to
/// the continuation.
#[test]
fn bos_first_and_harness_pair_split() {
    use rr_eval::runner::{encode_with_bos, split_tokens};
    let Some(dir) = shared() else { return };
    let with_processor = Tokenizer::from_path(&dir.join("tokenizers/llama3")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(dir.join("tokenizers/llama3/tokenizer.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["post_processor"] = serde_json::json!({"type": "ByteLevel", "add_prefix_space": true,
        "trim_offsets": false, "use_regex": true});
    std::fs::write(tmp.path().join("tokenizer.json"), json.to_string()).unwrap();
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<|begin_of_text|>", "add_bos_token": false}"#,
    )
    .unwrap();
    let without_processor = Tokenizer::from_path(tmp.path()).unwrap();
    let text = "Question: Why?\nAnswer: because";
    let plain = without_processor.encode(text, true).unwrap();
    assert_ne!(
        plain.first(),
        Some(&128000),
        "the post-processor was not removed"
    );
    let ids = encode_with_bos(&without_processor, text).unwrap();
    assert_eq!(ids[0], 128000);
    assert_eq!(ids[1..], plain[..]);
    assert_eq!(ids, encode_with_bos(&with_processor, text).unwrap());
    assert_eq!(ids, with_processor.encode(text, true).unwrap());

    let (ctx, cont) =
        split_tokens(&without_processor, "Question: Why?\nAnswer: ", "because").unwrap();
    assert_eq!(ctx[0], 128000);
    let whole = encode_with_bos(&without_processor, "Question: Why?\nAnswer: because").unwrap();
    assert_eq!([ctx.clone(), cont.clone()].concat(), whole);
    assert_eq!(
        ctx,
        encode_with_bos(&without_processor, "Question: Why?\nAnswer:").unwrap()
    );
    assert_eq!(without_processor.decode(&cont, false).unwrap(), " because");
}
