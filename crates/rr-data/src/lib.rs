//! Packed token data: tokenisation and packing, memory-mapped shards, a resumable loader, and
//! synthetic arithmetic problems. The trainer reads its batches through [`Loader`] and
//! [`Phases`]; evaluation reads held-out rows through [`PackedSet`].
//!
//! # Packed directory layout (format version 1)
//!
//! ```text
//! <out>/manifest.json        see [`Manifest`]
//! <out>/train-00000.bin      rows of the train split, shard 0
//! <out>/train-00001.bin      ...
//! <out>/heldout-00000.bin    rows of the held-out split
//! ```
//!
//! A shard is raw little-endian token ids, `u16` when the tokenizer's vocabulary has at most
//! 65,536 entries, else `u32` ([`TokenDtype`]), no header: `rows × (seq_len + 1)` ids, row after
//! row. Rows never straddle shards; every shard but the last of a split holds
//! `rows_per_shard = max(1, floor(max_shard_tokens / (seq_len + 1)))` rows (default limit
//! 64 Mi tokens). A split with no rows has no shard. Each row is a window of the split's token
//! stream `BOS doc₀ EOS BOS doc₁ EOS …`; the model input is `row[..seq_len]`, the labels
//! `row[1..]` (method §5: no document masking).
//!
//! See [`pack`](pack::pack) for documents, templates, special tokens and the held-out split,
//! [`loader`] for the order of batches and resumption, [`synth`] for the problem generator.

pub mod document;
pub mod loader;
pub mod manifest;
pub mod pack;
pub mod packed;
pub mod synth;

pub use loader::{Batch, Loader, LoaderState, Mixture, MixtureState, Phases, PhasesState};
pub use manifest::{
    Manifest, ShardInfo, SourceInfo, Split, SplitInfo, Splits, TokenDtype, TokenizerInfo,
    MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION,
};
pub use pack::{
    gsm8k_document, gsm8k_rr_document, is_heldout_document, math_document, pack, read_documents,
    strip_calculator_annotations, InputFormat, PackOptions, PackSummary, SpecialToken,
    DEFAULT_HELDOUT_FRACTION, DEFAULT_MAX_SHARD_TOKENS,
};
pub use packed::PackedSet;
pub use synth::{check_synth_request, synth_math, write_synth_math, SynthProblem};
