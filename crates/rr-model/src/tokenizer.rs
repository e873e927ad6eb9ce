//! Tokenizers through the `tokenizers` crate, from a model directory's `tokenizer.json`.

use std::path::{Path, PathBuf};

use anyhow::Result;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a model directory (or the file itself).
    pub fn from_path(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !file.exists() {
            anyhow::bail!("{}: tokenizer file not found", file.display());
        }
        let inner = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| anyhow::anyhow!("{}: invalid tokenizer ({e})", file.display()))?;
        Ok(Self { inner, path: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`; with `add_special_tokens` the tokenizer's own post-processor
    /// decides whether a BOS is prepended (as Hugging Face does).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("{}: cannot encode text ({e})", self.path.display()))?;
        Ok(enc.get_ids().iter().map(|&id| id as i64).collect())
    }

    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| anyhow::anyhow!("{}: cannot decode ids ({e})", self.path.display()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    pub fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.id_to_token(id))
    }

    /// The end-of-sequence id named by `tokenizer_config.json` beside `tokenizer.json`, or by
    /// `generation_config.json` (recurrent checkpoints must not trust their model config).
    pub fn eos_id(&self) -> Option<i64> {
        self.special_id("eos_token", "eos_token_id")
    }

    /// The beginning-of-sequence id (Hugging Face's `tokenizer.bos_token_id`): the token named
    /// `bos_token` by `tokenizer_config.json`, else `generation_config.json`'s `bos_token_id`.
    pub fn bos_id(&self) -> Option<i64> {
        self.special_id("bos_token", "bos_token_id")
    }

    /// The id of the special token `key` of `tokenizer_config.json`, else `id_key` of
    /// `generation_config.json`.
    fn special_id(&self, key: &str, id_key: &str) -> Option<i64> {
        let dir = self.path.parent()?;
        let read = |name: &str| -> Option<serde_json::Value> {
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
        };
        if let Some(cfg) = read("tokenizer_config.json") {
            let token = match &cfg[key] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => {
                    o.get("content").and_then(|c| c.as_str()).map(String::from)
                }
                _ => None,
            };
            if let Some(id) = token.and_then(|t| self.token_to_id(&t)) {
                return Some(id);
            }
        }
        let generation = read("generation_config.json")?;
        let id = generation[id_key].as_i64()?;
        (id >= 0 && (id as usize) < self.vocab_size()).then_some(id)
    }

    /// The model family of the tokenizer (BPE, Unigram, WordPiece, ...).
    pub fn model_kind(&self) -> String {
        let json = serde_json::to_value(self.inner.get_model()).unwrap_or_default();
        json.get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("unknown")
            .to_string()
    }

    /// Whether encoding with special tokens prepends something (a BOS) to plain text.
    pub fn adds_bos(&self) -> Option<i64> {
        let with = self.encode("a", true).ok()?;
        let without = self.encode("a", false).ok()?;
        (with.len() > without.len()).then(|| with[0])
    }
}
