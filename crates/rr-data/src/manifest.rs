//! `manifest.json` of a packed data set (see [the crate docs](crate) for the layout).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::document::InputFormat;

/// The `format` string every manifest carries.
pub const MANIFEST_FORMAT: &str = "rr-packed-tokens";
/// Bumped on any incompatible change of the layout; `PackedSet::open` refuses other versions.
pub const MANIFEST_VERSION: u32 = 1;
/// File name of the manifest inside a packed directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One of the two splits of a packed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Heldout,
}

impl Split {
    pub const ALL: [Split; 2] = [Split::Train, Split::Heldout];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "heldout" | "held-out" | "validation" | "val" => Ok(Split::Heldout),
            _ => anyhow::bail!("unknown split {s:?} (expected train or heldout)"),
        }
    }
}

/// Width of the stored token ids: `u16` when the vocabulary has at most 65,536 entries, else `u32`;
/// always little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    /// Largest id this width can hold.
    pub fn max_id(self) -> i64 {
        match self {
            TokenDtype::U16 => u16::MAX as i64,
            TokenDtype::U32 => u32::MAX as i64,
        }
    }
}

impl fmt::Display for TokenDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenDtype::U16 => "u16",
            TokenDtype::U32 => "u32",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// The tokenizer file as given to `pack` (informational).
    pub file: PathBuf,
    /// SHA-256 (hex) of the `tokenizer.json` bytes.
    pub sha256: String,
    /// `Tokenizer::vocab_size()` (with added tokens).
    pub vocab_size: usize,
}

/// One raw token file: `rows * row_len` little-endian ids of `dtype`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the packed directory, e.g. `train-00000.bin`.
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    /// SHA-256 (hex) of the file (checked by `PackedSet::verify_checksums`, not by `open`).
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Documents assigned to this split.
    pub documents: u64,
    /// Tokens of those documents, BOS and EOS included.
    pub document_tokens: u64,
    /// Full rows written (`rows * row_len == tokens`).
    pub rows: u64,
    pub tokens: u64,
    /// The ragged tail (fewer than `row_len` tokens) that did not fill a last row.
    pub dropped_tokens: u64,
    pub shards: Vec<ShardInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The input file as given to `pack`.
    pub path: PathBuf,
    /// SHA-256 (hex) and size of the input file's bytes.
    pub sha256: String,
    pub bytes: u64,
    /// Documents read from it (after skipping empty ones).
    pub documents: u64,
    /// Records whose document text was empty (JSONL formats), skipped.
    pub skipped_empty: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    pub train: SplitInfo,
    pub heldout: SplitInfo,
}

impl Splits {
    pub fn get(&self, split: Split) -> &SplitInfo {
        match split {
            Split::Train => &self.train,
            Split::Heldout => &self.heldout,
        }
    }
}

/// The whole `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Always [`MANIFEST_VERSION`] for sets this code writes.
    pub version: u32,
    /// `rr-train <version>`: the packer's name from before it moved into rr-data, kept so that
    /// the same inputs still give a byte-identical manifest.
    pub created_by: String,
    pub tokenizer: TokenizerInfo,
    pub dtype: TokenDtype,
    /// Tokens of model input per row; each stored row has `seq_len + 1` tokens.
    pub seq_len: usize,
    pub row_len: usize,
    /// BOS prepended to every document (`null`: none).
    pub bos_id: Option<i64>,
    /// EOS appended to every document (`null`: none).
    pub eos_id: Option<i64>,
    pub input_format: InputFormat,
    /// The document template of `input_format`, in words.
    pub template: String,
    pub seed: u64,
    pub heldout_fraction: f64,
    /// Rows per full shard (the last shard of a split may hold fewer).
    pub rows_per_shard: u64,
    pub documents: u64,
    pub splits: Splits,
    pub sources: Vec<SourceInfo>,
}
