//! `import_llama2c` against the real stories260K (shared data): every tensor must equal the
//! Hugging Face conversion in `models/stories260K/hf/` bit for bit, the config must match, and the
//! tokenizer rebuilt from llama2.c's `tok512.bin` must give the same ids as the shared
//! `tokenizer.json` on TinyStories text. Plus the v1 header, an untied classifier, and bad input.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rr_import::llama2c::import_llama2c;
use safetensors::SafeTensors;
use serde_json::Value;

fn stories_dir() -> Option<PathBuf> {
    let dir = common::shared_data_dir()?.join("models/stories260K");
    if !dir.join("stories260K.bin").is_file() {
        let msg = format!("{} has no stories260K.bin", dir.display());
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("skipping: {msg}");
        return None;
    }
    Some(dir)
}

/// name -> (shape, raw little-endian bytes) of every tensor, all F32.
fn read_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            (name, (view.shape().to_vec(), view.data().to_vec()))
        })
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// Every key of the reference config has the same value in ours (numbers compared as f64).
fn assert_config_matches(ours: &Value, reference: &Value) {
    let (ours, reference) = (ours.as_object().unwrap(), reference.as_object().unwrap());
    for (k, v) in reference {
        let o = ours
            .get(k)
            .unwrap_or_else(|| panic!("config.json lacks {k}"));
        match (o.as_f64(), v.as_f64()) {
            (Some(a), Some(b)) => assert_eq!(a, b, "config {k}"),
            _ => assert_eq!(o, v, "config {k}"),
        }
    }
}

fn assert_same_weights(ours: &Path, reference: &Path) {
    let ours = read_tensors(ours);
    let reference = read_tensors(reference);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "tensor names"
    );
    for (name, (shape, data)) in &reference {
        let (s, d) = &ours[name];
        assert_eq!(s, shape, "{name} shape");
        assert!(d == data, "{name} differs from the Hugging Face reference");
    }
}

fn import(
    model: &Path,
    tokenizer: &Path,
) -> (tempfile::TempDir, PathBuf, rr_import::ImportSummary) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stories260K");
    let summary = import_llama2c(model, tokenizer, &out).unwrap();
    (tmp, out, summary)
}

/// Non-empty lines of the TinyStories validation head (the first `n`).
fn story_lines(n: usize) -> Option<Vec<String>> {
    let text = fs::read_to_string(
        common::shared_data_dir()?.join("tinystories/tinystories_validation_head.txt"),
    )
    .ok()?;
    Some(
        text.lines()
            .filter(|l| !l.is_empty())
            .take(n)
            .map(str::to_string)
            .collect(),
    )
}

#[test]
fn stories260k_with_tok512_bin_matches_hf_reference() {
    let Some(dir) = stories_dir() else { return };
    let (_tmp, out, summary) = import(&dir.join("stories260K.bin"), &dir.join("tok512.bin"));

    assert_same_weights(
        &out.join("model.safetensors"),
        &dir.join("hf/model.safetensors"),
    );
    assert_config_matches(
        &read_json(&out.join("config.json")),
        &read_json(&dir.join("hf/config.json")),
    );
    let gen = read_json(&out.join("generation_config.json"));
    assert_eq!(
        (gen["bos_token_id"].as_u64(), gen["eos_token_id"].as_u64()),
        (Some(1), Some(2))
    );

    assert_eq!(summary.architecture, "llama");
    assert_eq!(
        summary.num_parameters, 260_032,
        "README: 260,032 parameters"
    );
    assert_eq!(
        summary.num_tensors,
        1 + 5 * 9 + 1,
        "tied head: no lm_head tensor"
    );
    assert!(
        summary.tokenizer.contains("512 tokens"),
        "{}",
        summary.tokenizer
    );

    // The tokenizer built from tok512.bin vs the shared tokenizer.json (converted from
    // tok512.model and checked against SentencePiece).
    let ours = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let reference = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let Some(lines) = story_lines(400) else {
        return;
    };
    assert!(lines.len() >= 300);
    let mut with_extra_spaces = 0;
    for line in &lines {
        let a = ours.encode(line.as_str(), true).unwrap();
        let b = reference.encode(line.as_str(), true).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "ids differ for {line:?}");
        assert_eq!(a.get_ids()[0], 1, "BOS first");
        // SentencePiece (remove_extra_whitespaces) drops outer spaces and collapses runs.
        let normalized = line
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        with_extra_spaces += usize::from(normalized != *line);
        assert_eq!(
            ours.decode(a.get_ids(), true).unwrap(),
            normalized,
            "decode of {line:?}"
        );
    }
    assert!(
        with_extra_spaces > 0,
        "the sample should exercise whitespace normalisation"
    );
    // Text outside the 512-token vocabulary goes through byte fallback both ways.
    for text in ["Ünïcödé ☃ 日本", "x\ty\nz", ""] {
        let a = ours.encode(text, true).unwrap();
        assert_eq!(
            a.get_ids(),
            reference.encode(text, true).unwrap().get_ids(),
            "{text:?}"
        );
    }
    assert_eq!(
        ours.decode(
            ours.encode("Ünïcödé ☃ 日本", false).unwrap().get_ids(),
            true
        )
        .unwrap(),
        "Ünïcödé ☃ 日本"
    );
}

#[test]
fn stories260k_with_tokenizer_json_copies_it() {
    let Some(dir) = stories_dir() else { return };
    let (_tmp, out, summary) = import(&dir.join("stories260K.bin"), &dir.join("tokenizer.json"));
    assert_same_weights(
        &out.join("model.safetensors"),
        &dir.join("hf/model.safetensors"),
    );
    assert_eq!(
        fs::read(out.join("tokenizer.json")).unwrap(),
        fs::read(dir.join("tokenizer.json")).unwrap()
    );
    assert!(
        summary.tokenizer.contains("copied"),
        "{}",
        summary.tokenizer
    );
}

#[test]
fn stories260k_with_sentencepiece_model_matches_reference() {
    let Some(dir) = stories_dir() else { return };
    let (_tmp, out, _) = import(&dir.join("stories260K.bin"), &dir.join("tok512.model"));
    let ours = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let reference = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let Some(lines) = story_lines(100) else {
        return;
    };
    for line in &lines {
        assert_eq!(
            ours.encode(line.as_str(), true).unwrap().get_ids(),
            reference.encode(line.as_str(), true).unwrap().get_ids(),
            "{line:?}"
        );
    }
}

/// Rewrites a v0 file as llama2.c's `version1_export` would: 256-byte header, norms first.
fn v0_to_v1(v0: &[u8], shared: bool) -> Vec<u8> {
    let ints: Vec<i32> = v0[..28]
        .chunks(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let (dim, hidden, layers, _heads, _kv, vocab, seq) = (
        ints[0] as usize,
        ints[1] as usize,
        ints[2] as usize,
        ints[3],
        ints[4],
        ints[5],
        ints[6] as usize,
    );
    let heads = ints[3] as usize;
    let kv_dim = dim / heads * ints[4] as usize;
    let vocab_abs = vocab.unsigned_abs() as usize;
    let mut pos = 28;
    let mut take = |n: usize| {
        let s = v0[pos..pos + 4 * n].to_vec();
        pos += 4 * n;
        s
    };
    let embed = take(vocab_abs * dim);
    let attn_norm = take(layers * dim);
    let wq = take(layers * dim * dim);
    let wk = take(layers * kv_dim * dim);
    let wv = take(layers * kv_dim * dim);
    let wo = take(layers * dim * dim);
    let ffn_norm = take(layers * dim);
    let w1 = take(layers * hidden * dim);
    let w2 = take(layers * dim * hidden);
    let w3 = take(layers * hidden * dim);
    let norm = take(dim);
    let _rope = take(seq * (dim / heads));
    let wcls = if vocab < 0 {
        Some(take(vocab_abs * dim))
    } else {
        None
    };

    let mut out = Vec::new();
    out.extend(0x616b_3432u32.to_le_bytes());
    out.extend(1i32.to_le_bytes());
    for (i, v) in ints.iter().enumerate() {
        let v = if i == 5 { v.abs() } else { *v };
        out.extend(v.to_le_bytes());
    }
    out.push(u8::from(shared));
    out.resize(256, 0);
    for part in [
        &attn_norm, &ffn_norm, &norm, &embed, &wq, &wk, &wv, &wo, &w1, &w2, &w3,
    ] {
        out.extend_from_slice(part);
    }
    if !shared {
        out.extend(wcls.unwrap_or_else(|| embed.clone()));
    }
    let _ = (_heads, _kv);
    out
}

#[test]
fn version1_header_gives_the_same_model() {
    let Some(dir) = stories_dir() else { return };
    let v0 = fs::read(dir.join("stories260K.bin")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let v1 = tmp.path().join("stories260K_v1.bin");
    fs::write(&v1, v0_to_v1(&v0, true)).unwrap();
    let out = tmp.path().join("out");
    let summary = import_llama2c(&v1, &dir.join("tokenizer.json"), &out).unwrap();
    assert!(
        summary.notes.iter().any(|n| n.contains("v1")),
        "{:?}",
        summary.notes
    );
    assert_same_weights(
        &out.join("model.safetensors"),
        &dir.join("hf/model.safetensors"),
    );
}

#[test]
fn untied_classifier_is_written_as_lm_head() {
    let Some(dir) = stories_dir() else { return };
    // A v0 file with a negative vocab size and a classifier (the embedding scaled by -2).
    let mut v0 = fs::read(dir.join("stories260K.bin")).unwrap();
    let vocab = i32::from_le_bytes(v0[20..24].try_into().unwrap());
    let dim = i32::from_le_bytes(v0[0..4].try_into().unwrap()) as usize;
    v0[20..24].copy_from_slice(&(-vocab).to_le_bytes());
    let embed: Vec<f32> = v0[28..28 + 4 * vocab as usize * dim]
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for v in &embed {
        v0.extend((v * -2.0).to_le_bytes());
    }
    let tmp = tempfile::tempdir().unwrap();
    let (bin, out) = (tmp.path().join("untied.bin"), tmp.path().join("out"));
    fs::write(&bin, &v0).unwrap();
    let summary = import_llama2c(&bin, &dir.join("tok512.bin"), &out).unwrap();
    assert_eq!(summary.num_tensors, 1 + 5 * 9 + 2);
    assert_eq!(
        read_json(&out.join("config.json"))["tie_word_embeddings"],
        Value::Bool(false)
    );
    let tensors = read_tensors(&out.join("model.safetensors"));
    let (shape, head) = &tensors["lm_head.weight"];
    assert_eq!(shape, &vec![vocab as usize, dim]);
    let head: Vec<f32> = head
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(head.iter().zip(&embed).all(|(h, e)| *h == e * -2.0));

    // The same as v1 with shared_classifier = 0.
    let v1 = tmp.path().join("untied_v1.bin");
    fs::write(&v1, v0_to_v1(&v0, false)).unwrap();
    let out1 = tmp.path().join("out1");
    import_llama2c(&v1, &dir.join("tok512.bin"), &out1).unwrap();
    assert_eq!(read_tensors(&out1.join("model.safetensors")), tensors);
}

fn assert_err_mentions(
    result: anyhow::Result<rr_import::ImportSummary>,
    needles: &[&str],
) -> String {
    let err = format!("{:#}", result.expect_err("expected an error"));
    for n in needles {
        assert!(err.contains(n), "error {err:?} should mention {n:?}");
    }
    assert!(!err.contains('\n'), "one line: {err:?}");
    err
}

#[test]
fn truncated_model_is_refused_and_nothing_is_left() {
    let Some(dir) = stories_dir() else { return };
    let v0 = fs::read(dir.join("stories260K.bin")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for cut in [0usize, 3, 27, 28, 1000, v0.len() - 4, v0.len() - 1] {
        let bin = tmp.path().join(format!("cut{cut}.bin"));
        fs::write(&bin, &v0[..cut]).unwrap();
        let out = tmp.path().join(format!("out{cut}"));
        let err = assert_err_mentions(
            import_llama2c(&bin, &dir.join("tok512.bin"), &out),
            &[&bin.display().to_string()],
        );
        assert!(
            err.contains("truncated") || err.contains("too short"),
            "{err}"
        );
        assert!(!out.exists());
    }
    // Trailing garbage is also a size mismatch.
    let mut long = v0.clone();
    long.extend([0u8; 8]);
    let bin = tmp.path().join("long.bin");
    fs::write(&bin, &long).unwrap();
    assert_err_mentions(
        import_llama2c(&bin, &dir.join("tok512.bin"), &tmp.path().join("o")),
        &["implies"],
    );
    // Only the test's own files remain: no temporary directories.
    let names: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".bin")), "{names:?}");
}

#[test]
fn corrupted_headers_never_panic() {
    let Some(dir) = stories_dir() else { return };
    let v0 = fs::read(dir.join("stories260K.bin")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("corrupt.bin");
    let mut state = 7u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    for round in 0..60 {
        let mut bytes = v0.clone();
        // Overwrite one of the 7 header ints with a random, huge, negative or zero value.
        let field = (next() % 7) as usize;
        let value: i32 = match round % 4 {
            0 => i32::MAX,
            1 => -(next() as i32).abs(),
            2 => 0,
            _ => next() as i32,
        };
        bytes[field * 4..field * 4 + 4].copy_from_slice(&value.to_le_bytes());
        if round % 10 == 9 {
            // ... or pretend to be a v1 file.
            bytes[..4].copy_from_slice(&0x616b_3432u32.to_le_bytes());
        }
        fs::write(&bin, &bytes).unwrap();
        let out = tmp.path().join("out");
        if let Err(e) = import_llama2c(&bin, &dir.join("tok512.bin"), &out) {
            assert!(format!("{e:#}").contains("corrupt.bin"), "{e:#}");
            assert!(!out.exists());
        } else {
            fs::remove_dir_all(&out).unwrap();
        }
    }
}

#[test]
fn bad_tokenizers_are_refused() {
    let Some(dir) = stories_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = dir.join("stories260K.bin");
    // Llama 2's 32000-token tokenizer does not fit a 512-token model.
    let llama2 = common::shared_data_dir()
        .unwrap()
        .join("tokenizers/llama2/tokenizer.bin");
    if llama2.is_file() {
        assert_err_mentions(
            import_llama2c(&model, &llama2, &tmp.path().join("a")),
            &["tokenizer.bin", "32000", "512"],
        );
    }
    let tok = fs::read(dir.join("tok512.bin")).unwrap();
    let cut = tmp.path().join("cut_tok.bin");
    fs::write(&cut, &tok[..tok.len() - 3]).unwrap();
    assert_err_mentions(
        import_llama2c(&model, &cut, &tmp.path().join("b")),
        &["cut_tok.bin", "truncated"],
    );
    let garbage = tmp.path().join("garbage.json");
    fs::write(&garbage, "{ not json").unwrap();
    assert_err_mentions(
        import_llama2c(&model, &garbage, &tmp.path().join("c")),
        &["garbage.json"],
    );
    assert!(
        !tmp.path().join("a").exists()
            && !tmp.path().join("b").exists()
            && !tmp.path().join("c").exists()
    );
}

#[test]
fn missing_inputs_and_existing_output() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.bin");
    assert_err_mentions(
        import_llama2c(&missing, &missing, &tmp.path().join("o")),
        &["nope.bin", "does not exist"],
    );
    let Some(dir) = stories_dir() else { return };
    let existing = tmp.path().join("exists");
    fs::create_dir(&existing).unwrap();
    fs::write(existing.join("keep.txt"), "mine").unwrap();
    assert_err_mentions(
        import_llama2c(
            &dir.join("stories260K.bin"),
            &dir.join("tok512.bin"),
            &existing,
        ),
        &["exists", "already exists"],
    );
    assert_eq!(
        fs::read_to_string(existing.join("keep.txt")).unwrap(),
        "mine",
        "existing output untouched"
    );
    // A missing tokenizer.
    assert_err_mentions(
        import_llama2c(
            &dir.join("stories260K.bin"),
            &missing,
            &tmp.path().join("o2"),
        ),
        &["nope.bin", "does not exist"],
    );
}

#[test]
fn output_parents_are_created_and_imported_dir_loads_as_a_model() {
    let Some(dir) = stories_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a/b/stories");
    import_llama2c(&dir.join("stories260K.bin"), &dir.join("tok512.bin"), &out).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The project's own loaders accept the directory.
    let cfg = rr_model::LlamaConfig::from_path(&out).unwrap();
    assert_eq!(
        (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size),
        (64, 5, 512)
    );
    let tok = rr_model::Tokenizer::from_path(&out).unwrap();
    assert_eq!(tok.vocab_size(), 512);
}

/// llama2.c `tokenizer.bin` bytes from `(piece, score)` pairs.
fn tokenizer_bin(pieces: &[(Vec<u8>, f32)]) -> Vec<u8> {
    let max = pieces.iter().map(|(p, _)| p.len()).max().unwrap_or(0) as i32;
    let mut b = max.to_le_bytes().to_vec();
    for (p, score) in pieces {
        b.extend(score.to_le_bytes());
        b.extend((p.len() as i32).to_le_bytes());
        b.extend(p);
    }
    b
}

#[test]
fn overlong_tokenizer_pieces_are_refused() {
    let Some(dir) = stories_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = dir.join("stories260K.bin");
    let tok = fs::read(dir.join("tok512.bin")).unwrap();
    let mut pieces = rr_import::llama2c::read_tokenizer_bin(&tok, 512).unwrap();
    // The writer reproduces the real file.
    assert_eq!(
        tokenizer_bin(&pieces)[4..],
        tok[4..],
        "tokenizer.bin writer"
    );
    // A 1 MB piece (with a matching max_token_length) is refused at once, naming the piece.
    pieces[300].0 = vec![b'x'; 1 << 20];
    let long = tmp.path().join("long_piece.bin");
    fs::write(&long, tokenizer_bin(&pieces)).unwrap();
    // Refused by the length check (the message names the size), before any merge is built.
    assert_err_mentions(
        import_llama2c(&model, &long, &tmp.path().join("out")),
        &["long_piece.bin", "token 300 is 1048576 bytes long", "1024"],
    );
    // Just past the bound is refused too.
    pieces[300].0 = vec![b'x'; rr_import::tokenizer_build::MAX_TOKEN_BYTES + 1];
    fs::write(&long, tokenizer_bin(&pieces)).unwrap();
    assert_err_mentions(
        import_llama2c(&model, &long, &tmp.path().join("out")),
        &["long_piece.bin", "token 300 is 1025 bytes long"],
    );
    assert!(!tmp.path().join("out").exists());
}
