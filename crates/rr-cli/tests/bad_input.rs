//! Bad input through the real `rr` binary: every case must exit non-zero with a single-line
//! error that names the file and the problem, and never panic.

use rr_util::test_data::shared_data;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `rr args...`, expects failure, returns stderr.
fn rr_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args(args)
        .output()
        .expect("run rr");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "rr {args:?} succeeded; stderr: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "rr {args:?}: expected exit 1, stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "rr {args:?}: expected one line, got: {stderr}"
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{stderr}"
    );
    stderr
}

/// A writable copy of the stories260K HF directory.
fn model_copy(shared: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(
            shared.join("models/stories260K/hf").join(f),
            tmp.path().join(f),
        )
        .unwrap();
    }
    tmp
}

fn text_file(dir: &Path) -> PathBuf {
    let p = dir.join("text.txt");
    std::fs::write(&p, "Once upon a time, there was a little girl.").unwrap();
    p
}

fn score_args<'a>(model: &'a str, text: &'a str) -> Vec<&'a str> {
    vec![
        "score",
        "--model",
        model,
        "--text-file",
        text,
        "--device",
        "cpu",
    ]
}

#[test]
fn truncated_safetensors() {
    let Some(shared) = shared_data() else { return };
    let m = model_copy(&shared);
    let st = m.path().join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&st)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let text = text_file(m.path());
    let err = rr_fails(&score_args(
        m.path().to_str().unwrap(),
        text.to_str().unwrap(),
    ));
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors file"),
        "{err}"
    );
}

#[test]
fn config_with_missing_or_wrong_fields() {
    let Some(shared) = shared_data() else { return };
    let m = model_copy(&shared);
    let cfg_path = m.path().join("config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let text = text_file(m.path());
    let args = score_args(m.path().to_str().unwrap(), text.to_str().unwrap());

    std::fs::write(&cfg_path, original.replace("\"hidden_size\": 64,", "")).unwrap();
    let err = rr_fails(&args);
    assert!(
        err.contains("config.json") && err.contains("missing field `hidden_size`"),
        "{err}"
    );

    std::fs::write(
        &cfg_path,
        original.replace(
            "\"num_key_value_heads\": 4",
            "\"num_key_value_heads\": \"four\"",
        ),
    )
    .unwrap();
    let err = rr_fails(&args);
    assert!(
        err.contains("config.json") && err.contains("invalid type"),
        "{err}"
    );

    std::fs::write(
        &cfg_path,
        original.replace("\"num_key_value_heads\": 4", "\"num_key_value_heads\": 3"),
    )
    .unwrap();
    let err = rr_fails(&args);
    assert!(
        err.contains("config.json") && err.contains("num_key_value_heads"),
        "{err}"
    );

    std::fs::write(&cfg_path, "{ not json").unwrap();
    let err = rr_fails(&args);
    assert!(
        err.contains("config.json") && err.contains("invalid model config"),
        "{err}"
    );
}

#[test]
fn tensor_with_wrong_shape_and_extra_layers() {
    let Some(shared) = shared_data() else { return };
    let m = model_copy(&shared);
    let cfg_path = m.path().join("config.json");
    let text = text_file(m.path());
    let args = score_args(m.path().to_str().unwrap(), text.to_str().unwrap());
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    // The file's q_proj is [64, 64]; a config with intermediate 100 expects other MLP shapes.
    std::fs::write(
        &cfg_path,
        original.replace("\"intermediate_size\": 172", "\"intermediate_size\": 100"),
    )
    .unwrap();
    let err = rr_fails(&args);
    assert!(
        err.contains("model.safetensors")
            && err.contains("has shape [64, 172]")
            && err.contains("config implies [64, 100]"),
        "{err}"
    );
    // Four layers in the config, five in the file: a mismatched checkpoint, not silently truncated.
    std::fs::write(
        &cfg_path,
        original.replace("\"num_hidden_layers\": 5", "\"num_hidden_layers\": 4"),
    )
    .unwrap();
    let err = rr_fails(&args);
    assert!(
        err.contains("model.layers.4") && err.contains("does not belong"),
        "{err}"
    );
}

#[test]
fn missing_shard() {
    let Some(shared) = shared_data() else { return };
    let m = model_copy(&shared);
    std::fs::rename(
        m.path().join("model.safetensors"),
        m.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({
        "metadata": {},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors"
        }
    });
    std::fs::write(
        m.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let text = text_file(m.path());
    let err = rr_fails(&score_args(
        m.path().to_str().unwrap(),
        text.to_str().unwrap(),
    ));
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn nonexistent_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("nowhere");
    let nowhere = nowhere.to_str().unwrap();
    let err = rr_fails(&["inspect", nowhere]);
    assert!(err.contains(nowhere), "{err}");
    let err = rr_fails(&[
        "generate", "--model", nowhere, "--prompt", "hi", "--device", "cpu",
    ]);
    assert!(err.contains(nowhere), "{err}");
    let err = rr_fails(&[
        "import",
        "gguf",
        nowhere,
        "--out",
        tmp.path().join("out").to_str().unwrap(),
    ]);
    assert!(err.contains(nowhere), "{err}");
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn missing_or_empty_text_file() {
    let Some(shared) = shared_data() else { return };
    let hf = shared.join("models/stories260K/hf");
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.txt");
    let err = rr_fails(&score_args(hf.to_str().unwrap(), missing.to_str().unwrap()));
    assert!(
        err.contains("missing.txt") && err.contains("cannot read"),
        "{err}"
    );
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let err = rr_fails(&score_args(hf.to_str().unwrap(), empty.to_str().unwrap()));
    assert!(err.contains("empty.txt") && err.contains("empty"), "{err}");
}

/// A minimal GGUF v3 file: llama metadata and one tensor of the given ggml type.
fn tiny_gguf(path: &Path, ggml_type: u32, data_len: usize) {
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    let u32_keys = [
        ("llama.embedding_length", 256u32),
        ("llama.feed_forward_length", 512),
        ("llama.block_count", 1),
        ("llama.attention.head_count", 4),
    ];
    b.extend((1 + u32_keys.len() as u64).to_le_bytes());
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes()); // STRING
    string(&mut b, "llama");
    for (key, value) in u32_keys {
        string(&mut b, key);
        b.extend(4u32.to_le_bytes()); // UINT32
        b.extend(value.to_le_bytes());
    }
    string(&mut b, "token_embd.weight");
    b.extend(2u32.to_le_bytes());
    b.extend(256u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(ggml_type.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(vec![0u8; data_len]);
    std::fs::write(path, b).unwrap();
}

#[test]
fn unsupported_gguf_type() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("q5k.gguf");
    tiny_gguf(&gguf, 13, 176); // Q5_K: 256 values in 176 bytes
    let out = tmp.path().join("out");
    let err = rr_fails(&[
        "import",
        "gguf",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("q5k.gguf") && err.contains("Q5_K") && err.contains("not supported"),
        "{err}"
    );
    assert!(!out.exists(), "no output may be left behind");
    // Truncated: the same file cut inside its tensor data.
    let cut = tmp.path().join("cut.gguf");
    tiny_gguf(&cut, 8, 34 * 8); // Q8_0: 8 blocks of 34 bytes
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let err = rr_fails(&[
        "import",
        "gguf",
        cut.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("cut.gguf"), "{err}");
    assert!(!out.exists(), "no output may be left behind");
}

#[test]
fn out_of_range_token_and_bad_device() {
    let Some(shared) = shared_data() else { return };
    let hf = shared.join("models/stories260K/hf");
    let err = rr_fails(&[
        "generate",
        "--model",
        hf.to_str().unwrap(),
        "--prompt",
        "hi",
        "--device",
        "tpu",
    ]);
    assert!(err.contains("unknown device `tpu`"), "{err}");
    let err = rr_fails(&[
        "generate",
        "--model",
        hf.to_str().unwrap(),
        "--prompt",
        "hi",
        "--temperature",
        "0",
        "--device",
        "cpu",
    ]);
    assert!(err.contains("temperature"), "{err}");
    // CUDA graphs asked for where they cannot run: on CPU, and on a static model.
    let err = rr_fails(&[
        "generate",
        "--model",
        hf.to_str().unwrap(),
        "--prompt",
        "hi",
        "--device",
        "cpu",
        "--cuda-graphs",
        "on",
    ]);
    assert!(err.contains("is for recurrent models"), "{err}");
}

#[test]
fn surgery_bad_selections_and_existing_output() {
    let Some(shared) = shared_data() else { return };
    let hf = shared.join("models/stories260K/hf");
    let hf = hf.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rec");
    let out_s = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--prelude", "0-1", "--core", "1-3", "--coda", "4"],
            "layer 1 is in both the prelude and the core",
        ),
        (
            &["--prelude", "0", "--core", "1-3", "--coda", "9"],
            "coda layer 9 is out of range",
        ),
        (&["--layers", "2,0,2"], "at least one layer"),
        (
            &["--prelude", "0", "--core", "", "--coda", "4"],
            "at least one layer",
        ),
        (
            &["--layers", "3,2,2"],
            "needs 7 layers, but the source has 5",
        ),
        (&["--layers", "1,2"], "expected three counts"),
        (
            &["--layers", "1,3,1", "--adapter", "fancy"],
            "invalid value 'fancy' for '--adapter <ADAPTER>'",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["surgery", "--model", hf, "--out", out_s];
        args.extend_from_slice(extra);
        let err = rr_fails(&args);
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} left output behind");
    }
    // An existing output directory is never touched without --force.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = rr_fails(&[
        "surgery", "--model", hf, "--out", out_s, "--layers", "1,3,1",
    ]);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    // --dry-run prints the plan and writes nothing.
    let dry = tmp.path().join("dry");
    let status = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args([
            "surgery",
            "--model",
            hf,
            "--out",
            dry.to_str().unwrap(),
            "--layers",
            "1,3,1",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("transformer.core_block.2") && text.contains("r = 32"),
        "{text}"
    );
    assert!(!dry.exists());
}

/// `--layers 1,2,1 --select influence --calibration FILE`.
fn select(file: &str) -> [&str; 6] {
    [
        "--layers",
        "1,2,1",
        "--select",
        "influence",
        "--calibration",
        file,
    ]
}

/// `--select influence` and `--init random`: bad input is one line naming the flag or file,
/// and leaves nothing behind; good input prints the ranking and drops the lowest-ranked layer.
#[test]
fn surgery_select_influence_and_random_init() {
    let Some(shared) = shared_data() else { return };
    let hf = shared.join("models/stories260K/hf");
    let hf = hf.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rec");
    let out_s = out.to_str().unwrap();
    let calibration = shared.join("tinystories/tinystories_validation_head.txt");
    let calibration = calibration.to_str().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let short = text_file(tmp.path());
    let recurrent = tmp.path().join("recurrent");
    let made = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args(["surgery", "--model", hf, "--layers", "1,3,1", "--out"])
        .arg(&recurrent)
        .output()
        .unwrap();
    assert!(made.status.success());
    let (empty, short) = (empty.to_str().unwrap(), short.to_str().unwrap());
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![
                "--layers",
                "1,2,1",
                "--select",
                "fancy",
                "--calibration",
                calibration,
            ],
            "invalid value 'fancy' for '--select <SELECT>'".into(),
        ),
        (
            vec!["--layers", "1,2,1", "--select", "influence"],
            "--calibration".into(),
        ),
        (
            select(empty).to_vec(),
            format!("{empty}: the calibration text is empty"),
        ),
        (
            select(short).to_vec(),
            format!("{short}: 13 tokens, fewer than one calibration window (256 tokens)"),
        ),
        (
            [&select(calibration)[..], &["--calibration-tokens", "100"]].concat(),
            "--calibration-tokens 100 is less than one window".into(),
        ),
        (
            vec![
                "--core",
                "1-2",
                "--select",
                "influence",
                "--calibration",
                calibration,
            ],
            "--select influence chooses the layers itself".into(),
        ),
        (
            vec![
                "--layers",
                "1,3,1",
                "--init",
                "random",
                "--adapter",
                "identity",
            ],
            "--init random draws the adapter too".into(),
        ),
    ];
    for (extra, expected) in &cases {
        let mut args = vec!["surgery", "--model", hf, "--out", out_s];
        args.extend_from_slice(extra);
        let err = rr_fails(&args);
        assert!(err.contains(expected.as_str()), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} left output behind");
    }
    let recurrent = recurrent.to_str().unwrap();
    let mut args = vec!["surgery", "--model", recurrent, "--out", out_s];
    args.extend_from_slice(&select(calibration));
    let err = rr_fails(&args);
    assert!(
        err.contains("already a recurrent (huginn_raven) model"),
        "{err}"
    );

    // Good input: the ranking, and the one dropped layer is the last-ranked one.
    let dry = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args(["surgery", "--model", hf, "--out", out_s, "--dry-run"])
        .args(select(calibration))
        .output()
        .unwrap();
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let text = String::from_utf8_lossy(&dry.stdout);
    let ranked: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("rank"))
        .skip(1)
        .take(5)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(ranked.len(), 5, "{text}");
    assert!(
        text.contains(&format!("dropped layers: [{}]", ranked[4])),
        "{text}"
    );
    // A random init writes a loadable model of the retrofit's shape.
    let random = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args([
            "surgery", "--model", hf, "--layers", "1,3,1", "--init", "random",
        ])
        .args(["--seed", "3", "--out", out_s])
        .output()
        .unwrap();
    assert!(
        random.status.success(),
        "{}",
        String::from_utf8_lossy(&random.stderr)
    );
    assert!(String::from_utf8_lossy(&random.stdout).contains("weights: random (takase, seed 3)"));
    let score = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args(score_args(out_s, short))
        .output()
        .unwrap();
    assert!(
        score.status.success(),
        "{}",
        String::from_utf8_lossy(&score.stderr)
    );
}

#[test]
fn recurrence_flag_is_checked() {
    let Some(shared) = shared_data() else { return };
    let hf = shared.join("models/stories260K/hf");
    let tmp = tempfile::tempdir().unwrap();
    let text = text_file(tmp.path());
    let mut args = score_args(hf.to_str().unwrap(), text.to_str().unwrap());
    args.extend(["--recurrence", "4"]);
    let err = rr_fails(&args);
    assert!(
        err.contains("--recurrence applies only to recurrent models"),
        "{err}"
    );
    let rec = tmp.path().join("rec");
    let ok = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args([
            "surgery",
            "--model",
            hf.to_str().unwrap(),
            "--out",
            rec.to_str().unwrap(),
            "--layers",
            "1,3,1",
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let mut args = score_args(rec.to_str().unwrap(), text.to_str().unwrap());
    args.extend(["--recurrence", "0"]);
    let err = rr_fails(&args);
    assert!(err.contains("--recurrence must be at least 1"), "{err}");
}

#[test]
fn eval_bad_input() {
    let Some(shared) = shared_data() else { return };
    let hf = shared.join("models/stories260K/hf");
    let hf = hf.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r.json");
    let out = out.to_str().unwrap();
    let err = rr_fails(&[
        "eval",
        "--model",
        hf,
        "--tasks",
        "arc_easy,trivia",
        "--device",
        "cpu",
        "--out",
        out,
    ]);
    assert!(err.contains("trivia") && err.contains("arc_easy"), "{err}");
    for bad in ["0", "-2", "1,x"] {
        let arg = format!("--recurrences={bad}");
        let err = rr_fails(&[
            "eval", "--model", hf, "--tasks", "arc_easy", &arg, "--device", "cpu", "--out", out,
        ]);
        assert!(err.contains("recurrence"), "{bad}: {err}");
    }
    let err = rr_fails(&[
        "eval",
        "--model",
        hf,
        "--tasks",
        "gsm8k",
        "--data",
        tmp.path().to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        out,
    ]);
    assert!(err.contains("test.jsonl"), "{err}");
    let bad_rows = tmp.path().join("synth.jsonl");
    std::fs::write(
        &bad_rows,
        "{\"question\": \"q\", \"answer\": \"#### 1\", \"steps\": 1}\nnot json\n",
    )
    .unwrap();
    let err = rr_fails(&[
        "eval",
        "--model",
        hf,
        "--tasks",
        "synth",
        "--data",
        bad_rows.to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        out,
    ]);
    assert!(err.contains("synth.jsonl:2"), "{err}");
    assert!(!Path::new(out).exists());
}

/// `rr eval --baseline MODEL_DIR` evaluates the static model on the same tasks, writes its
/// results beside the output, and draws it in the plots; its scores are those of evaluating
/// it alone. A recurrent model is refused as a baseline before any compute.
#[test]
fn eval_with_a_baseline_model_directory() {
    let Some(shared) = shared_data() else { return };
    let hf = shared.join("models/stories260K/hf");
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("rec");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rr"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "surgery",
        "--model",
        hf.to_str().unwrap(),
        "--out",
        rec.to_str().unwrap(),
        "--layers",
        "1,3,1",
    ]);
    let data = shared.to_str().unwrap();
    let out = tmp.path().join("rec.json");
    run(&[
        "eval",
        "--model",
        rec.to_str().unwrap(),
        "--tasks",
        "arc_easy",
        "--limit",
        "12",
        "--recurrences",
        "1,2",
        "--baseline",
        hf.to_str().unwrap(),
        "--data",
        data,
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    let alone = tmp.path().join("alone.json");
    run(&[
        "eval",
        "--model",
        hf.to_str().unwrap(),
        "--tasks",
        "arc_easy",
        "--limit",
        "12",
        "--data",
        data,
        "--device",
        "cpu",
        "--out",
        alone.to_str().unwrap(),
    ]);
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let beside = read(&tmp.path().join("rec.baseline.json"));
    assert_eq!(beside, read(&alone));
    let svg = std::fs::read_to_string(tmp.path().join("rec_arc_easy.svg")).unwrap();
    assert!(
        svg.contains("static baseline"),
        "no baseline line in the plot"
    );

    let err = rr_fails(&[
        "eval",
        "--model",
        hf.to_str().unwrap(),
        "--tasks",
        "arc_easy",
        "--baseline",
        rec.to_str().unwrap(),
        "--data",
        data,
        "--device",
        "cpu",
        "--out",
        tmp.path().join("x.json").to_str().unwrap(),
    ]);
    assert!(err.contains("must be a static"), "{err}");
    assert!(!tmp.path().join("x.json").exists());
}
