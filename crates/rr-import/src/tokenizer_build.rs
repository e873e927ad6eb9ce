//! Builds Hugging Face `tokenizer.json` documents from the vocabularies that GGUF and llama2.c
//! files carry, so the imported directory is loadable by the `tokenizers` crate and tokenizes
//! exactly as the source runtime (llama.cpp / SentencePiece) does.
//!
//! Two families:
//! - **SentencePiece BPE** (GGUF `tokenizer.ggml.model = "llama"`, llama2.c `tokenizer.bin`,
//!   SentencePiece `.model`): pieces + scores. SentencePiece merges the adjacent pair whose
//!   *result* has the highest score; a Hugging Face BPE whose merges are ranked by that score does
//!   the same, which is how `transformers` converts these tokenizers too. Spaces become `▁`, a
//!   `▁` is prepended (SentencePiece's "dummy prefix"), unknown characters fall back to `<0xXX>`
//!   byte tokens.
//! - **Byte-level BPE** (GGUF `tokenizer.ggml.model = "gpt2"`): tokens + merges as given, with
//!   the split regexes llama.cpp uses for the `tokenizer.ggml.pre` type, applied in sequence
//!   (each splits the pieces of the previous one, keeping both matches and gaps), then the GPT-2
//!   byte-to-unicode mapping.
//!
//! Control and unknown tokens become special `added_tokens`, user-defined ones non-special added
//! tokens; whether BOS/EOS are added is expressed by the post-processor.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The longest token (in bytes of its stored text) a built tokenizer may have. Building the
/// SentencePiece merges looks at every split of every piece, which is quadratic in a piece's
/// length, so one huge token could stall an import for minutes. Real vocabularies stay far below:
/// the longest token of Llama-3 is 256 bytes (128 `Ġ`), of SmolLM2 162 bytes, of Llama-2 48 bytes.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// Refuses a token longer than [`MAX_TOKEN_BYTES`]; `what` names the list (e.g. `token`).
pub fn check_token_length(what: &str, index: usize, len: usize) -> Result<()> {
    if len > MAX_TOKEN_BYTES {
        anyhow::bail!(
            "{what} {index} is {len} bytes long, more than the {MAX_TOKEN_BYTES} bytes a token may have"
        );
    }
    Ok(())
}

/// [`check_token_length`] for every token of a vocabulary.
fn check_token_lengths(tokens: &[String]) -> Result<()> {
    tokens
        .iter()
        .enumerate()
        .try_for_each(|(i, t)| check_token_length("token", i, t.len()))
}

/// Token types as llama.cpp and SentencePiece number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    /// From GGUF `tokenizer.ggml.token_type` / SentencePiece `Type` (same numbering: 1 normal,
    /// 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte). Anything else counts as normal,
    /// as llama.cpp treats "undefined" tokens as ordinary text.
    pub fn from_code(code: i64) -> Self {
        match code {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

/// A SentencePiece-style BPE vocabulary.
#[derive(Debug, Clone)]
pub struct SpmVocab {
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    pub kinds: Vec<TokenKind>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// SentencePiece `add_dummy_prefix` / GGUF `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: bool,
    /// SentencePiece `remove_extra_whitespaces`: strip leading/trailing spaces, collapse runs.
    pub remove_extra_whitespaces: bool,
}

/// A byte-level (GPT-2 style) BPE vocabulary.
#[derive(Debug, Clone)]
pub struct Gpt2Vocab {
    pub tokens: Vec<String>,
    pub kinds: Vec<TokenKind>,
    /// Merges as stored in GGUF: `"left right"`.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`; `None` when absent.
    pub pre: Option<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// `None`: llama.cpp's default for the pre-tokenizer type.
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
}

/// A built tokenizer: the JSON document and what was decided while building it.
#[derive(Debug, Clone)]
pub struct BuiltTokenizer {
    pub json: Value,
    pub description: String,
    pub add_bos: bool,
    pub add_eos: bool,
    pub notes: Vec<String>,
}

const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's pre-tokenizer settings for a `tokenizer.ggml.pre` value: the split regexes (in
/// order), whether merges are skipped for whole-word vocabulary hits, and the default for adding
/// BOS. Mirrors `llm_tokenizer_bpe` and `llama_vocab::impl::load` in llama.cpp.
struct PreTokenizer {
    regexes: Vec<&'static str>,
    ignore_merges: bool,
    add_bos_default: bool,
}

fn pre_tokenizer_for(pre: Option<&str>) -> Result<PreTokenizer> {
    let p = |regexes: Vec<&'static str>, ignore_merges, add_bos_default| PreTokenizer {
        regexes,
        ignore_merges,
        add_bos_default,
    };
    Ok(match pre.unwrap_or("default") {
        "default" => p(
            vec![
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_SPLIT,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
            false,
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => p(vec![LLAMA3_SPLIT], true, true),
        "dbrx" | "smaug-bpe" => p(vec![LLAMA3_SPLIT], false, false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            p(vec![r"\p{N}", GPT2_SPLIT], false, false)
        }
        "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "jais" => p(vec![GPT2_SPLIT], false, false),
        "qwen2" | "stablelm2" | "deepseek-r1-qwen" => p(vec![QWEN2_SPLIT], false, false),
        other => anyhow::bail!(
            "pre-tokenizer '{other}' is not supported yet (supported: default, llama-bpe/llama3, \
             smollm/starcoder, gpt-2, qwen2, dbrx)"
        ),
    })
}

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": false,
        "special": special,
    })
}

/// Added tokens: control and unknown tokens as special, user-defined ones as plain.
fn added_tokens(tokens: &[String], kinds: &[TokenKind]) -> Vec<Value> {
    tokens
        .iter()
        .zip(kinds)
        .enumerate()
        .filter_map(|(id, (t, k))| match k {
            TokenKind::Control | TokenKind::Unknown => Some(added_token(id, t, true)),
            TokenKind::UserDefined => Some(added_token(id, t, false)),
            _ => None,
        })
        .collect()
}

/// A `TemplateProcessing` post-processor adding BOS/EOS, or `null` when neither is added.
fn template_post_processor(
    tokens: &[String],
    bos: Option<(u32, bool)>,
    eos: Option<(u32, bool)>,
) -> Value {
    let mut special_tokens = serde_json::Map::new();
    let mut piece = |id: u32| -> Value {
        let t = tokens.get(id as usize).cloned().unwrap_or_default();
        special_tokens.insert(t.clone(), json!({ "id": t, "ids": [id], "tokens": [t] }));
        json!({ "SpecialToken": { "id": t, "type_id": 0 } })
    };
    let bos = bos.filter(|b| b.1).map(|b| piece(b.0));
    let eos = eos.filter(|e| e.1).map(|e| piece(e.0));
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let seq = |id: &str, type_id: u32| json!({ "Sequence": { "id": id, "type_id": type_id } });
    let mut single = Vec::new();
    let mut pair = Vec::new();
    single.extend(bos.clone());
    single.push(seq("A", 0));
    single.extend(eos.clone());
    pair.extend(bos.clone());
    pair.push(seq("A", 0));
    pair.extend(eos.clone());
    pair.extend(bos);
    pair.push(seq("B", 1));
    pair.extend(eos);
    json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": special_tokens,
    })
}

/// Builds the vocabulary map and the string → id index; duplicate strings keep their first id
/// (Hugging Face needs a one-to-one map), which a note in `notes` reports.
fn vocab_map<'a>(
    tokens: &'a [String],
    notes: &mut Vec<String>,
) -> (serde_json::Map<String, Value>, HashMap<&'a str, usize>) {
    let mut map = serde_json::Map::new();
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut duplicates = 0;
    for (id, t) in tokens.iter().enumerate() {
        if index.contains_key(t.as_str()) {
            duplicates += 1;
            continue;
        }
        index.insert(t.as_str(), id);
        map.insert(t.clone(), json!(id));
    }
    if duplicates > 0 {
        notes.push(format!(
            "{duplicates} duplicate token strings kept their first id only"
        ));
    }
    (map, index)
}

/// Refuses a special token id outside a vocabulary of `n` tokens; `ids` are `(name, id)`.
fn check_special_ids(n: usize, ids: &[(&str, Option<u32>)]) -> Result<()> {
    for &(name, id) in ids {
        if let Some(id) = id {
            if id as usize >= n {
                anyhow::bail!("{name} token id {id} is outside the vocabulary of {n} tokens");
            }
        }
    }
    Ok(())
}

/// What the `tokenizer.json` documents of the two families differ in; [`bpe_document`] adds
/// the parts they share.
struct BpeParts<'a> {
    tokens: &'a [String],
    kinds: &'a [TokenKind],
    normalizer: Value,
    pre_tokenizer: Value,
    /// BOS and EOS ids, each with whether it is added.
    bos: Option<(u32, bool)>,
    eos: Option<(u32, bool)>,
    decoder: Value,
    unk_token: Value,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: serde_json::Map<String, Value>,
    merges: Vec<Value>,
}

/// A BPE `tokenizer.json`, checked to load with the `tokenizers` crate.
fn bpe_document(p: BpeParts<'_>) -> Result<Value> {
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(p.tokens, p.kinds),
        "normalizer": p.normalizer,
        "pre_tokenizer": p.pre_tokenizer,
        "post_processor": template_post_processor(p.tokens, p.bos, p.eos),
        "decoder": p.decoder,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": p.unk_token,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": p.fuse_unk,
            "byte_fallback": p.byte_fallback,
            "ignore_merges": p.ignore_merges,
            "vocab": p.vocab,
            "merges": p.merges,
        },
    });
    check_loadable(&json)?;
    Ok(json)
}

/// Builds a SentencePiece-style BPE `tokenizer.json`.
pub fn spm_tokenizer(v: &SpmVocab) -> Result<BuiltTokenizer> {
    let n = v.pieces.len();
    if n == 0 {
        anyhow::bail!("the tokenizer has no tokens");
    }
    if v.scores.len() != n || v.kinds.len() != n {
        anyhow::bail!(
            "tokenizer has {n} tokens but {} scores and {} token types",
            v.scores.len(),
            v.kinds.len()
        );
    }
    check_special_ids(
        n,
        &[("bos", v.bos_id), ("eos", v.eos_id), ("unk", v.unk_id)],
    )?;
    check_token_lengths(&v.pieces)?;
    let mut notes = Vec::new();
    let (vocab, index) = vocab_map(&v.pieces, &mut notes);
    let merges = spm_merges(v, &index);
    let has_bytes = v.kinds.contains(&TokenKind::Byte);
    if !has_bytes {
        notes.push(
            "the vocabulary has no <0xXX> byte tokens: unknown characters map to <unk>".into(),
        );
    }
    let unk = v
        .unk_id
        .map(|id| Value::String(v.pieces[id as usize].clone()))
        .unwrap_or(Value::Null);
    let json = bpe_document(BpeParts {
        tokens: &v.pieces,
        kinds: &v.kinds,
        normalizer: json!({ "type": "Sequence", "normalizers": spm_normalizers(v) }),
        pre_tokenizer: Value::Null,
        bos: v.bos_id.map(|id| (id, v.add_bos)),
        eos: v.eos_id.map(|id| (id, v.add_eos)),
        decoder: json!({ "type": "Sequence", "decoders": spm_decoders(v) }),
        unk_token: unk,
        fuse_unk: true,
        byte_fallback: has_bytes,
        ignore_merges: false,
        vocab,
        merges,
    })?;
    Ok(BuiltTokenizer {
        json,
        description: format!("llama SentencePiece BPE, {n} tokens"),
        add_bos: v.add_bos && v.bos_id.is_some(),
        add_eos: v.add_eos && v.eos_id.is_some(),
        notes,
    })
}

/// Merges: every way of splitting a mergeable piece into two vocabulary pieces, ranked by the
/// score of the result (highest first), then by the ids of the parts — as `transformers`'
/// SentencePiece converter does.
fn spm_merges(v: &SpmVocab, index: &HashMap<&str, usize>) -> Vec<Value> {
    let mergeable = |k: TokenKind| matches!(k, TokenKind::Normal | TokenKind::UserDefined);
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new(); // (score, merged, left, right)
    for (id, piece) in v.pieces.iter().enumerate() {
        if !mergeable(v.kinds[id]) || index.get(piece.as_str()) != Some(&id) {
            continue;
        }
        let mut local = Vec::new();
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                local.push((v.scores[id], id, li, ri));
            }
        }
        local.sort_by_key(|m| (m.2, m.3));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    merges
        .iter()
        .map(|&(_, _, l, r)| json!([v.pieces[l], v.pieces[r]]))
        .collect()
}

/// SentencePiece's whitespace handling: optional cleanup, the dummy prefix, spaces as `▁`.
fn spm_normalizers(v: &SpmVocab) -> Vec<Value> {
    let mut normalizers = Vec::new();
    if v.remove_extra_whitespaces {
        normalizers.push(
            json!({ "type": "Replace", "pattern": { "Regex": r"\A +| +\z" }, "content": "" }),
        );
        normalizers
            .push(json!({ "type": "Replace", "pattern": { "Regex": " {2,}" }, "content": " " }));
    }
    if v.add_space_prefix {
        normalizers.push(json!({ "type": "Prepend", "prepend": "▁" }));
    }
    normalizers.push(json!({ "type": "Replace", "pattern": { "String": " " }, "content": "▁" }));
    normalizers
}

/// The inverse of [`spm_normalizers`], with byte fallback.
fn spm_decoders(v: &SpmVocab) -> Vec<Value> {
    let mut decoders = vec![
        json!({ "type": "Replace", "pattern": { "String": "▁" }, "content": " " }),
        json!({ "type": "ByteFallback" }),
        json!({ "type": "Fuse" }),
    ];
    if v.add_space_prefix {
        decoders.push(json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
    }
    decoders
}

/// Builds a byte-level BPE `tokenizer.json` with llama.cpp's split regexes for `v.pre`.
pub fn gpt2_tokenizer(v: &Gpt2Vocab) -> Result<BuiltTokenizer> {
    let n = v.tokens.len();
    if n == 0 {
        anyhow::bail!("the tokenizer has no tokens");
    }
    if v.kinds.len() != n {
        anyhow::bail!("tokenizer has {n} tokens but {} token types", v.kinds.len());
    }
    check_special_ids(n, &[("bos", v.bos_id), ("eos", v.eos_id)])?;
    check_token_lengths(&v.tokens)?;
    let pre = pre_tokenizer_for(v.pre.as_deref())?;
    let mut notes = Vec::new();
    if v.pre.is_none() {
        notes.push("no tokenizer.ggml.pre: used llama.cpp's default split regexes".into());
    }
    let (vocab, index) = vocab_map(&v.tokens, &mut notes);
    let (merges, dropped) = gpt2_merges(&v.merges, &index);
    if dropped > 0 {
        notes.push(format!(
            "{dropped} merges dropped (malformed, duplicated or outside the vocabulary)"
        ));
    }
    let add_bos = v.add_bos.unwrap_or(pre.add_bos_default) && v.bos_id.is_some();
    let add_eos = v.add_eos.unwrap_or(false) && v.eos_id.is_some();
    let json = bpe_document(BpeParts {
        tokens: &v.tokens,
        kinds: &v.kinds,
        normalizer: Value::Null,
        pre_tokenizer: json!({ "type": "Sequence", "pretokenizers": gpt2_pretokenizers(&pre) }),
        bos: v.bos_id.map(|id| (id, add_bos)),
        eos: v.eos_id.map(|id| (id, add_eos)),
        decoder: json!({ "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true }),
        unk_token: Value::Null,
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: pre.ignore_merges,
        vocab,
        merges,
    })?;
    Ok(BuiltTokenizer {
        json,
        description: format!(
            "gpt2 BPE (pre-tokenizer {}), {n} tokens",
            v.pre.as_deref().unwrap_or("default")
        ),
        add_bos,
        add_eos,
        notes,
    })
}

/// The usable merges of a GGUF merge list as `[left, right]` pairs, and how many were dropped:
/// malformed ones, repeats, and those whose parts or result are not in the vocabulary.
fn gpt2_merges(merges: &[String], index: &HashMap<&str, usize>) -> (Vec<Value>, usize) {
    let mut out = Vec::with_capacity(merges.len());
    let mut seen = HashSet::new();
    let mut dropped = 0usize;
    for m in merges {
        // llama.cpp splits each merge at the first space after the first character.
        let split = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(i, _)| i);
        let Some(split) = split else {
            dropped += 1;
            continue;
        };
        let (l, r) = (&m[..split], &m[split + 1..]);
        let merged = format!("{l}{r}");
        // Hugging Face refuses merges whose parts or result are not in the vocabulary; such
        // merges can never fire in llama.cpp either (the result could not become a token).
        if !index.contains_key(l) || !index.contains_key(r) || !index.contains_key(merged.as_str())
        {
            dropped += 1;
            continue;
        }
        if !seen.insert((l, r)) {
            dropped += 1;
            continue;
        }
        out.push(json!([l, r]));
    }
    (out, dropped)
}

/// The pre-tokenizer's split regexes in order, then the GPT-2 byte-to-unicode mapping.
fn gpt2_pretokenizers(pre: &PreTokenizer) -> Vec<Value> {
    let mut pretokenizers: Vec<Value> = pre
        .regexes
        .iter()
        .map(|re| json!({ "type": "Split", "pattern": { "Regex": re }, "behavior": "Isolated", "invert": false }))
        .collect();
    pretokenizers.push(json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false }));
    pretokenizers
}

/// Parses `json` with the `tokenizers` crate, so a document it cannot load is never written.
pub fn check_loadable(json: &Value) -> Result<tokenizers::Tokenizer> {
    let text = serde_json::to_string(json)?;
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| anyhow::anyhow!("the built tokenizer.json does not load: {e}"))
}

/// Ids of the special tokens named in `tokenizer_config.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
}

/// `tokenizer_config.json` for `transformers`-style consumers: special tokens, BOS/EOS flags and
/// the chat template when the source has one.
pub fn tokenizer_config_json(
    tokens: &[String],
    built: &BuiltTokenizer,
    special: SpecialIds,
    model_max_length: usize,
    chat_template: Option<&str>,
) -> Value {
    let SpecialIds {
        bos: bos_id,
        eos: eos_id,
        unk: unk_id,
        pad: pad_id,
    } = special;
    let tok = |id: Option<u32>| -> Value {
        id.and_then(|id| tokens.get(id as usize))
            .map(|t| Value::String(t.clone()))
            .unwrap_or(Value::Null)
    };
    let mut cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": built.add_bos,
        "add_eos_token": built.add_eos,
        "bos_token": tok(bos_id),
        "eos_token": tok(eos_id),
        "unk_token": tok(unk_id),
        "pad_token": tok(pad_id),
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": false,
    });
    if let (Some(t), Some(obj)) = (chat_template, cfg.as_object_mut()) {
        obj.insert("chat_template".into(), Value::String(t.to_string()));
    }
    cfg
}

// ---------------------------------------------------------------------------------------------
// SentencePiece `.model` files (protobuf), read just far enough for BPE models.

/// What we need from a SentencePiece `ModelProto`.
#[derive(Debug, Clone)]
pub struct SentencePieceModel {
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    pub kinds: Vec<TokenKind>,
    /// `TrainerSpec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    pub unk_id: i64,
    pub bos_id: i64,
    pub eos_id: i64,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub normalization_rule: String,
}

/// A bounds-checked protobuf wire-format reader.
struct Proto<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Proto<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| anyhow::anyhow!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        anyhow::bail!("varint longer than 10 bytes at byte {}", self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "field of {n} bytes at byte {} runs past the end ({} bytes)",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next `(field number, value)`, or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?)?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32([b[0], b[1], b[2], b[3]])
            }
            w => anyhow::bail!("unsupported protobuf wire type {w} at byte {}", self.pos),
        };
        Ok(Some((key >> 3, field)))
    }
}

/// Parses a SentencePiece `.model` (`ModelProto`).
pub fn read_sentencepiece_model(bytes: &[u8]) -> Result<SentencePieceModel> {
    let mut m = SentencePieceModel {
        pieces: Vec::new(),
        scores: Vec::new(),
        kinds: Vec::new(),
        model_type: 1, // proto default: UNIGRAM
        unk_id: 0,
        bos_id: 1,
        eos_id: 2,
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        normalization_rule: String::new(),
    };
    let mut top = Proto::new(bytes);
    while let Some((field, value)) = top.next().context("not a SentencePiece model")? {
        match (field, value) {
            (1, Field::Bytes(piece_msg)) => {
                let (piece, score, kind) = read_piece(piece_msg, m.pieces.len())?;
                m.pieces.push(piece);
                m.scores.push(score);
                m.kinds.push(kind);
            }
            (2, Field::Bytes(trainer)) => m.read_trainer_spec(trainer)?,
            (3, Field::Bytes(normalizer)) => m.read_normalizer_spec(normalizer)?,
            _ => {}
        }
    }
    if m.pieces.is_empty() {
        anyhow::bail!("not a SentencePiece model: no pieces found");
    }
    Ok(m)
}

/// One `SentencePiece` message, piece number `index`: text, score and type.
fn read_piece(msg: &[u8], index: usize) -> Result<(String, f32, TokenKind)> {
    let (mut piece, mut score, mut kind) = (None, 0f32, TokenKind::Normal);
    let mut p = Proto::new(msg);
    while let Some((f, v)) = p.next()? {
        match (f, v) {
            (1, Field::Bytes(b)) => {
                piece = Some(
                    String::from_utf8(b.to_vec())
                        .map_err(|_| anyhow::anyhow!("piece {index} is not valid UTF-8"))?,
                )
            }
            (2, Field::Fixed32(b)) => score = f32::from_le_bytes(b),
            (3, Field::Varint(t)) => kind = TokenKind::from_code(t as i64),
            _ => {}
        }
    }
    let piece = piece.ok_or_else(|| anyhow::anyhow!("piece {index} has no text"))?;
    Ok((piece, score, kind))
}

impl SentencePieceModel {
    /// `TrainerSpec`: the model type and the special ids.
    fn read_trainer_spec(&mut self, msg: &[u8]) -> Result<()> {
        let mut p = Proto::new(msg);
        while let Some((f, v)) = p.next()? {
            match (f, v) {
                (3, Field::Varint(t)) => self.model_type = t,
                (40, Field::Varint(t)) => self.unk_id = t as i32 as i64,
                (41, Field::Varint(t)) => self.bos_id = t as i32 as i64,
                (42, Field::Varint(t)) => self.eos_id = t as i32 as i64,
                _ => {}
            }
        }
        Ok(())
    }

    /// `NormalizerSpec`: the rule name and the whitespace flags.
    fn read_normalizer_spec(&mut self, msg: &[u8]) -> Result<()> {
        let mut p = Proto::new(msg);
        while let Some((f, v)) = p.next()? {
            match (f, v) {
                (1, Field::Bytes(b)) => {
                    self.normalization_rule = String::from_utf8_lossy(b).into_owned()
                }
                (3, Field::Varint(t)) => self.add_dummy_prefix = t != 0,
                (4, Field::Varint(t)) => self.remove_extra_whitespaces = t != 0,
                _ => {}
            }
        }
        Ok(())
    }

    /// The id as an `Option`, `None` for SentencePiece's "disabled" (-1) or out of range.
    pub fn id(&self, id: i64) -> Option<u32> {
        u32::try_from(id)
            .ok()
            .filter(|&i| (i as usize) < self.pieces.len())
    }
}
