//! The runner on a real model (stories260K and a recurrent retrofit of it): an item's
//! log-likelihood does not depend on the batch it sits in, its padding or the order.

#[path = "../../rr-model/tests/common/tolerance.rs"]
mod tolerance;

use std::path::Path;

use rr_eval::runner::loglikelihoods;
use rr_model::{AnyModel, TestTime, Tokenizer};
use rr_util::test_data::shared_data as shared;
use tch::{Device, Kind, Tensor};

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

/// Bound on the difference of two fp32 log-likelihood sums over `tokens` continuation tokens that
/// differ in the order of their sums (another batch shape, padding or BLAS blocking): each
/// log-probability moves by at most twice its logits' change (log-softmax is 2-Lipschitz in the
/// max norm), which is the reordering bound at the model's depth, plus the log-sum-exp over the
/// vocabulary; then the sum itself over `tokens` terms of magnitude `sum`.
fn loglikelihood_bound(
    model_dir: &Path,
    t: usize,
    r: usize,
    logits: f64,
    tokens: usize,
    sum: f64,
) -> f64 {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json")).unwrap())
            .unwrap();
    let depth = if cfg.get("n_embd").is_some() {
        tolerance::recurrent_depth(&cfg, r, t)
    } else {
        tolerance::decoder_depth(&cfg, t)
    };
    let vocab = ["vocab_size", "padded_vocab_size"]
        .iter()
        .filter_map(|k| cfg[*k].as_u64())
        .max()
        .unwrap() as usize;
    let per_token = 2.0 * tolerance::fp32_reorder_bound(depth, logits)
        + tolerance::fp32_reorder_bound(vocab, 1.0);
    tokens as f64 * per_token + tolerance::fp32_reorder_bound(tokens, sum.abs())
}

/// The largest |logit| (at least 1) of `model` over `seqs`, and their longest length.
fn logit_magnitude(model: &AnyModel, seqs: &[Vec<i64>], tt: TestTime) -> (f64, usize) {
    let (mut m, mut t) = (1.0f64, 0);
    for ids in seqs {
        t = t.max(ids.len());
        let ids = Tensor::from_slice(ids).view([1, -1]);
        let logits = tch::no_grad(|| model.logits(&ids, None, tt)).unwrap();
        m = m.max(logits.abs().max().double_value(&[]));
    }
    (m, t)
}

fn check_batch_invariance(model: &AnyModel, dir: &Path, tok: &Tokenizer, tt: TestTime) {
    let reqs = requests();
    let seqs: Vec<Vec<i64>> = reqs
        .iter()
        .map(|(c, k)| tok.encode(&format!("{c}{k}"), true).unwrap())
        .collect();
    let (logits, t) = logit_magnitude(model, &seqs, tt);
    let alone = loglikelihoods(model, tok, &reqs, 1, 512, tt, &tt.init()).unwrap();
    let one: Vec<f64> = alone.iter().map(|l| l.sum).collect();
    let five: Vec<f64> = loglikelihoods(model, tok, &reqs, 5, 512, tt, &tt.init())
        .unwrap()
        .iter()
        .map(|l| l.sum)
        .collect();
    let mut reversed = reqs.clone();
    reversed.reverse();
    let mut rev: Vec<f64> = loglikelihoods(model, tok, &reversed, 16, 512, tt, &tt.init())
        .unwrap()
        .iter()
        .map(|l| l.sum)
        .collect();
    rev.reverse();
    let mut worst: f64 = 0.0;
    for i in 0..reqs.len() {
        assert!(
            one[i].is_finite() && one[i] < 0.0,
            "{:?}: {}",
            reqs[i],
            one[i]
        );
        let bound = loglikelihood_bound(dir, t, tt.recurrence, logits, alone[i].tokens, one[i]);
        let d = (one[i] - five[i]).abs().max((one[i] - rev[i]).abs());
        worst = worst.max(d / bound);
        assert!(
            (one[i] - five[i]).abs() <= bound,
            "{:?}: alone {} vs batch of 5 {} (bound {bound:.3e})",
            reqs[i],
            one[i],
            five[i]
        );
        assert!(
            (one[i] - rev[i]).abs() <= bound,
            "{:?}: alone {} vs reversed batch {} (bound {bound:.3e})",
            reqs[i],
            one[i],
            rev[i]
        );
    }
    eprintln!("r={}: max |Δ log-likelihood| / bound = {worst:.3e} (logits up to {logits:.2}, {t} positions)", tt.recurrence);
    // The scores are informative: continuations differ by far more than the bound.
    let bound = loglikelihood_bound(dir, t, tt.recurrence, logits, alone[0].tokens, one[0]);
    assert!(
        (one[0] - one[1]).abs() > 10.0 * bound,
        "continuations differ by only {} (bound {bound:.3e})",
        (one[0] - one[1]).abs()
    );
}

#[test]
fn scores_do_not_depend_on_the_batch() {
    let Some(shared) = shared() else { return };
    let hf = shared.join("models/stories260K/hf");
    let tok = Tokenizer::from_path(&hf).unwrap();
    let model = AnyModel::load(&hf, Device::Cpu, Kind::Float).unwrap();
    check_batch_invariance(&model, &hf, &tok, tt(1, 0));

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
    check_batch_invariance(&model, &out, &tok, tt(4, 7));
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
    let (nll, count) =
        rr_eval::nll::rows_nll(&model, &rows, 2, tt(1, 0), &tt(1, 0).init()).unwrap();
    assert_eq!(count, 2 * (n - 1));
    let by_text: f64 = rows
        .iter()
        .map(|r| {
            rr_eval::nll::score_text(&model, r, 512, tt(1, 0))
                .unwrap()
                .total_nll
        })
        .sum();
    // Both sum the same 2(n − 1) token NLLs, from logits of other batch shapes.
    let (logits, _) = logit_magnitude(&model, &rows, tt(1, 0));
    let bound = loglikelihood_bound(&hf, n, 1, logits, count, nll);
    eprintln!(
        "packed rows {nll} vs text scoring {by_text}: |Δ| {:.3e}, bound {bound:.3e}",
        (nll - by_text).abs()
    );
    assert!(
        (nll - by_text).abs() <= bound,
        "{nll} vs {by_text} (bound {bound:.3e})"
    );
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
    // Greedy up to the stop strings or EOS id 2, from the default (random) state.
    let base = |max_new_tokens, test_time| rr_model::DecodeOptions {
        max_new_tokens,
        eos_ids: vec![2],
        test_time,
        ..Default::default()
    };
    let check = |model: &AnyModel| {
        let alone = greedy_until_batch(model, &tok, &prompts, &base(24, tt(1, 0)), 1).unwrap();
        for batch in [2, 5] {
            let got =
                greedy_until_batch(model, &tok, &prompts, &base(24, tt(1, 0)), batch).unwrap();
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
    let alone_rec = greedy_until_batch(&model, &tok, &prompts, &base(16, tt(2, 7)), 1).unwrap();
    for batch in [2, 5] {
        let got = greedy_until_batch(&model, &tok, &prompts, &base(16, tt(2, 7)), batch).unwrap();
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
