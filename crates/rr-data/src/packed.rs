//! `PackedSet`: a packed directory opened read-only, shards memory-mapped.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use rr_model::Tokenizer;
use sha2::{Digest, Sha256};

use super::manifest::{
    Manifest, ShardInfo, Split, TokenDtype, MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION,
};

struct SplitData {
    /// `(path, map, first row)` per shard.
    shards: Vec<(PathBuf, Mmap, usize)>,
    rows: usize,
}

/// The error for a manifest that parses but contradicts itself.
fn invalid(manifest_path: &Path, what: String) -> anyhow::Error {
    anyhow!("{}: invalid manifest: {what}", manifest_path.display())
}

/// `manifest.json`'s bytes as a [`Manifest`] of this format and version whose row length and
/// dtype agree with its sequence length and vocabulary.
fn parse_manifest(manifest_path: &Path, bytes: &[u8]) -> Result<Manifest> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| anyhow!("{}: invalid JSON ({e})", manifest_path.display()))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(MANIFEST_FORMAT) {
        bail!(
            "{}: not an {MANIFEST_FORMAT} manifest",
            manifest_path.display()
        );
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == MANIFEST_VERSION as u64 => {}
        v => bail!(
            "{}: unsupported manifest version {} (this build reads version {MANIFEST_VERSION})",
            manifest_path.display(),
            v.map_or("?".into(), |v| v.to_string())
        ),
    }
    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|e| anyhow!("{}: invalid manifest ({e})", manifest_path.display()))?;
    if manifest.seq_len == 0 || manifest.row_len != manifest.seq_len + 1 {
        return Err(invalid(
            manifest_path,
            format!(
                "row_len {} is not seq_len {} + 1",
                manifest.row_len, manifest.seq_len
            ),
        ));
    }
    if manifest.dtype != TokenDtype::for_vocab(manifest.tokenizer.vocab_size)
        && manifest.dtype != TokenDtype::U32
    {
        return Err(invalid(
            manifest_path,
            format!(
                "dtype {} cannot hold a vocabulary of {}",
                manifest.dtype, manifest.tokenizer.vocab_size
            ),
        ));
    }
    Ok(manifest)
}

impl SplitData {
    /// Maps every shard of `split`, checking the manifest's counts for it.
    fn open(dir: &Path, manifest_path: &Path, manifest: &Manifest, split: Split) -> Result<Self> {
        let info = manifest.splits.get(split);
        let row_bytes = manifest.row_len as u64 * manifest.dtype.bytes() as u64;
        let mut shards = Vec::with_capacity(info.shards.len());
        let mut rows = 0u64;
        for shard in &info.shards {
            let (path, map) = map_shard(dir, manifest_path, shard, row_bytes)?;
            shards.push((path, map, rows as usize));
            rows += shard.rows;
        }
        if rows != info.rows || info.tokens != info.rows * manifest.row_len as u64 {
            return Err(invalid(
                manifest_path,
                format!(
                    "{split} lists {} rows and {} tokens but its shards hold {rows} rows",
                    info.rows, info.tokens
                ),
            ));
        }
        let rows = usize::try_from(rows)
            .map_err(|_| invalid(manifest_path, format!("{split} has too many rows")))?;
        Ok(SplitData { shards, rows })
    }
}

/// Memory-maps one shard after checking its entry (a plain file name, whole rows) and its size
/// on disk against the manifest.
fn map_shard(
    dir: &Path,
    manifest_path: &Path,
    shard: &ShardInfo,
    row_bytes: u64,
) -> Result<(PathBuf, Mmap)> {
    let name = Path::new(&shard.file);
    if shard.file.is_empty()
        || name.components().count() != 1
        || name.file_name().map(|n| n.to_string_lossy()) != Some(shard.file.as_str().into())
    {
        return Err(invalid(
            manifest_path,
            format!("shard file name {:?} is not a plain file name", shard.file),
        ));
    }
    if shard.rows == 0 || shard.bytes != shard.rows * row_bytes {
        return Err(invalid(
            manifest_path,
            format!(
                "shard {} lists {} rows and {} bytes ({} bytes per row)",
                shard.file, shard.rows, shard.bytes, row_bytes
            ),
        ));
    }
    let path = dir.join(&shard.file);
    let file = File::open(&path).map_err(|e| anyhow!("{}: missing shard ({e})", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("{}: cannot stat shard", path.display()))?
        .len();
    if len != shard.bytes {
        let what = if len < shard.bytes {
            "truncated shard"
        } else {
            "shard size mismatch"
        };
        bail!(
            "{}: {what}: {len} bytes, the manifest expects {}",
            path.display(),
            shard.bytes
        );
    }
    // SAFETY: the file is opened read-only; packed sets are immutable once written (modifying a
    // shard while it is mapped is outside the contract).
    let map = unsafe { Mmap::map(&file) }
        .with_context(|| format!("{}: cannot memory-map shard", path.display()))?;
    Ok((path, map))
}

/// A packed data set (see [the crate docs](crate)). Cheap to share behind an `Arc`.
pub struct PackedSet {
    dir: PathBuf,
    manifest: Manifest,
    id: String,
    train: SplitData,
    heldout: SplitData,
}

impl std::fmt::Debug for PackedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedSet")
            .field("dir", &self.dir)
            .field("seq_len", &self.manifest.seq_len)
            .field("train_rows", &self.train.rows)
            .field("heldout_rows", &self.heldout.rows)
            .finish()
    }
}

impl PackedSet {
    /// Opens `dir`, validating the manifest and every shard's size against it (a truncated or
    /// missing shard is an error naming it). Shard contents are not hashed here; see
    /// [`PackedSet::verify_checksums`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            bail!(
                "{}: not a packed data set ({MANIFEST_FILE} missing)",
                dir.display()
            );
        }
        let bytes = fs::read(&manifest_path)
            .with_context(|| format!("{}: cannot read", manifest_path.display()))?;
        let manifest = parse_manifest(&manifest_path, &bytes)?;
        let open = |split| SplitData::open(&dir, &manifest_path, &manifest, split);
        let (train, heldout) = (open(Split::Train)?, open(Split::Heldout)?);
        let id = hex::encode(&Sha256::digest(&bytes)[..8]);
        Ok(Self {
            dir,
            manifest,
            id,
            train,
            heldout,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A short fingerprint of this set (16 hex digits of the SHA-256 of `manifest.json`),
    /// recorded in loader states so that a state is never restored onto other data.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn seq_len(&self) -> usize {
        self.manifest.seq_len
    }

    /// Tokens per stored row (`seq_len + 1`).
    pub fn row_len(&self) -> usize {
        self.manifest.row_len
    }

    pub fn dtype(&self) -> TokenDtype {
        self.manifest.dtype
    }

    pub fn vocab_size(&self) -> usize {
        self.manifest.tokenizer.vocab_size
    }

    pub fn bos_id(&self) -> Option<i64> {
        self.manifest.bos_id
    }

    pub fn eos_id(&self) -> Option<i64> {
        self.manifest.eos_id
    }

    /// Refuses a set holding a token id at or beyond `vocab` (a set packed for another model,
    /// or a damaged shard), naming the shard: checked when a trainer opens the set, since an
    /// id beyond the embedding would otherwise fail mid-training. Reads every shard once.
    pub fn check_token_ids(&self, vocab: usize) -> Result<()> {
        for split in [Split::Train, Split::Heldout] {
            for (path, map, _) in &self.split(split).shards {
                let max = match self.manifest.dtype {
                    TokenDtype::U16 => map
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
                        .max(),
                    TokenDtype::U32 => map
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
                        .max(),
                };
                if let Some(id) = max.filter(|&id| id >= vocab as u64) {
                    bail!(
                        "{}: token id {id} is beyond the model's vocabulary of {vocab}",
                        path.display()
                    );
                }
            }
        }
        Ok(())
    }

    fn split(&self, split: Split) -> &SplitData {
        match split {
            Split::Train => &self.train,
            Split::Heldout => &self.heldout,
        }
    }

    pub fn rows(&self, split: Split) -> usize {
        self.split(split).rows
    }

    /// Row `i` of `split` (`seq_len + 1` ids). Panics when `i >= rows(split)`.
    pub fn row(&self, split: Split, i: usize) -> Vec<i64> {
        let mut out = vec![0; self.row_len()];
        self.read_row(split, i, &mut out);
        out
    }

    /// Row `i` of `split` into `out` (of length `row_len()`). Panics when `i >= rows(split)`.
    pub fn read_row(&self, split: Split, i: usize, out: &mut [i64]) {
        let data = self.split(split);
        assert!(
            i < data.rows,
            "row {i} out of range: {split} has {} rows",
            data.rows
        );
        assert_eq!(out.len(), self.row_len(), "output buffer length");
        let shard = data.shards.partition_point(|(_, _, first)| *first <= i) - 1;
        let (_, map, first) = &data.shards[shard];
        let width = self.manifest.dtype.bytes();
        let start = (i - first) * self.row_len() * width;
        let bytes = &map[start..start + self.row_len() * width];
        match self.manifest.dtype {
            TokenDtype::U16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u16::from_le_bytes([b[0], b[1]]) as i64;
                }
            }
            TokenDtype::U32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64;
                }
            }
        }
    }

    /// Errors unless `tokenizer`'s `tokenizer.json` is byte-identical (SHA-256) to the one this
    /// set was packed with.
    pub fn check_tokenizer(&self, tokenizer: &Tokenizer) -> Result<()> {
        let bytes = fs::read(tokenizer.path())
            .with_context(|| format!("{}: cannot read tokenizer", tokenizer.path().display()))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if sha != self.manifest.tokenizer.sha256 {
            bail!(
                "packed with a different tokenizer: {} was packed with {} (sha256 {}, vocab {}), \
                 but {} has sha256 {} (vocab {})",
                self.dir.display(),
                self.manifest.tokenizer.file.display(),
                short(&self.manifest.tokenizer.sha256),
                self.manifest.tokenizer.vocab_size,
                tokenizer.path().display(),
                short(&sha),
                tokenizer.vocab_size()
            );
        }
        Ok(())
    }

    /// Hashes every shard and compares with the manifest (reads all the data).
    pub fn verify_checksums(&self) -> Result<()> {
        for split in Split::ALL {
            for (info, (path, map, _)) in self
                .manifest
                .splits
                .get(split)
                .shards
                .iter()
                .zip(&self.split(split).shards)
            {
                let sha = hex::encode(Sha256::digest(&map[..]));
                if sha != info.sha256 {
                    bail!(
                        "{}: checksum mismatch (sha256 {}, the manifest expects {})",
                        path.display(),
                        short(&sha),
                        short(&info.sha256)
                    );
                }
            }
        }
        Ok(())
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(16)]
}
