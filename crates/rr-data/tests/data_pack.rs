//! `data::pack` and `data::PackedSet` on real tokenizers and data (stories260K + TinyStories,
//! Llama-3, SmolLM2 + GSM8K, Llama-2 + MATH) and on a synthetic word-level tokenizer whose ids
//! are known in advance.

#[path = "data_support.rs"]
mod support;

use std::path::{Path, PathBuf};

use rr_data::{
    is_heldout_document, pack, InputFormat, PackOptions, PackedSet, Split, TokenDtype,
    MANIFEST_FILE,
};
use rr_model::Tokenizer;
use support::*;

/// All rows of a split, flattened.
fn stream(set: &PackedSet, split: Split) -> Vec<i64> {
    let mut out = Vec::new();
    for i in 0..set.rows(split) {
        let row = set.row(split, i);
        assert_eq!(row.len(), set.seq_len() + 1, "row {i} of {split}");
        out.extend(row);
    }
    out
}

/// Checks one split's stream against the expected concatenation of its documents: the stream is
/// exactly the expected tokens minus a ragged tail shorter than a row.
fn assert_split_stream(set: &PackedSet, split: Split, expected: &[i64]) {
    let got = stream(set, split);
    let row_len = set.row_len();
    let info = &set.manifest().splits.get(split);
    assert_eq!(
        info.document_tokens as usize,
        expected.len(),
        "{split} document tokens"
    );
    assert_eq!(
        got.len(),
        expected.len() / row_len * row_len,
        "{split} rows × row_len"
    );
    assert_eq!(
        info.dropped_tokens as usize,
        expected.len() - got.len(),
        "{split} ragged tail"
    );
    assert!((info.dropped_tokens as usize) < row_len);
    assert_eq!(info.tokens as usize, got.len());
    assert!(
        got == expected[..got.len()],
        "{split}: packed stream differs from the documents"
    );
}

/// First `n` blank-line-separated paragraphs of a text file (split independently of `pack`).
fn paragraphs(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut docs = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                docs.push(cur.join("\n"));
                cur.clear();
            }
        } else {
            cur.push(line);
        }
        if docs.len() == n {
            break;
        }
    }
    docs
}

#[test]
fn tinystories_with_stories260k_packs_documents_contiguously() {
    let (Some(story_file), Some(tok_file)) = (
        shared("tinystories/tinystories_validation_head.txt"),
        shared("models/stories260K/tokenizer.json"),
    ) else {
        return;
    };
    let docs = paragraphs(&story_file, 40);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("stories.txt");
    // Re-join with a mix of separators `pack` must treat alike: blank and whitespace-only lines.
    let mut text = String::new();
    for (i, d) in docs.iter().enumerate() {
        text.push_str(d);
        text.push_str(if i % 3 == 0 { "\n \n\n" } else { "\n\n" });
    }
    std::fs::write(&input, &text).unwrap();
    assert!(
        text.len() > 4_000,
        "a few KB of text ({} bytes)",
        text.len()
    );

    let tok = Tokenizer::from_path(&tok_file).unwrap();
    // BOS + encode(text) + EOS, with the tokenizer's own BOS (encode with special tokens).
    let encoded: Vec<Vec<i64>> = docs
        .iter()
        .map(|d| {
            let mut ids = tok.encode(d, true).unwrap();
            assert_eq!(ids[0], 1, "stories260K prepends <s>");
            ids.push(2);
            ids
        })
        .collect();
    let total: usize = encoded.iter().map(Vec::len).sum();

    for (fraction, name) in [(0.0, "all-train"), (0.25, "split")] {
        let mut opts = PackOptions::new(
            &tok_file,
            vec![input.clone()],
            InputFormat::Text,
            63,
            tmp.path().join(name),
        );
        opts.heldout_fraction = fraction;
        opts.seed = 5;
        let summary = pack(&opts).unwrap();
        assert_eq!(summary.manifest.documents as usize, docs.len());
        let set = PackedSet::open(tmp.path().join(name)).unwrap();
        let m = set.manifest();
        assert_eq!(
            set.dtype(),
            TokenDtype::U16,
            "512-token vocabulary fits u16"
        );
        assert_eq!((m.bos_id, m.eos_id), (Some(1), Some(2)));
        assert_eq!(m.tokenizer.vocab_size, 512);
        assert_eq!(set.seq_len(), 63);

        let (mut train, mut held) = (Vec::new(), Vec::new());
        let (mut n_train, mut n_held) = (0, 0);
        for (i, ids) in encoded.iter().enumerate() {
            if is_heldout_document(5, i as u64, fraction) {
                held.extend_from_slice(ids);
                n_held += 1;
            } else {
                train.extend_from_slice(ids);
                n_train += 1;
            }
        }
        assert_eq!(m.splits.train.documents, n_train);
        assert_eq!(m.splits.heldout.documents, n_held);
        assert_split_stream(&set, Split::Train, &train);
        assert_split_stream(&set, Split::Heldout, &held);
        // Total = sum over documents minus the dropped tails.
        let packed = (set.rows(Split::Train) + set.rows(Split::Heldout)) * set.row_len();
        let dropped = m.splits.train.dropped_tokens + m.splits.heldout.dropped_tokens;
        assert_eq!(packed + dropped as usize, total);
        if fraction > 0.0 {
            assert!(
                n_held > 0 && n_train > n_held,
                "held out {n_held} of {}",
                docs.len()
            );
        }
        // Shard files: raw u16, exactly rows × row_len × 2 bytes.
        let shard = &m.splits.train.shards[0];
        assert_eq!(shard.file, "train-00000.bin");
        let len = std::fs::metadata(set.dir().join(&shard.file))
            .unwrap()
            .len();
        assert_eq!(len, set.rows(Split::Train) as u64 * 64 * 2);
        set.verify_checksums().unwrap();
        set.check_tokenizer(&tok).unwrap();
        // The source is recorded with its hash and size.
        assert_eq!(m.sources[0].bytes, text.len() as u64);
        assert_eq!(m.sources[0].documents as usize, docs.len());
        assert_eq!(m.sources[0].sha256.len(), 64);
    }
    // Every train document is somewhere contiguous in the packed stream (the "split" set).
    let set = PackedSet::open(tmp.path().join("split")).unwrap();
    let s = stream(&set, Split::Train);
    let mut found = 0;
    for (i, ids) in encoded.iter().enumerate() {
        if !is_heldout_document(5, i as u64, 0.25) && s.windows(ids.len()).any(|w| w == &ids[..]) {
            found += 1;
        }
    }
    // All but possibly the last train document (cut by the ragged tail).
    assert!(
        found + 1 >= set.manifest().splits.train.documents as usize,
        "found {found}"
    );
}

#[test]
fn llama3_vocabulary_uses_u32_shards() {
    let (Some(story_file), Some(tok_file)) = (
        shared("tinystories/tinystories_validation_head.txt"),
        shared("tokenizers/llama3/tokenizer.json"),
    ) else {
        return;
    };
    let docs = paragraphs(&story_file, 12);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("s.txt");
    write_text(&input, &docs);
    let mut opts = PackOptions::new(
        &tok_file,
        vec![input],
        InputFormat::Text,
        32,
        tmp.path().join("p"),
    );
    opts.heldout_fraction = 0.0;
    pack(&opts).unwrap();
    let set = PackedSet::open(tmp.path().join("p")).unwrap();
    let tok = Tokenizer::from_path(&tok_file).unwrap();
    assert_eq!(tok.vocab_size(), 128256);
    assert_eq!(set.dtype(), TokenDtype::U32);
    assert_eq!(
        set.bos_id(),
        Some(128000),
        "<|begin_of_text|> from the post-processor"
    );
    assert_eq!(set.eos_id(), Some(128001), "<|end_of_text|>");
    let shard = &set.manifest().splits.train.shards[0];
    assert_eq!(shard.bytes, set.rows(Split::Train) as u64 * 33 * 4);
    let mut expected = Vec::new();
    for d in &docs {
        expected.extend(tok.encode(d, true).unwrap());
        expected.push(128001);
    }
    assert_split_stream(&set, Split::Train, &expected);
    let row = set.row(Split::Train, 0);
    assert_eq!(row[0], 128000);
    assert!(row.iter().all(|&id| (0..128256).contains(&id)));
    let text = tok.decode(&row, true).unwrap();
    assert!(
        docs[0].starts_with(text.split_whitespace().next().unwrap()),
        "{text}"
    );
}

#[test]
fn gsm8k_with_smollm2_uses_the_q_a_template() {
    let (Some(gsm), Some(model)) = (shared("gsm8k/train.jsonl"), smollm2_dir()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("gsm8k_head.jsonl");
    let text = std::fs::read_to_string(&gsm).unwrap();
    let head: Vec<&str> = text.lines().take(30).collect();
    std::fs::write(&input, head.join("\n") + "\n").unwrap();
    let first: serde_json::Value = serde_json::from_str(head[0]).unwrap();
    let question = first["question"].as_str().unwrap();

    let mut opts = PackOptions::new(
        &model,
        vec![input],
        InputFormat::Gsm8k,
        256,
        tmp.path().join("p"),
    );
    opts.heldout_fraction = 0.0;
    let summary = pack(&opts).unwrap();
    let set = PackedSet::open(tmp.path().join("p")).unwrap();
    let tok = Tokenizer::from_path(&model).unwrap();
    set.check_tokenizer(&tok).unwrap();
    assert_eq!(tok.adds_bos(), None, "SmolLM2's tokenizer adds no BOS");
    // BOS from config.json's bos_token_id (1), EOS from tokenizer_config.json (<|im_end|> = 2).
    assert_eq!((set.bos_id(), set.eos_id()), (Some(1), Some(2)));
    assert_eq!(set.dtype(), TokenDtype::U16);
    assert_eq!(summary.manifest.documents, 30);

    let row = set.row(Split::Train, 0);
    assert_eq!(&row[..1], &[1]);
    let decoded = tok.decode(&row, false).unwrap();
    let expected_start = format!(
        "<|im_start|>Q: {question}\n\nA: Natalia sold 48/2 = 24 clips in May.\n\
         Natalia sold 48+24 = 72 clips altogether in April and May.\n#### 72<|im_end|><|im_start|>Q: "
    );
    assert!(
        decoded.starts_with(&expected_start),
        "row 0 decodes to {decoded:?}"
    );
    let all: String = (0..set.rows(Split::Train))
        .map(|i| tok.decode(&set.row(Split::Train, i), false).unwrap())
        .collect();
    assert!(
        !all.contains("<<"),
        "calculator annotations must be stripped"
    );
    assert!(
        all.matches("\n\nA: ").count() >= 28,
        "most documents fit in the rows"
    );
}

#[test]
fn math_with_llama2_uses_the_minerva_layout() {
    let (Some(math), Some(tok_file)) = (
        shared("math/MATH_train.jsonl"),
        shared("tokenizers/llama2/tokenizer.json"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("math_head.jsonl");
    let text = std::fs::read_to_string(&math).unwrap();
    let head: Vec<&str> = text.lines().take(5).collect();
    std::fs::write(&input, head.join("\n") + "\n").unwrap();
    let first: serde_json::Value = serde_json::from_str(head[0]).unwrap();

    let mut opts = PackOptions::new(
        &tok_file,
        vec![input],
        InputFormat::Math,
        128,
        tmp.path().join("p"),
    );
    opts.heldout_fraction = 0.0;
    pack(&opts).unwrap();
    let set = PackedSet::open(tmp.path().join("p")).unwrap();
    let tok = Tokenizer::from_path(&tok_file).unwrap();
    assert_eq!((set.bos_id(), set.eos_id()), (Some(1), Some(2)));
    let mut expected = tok
        .encode(
            &format!(
                "Problem:\n{}\n\nSolution: {}",
                first["problem"].as_str().unwrap().trim(),
                first["solution"].as_str().unwrap().trim()
            ),
            true,
        )
        .unwrap();
    expected.push(2);
    let s: Vec<i64> = (0..set.rows(Split::Train))
        .flat_map(|i| set.row(Split::Train, i))
        .collect();
    let n = expected.len().min(s.len());
    assert_eq!(&s[..n], &expected[..n]);
}

/// Word-level tokenizer with a `config.json` naming BOS and EOS beside it.
fn word_model(dir: &Path, words: usize, config: Option<&str>) -> PathBuf {
    word_tokenizer(dir, words);
    if let Some(c) = config {
        std::fs::write(dir.join("config.json"), c).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn synthetic_tokenizer_exact_rows_shards_and_special_token_rules() {
    let tmp = tempfile::tempdir().unwrap();
    // BOS from config.json (the tokenizer adds none), EOS from config.json.
    let model = word_model(
        &tmp.path().join("m"),
        50,
        Some(r#"{"bos_token_id": 1, "eos_token_id": [2, 7]}"#),
    );
    let docs = word_docs(300, 20, 0, 50, 1);
    let a = tmp.path().join("a.jsonl");
    let b = tmp.path().join("b.txt");
    write_jsonl(&a, &docs[..120]);
    write_text(&b, &docs[120..]);
    // Two text inputs, numbered in order: b (docs 120..) then all (docs 0..).
    let all = tmp.path().join("all.txt");
    write_text(&all, &docs);
    let mut opts = PackOptions::new(
        &model,
        vec![b.clone(), all.clone()],
        InputFormat::Text,
        9,
        tmp.path().join("p"),
    );
    opts.heldout_fraction = 0.2;
    opts.seed = 77;
    opts.max_shard_tokens = 10 * 13; // 13 rows of 10 tokens per shard
    let summary = pack(&opts).unwrap();
    println!("{summary}");
    let set = PackedSet::open(tmp.path().join("p")).unwrap();
    let m = set.manifest();
    assert_eq!((m.bos_id, m.eos_id), (Some(1), Some(2)));
    assert_eq!(m.rows_per_shard, 13);
    assert_eq!(m.documents as usize, docs.len() - 120 + docs.len());
    assert_eq!(m.sources.len(), 2);
    assert!(m.splits.train.shards.len() > 3, "several shards");
    for (i, s) in m.splits.train.shards.iter().enumerate() {
        assert_eq!(s.file, format!("train-{i:05}.bin"));
        if i + 1 < m.splits.train.shards.len() {
            assert_eq!(s.rows, 13);
        }
    }
    let inputs: Vec<&String> = docs[120..].iter().chain(docs.iter()).collect();
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (i, d) in inputs.iter().enumerate() {
        let mut ids = vec![1];
        ids.extend(word_ids(d));
        ids.push(2);
        if is_heldout_document(77, i as u64, 0.2) {
            &mut held
        } else {
            &mut train
        }
        .extend(ids);
    }
    assert_split_stream(&set, Split::Train, &train);
    assert_split_stream(&set, Split::Heldout, &held);
    set.verify_checksums().unwrap();

    // JSONL input gives the same documents as text input.
    let mut opts = PackOptions::new(&model, vec![a], InputFormat::Jsonl, 9, tmp.path().join("j"));
    opts.heldout_fraction = 0.0;
    pack(&opts).unwrap();
    let set = PackedSet::open(tmp.path().join("j")).unwrap();
    let expected: Vec<i64> = docs[..120]
        .iter()
        .flat_map(|d| [vec![1], word_ids(d), vec![2]].concat())
        .collect();
    assert_split_stream(&set, Split::Train, &expected);

    // No config.json: no BOS (the tokenizer adds none), EOS from the `</s>` token.
    let bare = word_model(&tmp.path().join("bare"), 50, None);
    let mut opts = PackOptions::new(
        bare.join("tokenizer.json"),
        vec![b],
        InputFormat::Text,
        9,
        tmp.path().join("n"),
    );
    opts.heldout_fraction = 0.0;
    pack(&opts).unwrap();
    let set = PackedSet::open(tmp.path().join("n")).unwrap();
    assert_eq!((set.bos_id(), set.eos_id()), (None, Some(2)));
    let expected: Vec<i64> = docs[120..]
        .iter()
        .flat_map(|d| [word_ids(d), vec![2]].concat())
        .collect();
    assert_split_stream(&set, Split::Train, &expected);
}

#[test]
fn large_vocabulary_round_trips_through_u32() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("big");
    word_tokenizer(&model, 70_000);
    let docs = word_docs(50, 30, 65_000, 70_000, 2);
    let input = tmp.path().join("d.txt");
    write_text(&input, &docs);
    let mut opts = PackOptions::new(
        &model,
        vec![input],
        InputFormat::Text,
        16,
        tmp.path().join("p"),
    );
    opts.heldout_fraction = 0.0;
    pack(&opts).unwrap();
    let set = PackedSet::open(tmp.path().join("p")).unwrap();
    assert_eq!(set.dtype(), TokenDtype::U32);
    let expected: Vec<i64> = docs
        .iter()
        .flat_map(|d| [word_ids(d), vec![2]].concat())
        .collect();
    assert!(expected.iter().any(|&id| id > 65_535));
    assert_split_stream(&set, Split::Train, &expected);
    // And the manifest is plain JSON naming the dtype.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(set.dir().join(MANIFEST_FILE)).unwrap())
            .unwrap();
    assert_eq!(json["dtype"], "u32");
    assert_eq!(json["version"], 1);
    assert_eq!(
        json["splits"]["train"]["rows"],
        set.rows(Split::Train) as u64
    );
}
