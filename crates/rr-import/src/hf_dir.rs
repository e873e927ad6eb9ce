//! Writing a Hugging Face-style Llama directory: `config.json`, `generation_config.json`, a
//! streamed `model.safetensors`, the tokenizer files, into a [`rr_util::fs::StagingDir`] that
//! the importers rename into place at the end.
//!
//! Why a hand-rolled safetensors writer: the `safetensors` crate serialises from views that must
//! all be in memory at once; a 7B model dequantised to f32 is 28 GB. The format is a little-endian
//! u64 header length, a JSON header of `{name: {dtype, shape, data_offsets}}`, then the raw bytes,
//! so we write the header from shapes alone and then stream one tensor at a time. The tests read
//! the result back with the `safetensors` crate.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Upper bounds accepted for any width (hidden, heads, vocabulary, ...) and for the layer count.
pub const MAX_DIM: usize = 1 << 24;
pub const MAX_LAYERS: usize = 1 << 14;

/// Hyperparameters of a Llama model, as written to `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHyper {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl LlamaHyper {
    /// Checks the relations the model code relies on; `source` names the file for errors.
    pub fn validate(&self, source: &Path) -> Result<()> {
        let ctx = |msg: String| anyhow::anyhow!("{}: {msg}", source.display());
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return Err(ctx(format!("{name} is 0")));
            }
            // Far above any real model; keeps every size product below 2^64 and refuses
            // corrupt headers before anything is allocated from them.
            let limit = if name == "num_hidden_layers" {
                MAX_LAYERS
            } else {
                MAX_DIM
            };
            if v > limit {
                return Err(ctx(format!(
                    "{name} = {v} is implausibly large (limit {limit})"
                )));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(ctx(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ctx(format!(
                "head_dim {} is odd (rotary embeddings need it even)",
                self.head_dim
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(ctx(format!(
                "rms_norm_eps {} is not a positive number",
                self.rms_norm_eps
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(ctx(format!(
                "rope_theta {} is not a positive number",
                self.rope_theta
            )));
        }
        Ok(())
    }

    pub fn config_json(&self) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        })
    }

    pub fn generation_config_json(&self) -> Value {
        json!({
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        })
    }

    /// How many heads the rows of a q or k projection (by Hugging Face name) are grouped in, for
    /// the importers' rotary layout conversion; `None` for every other tensor.
    pub fn rotary_heads(&self, name: &str) -> Option<usize> {
        if name.ends_with("q_proj.weight") {
            Some(self.num_attention_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(self.num_key_value_heads)
        } else {
            None
        }
    }

    /// The tensors of a Llama model in Hugging Face naming, with their shapes, in a fixed order.
    pub fn tensor_plan(&self) -> Vec<TensorPlan> {
        let (h, f) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut plan = vec![TensorPlan::new(
            "model.embed_tokens.weight",
            vec![self.vocab_size, h],
        )];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            plan.push(TensorPlan::new(
                format!("{p}.input_layernorm.weight"),
                vec![h],
            ));
            plan.push(TensorPlan::new(
                format!("{p}.self_attn.q_proj.weight"),
                vec![q, h],
            ));
            plan.push(TensorPlan::new(
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv, h],
            ));
            plan.push(TensorPlan::new(
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv, h],
            ));
            plan.push(TensorPlan::new(
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, q],
            ));
            plan.push(TensorPlan::new(
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
            ));
            plan.push(TensorPlan::new(
                format!("{p}.mlp.gate_proj.weight"),
                vec![f, h],
            ));
            plan.push(TensorPlan::new(
                format!("{p}.mlp.up_proj.weight"),
                vec![f, h],
            ));
            plan.push(TensorPlan::new(
                format!("{p}.mlp.down_proj.weight"),
                vec![h, f],
            ));
        }
        plan.push(TensorPlan::new("model.norm.weight", vec![h]));
        if !self.tie_word_embeddings {
            plan.push(TensorPlan::new("lm_head.weight", vec![self.vocab_size, h]));
        }
        plan
    }
}

/// One tensor to be written: Hugging Face name and shape (always F32).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorPlan {
    pub fn new(name: impl Into<String>, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            shape,
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Writes `config.json` and `generation_config.json` for `hyper` into `dir`.
pub fn write_config_files(dir: &Path, hyper: &LlamaHyper) -> Result<()> {
    write_json(&dir.join("config.json"), &hyper.config_json())?;
    write_json(
        &dir.join("generation_config.json"),
        &hyper.generation_config_json(),
    )
}

/// Writes `model.safetensors` (all F32) by asking `produce(i)` for tensor `i` of `plan`, one at a
/// time, in plan order. Returns the number of parameters written.
pub fn write_safetensors(
    path: &Path,
    plan: &[TensorPlan],
    mut produce: impl FnMut(usize) -> Result<Vec<f32>>,
) -> Result<usize> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset: usize = 0;
    for t in plan {
        let bytes = t
            .numel()
            .checked_mul(4)
            .ok_or_else(|| anyhow::anyhow!("tensor {} is too large", t.name))?;
        let end = offset
            .checked_add(bytes)
            .ok_or_else(|| anyhow::anyhow!("model is too large for safetensors offsets"))?;
        header.insert(
            t.name.clone(),
            json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header_bytes = serde_json::to_vec(&Value::Object(header))?;
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while !header_bytes.len().is_multiple_of(8) {
        header_bytes.push(b' ');
    }

    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let werr = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", path.display());
    w.write_all(&(header_bytes.len() as u64).to_le_bytes())
        .map_err(werr)?;
    w.write_all(&header_bytes).map_err(werr)?;
    let mut params = 0usize;
    let mut buf: Vec<u8> = Vec::new();
    for (i, t) in plan.iter().enumerate() {
        let data = produce(i)?;
        if data.len() != t.numel() {
            anyhow::bail!(
                "internal error: tensor {} produced {} values, shape {:?} needs {}",
                t.name,
                data.len(),
                t.shape,
                t.numel()
            );
        }
        buf.clear();
        buf.reserve(data.len() * 4);
        for v in &data {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf).map_err(werr)?;
        params += data.len();
    }
    w.flush().map_err(werr)?;
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?
        .sync_all()
        .map_err(werr)?;
    Ok(params)
}

/// Pretty-prints `value` to `path`.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
