//! llama2.c (`run.c` `.bin`) → Hugging Face Llama directory.
//!
//! Why: Karpathy's tiny TinyStories models (stories260K, 15M, 42M, 110M) are real, trained Llama
//! models small enough for CPU tests, and they ship in llama2.c's raw float32 format. Two header
//! versions exist (see llama2.c `export.py`):
//!
//! - **v0 ("legacy")**: 7 little-endian i32 `dim, hidden_dim, n_layers, n_heads, n_kv_heads,
//!   vocab_size, seq_len` (a negative vocab size means an untied classifier follows), then f32
//!   arrays: token embedding, attention norms, wq, wk, wv, wo, FFN norms, w1 (gate), w2 (down),
//!   w3 (up), final norm, the RoPE cos and sin tables (`seq_len * head_dim / 2` each, skipped),
//!   [classifier].
//! - **v1**: u32 magic `0x616b3432` ("ak42"), i32 version 1, the same 7 ints, a u8
//!   `shared_classifier`, zero padding to 256 bytes, then f32 arrays with the norms first:
//!   attention norms, FFN norms, final norm, token embedding, wq, wk, wv, wo, w1, w2, w3, [wcls].
//!   (v2 is int8-quantized and not supported.)
//!
//! llama2.c rotates adjacent pairs, Hugging Face the two halves of each head, so wq and wk are
//! permuted per head ([`crate::interleaved_to_halves`]). The file size must match the header
//! exactly, which catches truncation and wrong-format files before anything is allocated.
//!
//! The tokenizer comes separately: a Hugging Face `tokenizer.json` (validated and copied), a
//! SentencePiece `.model`, or llama2.c's `tokenizer.bin` (i32 max_token_length, then per token
//! f32 score, i32 length, bytes), turned into a SentencePiece-style BPE `tokenizer.json`.

use std::collections::HashMap;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use rr_util::fs::StagingDir;

use crate::hf_dir::{self, LlamaHyper, TensorPlan};
use crate::tokenizer_build::{
    self, BuiltTokenizer, SentencePieceModel, SpecialIds, SpmVocab, TokenKind,
};
use crate::{refuse_existing_output, rotary_rows_to_hf, ImportSummary, MappedFile};

const V1_MAGIC: u32 = 0x616b_3432;
const V1_HEADER_BYTES: u64 = 256;

/// The 7-integer llama2.c header plus what the version implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Llama2cHeader {
    pub version: u32,
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub shared_classifier: bool,
}

impl Llama2cHeader {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Offset of the first weight.
    fn data_start(&self) -> u64 {
        if self.version == 0 {
            28
        } else {
            V1_HEADER_BYTES
        }
    }

    fn kv_dim(&self) -> usize {
        self.head_dim() * self.n_kv_heads
    }

    /// The f32 arrays in file order: `(what, count)`; `what` is a Hugging Face tensor name, or a
    /// label starting with `#` for data that is skipped (RoPE tables).
    fn layout(&self) -> Vec<(String, Vec<usize>)> {
        let (d, h, l, v, kv) = (
            self.dim,
            self.hidden_dim,
            self.n_layers,
            self.vocab_size,
            self.kv_dim(),
        );
        let per_layer = |field: &str, shape: Vec<usize>| -> Vec<(String, Vec<usize>)> {
            (0..l)
                .map(|i| (format!("model.layers.{i}.{field}"), shape.clone()))
                .collect()
        };
        let mut out = Vec::new();
        let attn_norms = per_layer("input_layernorm.weight", vec![d]);
        let ffn_norms = per_layer("post_attention_layernorm.weight", vec![d]);
        let final_norm = vec![("model.norm.weight".to_string(), vec![d])];
        let embed = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
        let matrices = [
            per_layer("self_attn.q_proj.weight", vec![d, d]),
            per_layer("self_attn.k_proj.weight", vec![kv, d]),
            per_layer("self_attn.v_proj.weight", vec![kv, d]),
            per_layer("self_attn.o_proj.weight", vec![d, d]),
        ]
        .concat();
        let ffn = [
            per_layer("mlp.gate_proj.weight", vec![h, d]),
            per_layer("mlp.down_proj.weight", vec![d, h]),
            per_layer("mlp.up_proj.weight", vec![h, d]),
        ]
        .concat();
        if self.version == 0 {
            out.extend(embed);
            out.extend(attn_norms);
            out.extend(matrices);
            out.extend(ffn_norms);
            out.extend(ffn);
            out.extend(final_norm);
            let rope = self.seq_len * self.head_dim() / 2;
            out.push(("#rope_cos".into(), vec![rope]));
            out.push(("#rope_sin".into(), vec![rope]));
        } else {
            out.extend(attn_norms);
            out.extend(ffn_norms);
            out.extend(final_norm);
            out.extend(embed);
            out.extend(matrices);
            out.extend(ffn);
        }
        if !self.shared_classifier {
            out.push(("lm_head.weight".into(), vec![v, d]));
        }
        out
    }

    /// Total file size the header implies, computed from the sizes alone (before any per-layer
    /// bookkeeping is allocated), or `None` on overflow.
    fn expected_file_size(&self) -> Option<u64> {
        let [d, h, l, v, kv, seq] = [
            self.dim,
            self.hidden_dim,
            self.n_layers,
            self.vocab_size,
            self.kv_dim(),
            self.seq_len,
        ]
        .map(|x| x as u128);
        let per_layer = 2 * d + 2 * d * d + 2 * kv * d + 3 * h * d;
        let mut floats = v * d + l * per_layer + d;
        if self.version == 0 {
            floats += 2 * (seq * (self.head_dim() as u128) / 2);
        }
        if !self.shared_classifier {
            floats += v * d;
        }
        u64::try_from(floats * 4 + self.data_start() as u128).ok()
    }

    fn hyper(&self) -> LlamaHyper {
        LlamaHyper {
            hidden_size: self.dim,
            intermediate_size: self.hidden_dim,
            num_hidden_layers: self.n_layers,
            num_attention_heads: self.n_heads,
            num_key_value_heads: self.n_kv_heads,
            head_dim: self.head_dim(),
            vocab_size: self.vocab_size,
            max_position_embeddings: self.seq_len,
            // run.c hard-codes both.
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: self.shared_classifier,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }
}

/// Parses and validates the header of a llama2.c model file of `file_len` bytes.
pub fn read_header(bytes: &[u8], file_len: u64) -> Result<Llama2cHeader> {
    let word = |i: usize| header_word(bytes, i, file_len);
    let (version, first) = if word(0)? as u32 == V1_MAGIC {
        match word(1)? {
            1 => (1u32, 2usize),
            2 => anyhow::bail!("llama2.c version 2 files (int8 Q8_0 weights) are not supported yet; export version 0 or 1"),
            v => anyhow::bail!("unknown llama2.c file version {v} (supported: legacy v0 and v1)"),
        }
    } else {
        (0, 0)
    };
    let mut ints = [0i32; 7];
    for (k, slot) in ints.iter_mut().enumerate() {
        *slot = word(first + k)?;
    }
    let shared_classifier = match version {
        // v0 says it with the sign of the vocabulary size.
        0 => ints[5] > 0,
        _ => v1_shared_classifier(bytes, file_len)?,
    };
    let h = Llama2cHeader::from_ints(version, ints, shared_classifier)?;
    h.check_heads()?;
    h.check_file_size(file_len)?;
    Ok(h)
}

/// The `i`-th little-endian i32 of the header.
fn header_word(bytes: &[u8], i: usize, file_len: u64) -> Result<i32> {
    let b = bytes.get(i * 4..i * 4 + 4).ok_or_else(|| {
        anyhow::anyhow!("file is truncated: {file_len} bytes is too short for a llama2.c header")
    })?;
    Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The v1 header's `shared_classifier` byte, which must be 0 or 1.
fn v1_shared_classifier(bytes: &[u8], file_len: u64) -> Result<bool> {
    match bytes.get(36) {
        Some(0) => Ok(false),
        Some(1) => Ok(true),
        Some(b) => anyhow::bail!("invalid shared_classifier flag {b} in the v1 header"),
        None => anyhow::bail!("file is truncated: {file_len} bytes is too short for a v1 header"),
    }
}

impl Llama2cHeader {
    /// The header from its seven integers (`dim, hidden_dim, n_layers, n_heads, n_kv_heads,
    /// vocab_size, seq_len`), each of which must be positive (the vocabulary size in absolute
    /// value: a v0 file gives it negative for an untied classifier).
    fn from_ints(version: u32, ints: [i32; 7], shared_classifier: bool) -> Result<Self> {
        let [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len] = ints;
        let names = [
            "dim",
            "hidden_dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "vocab_size",
            "seq_len",
        ];
        let mut values = ints;
        values[5] = vocab.saturating_abs();
        for (name, v) in names.iter().zip(values) {
            if v <= 0 {
                anyhow::bail!(
                    "header field {name} = {v} is not positive (is this a llama2.c model file?)"
                );
            }
        }
        if version == 1 && vocab < 0 {
            anyhow::bail!("header vocab_size {vocab} is negative in a v1 file");
        }
        Ok(Self {
            version,
            dim: dim as usize,
            hidden_dim: hidden_dim as usize,
            n_layers: n_layers as usize,
            n_heads: n_heads as usize,
            n_kv_heads: n_kv_heads as usize,
            vocab_size: vocab.unsigned_abs() as usize,
            seq_len: seq_len as usize,
            shared_classifier,
        })
    }

    /// Whole heads, whole key/value groups and an even head dimension (for rotary embeddings).
    fn check_heads(&self) -> Result<()> {
        if !self.dim.is_multiple_of(self.n_heads) {
            anyhow::bail!(
                "dim {} is not a multiple of n_heads {}",
                self.dim,
                self.n_heads
            );
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            anyhow::bail!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads,
                self.n_kv_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            anyhow::bail!("head dimension {} is odd", self.head_dim());
        }
        Ok(())
    }

    /// The file must be exactly as long as the header implies: this catches truncated and
    /// wrong-format files before anything is allocated.
    fn check_file_size(&self, file_len: u64) -> Result<()> {
        let expected = self.expected_file_size().ok_or_else(|| {
            anyhow::anyhow!("header sizes overflow (is this a llama2.c model file?)")
        })?;
        if expected != file_len {
            anyhow::bail!(
                "file is {file_len} bytes but its v{} header (dim {}, hidden {}, {} layers, {} heads, \
                 {} kv heads, vocab {}, seq_len {}, {} classifier) implies {expected} bytes{}",
                self.version,
                self.dim,
                self.hidden_dim,
                self.n_layers,
                self.n_heads,
                self.n_kv_heads,
                self.vocab_size,
                self.seq_len,
                if self.shared_classifier { "shared" } else { "separate" },
                if file_len < expected { " (truncated?)" } else { "" }
            );
        }
        Ok(())
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Converts llama2.c `model` plus `tokenizer` into a Hugging Face Llama directory at `out`.
pub fn import_llama2c(model: &Path, tokenizer: &Path, out: &Path) -> Result<ImportSummary> {
    if !model.exists() {
        anyhow::bail!("llama2.c model file {} does not exist", model.display());
    }
    if !tokenizer.exists() {
        anyhow::bail!("tokenizer file {} does not exist", tokenizer.display());
    }
    refuse_existing_output(out)?;
    let file = fs::File::open(model).with_context(|| format!("cannot open {}", model.display()))?;
    let bytes = MappedFile::new(&file, model)?;
    let header = read_header(&bytes, bytes.len() as u64)
        .with_context(|| format!("{}: not a valid llama2.c model file", model.display()))?;
    let hyper = header.hyper();
    hyper.validate(model)?;
    let tok = TokenizerSource::load(tokenizer, header.vocab_size)
        .with_context(|| format!("{}: cannot use as tokenizer", tokenizer.display()))?;
    let ranges = header.array_ranges();
    if ranges.end != bytes.len() {
        anyhow::bail!(
            "internal error: layout of {} ends at byte {}, file has {}",
            model.display(),
            ranges.end,
            bytes.len()
        );
    }

    let staging = StagingDir::create(out)?;
    let dir = staging.path().to_path_buf();
    let plan: Vec<TensorPlan> = hyper.tensor_plan();
    let params = hf_dir::write_safetensors(&dir.join("model.safetensors"), &plan, |i| {
        let p = &plan[i];
        let range = ranges.of.get(&p.name).cloned().ok_or_else(|| {
            anyhow::anyhow!("internal error: {} has no place in the file layout", p.name)
        })?;
        let heads = hyper.rotary_heads(&p.name);
        rotary_rows_to_hf(f32s(&bytes[range]), heads, header.head_dim(), header.dim)
    })
    .with_context(|| format!("{}: cannot convert", model.display()))?;
    hf_dir::write_config_files(&dir, &hyper)?;
    let (tokenizer_desc, notes) = tok.write(&dir, &hyper)?;
    staging.commit()?;
    Ok(ImportSummary {
        architecture: "llama".into(),
        num_tensors: plan.len(),
        num_parameters: params,
        tokenizer: tokenizer_desc,
        notes: header.notes(notes),
    })
}

/// Where each f32 array of a llama2.c file lies.
struct ArrayRanges {
    /// Byte range of every array by its name in [`Llama2cHeader::layout`].
    of: HashMap<String, Range<usize>>,
    /// The byte after the last array.
    end: usize,
}

impl Llama2cHeader {
    /// The byte ranges of the arrays, in file order from the first weight.
    fn array_ranges(&self) -> ArrayRanges {
        let mut of = HashMap::new();
        let mut pos = self.data_start() as usize;
        for (name, shape) in self.layout() {
            let n: usize = shape.iter().product();
            of.insert(name, pos..pos + n * 4);
            pos += n * 4;
        }
        ArrayRanges { of, end: pos }
    }

    /// The import's notes: what was assumed and converted first, then the tokenizer's `notes`,
    /// then a tied classifier.
    fn notes(&self, mut notes: Vec<String>) -> Vec<String> {
        notes.insert(
            0,
            format!(
                "llama2.c v{} file; permuted wq/wk from interleaved to half-split rotary layout; \
                 RMSNorm eps 1e-5 and RoPE theta 10000 assumed (run.c hard-codes them)",
                self.version
            ),
        );
        if self.shared_classifier {
            notes.push("classifier shared with the token embedding: lm_head tied".into());
        }
        notes
    }
}

/// The tokenizer given on the command line, loaded and checked before any output is written.
enum TokenizerSource {
    /// A Hugging Face `tokenizer.json`, copied as is.
    HfJson { bytes: Vec<u8>, vocab: usize },
    /// Built from llama2.c `tokenizer.bin` or a SentencePiece `.model`.
    Built {
        built: BuiltTokenizer,
        pieces: Vec<String>,
        bos: Option<u32>,
        eos: Option<u32>,
        unk: Option<u32>,
    },
}

impl TokenizerSource {
    fn load(path: &Path, model_vocab: usize) -> Result<Self> {
        let bytes = fs::read(path).context("cannot read")?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "json" || first == Some(b'{') {
            let text = std::str::from_utf8(&bytes).context("tokenizer.json is not UTF-8")?;
            let t = text
                .parse::<tokenizers::Tokenizer>()
                .map_err(|e| anyhow::anyhow!("not a loadable Hugging Face tokenizer.json ({e})"))?;
            let vocab = t.get_vocab_size(true);
            if vocab > model_vocab {
                anyhow::bail!("tokenizer has {vocab} tokens but the model only {model_vocab}");
            }
            return Ok(TokenizerSource::HfJson { bytes, vocab });
        }
        let (vocab, mut notes, source) = if ext == "model" {
            let sp = tokenizer_build::read_sentencepiece_model(&bytes)?;
            (
                spm_vocab_from_model(&sp)?,
                Vec::new(),
                "SentencePiece model",
            )
        } else {
            let pieces = read_tokenizer_bin(&bytes, model_vocab)?;
            let (vocab, notes) = spm_vocab_from_bin(pieces, path)?;
            (vocab, notes, "llama2.c tokenizer.bin")
        };
        if vocab.pieces.len() != model_vocab {
            anyhow::bail!(
                "tokenizer has {} tokens but the model has {model_vocab}",
                vocab.pieces.len()
            );
        }
        let mut built = tokenizer_build::spm_tokenizer(&vocab)?;
        built.description = format!("{} (from {source})", built.description);
        notes.append(&mut built.notes);
        built.notes = notes;
        Ok(TokenizerSource::Built {
            pieces: vocab.pieces.clone(),
            bos: vocab.bos_id,
            eos: vocab.eos_id,
            unk: vocab.unk_id,
            built,
        })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json`; returns the description and notes.
    fn write(self, dir: &Path, hyper: &LlamaHyper) -> Result<(String, Vec<String>)> {
        match self {
            TokenizerSource::HfJson { bytes, vocab } => {
                let path = dir.join("tokenizer.json");
                fs::write(&path, bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok((format!("copied tokenizer.json, {vocab} tokens"), Vec::new()))
            }
            TokenizerSource::Built {
                built,
                pieces,
                bos,
                eos,
                unk,
            } => {
                hf_dir::write_json(&dir.join("tokenizer.json"), &built.json)?;
                let cfg = tokenizer_build::tokenizer_config_json(
                    &pieces,
                    &built,
                    SpecialIds {
                        bos,
                        eos,
                        unk,
                        pad: None,
                    },
                    hyper.max_position_embeddings,
                    None,
                );
                hf_dir::write_json(&dir.join("tokenizer_config.json"), &cfg)?;
                Ok((built.description, built.notes))
            }
        }
    }
}

/// Reads llama2.c's `tokenizer.bin`: i32 max_token_length, then `(f32 score, i32 len, bytes)`
/// per token until the end of the file. `expected` is the model's vocabulary size.
pub fn read_tokenizer_bin(bytes: &[u8], expected: usize) -> Result<Vec<(Vec<u8>, f32)>> {
    let rd = |pos: usize, what: &str| -> Result<[u8; 4]> {
        bytes
            .get(pos..pos + 4)
            .map(|b| [b[0], b[1], b[2], b[3]])
            .ok_or_else(|| anyhow::anyhow!("tokenizer.bin is truncated at byte {pos} ({what})"))
    };
    let max_len = i32::from_le_bytes(rd(0, "max_token_length")?);
    if max_len <= 0 {
        anyhow::bail!("not a llama2.c tokenizer.bin: max_token_length {max_len} is not positive");
    }
    let mut pos = 4;
    let mut out = Vec::with_capacity(expected.min(bytes.len() / 8));
    while pos < bytes.len() {
        let i = out.len();
        let score = f32::from_le_bytes(rd(pos, &format!("score of token {i}"))?);
        let len = i32::from_le_bytes(rd(pos + 4, &format!("length of token {i}"))?);
        pos += 8;
        if len < 0 || len > max_len {
            anyhow::bail!(
                "token {i} has length {len}, outside 0..={max_len} (not a llama2.c tokenizer.bin?)"
            );
        }
        tokenizer_build::check_token_length("token", i, len as usize)?;
        let piece = bytes.get(pos..pos + len as usize).ok_or_else(|| {
            anyhow::anyhow!("tokenizer.bin is truncated in the text of token {i}")
        })?;
        out.push((piece.to_vec(), score));
        pos += len as usize;
    }
    if out.len() != expected {
        anyhow::bail!(
            "tokenizer.bin holds {} tokens but the model's vocabulary is {expected}",
            out.len()
        );
    }
    Ok(out)
}

/// Turns llama2.c tokenizer pieces back into SentencePiece pieces: llama2.c's exporter replaced
/// `▁` with a space and wrote BOS/EOS as `"\n<s>\n"` / `"\n</s>\n"`. Token types are not stored;
/// they are inferred from the text (`<unk>`, `<s>`, `</s>`, `<0xXX>`).
///
/// Whitespace handling is not stored either. When llama2.c's `train_vocab` left the SentencePiece
/// `.model` beside the `.bin` (same stem), its normalizer flags are used; otherwise we follow
/// `run.c` (dummy prefix, no whitespace cleanup), which is also right for Meta's Llama 2.
fn spm_vocab_from_bin(pieces: Vec<(Vec<u8>, f32)>, path: &Path) -> Result<(SpmVocab, Vec<String>)> {
    let mut texts = Vec::with_capacity(pieces.len());
    let mut scores = Vec::with_capacity(pieces.len());
    let mut kinds = Vec::with_capacity(pieces.len());
    for (i, (bytes, score)) in pieces.into_iter().enumerate() {
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("token {i} is not valid UTF-8"))?;
        let text = match text.as_str() {
            "\n<s>\n" => "<s>".to_string(),
            "\n</s>\n" => "</s>".to_string(),
            _ => text.replace(' ', "▁"),
        };
        let kind = match text.as_str() {
            "<unk>" => TokenKind::Unknown,
            "<s>" | "</s>" => TokenKind::Control,
            t if is_byte_piece(t) => TokenKind::Byte,
            _ => TokenKind::Normal,
        };
        texts.push(text);
        scores.push(score);
        kinds.push(kind);
    }
    let find = |t: &str| texts.iter().position(|p| p == t).map(|i| i as u32);
    let mut notes = Vec::new();
    let (mut add_space_prefix, mut remove_extra_whitespaces) = (true, false);
    match sibling_sentencepiece(path, &texts) {
        Some((sp_path, sp)) => {
            add_space_prefix = sp.add_dummy_prefix;
            remove_extra_whitespaces = sp.remove_extra_whitespaces;
            notes.push(format!(
                "whitespace rules from {} (add_dummy_prefix {}, remove_extra_whitespaces {})",
                sp_path.display(),
                add_space_prefix,
                remove_extra_whitespaces
            ));
        }
        None => notes.push(
            "tokenizer.bin does not record whitespace rules: using run.c's (dummy prefix, no \
             whitespace cleanup); pass the SentencePiece .model if it differs"
                .into(),
        ),
    }
    let vocab = SpmVocab {
        bos_id: find("<s>"),
        eos_id: find("</s>"),
        unk_id: find("<unk>"),
        pieces: texts,
        scores,
        kinds,
        add_bos: true,
        add_eos: false,
        add_space_prefix,
        remove_extra_whitespaces,
    };
    Ok((vocab, notes))
}

/// `<stem>.model` beside `path`, if it parses and holds the same pieces.
fn sibling_sentencepiece(path: &Path, texts: &[String]) -> Option<(PathBuf, SentencePieceModel)> {
    let sp_path = path.with_extension("model");
    let bytes = fs::read(&sp_path).ok()?;
    let sp = tokenizer_build::read_sentencepiece_model(&bytes).ok()?;
    (sp.pieces == texts).then_some((sp_path, sp))
}

fn is_byte_piece(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

fn spm_vocab_from_model(sp: &SentencePieceModel) -> Result<SpmVocab> {
    if sp.model_type != 2 {
        let kind = match sp.model_type {
            1 => "Unigram",
            3 => "word",
            4 => "char",
            _ => "unknown-type",
        };
        anyhow::bail!("SentencePiece {kind} models are not supported (only BPE)");
    }
    if !matches!(sp.normalization_rule.as_str(), "" | "identity") {
        anyhow::bail!(
            "SentencePiece normalization rule '{}' is not supported (only identity)",
            sp.normalization_rule
        );
    }
    Ok(SpmVocab {
        pieces: sp.pieces.clone(),
        scores: sp.scores.clone(),
        kinds: sp.kinds.clone(),
        bos_id: sp.id(sp.bos_id),
        eos_id: sp.id(sp.eos_id),
        unk_id: sp.id(sp.unk_id),
        add_bos: true,
        add_eos: false,
        add_space_prefix: sp.add_dummy_prefix,
        remove_extra_whitespaces: sp.remove_extra_whitespaces,
    })
}
