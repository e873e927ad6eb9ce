//! `pack`: documents → token ids (BOS + text + EOS) → one stream per split → rows of
//! `seq_len + 1` tokens → raw little-endian shards and `manifest.json`.
//!
//! # Documents (`InputFormat`)
//!
//! * `text`: a UTF-8 file of paragraphs separated by blank lines (a line that is empty or only
//!   whitespace). A document is one paragraph: its lines (without `\n` / `\r\n`) joined with `\n`.
//! * `jsonl`: one JSON object per line with a string field `text`; the document is `text` as is.
//! * `gsm8k`: `{"question", "answer"}` per line (extra fields ignored). The document is
//!   `Q: {question}\n\nA: {answer}` with both fields trimmed and GSM8K's calculator annotations
//!   `<<48/2=24>>` removed from the answer, so it reads like the evaluation prompt
//!   `Q: {question}\n\nA: ` followed by a chain of thought ending in `#### {n}`.
//! * `math`: `{"problem", "solution"}` per line (MATH). The document is
//!   `Problem:\n{problem}\n\nSolution: {solution}` (fields trimmed), the Minerva prompt layout.
//!
//! In the JSONL formats blank lines are skipped; a line that is not a JSON object or lacks a
//! required string field is an error naming `file:line`. Records whose document is empty (e.g.
//! `"text": ""`) are skipped and counted. A file with no documents at all is an error.
//!
//! # Special tokens
//!
//! Documents are encoded without the tokenizer's post-processor (`encode(text, false)`), then
//! the BOS and EOS below are added explicitly, once per document:
//!
//! * BOS ([`SpecialToken::Auto`]): the id the tokenizer itself prepends (`Tokenizer::adds_bos`),
//!   else `bos_token_id` of a `config.json` in the tokenizer's directory (the model directory
//!   when `tokenizer` is one), else none.
//! * EOS ([`SpecialToken::Auto`]): `Tokenizer::eos_id()` (`tokenizer_config.json` /
//!   `generation_config.json` beside `tokenizer.json`), else the first `eos_token_id` of that
//!   `config.json`, else the first of the tokens `</s>`, `<|endoftext|>`, `<|end_of_text|>`,
//!   `<eos>` the vocabulary has; no EOS found is an error (the recipe requires one).
//!
//! # Splits and rows
//!
//! Documents are numbered in input order (files in the order given, records in file order) from
//! 0; document `i` is held out iff `unit(hash(seed, i)) < heldout_fraction`
//! ([`is_heldout_document`]), so the split depends only on the seed and the document's position,
//! not on threads or chunking. Each split concatenates its documents in input order into one
//! token stream that is cut into rows of `seq_len + 1` tokens; the ragged tail (fewer than
//! `seq_len + 1` tokens) is dropped and reported. No document masking: rows cross document
//! boundaries. The loader shuffles rows.

use std::fmt;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use rr_model::Tokenizer;
use rr_util::fs::StagingDir;
use rr_util::seed as rng;
use serde::{Deserialize, Serialize};

pub use crate::document::{
    gsm8k_document, gsm8k_rr_document, math_document, strip_calculator_annotations, InputFormat,
};
use sha2::{Digest, Sha256};

use super::manifest::{
    Manifest, ShardInfo, SourceInfo, Split, SplitInfo, Splits, TokenDtype, TokenizerInfo,
    MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION,
};

/// Default fraction of documents held out (1 %).
pub const DEFAULT_HELDOUT_FRACTION: f64 = 0.01;
/// Default shard size limit: 64 Mi tokens (rows never straddle shards).
pub const DEFAULT_MAX_SHARD_TOKENS: usize = 64 << 20;

/// Documents tokenised together in parallel (bounded by count and by text bytes).
const CHUNK_DOCS: usize = 16_384;
const CHUNK_BYTES: usize = 32 << 20;
const HELDOUT_TAG: u64 = 0x6865_6c64_6f75_7421; // "heldout!"

/// Whether the `index`-th document (0-based, input order) goes to the held-out split.
pub fn is_heldout_document(seed: u64, index: u64, fraction: f64) -> bool {
    fraction > 0.0 && rng::unit(rng::hash(&[seed, HELDOUT_TAG, index])) < fraction
}

/// How a special token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SpecialToken {
    /// The documented rule (module docs).
    #[default]
    Auto,
    /// None (not the recipe: only for experiments).
    Never,
    /// This id.
    Id(i64),
}

/// Options of [`pack`]. `PackOptions::new` fills the defaults.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// A model directory (with `tokenizer.json`) or a `tokenizer.json` file.
    pub tokenizer: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub format: InputFormat,
    /// Model input length T; rows hold T + 1 tokens.
    pub seq_len: usize,
    /// The packed directory to create (must not exist).
    pub out: PathBuf,
    /// Fraction of documents held out, in `[0, 1)`; default [`DEFAULT_HELDOUT_FRACTION`].
    pub heldout_fraction: f64,
    /// Seed of the held-out assignment; default 0.
    pub seed: u64,
    pub bos: SpecialToken,
    pub eos: SpecialToken,
    /// Shard size limit in tokens (rounded down to whole rows, at least one row);
    /// default [`DEFAULT_MAX_SHARD_TOKENS`].
    pub max_shard_tokens: usize,
}

impl PackOptions {
    pub fn new(
        tokenizer: impl Into<PathBuf>,
        inputs: Vec<PathBuf>,
        format: InputFormat,
        seq_len: usize,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            tokenizer: tokenizer.into(),
            inputs,
            format,
            seq_len,
            out: out.into(),
            heldout_fraction: DEFAULT_HELDOUT_FRACTION,
            seed: 0,
            bos: SpecialToken::Auto,
            eos: SpecialToken::Auto,
            max_shard_tokens: DEFAULT_MAX_SHARD_TOKENS,
        }
    }
}

/// What [`pack`] wrote: the directory and its manifest.
#[derive(Debug, Clone)]
pub struct PackSummary {
    pub out: PathBuf,
    pub manifest: Manifest,
}

impl PackSummary {
    /// Things worth a warning (e.g. a held-out split with no full row).
    pub fn warnings(&self) -> Vec<String> {
        let m = &self.manifest;
        let mut w = Vec::new();
        if m.heldout_fraction > 0.0 && m.splits.heldout.rows == 0 {
            w.push(format!(
                "held-out split has no full row ({} documents, {} tokens < {} per row)",
                m.splits.heldout.documents, m.splits.heldout.document_tokens, m.row_len
            ));
        }
        w
    }
}

impl fmt::Display for PackSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        writeln!(
            f,
            "{}: {} documents from {} file(s), vocab {} ({}), seq_len {}, BOS {}, EOS {}",
            self.out.display(),
            m.documents,
            m.sources.len(),
            m.tokenizer.vocab_size,
            m.dtype,
            m.seq_len,
            m.bos_id.map_or("none".into(), |i| i.to_string()),
            m.eos_id.map_or("none".into(), |i| i.to_string()),
        )?;
        for split in Split::ALL {
            let s = m.splits.get(split);
            writeln!(
                f,
                "  {split}: {} documents, {} rows ({} tokens) in {} shard(s), ragged tail of {} tokens dropped",
                s.documents,
                s.rows,
                s.tokens,
                s.shards.len(),
                s.dropped_tokens
            )?;
        }
        for w in self.warnings() {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

/// Tokenises and packs `opts.inputs` into `opts.out` (see the module docs). Writes into a
/// temporary sibling directory renamed into place at the end: on any error nothing is left.
pub fn pack(opts: &PackOptions) -> Result<PackSummary> {
    check_options(opts)?;
    let encoder = Encoder::open(opts)?;
    let dtype = TokenDtype::for_vocab(encoder.vocab_size);
    let row_len = opts.seq_len + 1;
    let rows_per_shard = (opts.max_shard_tokens / row_len).max(1) as u64;
    let staging = StagingDir::create(&opts.out)?;
    let mut writers = Split::ALL
        .map(|split| SplitWriter::new(split, staging.path(), row_len, dtype, rows_per_shard));
    let (sources, documents) = pack_inputs(opts, &encoder, &mut writers)?;

    let [train, heldout] = writers;
    let (train, heldout) = (train.finish()?, heldout.finish()?);
    if train.rows == 0 {
        bail!(
            "{}: not enough tokens for one training row ({} tokens in {} documents, {} per row)",
            opts.inputs[0].display(),
            train.document_tokens,
            train.documents,
            row_len
        );
    }

    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        // Still "rr-train": see `Manifest::created_by`.
        created_by: concat!("rr-train ", env!("CARGO_PKG_VERSION")).into(),
        tokenizer: TokenizerInfo {
            file: opts.tokenizer.clone(),
            sha256: encoder.sha256,
            vocab_size: encoder.vocab_size,
        },
        dtype,
        seq_len: opts.seq_len,
        row_len,
        bos_id: encoder.bos,
        eos_id: encoder.eos,
        input_format: opts.format,
        template: opts.format.template().into(),
        seed: opts.seed,
        heldout_fraction: opts.heldout_fraction,
        rows_per_shard,
        documents,
        splits: Splits { train, heldout },
        sources,
    };
    let json = serde_json::to_string_pretty(&manifest)?;
    write_synced(&staging.path().join(MANIFEST_FILE), json.as_bytes())?;
    staging.commit()?;
    Ok(PackSummary {
        out: opts.out.clone(),
        manifest,
    })
}

/// The longest document `pack` tokenises at once (8 MiB): the tokenizer's memory grows far
/// faster than the text (a 50 MB paragraph took 4.4 GB), and no training row needs more.
pub const MAX_DOCUMENT_BYTES: usize = 8 << 20;

/// The longest row `pack` makes (no model has a longer context).
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// Refuses options `pack` cannot honour before anything is read or written.
fn check_options(opts: &PackOptions) -> Result<()> {
    if opts.seq_len == 0 {
        bail!("seq_len must be at least 1");
    }
    if opts.seq_len > MAX_SEQ_LEN {
        bail!(
            "seq_len {} is beyond the supported {MAX_SEQ_LEN}",
            opts.seq_len
        );
    }
    if !(0.0..1.0).contains(&opts.heldout_fraction) {
        bail!(
            "heldout_fraction must be in [0, 1), got {}",
            opts.heldout_fraction
        );
    }
    if opts.inputs.is_empty() {
        bail!("no input files given");
    }
    if exists(&opts.out) {
        bail!(
            "{}: output already exists (refusing to overwrite)",
            opts.out.display()
        );
    }
    for input in &opts.inputs {
        if !input.is_file() {
            bail!("{}: input file not found", input.display());
        }
    }
    Ok(())
}

/// Reads every input in order, encodes its documents in parallel chunks and hands each to the
/// writer of its split. Returns the inputs' [`SourceInfo`] and the number of documents.
fn pack_inputs(
    opts: &PackOptions,
    encoder: &Encoder,
    writers: &mut [SplitWriter; 2],
) -> Result<(Vec<SourceInfo>, u64)> {
    let mut sources = Vec::with_capacity(opts.inputs.len());
    let mut doc_index = 0u64;
    for input in &opts.inputs {
        let mut reader = DocReader::open(input, opts.format)?;
        while let Some(chunk) = reader.next_chunk()? {
            let encoded: Vec<Vec<i64>> = chunk
                .par_iter()
                .map(|doc| encoder.encode(doc))
                .collect::<Result<_>>()
                .with_context(|| format!("{}", input.display()))?;
            for tokens in encoded {
                let heldout = is_heldout_document(opts.seed, doc_index, opts.heldout_fraction);
                writers[usize::from(heldout)].push_document(&tokens)?;
                doc_index += 1;
            }
        }
        let source = reader.finish();
        if source.documents == 0 {
            bail!("{}: no documents (empty input)", input.display());
        }
        sources.push(source);
    }
    Ok((sources, doc_index))
}

/// The tokenizer of a pack with its file's SHA-256 and the BOS and EOS it adds.
struct Encoder {
    tok: Tokenizer,
    sha256: String,
    vocab_size: usize,
    bos: Option<i64>,
    eos: Option<i64>,
}

impl Encoder {
    /// Loads `opts.tokenizer` and resolves BOS and EOS (module docs), which must be in the
    /// vocabulary.
    fn open(opts: &PackOptions) -> Result<Self> {
        let tok = Tokenizer::from_path(&opts.tokenizer)?;
        let tok_bytes = fs::read(tok.path())
            .with_context(|| format!("{}: cannot read tokenizer", tok.path().display()))?;
        let vocab_size = tok.vocab_size();
        let config = model_config_beside(&opts.tokenizer, tok.path());
        let bos = resolve_bos(opts.bos, &tok, config.as_ref());
        let eos = resolve_eos(opts.eos, &tok, config.as_ref())?;
        for (what, id) in [("BOS", bos), ("EOS", eos)] {
            if let Some(id) = id {
                if id < 0 || id as usize >= vocab_size {
                    bail!(
                        "{}: {what} id {id} is outside the vocabulary of {vocab_size}",
                        tok.path().display()
                    );
                }
            }
        }
        Ok(Self {
            sha256: hex::encode(Sha256::digest(&tok_bytes)),
            tok,
            vocab_size,
            bos,
            eos,
        })
    }

    /// BOS, the document's ids, EOS.
    fn encode(&self, doc: &str) -> Result<Vec<i64>> {
        let body = self.tok.encode(doc, false)?;
        let mut out = Vec::with_capacity(body.len() + 2);
        out.extend(self.bos);
        out.extend_from_slice(&body);
        out.extend(self.eos);
        if let Some(&bad) = out
            .iter()
            .find(|&&id| id < 0 || id as usize >= self.vocab_size)
        {
            bail!(
                "tokenizer produced id {bad} outside its vocabulary of {}",
                self.vocab_size
            );
        }
        Ok(out)
    }
}

/// `config.json` of the model directory the tokenizer comes from, if any (parsed leniently:
/// only the special-token ids are read).
fn model_config_beside(given: &Path, tokenizer_file: &Path) -> Option<serde_json::Value> {
    let dir = if given.is_dir() {
        given.to_path_buf()
    } else {
        tokenizer_file.parent()?.to_path_buf()
    };
    let text = fs::read_to_string(dir.join("config.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn first_id(value: Option<&serde_json::Value>) -> Option<i64> {
    match value? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::Array(items) => items.first().and_then(|v| v.as_i64()),
        _ => None,
    }
}

fn resolve_bos(
    rule: SpecialToken,
    tok: &Tokenizer,
    config: Option<&serde_json::Value>,
) -> Option<i64> {
    match rule {
        SpecialToken::Never => None,
        SpecialToken::Id(id) => Some(id),
        SpecialToken::Auto => tok
            .adds_bos()
            .or_else(|| first_id(config.and_then(|c| c.get("bos_token_id")))),
    }
}

fn resolve_eos(
    rule: SpecialToken,
    tok: &Tokenizer,
    config: Option<&serde_json::Value>,
) -> Result<Option<i64>> {
    match rule {
        SpecialToken::Never => Ok(None),
        SpecialToken::Id(id) => Ok(Some(id)),
        SpecialToken::Auto => tok
            .eos_id()
            .or_else(|| first_id(config.and_then(|c| c.get("eos_token_id"))))
            .or_else(|| {
                ["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"]
                    .iter()
                    .find_map(|t| tok.token_to_id(t))
            })
            .map(Some)
            .ok_or_else(|| {
                anyhow!(
                    "{}: cannot determine the EOS token (no tokenizer_config.json, \
                     generation_config.json or config.json naming one, and no </s> or \
                     <|endoftext|> in the vocabulary); give one explicitly",
                    tok.path().display()
                )
            }),
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    f.sync_all()
        .with_context(|| format!("{}: cannot sync", path.display()))?;
    Ok(())
}

/// Streams documents out of one input file, hashing its bytes on the way.
struct DocReader {
    path: PathBuf,
    reader: BufReader<File>,
    format: InputFormat,
    hasher: Sha256,
    bytes: u64,
    line_no: usize,
    buf: Vec<u8>,
    documents: u64,
    skipped_empty: u64,
}

impl DocReader {
    fn open(path: &Path, format: InputFormat) -> Result<Self> {
        let file =
            File::open(path).with_context(|| format!("{}: cannot open input", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            format,
            hasher: Sha256::new(),
            bytes: 0,
            line_no: 0,
            buf: Vec::new(),
            documents: 0,
            skipped_empty: 0,
        })
    }

    /// The next line without its line ending, or `None` at the end of the file. A line is
    /// read at most [`MAX_DOCUMENT_BYTES`] + 1 bytes far: a longer one is refused.
    fn read_line(&mut self) -> Result<Option<&str>> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_DOCUMENT_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .with_context(|| format!("{}: read error", self.path.display()))?;
        if n == 0 {
            return Ok(None);
        }
        if n > MAX_DOCUMENT_BYTES {
            bail!(
                "{}:{}: a line longer than {} MiB; split the text into smaller documents",
                self.path.display(),
                self.line_no + 1,
                MAX_DOCUMENT_BYTES >> 20
            );
        }
        self.hasher.update(&self.buf);
        self.bytes += n as u64;
        self.line_no += 1;
        let mut line = &self.buf[..];
        if line.last() == Some(&b'\n') {
            line = &line[..line.len() - 1];
        }
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        std::str::from_utf8(line)
            .map(Some)
            .map_err(|_| anyhow!("{}:{}: invalid UTF-8", self.path.display(), self.line_no))
    }

    fn next_document(&mut self) -> Result<Option<String>> {
        if self.format == InputFormat::Text {
            let mut doc = String::new();
            while let Some(line) = self.read_line()? {
                if line.trim().is_empty() {
                    if !doc.is_empty() {
                        break;
                    }
                    continue;
                }
                if !doc.is_empty() {
                    doc.push('\n');
                }
                doc.push_str(line);
                if doc.len() > MAX_DOCUMENT_BYTES {
                    bail!(
                        "{}:{}: a paragraph longer than {} MiB; separate it into smaller \
                         documents with blank lines",
                        self.path.display(),
                        self.line_no,
                        MAX_DOCUMENT_BYTES >> 20
                    );
                }
            }
            if doc.is_empty() {
                return Ok(None);
            }
            self.documents += 1;
            return Ok(Some(doc));
        }
        let format = self.format;
        loop {
            let Some(line) = self.read_line()? else {
                return Ok(None);
            };
            if line.trim().is_empty() {
                continue;
            }
            let record: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                anyhow!(
                    "{}:{}: malformed JSON line ({e})",
                    self.path.display(),
                    self.line_no
                )
            })?;
            let doc = format
                .render_record(&record)
                .map_err(|e| anyhow!("{}:{}: {e}", self.path.display(), self.line_no))?;
            if doc.trim().is_empty() {
                self.skipped_empty += 1;
                continue;
            }
            self.documents += 1;
            return Ok(Some(doc));
        }
    }

    /// The next documents, up to [`CHUNK_DOCS`] of them or until they hold [`CHUNK_BYTES`] of
    /// text; `None` at the end of the file.
    fn next_chunk(&mut self) -> Result<Option<Vec<String>>> {
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        while chunk.len() < CHUNK_DOCS && chunk_bytes < CHUNK_BYTES {
            match self.next_document()? {
                Some(doc) => {
                    chunk_bytes += doc.len();
                    chunk.push(doc);
                }
                None => break,
            }
        }
        Ok((!chunk.is_empty()).then_some(chunk))
    }

    fn finish(mut self) -> SourceInfo {
        // Hash whatever follows the last document (e.g. trailing blank lines).
        let _ = std::io::copy(
            &mut self.reader,
            &mut HashWriter(&mut self.hasher, &mut self.bytes),
        );
        SourceInfo {
            path: self.path,
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
            documents: self.documents,
            skipped_empty: self.skipped_empty,
        }
    }
}

struct HashWriter<'a>(&'a mut Sha256, &'a mut u64);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        *self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads every document of a file as `pack` would (for inspection and tests).
pub fn read_documents(path: &Path, format: InputFormat) -> Result<Vec<String>> {
    let mut reader = DocReader::open(path, format)?;
    let mut docs = Vec::new();
    while let Some(doc) = reader.next_document()? {
        docs.push(doc);
    }
    Ok(docs)
}

struct OpenShard {
    name: String,
    file: BufWriter<File>,
    hasher: Sha256,
    rows: u64,
    bytes: u64,
}

/// The token stream of one split, cut into rows and written shard by shard.
struct SplitWriter {
    split: Split,
    dir: PathBuf,
    row_len: usize,
    dtype: TokenDtype,
    rows_per_shard: u64,
    pending: Vec<i64>,
    scratch: Vec<u8>,
    shard: Option<OpenShard>,
    info: SplitInfo,
}

impl SplitWriter {
    fn new(
        split: Split,
        dir: &Path,
        row_len: usize,
        dtype: TokenDtype,
        rows_per_shard: u64,
    ) -> Self {
        Self {
            split,
            dir: dir.to_path_buf(),
            row_len,
            dtype,
            rows_per_shard,
            pending: Vec::with_capacity(2 * row_len),
            scratch: Vec::with_capacity(row_len * dtype.bytes()),
            shard: None,
            info: SplitInfo::default(),
        }
    }

    fn push_document(&mut self, tokens: &[i64]) -> Result<()> {
        self.info.documents += 1;
        self.info.document_tokens += tokens.len() as u64;
        self.pending.extend_from_slice(tokens);
        let mut start = 0;
        while self.pending.len() - start >= self.row_len {
            let end = start + self.row_len;
            self.scratch.clear();
            for &id in &self.pending[start..end] {
                if id < 0 || id > self.dtype.max_id() {
                    bail!("token id {id} does not fit the {} shards", self.dtype);
                }
                match self.dtype {
                    TokenDtype::U16 => self.scratch.extend_from_slice(&(id as u16).to_le_bytes()),
                    TokenDtype::U32 => self.scratch.extend_from_slice(&(id as u32).to_le_bytes()),
                }
            }
            self.write_row()?;
            start = end;
        }
        self.pending.drain(..start);
        Ok(())
    }

    fn write_row(&mut self) -> Result<()> {
        if self
            .shard
            .as_ref()
            .is_some_and(|s| s.rows == self.rows_per_shard)
        {
            self.close_shard()?;
        }
        if self.shard.is_none() {
            let name = format!("{}-{:05}.bin", self.split, self.info.shards.len());
            let path = self.dir.join(&name);
            let file = File::create(&path)
                .with_context(|| format!("{}: cannot create", path.display()))?;
            self.shard = Some(OpenShard {
                name,
                file: BufWriter::with_capacity(1 << 20, file),
                hasher: Sha256::new(),
                rows: 0,
                bytes: 0,
            });
        }
        let shard = self.shard.as_mut().expect("open shard");
        shard
            .file
            .write_all(&self.scratch)
            .with_context(|| format!("{}: write error", self.dir.join(&shard.name).display()))?;
        shard.hasher.update(&self.scratch);
        shard.rows += 1;
        shard.bytes += self.scratch.len() as u64;
        self.info.rows += 1;
        self.info.tokens += self.row_len as u64;
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some(shard) = self.shard.take() {
            let path = self.dir.join(&shard.name);
            let file = shard
                .file
                .into_inner()
                .map_err(|e| anyhow!("{}: write error ({})", path.display(), e.error()))?;
            file.sync_all()
                .with_context(|| format!("{}: cannot sync", path.display()))?;
            self.info.shards.push(ShardInfo {
                file: shard.name,
                rows: shard.rows,
                bytes: shard.bytes,
                sha256: hex::encode(shard.hasher.finalize()),
            });
        }
        Ok(())
    }

    fn finish(mut self) -> Result<SplitInfo> {
        self.close_shard()?;
        self.info.dropped_tokens = self.pending.len() as u64;
        Ok(self.info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_calculator_annotations() {
        assert_eq!(
            strip_calculator_annotations("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72"),
            "Natalia sold 48/2 = 24 clips.\n#### 72"
        );
        assert_eq!(strip_calculator_annotations("a << b"), "a << b");
    }

    #[test]
    fn heldout_fraction_is_respected() {
        let n = 100_000;
        let held = (0..n).filter(|&i| is_heldout_document(3, i, 0.1)).count();
        assert!((9_500..10_500).contains(&held), "{held}");
        assert_eq!(
            (0..1000)
                .filter(|&i| is_heldout_document(3, i, 0.0))
                .count(),
            0
        );
    }

    #[test]
    fn format_round_trips() {
        for f in [
            InputFormat::Text,
            InputFormat::Jsonl,
            InputFormat::Gsm8k,
            InputFormat::Gsm8kRr,
            InputFormat::Math,
        ] {
            assert_eq!(f.to_string().parse::<InputFormat>().unwrap(), f);
            // The manifest (serde) and the CLI (Display) spell a format the same way.
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{f}\""));
        }
    }
}
