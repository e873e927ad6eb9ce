//! The held-out audit's failures, one case each, through the real `rr` binary: every case must
//! exit 1 with exactly one `error:` line that names the file or flag at fault, never panic or
//! die by a signal, and leave nothing behind (the directory it may write into is unchanged).

use rr_util::test_data::shared_data;
use std::path::Path;
use std::process::Command;

/// Every file below `dir` with its size, sorted: what "nothing left behind" compares.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            }
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            out.push((rel, if meta.is_dir() { 0 } else { meta.len() }));
        }
    }
    out.sort();
    out
}

/// A case: the arguments, what the error line must mention.
struct Case<'a> {
    what: &'a str,
    args: Vec<String>,
    mentions: &'a [&'a str],
}

/// Runs each case in `dir` and checks the contract; `dir` must look the same afterwards.
fn check_cases(dir: &Path, cases: &[Case]) {
    for case in cases {
        let before = listing(dir);
        let out = Command::new(env!("CARGO_BIN_EXE_rr"))
            .current_dir(dir)
            .args(&case.args)
            .output()
            .expect("run rr");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = case.what;
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: exit status {:?}, stderr: {stderr}",
            out.status
        );
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{what}: one error line expected: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("internal error"),
            "{what}: {stderr}"
        );
        for m in case.mentions {
            assert!(errors[0].contains(m), "{what}: `{m}` not in: {}", errors[0]);
        }
        assert_eq!(
            listing(dir),
            before,
            "{what}: left something behind or changed a file"
        );
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A copy of stories260K's HF directory with its config edited by `edit`.
fn model_with_config(dir: &Path, name: &str, shared: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let src = shared.join("models/stories260K/hf");
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
}

/// Rewrites one tensor of a model directory's safetensors file: `dtype` and raw `bytes`.
fn replace_tensor(dir: &Path, name: &str, dtype: &str, fill: impl Fn(usize) -> Vec<u8>) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    names.sort_by_key(|k| header[k]["data_offsets"][0].as_u64().unwrap());
    let mut out_data = Vec::new();
    for k in &names {
        let e = header[k].clone();
        let (a, b) = (
            e["data_offsets"][0].as_u64().unwrap() as usize,
            e["data_offsets"][1].as_u64().unwrap() as usize,
        );
        let numel: usize = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .product();
        let chunk = if k == name {
            fill(numel)
        } else {
            data[a..b].to_vec()
        };
        let start = out_data.len();
        out_data.extend(chunk);
        let entry = header.get_mut(k).unwrap();
        if k == name {
            entry["dtype"] = dtype.into();
        }
        entry["data_offsets"] = serde_json::json!([start, out_data.len()]);
    }
    let mut head = serde_json::to_vec(&header).unwrap();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut file = (head.len() as u64).to_le_bytes().to_vec();
    file.extend(head);
    file.extend(out_data);
    std::fs::write(&path, file).unwrap();
}

#[test]
fn audit_cases_fail_cleanly_and_leave_nothing() {
    let Some(shared) = shared_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let hf = shared.join("models/stories260K/hf");
    let hf_s = hf.to_str().unwrap();
    // A source model we own (so replacing it would be visible) and a text to score.
    model_with_config(d, "src", &shared, |_| {});
    std::fs::write(d.join("text.txt"), "Once upon a time, there was a girl.").unwrap();
    // A 9 MiB one-line paragraph and a 9 MiB paragraph of short lines (each beyond 8 MiB).
    std::fs::write(d.join("long_line.txt"), "word ".repeat(9 << 18)).unwrap();
    std::fs::write(d.join("long_par.txt"), "word word\n".repeat(9 << 17)).unwrap();
    // Broken copies.
    model_with_config(d, "vocab_huge", &shared, |c| {
        c["vocab_size"] = 1_000_000_000_000u64.into()
    });
    model_with_config(d, "vocab_max", &shared, |c| {
        c["vocab_size"] = u64::MAX.into()
    });
    model_with_config(d, "hidden_huge", &shared, |c| {
        c["hidden_size"] = (1u64 << 62).into()
    });
    model_with_config(d, "layers_huge", &shared, |c| {
        c["num_hidden_layers"] = 1_000_000_000u64.into()
    });
    model_with_config(d, "vocab_1m", &shared, |c| {
        c["vocab_size"] = 1_000_000u64.into()
    });
    model_with_config(d, "nan", &shared, |_| {});
    replace_tensor(&d.join("nan"), "model.norm.weight", "F32", |n| {
        f32::NAN.to_le_bytes().repeat(n)
    });
    model_with_config(d, "int", &shared, |_| {});
    replace_tensor(&d.join("int"), "model.norm.weight", "I32", |n| {
        1i32.to_le_bytes().repeat(n)
    });
    model_with_config(d, "index", &shared, |_| {});
    std::fs::rename(
        d.join("index/model.safetensors"),
        d.join("index/model-00001.safetensors"),
    )
    .unwrap();
    std::fs::write(
        d.join("index/model.safetensors.index.json"),
        r#"{"weight_map": {}}"#,
    )
    .unwrap();

    let score = |model: &str, extra: &[&str]| {
        let mut a = args(&[
            "score",
            "--model",
            model,
            "--text-file",
            "text.txt",
            "--device",
            "cpu",
        ]);
        a.extend(args(extra));
        a
    };
    let generate = |extra: &[&str]| {
        let mut a = args(&[
            "generate", "--model", hf_s, "--prompt", "Once", "--device", "cpu",
        ]);
        a.extend(args(extra));
        a
    };
    let cases = vec![
        Case {
            what: "surgery over its own source",
            args: args(&[
                "surgery", "--model", "src", "--layers", "1,3,1", "--out", "src", "--force",
            ]),
            mentions: &["src", "would overwrite the input"],
        },
        Case {
            what: "surgery into its source",
            args: args(&[
                "surgery", "--model", "src", "--layers", "1,3,1", "--out", "src/rec",
            ]),
            mentions: &["would overwrite the input"],
        },
        Case {
            what: "--layers overflow",
            args: args(&[
                "surgery",
                "--model",
                "src",
                "--layers",
                "18446744073709551615,1,1",
                "--out",
                "o",
            ]),
            mentions: &["--layers"],
        },
        Case {
            what: "--core huge range",
            args: args(&[
                "surgery",
                "--model",
                "src",
                "--core",
                "1-4000000000",
                "--out",
                "o",
            ]),
            mentions: &["--core", "more than"],
        },
        Case {
            what: "vocab 10^12",
            args: score("vocab_huge", &[]),
            mentions: &["vocab_size", "beyond"],
        },
        Case {
            what: "vocab 2^64-1",
            args: score("vocab_max", &[]),
            mentions: &["vocab_max/config.json"],
        },
        Case {
            what: "hidden 2^62",
            args: score("hidden_huge", &[]),
            mentions: &["hidden_size", "beyond"],
        },
        Case {
            what: "layers 10^9",
            args: score("layers_huge", &[]),
            mentions: &["num_hidden_layers", "beyond"],
        },
        Case {
            what: "vocab 10^6 vs the header",
            args: score("vocab_1m", &[]),
            mentions: &["vocab_1m/config.json", "holds only"],
        },
        Case {
            what: "NaN weights",
            args: score("nan", &[]),
            mentions: &["not finite"],
        },
        Case {
            what: "I32 weights",
            args: score("int", &[]),
            mentions: &["model.norm.weight", "floating point"],
        },
        Case {
            what: "empty weight_map",
            args: score("index", &[]),
            mentions: &["index.json", "weight_map"],
        },
        Case {
            what: "/dev/zero",
            args: args(&[
                "score",
                "--model",
                hf_s,
                "--text-file",
                "/dev/zero",
                "--device",
                "cpu",
            ]),
            mentions: &["/dev/zero", "larger than"],
        },
        Case {
            what: "--recurrence 10^5",
            args: score("src", &["--recurrence", "100000"]),
            mentions: &["--recurrence"],
        },
        Case {
            what: "--max-new-tokens past the context",
            args: generate(&["--max-new-tokens", "100000"]),
            mentions: &["context"],
        },
        Case {
            what: "--temperature inf",
            args: generate(&["--temperature", "inf"]),
            mentions: &["temperature"],
        },
        Case {
            what: "--top-p NaN",
            args: generate(&["--temperature", "0.7", "--top-p", "NaN"]),
            mentions: &["top-p"],
        },
        Case {
            what: "--exit-kl on a static model",
            args: generate(&["--exit-kl", "0.001"]),
            mentions: &["recurrent models"],
        },
        Case {
            what: "--recurrences 10^6",
            args: args(&[
                "eval",
                "--model",
                hf_s,
                "--tasks",
                "arc_easy",
                "--recurrences",
                "1000000",
                "--device",
                "cpu",
                "--out",
                "r.json",
            ]),
            mentions: &["recurrence"],
        },
    ];
    let mut cases = cases;
    cases.extend([
        Case {
            what: "synth-math --problems 10^11",
            args: args(&[
                "data",
                "synth-math",
                "--problems",
                "100000000000",
                "--max-steps",
                "4",
                "--out",
                "s.jsonl",
            ]),
            mentions: &["--problems"],
        },
        Case {
            what: "synth-math --max-steps 10^9",
            args: args(&[
                "data",
                "synth-math",
                "--problems",
                "10",
                "--max-steps",
                "1000000000",
                "--out",
                "s.jsonl",
            ]),
            mentions: &["--max-steps"],
        },
        Case {
            what: "pack --seq-len 2^63",
            args: args(&[
                "data",
                "pack",
                "--tokenizer",
                hf_s,
                "--input",
                "text.txt",
                "--format",
                "text",
                "--seq-len",
                "9223372036854775808",
                "--out",
                "p",
            ]),
            mentions: &["seq_len"],
        },
    ]);
    check_cases(d, &cases);

    // The NaN model is named by `rr inspect` (which succeeds).
    let out = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args(["inspect", d.join("nan").to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("NON-FINITE") && text.contains("model.norm.weight"),
        "{text}"
    );
}

/// The recurrent-only flags on a recurrent model: a bad KL threshold is refused by name.
#[test]
fn recurrent_decoding_flags_are_checked() {
    let Some(shared) = shared_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let hf = shared.join("models/stories260K/hf");
    let ok = Command::new(env!("CARGO_BIN_EXE_rr"))
        .current_dir(d)
        .args([
            "surgery",
            "--model",
            hf.to_str().unwrap(),
            "--layers",
            "1,3,1",
            "--out",
            "rec",
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let generate = |extra: &[&str]| {
        let mut a = args(&[
            "generate",
            "--model",
            "rec",
            "--prompt",
            "Once",
            "--device",
            "cpu",
            "--max-new-tokens",
            "4",
        ]);
        a.extend(args(extra));
        a
    };
    check_cases(
        d,
        &[
            Case {
                what: "--exit-kl NaN",
                args: generate(&["--exit-kl", "NaN"]),
                mentions: &["--exit-kl"],
            },
            Case {
                what: "--exit-kl negative",
                args: generate(&["--exit-kl=-1"]),
                mentions: &["--exit-kl"],
            },
            Case {
                what: "--latest-m 0",
                args: generate(&["--latest-m", "0"]),
                mentions: &["--latest-m"],
            },
            Case {
                what: "--recurrence 2000",
                args: generate(&["--recurrence", "2000"]),
                mentions: &["--recurrence", "1024"],
            },
        ],
    );
}

/// A full disk, stood in for by a file-size limit (`ulimit -f`, with SIGXFSZ ignored so that
/// writes fail with an error instead of killing the process): the error names the file being
/// written and no temporary is left behind.
#[test]
fn a_write_that_runs_out_of_space_names_the_file_and_leaves_nothing() {
    let Some(shared) = shared_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let hf = shared.join("models/stories260K/hf");
    let rr = env!("CARGO_BIN_EXE_rr");
    for (what, cmd, mentions) in [
        (
            "synth-math",
            format!("{rr} data synth-math --problems 20000 --max-steps 4 --out s.jsonl"),
            "s.jsonl",
        ),
        (
            "surgery",
            format!(
                "{rr} surgery --model {} --layers 1,3,1 --out rec",
                hf.display()
            ),
            "model.safetensors",
        ),
    ] {
        let before = listing(d);
        let out = Command::new("sh")
            .current_dir(d)
            .arg("-c")
            .arg(format!("trap '' XFSZ; ulimit -f 64; exec {cmd}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{what}: {stderr}");
        assert!(errors[0].contains(mentions), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert_eq!(listing(d), before, "{what}: left something behind");
    }
}

/// A GGUF v3 file: no metadata but `kvs` (key, raw typed value bytes) and F32 tensors
/// (name, element count, data offset), with `data_len` bytes of tensor data.
fn tiny_gguf(kvs: &[(&str, Vec<u8>)], tensors: &[(&str, u64, u64)], data_len: usize) -> Vec<u8> {
    let string = |s: &str| {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    };
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend((tensors.len() as u64).to_le_bytes());
    f.extend((kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        f.extend(string(key));
        f.extend(value);
    }
    for (name, n, offset) in tensors {
        f.extend(string(name));
        f.extend(1u32.to_le_bytes());
        f.extend(n.to_le_bytes());
        f.extend(0u32.to_le_bytes()); // F32
        f.extend(offset.to_le_bytes());
    }
    while !f.len().is_multiple_of(32) {
        f.push(0);
    }
    f.extend(vec![0u8; data_len]);
    f
}

/// The importer's amplification cases through `rr import gguf`: overlapping tensors, and a
/// metadata array that declares far more elements than the file holds.
#[test]
fn gguf_amplification_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let overlap = tiny_gguf(&[], &[("a", 1024, 0), ("b", 1024, 0)], 4096);
    std::fs::write(d.join("overlap.gguf"), overlap).unwrap();
    // An array of u8 (type 9, element type 0) claiming 2^40 elements.
    let mut array = 9u32.to_le_bytes().to_vec();
    array.extend(0u32.to_le_bytes());
    array.extend((1u64 << 40).to_le_bytes());
    let huge = tiny_gguf(&[("general.huge", array)], &[("a", 4, 0)], 16);
    std::fs::write(d.join("huge.gguf"), huge).unwrap();
    check_cases(
        d,
        &[
            Case {
                what: "overlapping tensors",
                args: args(&["import", "gguf", "overlap.gguf", "--out", "o"]),
                mentions: &["overlap.gguf", "overlap"],
            },
            Case {
                what: "metadata array beyond the file",
                args: args(&["import", "gguf", "huge.gguf", "--out", "o"]),
                mentions: &["huge.gguf", "claims"],
            },
        ],
    );
}
