//! Helpers shared by the `data_*` integration tests (included with
//! `#[path = "data_support.rs"] mod support;`; on its own this target has no tests).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[allow(unused_imports)] // not every test binary needs each
pub use rr_util::test_data::{required, shared, shared_data, smollm2_dir, workspace_root};

/// Writes a word-level `tokenizer.json` into `dir`: `<unk>` 0, `<s>` 1, `</s>` 2, then `w{i}` at
/// id `i + 3` for `i < words`; whitespace pre-tokenizer, no post-processor (adds no BOS).
/// Returns the file path.
pub fn word_tokenizer(dir: &Path, words: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for i in 0..words {
        vocab.insert(format!("w{i}"), (i + 3).into());
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    path
}

/// Ids of a document of `w{i}` words under [`word_tokenizer`].
pub fn word_ids(doc: &str) -> Vec<i64> {
    doc.split_whitespace()
        .map(|w| w[1..].parse::<i64>().unwrap() + 3)
        .collect()
}

/// `n` documents of 1..=max_len words drawn from `w{lo}..w{hi}` (a tiny LCG, deterministic).
pub fn word_docs(n: usize, max_len: usize, lo: usize, hi: usize, seed: u64) -> Vec<String> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move |m: usize| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as usize) % m
    };
    (0..n)
        .map(|_| {
            let len = 1 + next(max_len);
            (0..len)
                .map(|_| format!("w{}", lo + next(hi - lo)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Writes documents as a blank-line-separated text file.
pub fn write_text(path: &Path, docs: &[String]) {
    std::fs::write(path, docs.join("\n\n") + "\n").unwrap();
}

/// Writes documents as `{"text": ...}` JSONL.
pub fn write_jsonl(path: &Path, docs: &[String]) {
    let lines: Vec<String> = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Names of the entries of `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts an error renders as one line mentioning every needle.
pub fn assert_one_line(err: &anyhow::Error, needles: &[&str]) -> String {
    let msg = format!("{err:#}");
    assert!(!msg.contains('\n'), "error spans several lines: {msg}");
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
    msg
}
