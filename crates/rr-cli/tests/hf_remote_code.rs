//! rr's recurrent checkpoints open in transformers as they are (`trust_remote_code=True`), and
//! transformers computes from them what rr computes.
//!
//! The reference is `fixtures/hf_remote_code/stories260k.json`, written by
//! `scripts/check_hf_remote_code.py`: it ran `rr surgery` on stories260K, loaded the output with
//! `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` (the Python files rr
//! writes beside every recurrent checkpoint), and recorded transformers' logits at r = 1, 4, 8
//! from a zero and from a given initial state, and its greedy continuation. Here the same
//! surgery runs through the `rr` binary, and `rr score --dump-logits` / `rr generate` must
//! reproduce those numbers. The fixture also records a hash of the Python files it was made
//! with, so changing them without re-running the script fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use tch::Tensor;

/// float32 logits of O(10) through a few small layers: far above the last-bit differences
/// another BLAS or thread count gives, far below the O(1) difference one more iteration makes.
const TOLERANCE: f64 = 1e-4;
use rr_util::test_data::shared_data;

fn fixture() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf_remote_code/stories260k.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rr(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Runs the fixture's surgery into `dir` and returns the checkpoint directory.
fn retrofit(data: &Path, dir: &Path, split: &str) -> PathBuf {
    let out = dir.join("rec");
    let source = data.join("models/stories260K/hf");
    rr(&[
        "surgery",
        "--model",
        source.to_str().unwrap(),
        "--layers",
        split,
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

#[test]
fn transformers_logits_and_greedy_text_match_rr() {
    let Some(data) = shared_data() else { return };
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let model = retrofit(&data, tmp.path(), fx["split"].as_str().unwrap());

    // The files transformers needs are there, named by auto_map, and are those the fixture
    // was made with.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["auto_map"]["AutoModelForCausalLM"],
        "raven_modeling_minimal.RavenForCausalLM"
    );
    let mut hash = Sha256::new();
    for name in ["raven_config_minimal.py", "raven_modeling_minimal.py"] {
        hash.update(std::fs::read(model.join(name)).unwrap());
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        fx["python_sha256"].as_str().unwrap(),
        "the Python files changed: re-run scripts/check_hf_remote_code.py --write-fixture"
    );

    let text = tmp.path().join("text.txt");
    std::fs::write(&text, fx["text"].as_str().unwrap()).unwrap();
    let ids: Vec<i64> = fx["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let state = Tensor::from_slice(&floats(&fx["state"])).view([ids.len() as i64, -1]);
    let state_file = tmp.path().join("state.safetensors");
    rr_model::weights::write_safetensors(&[("state".into(), state)], &state_file).unwrap();

    let dump = tmp.path().join("logits.safetensors");
    for r in [1, 4, 8] {
        for (label, state_arg) in [("zero", "zero"), ("given", state_file.to_str().unwrap())] {
            rr(&[
                "score",
                "--model",
                model.to_str().unwrap(),
                "--device",
                "cpu",
                "--text-file",
                text.to_str().unwrap(),
                "--recurrence",
                &r.to_string(),
                "--initial-state",
                state_arg,
                "--dump-logits",
                dump.to_str().unwrap(),
            ]);
            let got: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&dump)
                .unwrap()
                .into_iter()
                .collect();
            assert_eq!(Vec::<i64>::try_from(&got["input_ids"]).unwrap(), ids);
            let expected = Tensor::from_slice(&floats(&fx["logits"][format!("r{r}_{label}")]))
                .view(got["logits"].size().as_slice());
            let delta = (&got["logits"] - expected).abs().max().double_value(&[]);
            assert!(delta <= TOLERANCE, "r={r} {label}: max |dlogit| {delta}");
        }
    }

    // Greedy continuation from a zero state: transformers' `generate(num_steps=4,
    // init_scale=0)`, token for token.
    let greedy = &fx["greedy"];
    let as_ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let prompt = as_ids(&greedy["prompt_ids"]);
    let all = as_ids(&greedy["ids"]);
    let loaded = rr_model::AnyModel::load(&model, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let opts = rr_model::DecodeOptions {
        max_new_tokens: all.len() - prompt.len(),
        test_time: rr_model::TestTime {
            recurrence: 4,
            seed: 0,
        },
        initial_state: Some(rr_model::recurrent::InitialState::Zeros),
        ..Default::default()
    };
    let out = rr_model::decode(
        &loaded,
        None,
        std::slice::from_ref(&prompt),
        &opts,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(out.rows[0].ids, all[prompt.len()..]);
}

/// `--initial-state` and `--dump-logits` refuse bad input with one `error:` line naming the
/// flag or file, and write no dump.
#[test]
fn bad_initial_states_are_refused() {
    let Some(data) = shared_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = retrofit(&data, tmp.path(), "1,3,1");
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "Once upon a time, there was a little girl.").unwrap();
    let short = tmp.path().join("short.safetensors");
    let state = Tensor::zeros([3, 64], (tch::Kind::Float, tch::Device::Cpu));
    rr_model::weights::write_safetensors(&[("state".into(), state.shallow_clone())], &short)
        .unwrap();
    let unnamed = tmp.path().join("unnamed.safetensors");
    rr_model::weights::write_safetensors(&[("other".into(), state)], &unnamed).unwrap();
    let dump = tmp.path().join("dump.safetensors");
    let static_model = data.join("models/stories260K/hf");
    let cases: [(&Path, &Path, &str); 4] = [
        (&model, &short, "covers 3 positions"),
        (&model, &unnamed, "no tensor named `state`"),
        (
            &model,
            Path::new("missing.safetensors"),
            "missing.safetensors",
        ),
        (&static_model, Path::new("zero"), "only to recurrent models"),
    ];
    for (model_dir, state_arg, mention) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_rr"))
            .args(["score", "--device", "cpu", "--model"])
            .arg(model_dir)
            .arg("--text-file")
            .arg(&text)
            .arg("--initial-state")
            .arg(state_arg)
            .arg("--dump-logits")
            .arg(&dump)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(mention),
            "{err}"
        );
        assert!(!dump.exists(), "a dump was written for {state_arg:?}");
    }
}

/// `rr eval --initial-state FILE` scores every choice from the given state: each
/// log-likelihood in `--log-samples` equals the one computed from the same ids and state in a
/// single unpadded pass (`token_logits`, the path the fixture test above pins against
/// transformers), although eval runs them in right-padded, masked batches. The results name the
/// state, and a different state gives different scores (the option takes effect).
#[test]
fn eval_scores_from_the_given_initial_state() {
    use rr_eval::tasks::{load, Requests, Task};
    let Some(data) = shared_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = retrofit(&data, tmp.path(), "1,3,1");
    tch::manual_seed(5);
    let state = Tensor::randn([512, 64], (tch::Kind::Float, tch::Device::Cpu));
    let state_file = tmp.path().join("state.safetensors");
    rr_model::weights::write_safetensors(&[("state".into(), state)], &state_file).unwrap();

    let eval = |state_arg: &str, out: &Path| -> Vec<serde_json::Value> {
        rr(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
            "--tasks",
            "arc_easy",
            "--limit",
            "3",
            "--recurrences",
            "4",
            "--batch-size",
            "4",
            "--data",
            data.to_str().unwrap(),
            "--initial-state",
            state_arg,
            "--log-samples",
            "--out",
            out.to_str().unwrap(),
        ]);
        let samples = std::fs::read_to_string(out.with_extension("samples.jsonl")).unwrap();
        samples
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let given_out = tmp.path().join("given.json");
    let given = eval(state_file.to_str().unwrap(), &given_out);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&given_out).unwrap()).unwrap();
    assert_eq!(
        results["config"]["initial_state"],
        state_file.to_str().unwrap()
    );

    let loaded = rr_model::AnyModel::load(&model, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let tokenizer = rr_model::Tokenizer::from_path(&model).unwrap();
    let init = rr_model::recurrent::InitialState::from_file(&state_file, 64).unwrap();
    let Requests::LogLikelihood(items) = load(Task::ArcEasy, &data, Some(3)).unwrap().requests
    else {
        panic!("arc_easy is multiple choice")
    };
    assert_eq!(given.len(), items.len());
    for (item, sample) in items.iter().zip(&given) {
        let got: Vec<f64> = sample["loglikelihoods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for ((ctx, cont), got) in item.pairs().into_iter().zip(got) {
            let (c, k) = rr_eval::runner::split_tokens(&tokenizer, ctx, cont).unwrap();
            let ids: Vec<i64> = c.iter().chain(&k).copied().collect();
            let (_, nll) = rr_eval::nll::token_logits(
                &loaded,
                &ids,
                rr_model::recurrent::Depth::recurrence(4),
                &init,
            )
            .unwrap();
            let expected = -nll[nll.len() - k.len()..].iter().sum::<f64>();
            // Each token's log-probability carries the logits' fp32 error (see TOLERANCE).
            let bound = TOLERANCE * k.len() as f64;
            assert!(
                (got - expected).abs() <= bound,
                "{}: {got} vs {expected} (bound {bound})",
                item.id
            );
        }
    }
    let zero = eval("zero", &tmp.path().join("zero.json"));
    assert_ne!(given[0]["loglikelihoods"], zero[0]["loglikelihoods"]);

    // A state shorter than an item is refused with one line, and no results are written.
    let short = tmp.path().join("short.safetensors");
    let rows = Tensor::zeros([5, 64], (tch::Kind::Float, tch::Device::Cpu));
    rr_model::weights::write_safetensors(&[("state".into(), rows)], &short).unwrap();
    let out = tmp.path().join("short.json");
    let run = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args([
            "eval", "--device", "cpu", "--tasks", "arc_easy", "--limit", "2",
        ])
        .args(["--recurrences", "2", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--initial-state")
        .arg(&short)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("covers 5 positions"),
        "{err}"
    );
    assert!(!out.exists());
}
