//! `rr export hf` through the real binary, on a trainer checkpoint of a stories260K retrofit
//! trained two steps: the export is a clean, world-readable Hugging Face folder (no optimizer
//! or trainer files), its weights are the checkpoint's, its safetensors carry
//! `{"format": "pt"}`, and its README.md states the split, the training recurrence, the data,
//! the steps and the evaluation table it was given.

use rr_util::test_data::shared_data;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn rr(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rr"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn rr_ok(dir: &Path, args: &[&str]) -> String {
    let out = rr(dir, args);
    assert!(
        out.status.success(),
        "rr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const RECIPE: &str = r#"name = "export"
seed = 7

[model]
init = "rec"

[data]
train = [{ path = "packed" }]

[training]
steps = 2
micro_batch_size = 2
grad_accum = 1
device = "cpu"
checkpoint_every = 2
eval_every = 2
keep_last = 1
eval_recurrences = [1]
eval_rows = 2

[curriculum.mean]
shape = "linear"
target = 3
ramp_fraction = 0.5

[lr]
kind = "warmup_stable_decay"
peak = 1.0
warmup_steps = 1
decay_fraction = 0.5
floor_ratio = 0.1

[optimizer]
kind = "muon"
"#;

#[test]
fn a_trained_checkpoint_exports_to_a_clean_hf_folder_with_a_model_card() {
    let Some(shared) = shared_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let hf = shared.join("models/stories260K/hf");
    rr_ok(
        d,
        &[
            "surgery",
            "--model",
            hf.to_str().unwrap(),
            "--layers",
            "1,3,1",
            "--out",
            "rec",
        ],
    );
    let text = std::fs::read_to_string(shared.join("tinystories/tinystories_validation_head.txt"))
        .unwrap();
    std::fs::write(d.join("stories.txt"), &text[..20_000]).unwrap();
    rr_ok(
        d,
        &[
            "data",
            "pack",
            "--tokenizer",
            "rec",
            "--input",
            "stories.txt",
            "--format",
            "text",
            "--seq-len",
            "32",
            "--out",
            "packed",
            "--heldout-fraction",
            "0.05",
        ],
    );
    std::fs::write(d.join("cfg.toml"), RECIPE).unwrap();
    rr_ok(d, &["train", "--config", "cfg.toml", "--run-dir", "run"]);
    let ckpt = "run/checkpoints/step-000002";
    // A training checkpoint carries the Python files too.
    assert!(d.join(ckpt).join("raven_modeling_minimal.py").exists());
    rr_ok(
        d,
        &[
            "eval",
            "--model",
            ckpt,
            "--device",
            "cpu",
            "--tasks",
            "arc_easy",
            "--limit",
            "4",
            "--recurrences",
            "1,3",
            "--data",
            shared.to_str().unwrap(),
            "--out",
            "eval.json",
        ],
    );

    rr_ok(
        d,
        &[
            "export",
            "hf",
            ckpt,
            "--out",
            "export",
            "--eval",
            "eval.json",
        ],
    );
    let out = d.join("export");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "config.json",
            "model.safetensors",
            "raven_config_minimal.py",
            "raven_modeling_minimal.py",
            "tokenizer.json"
        ]
    );
    for f in &files {
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o444, 0o444, "{f} is not world-readable: {mode:o}");
    }
    // The weights are the checkpoint's, and the file says it is PyTorch's layout.
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt");
    let exported: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(out.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let trained = tch::Tensor::read_safetensors(d.join(ckpt).join("model.safetensors")).unwrap();
    assert_eq!(exported.len(), trained.len());
    for (name, t) in &trained {
        assert!(exported[name].equal(t), "{name} differs");
    }

    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    for needle in [
        "(prelude, core, coda) = (1, 3, 1)",
        "Training recurrence (mean): 3",
        "Steps: 2;",
        "path = \"packed\"",
        "arc_easy",
        "trust_remote_code=True",
    ] {
        assert!(card.contains(needle), "README.md lacks {needle:?}:\n{card}");
    }

    // An existing output is refused, and left as it was.
    let again = rr(d, &["export", "hf", ckpt, "--out", "export"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).starts_with("error: "));
}
