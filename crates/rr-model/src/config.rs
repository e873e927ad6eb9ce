//! `LlamaConfig`: deserialised straight from a Hugging Face `config.json`.
//!
//! One struct covers every Llama-family checkpoint we meet (Llama-2/3.x, TinyLlama, SmolLM2)
//! and OLMo-2, whose blocks differ only in where the norms sit (see [`ModelType`]).
//! Unknown keys are ignored, as `transformers` does; fields we cannot honour are rejected
//! by [`LlamaConfig::validate`] rather than silently computing something else.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The decoder families we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    /// Pre-norm blocks: `x + attn(norm(x))`, `x + mlp(norm(x))`.
    Llama,
    /// Post-norm blocks: `x + norm(attn(x))`, `x + norm(mlp(x))`, with RMSNorm over the full
    /// q and k projections before RoPE.
    Olmo2,
}

/// `rope_scaling` as Hugging Face writes it. Only the `llama3` frequency scaling (and no
/// scaling) is implemented; anything else is refused by `validate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// Newer configs say `rope_type`, older ones `type`.
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// `rope_parameters` of transformers ≥ 5: the scaling fields plus `rope_theta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(flatten)]
    pub scaling: RopeScaling,
}

/// Token ids may be one id or a list (Llama-3 lists several end-of-turn ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

fn default_model_type() -> ModelType {
    ModelType::Llama
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> usize {
    2048
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "default_model_type")]
    pub model_type: ModelType,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Absent in older configs: then every head has its own keys and values.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Absent in most configs: then `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// transformers ≥ 5 writes θ and the scaling together here instead of `rope_theta` and
    /// `rope_scaling`; `from_json_str` folds it into those two fields.
    #[serde(default, skip_serializing)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

impl LlamaConfig {
    /// Reads and validates `config.json` (a file, or a model directory containing one).
    pub fn from_path(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("{}: cannot read model config", file.display()))?;
        Self::from_json_str(&text).with_context(|| format!("{}", file.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let mut cfg: LlamaConfig = serde_json::from_str(text).context("invalid model config")?;
        if let Some(params) = cfg.rope_parameters.take() {
            if let Some(theta) = params.rope_theta {
                cfg.rope_theta = theta;
            }
            if params.scaling.rope_type != "default" {
                cfg.rope_scaling = Some(params.scaling);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects configs that would deserialize but that this implementation cannot compute
    /// faithfully.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("invalid model config: `{name}` must be positive");
            }
            // Checked before anything is allocated from these sizes.
            let limit = if name == "num_hidden_layers" {
                MAX_LAYERS
            } else {
                MAX_DIM
            };
            if value > limit {
                bail!("invalid model config: `{name}` {value} is beyond the supported {limit}");
            }
        }
        for (name, value) in [
            ("head_dim", self.head_dim.unwrap_or(0)),
            ("num_key_value_heads", self.num_key_value_heads.unwrap_or(0)),
        ] {
            if value > MAX_DIM {
                bail!("invalid model config: `{name}` {value} is beyond the supported {MAX_DIM}");
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "invalid model config: hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            bail!(
                "invalid model config: head_dim {} must be even and positive (RoPE)",
                self.head_dim()
            );
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            bail!(
                "invalid model config: num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            );
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                bail!("invalid model config: hidden_act `{act}` is not supported (only `silu`)");
            }
        }
        if self.attention_bias || self.mlp_bias {
            bail!("invalid model config: attention or MLP biases are not supported");
        }
        if not_positive(self.rms_norm_eps) || not_positive(self.rope_theta) {
            bail!("invalid model config: rms_norm_eps and rope_theta must be positive");
        }
        self.validate_rope_scaling()
    }

    fn validate_rope_scaling(&self) -> Result<()> {
        if let Some(scaling) = &self.rope_scaling {
            match scaling.rope_type.as_str() {
                "default" => {}
                "llama3" => {
                    if scaling.factor.is_none()
                        || scaling.low_freq_factor.is_none()
                        || scaling.high_freq_factor.is_none()
                        || scaling.original_max_position_embeddings.is_none()
                    {
                        bail!(
                            "invalid model config: rope_scaling `llama3` needs factor, low_freq_factor, \
                             high_freq_factor and original_max_position_embeddings"
                        );
                    }
                }
                other => bail!(
                    "invalid model config: rope_scaling type `{other}` is not supported (only `llama3`)"
                ),
            }
        }
        if let Some(ids) = &self.eos_token_id {
            if ids.to_vec().iter().any(|&id| id < 0) {
                bail!("invalid model config: negative eos_token_id");
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Parameters of one transformer block (attention, MLP and norms).
    /// Parameters the config implies (blocks, embeddings, final norm, an untied head), in
    /// u128 so that no config can overflow it; compared with the files before allocating.
    pub fn parameter_elements(&self) -> u128 {
        let (h, v) = (self.hidden_size as u128, self.vocab_size as u128);
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        self.num_hidden_layers as u128 * self.params_per_layer() as u128 + heads * v * h + h
    }

    pub fn params_per_layer(&self) -> usize {
        let h = self.hidden_size;
        let d = self.head_dim();
        let q = self.num_attention_heads * d;
        let kv = self.num_kv_heads() * d;
        let attn = h * (q + 2 * kv) + q * h;
        let mlp = 3 * h * self.intermediate_size;
        let norms = match self.model_type {
            ModelType::Llama => 2 * h,
            ModelType::Olmo2 => 2 * h + q + kv,
        };
        attn + mlp + norms
    }

    pub fn eos_token_ids(&self) -> Vec<i64> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }
}

/// The largest size of any one dimension in a config (vocabulary, width, context, heads).
pub const MAX_DIM: usize = 1 << 24;
/// The most layers a config may have.
pub const MAX_LAYERS: usize = 1 << 12;

/// True for zero, negatives and NaN: what a "must be positive" check rejects.
fn not_positive(x: f64) -> bool {
    x.is_nan() || x <= 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINYLLAMA: &str = r#"{"architectures":["LlamaForCausalLM"],"bos_token_id":1,"eos_token_id":2,
        "hidden_act":"silu","hidden_size":2048,"initializer_range":0.02,"intermediate_size":5632,
        "max_position_embeddings":2048,"model_type":"llama","num_attention_heads":32,
        "num_hidden_layers":22,"num_key_value_heads":4,"pretraining_tp":1,"rms_norm_eps":1e-05,
        "rope_scaling":null,"tie_word_embeddings":false,"torch_dtype":"bfloat16",
        "transformers_version":"4.31.0.dev0","use_cache":true,"vocab_size":32000}"#;

    #[test]
    fn tinyllama_layer_parameters_match_the_spec() {
        // method.md §7: TinyLlama has 44,044,288 parameters per layer.
        let cfg = LlamaConfig::from_json_str(TINYLLAMA).unwrap();
        assert_eq!(cfg.head_dim(), 64);
        assert_eq!(cfg.num_kv_heads(), 4);
        assert_eq!(cfg.params_per_layer(), 44_044_288);
    }

    #[test]
    fn llama32_1b_with_rope_scaling() {
        let text = r#"{"hidden_size":2048,"intermediate_size":8192,"num_hidden_layers":16,
            "num_attention_heads":32,"num_key_value_heads":8,"head_dim":64,"vocab_size":128256,
            "rope_theta":500000.0,"tie_word_embeddings":true,"eos_token_id":[128001,128008,128009],
            "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},"model_type":"llama"}"#;
        let cfg = LlamaConfig::from_json_str(text).unwrap();
        assert_eq!(cfg.params_per_layer(), 60_821_504);
        assert_eq!(cfg.eos_token_ids(), vec![128001, 128008, 128009]);
    }

    #[test]
    fn olmo2_1b_layer_parameters_match_the_spec() {
        // OLMo-2-0425-1B (method.md §7: 67,117,056 per layer, QK-norm over full projections).
        let text = r#"{"model_type":"olmo2","hidden_size":2048,"intermediate_size":8192,
            "num_hidden_layers":16,"num_attention_heads":16,"num_key_value_heads":16,
            "vocab_size":100352,"max_position_embeddings":4096,"rms_norm_eps":1e-6,
            "rope_theta":500000,"tie_word_embeddings":false}"#;
        let cfg = LlamaConfig::from_json_str(text).unwrap();
        assert_eq!(cfg.model_type, ModelType::Olmo2);
        assert_eq!(cfg.params_per_layer(), 67_117_056);
    }

    #[test]
    fn transformers5_rope_parameters_are_read() {
        let text = r#"{"hidden_size":64,"intermediate_size":96,"num_hidden_layers":1,
            "num_attention_heads":4,"vocab_size":97,"rope_parameters":{"rope_type":"llama3",
            "rope_theta":500000.0,"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":32}}"#;
        let cfg = LlamaConfig::from_json_str(text).unwrap();
        assert_eq!(cfg.rope_theta, 500000.0);
        assert_eq!(cfg.rope_scaling.as_ref().unwrap().factor, Some(8.0));
        let plain = text.replace("\"llama3\"", "\"default\"");
        let cfg = LlamaConfig::from_json_str(&plain).unwrap();
        assert!(cfg.rope_scaling.is_none());
        assert_eq!(cfg.rope_theta, 500000.0);
    }

    #[test]
    fn bad_configs_are_rejected_with_the_field_named() {
        let missing = r#"{"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":10}"#;
        let err = format!("{:#}", LlamaConfig::from_json_str(missing).unwrap_err());
        assert!(err.contains("hidden_size"), "{err}");
        let wrong_type = TINYLLAMA.replace("\"hidden_size\":2048", "\"hidden_size\":\"big\"");
        let err = format!("{:#}", LlamaConfig::from_json_str(&wrong_type).unwrap_err());
        assert!(
            err.contains("hidden_size") || err.contains("invalid type"),
            "{err}"
        );
        let bad_gqa = TINYLLAMA.replace("\"num_key_value_heads\":4", "\"num_key_value_heads\":5");
        let err = format!("{:#}", LlamaConfig::from_json_str(&bad_gqa).unwrap_err());
        assert!(err.contains("num_key_value_heads"), "{err}");
        let gelu = TINYLLAMA.replace("\"silu\"", "\"gelu\"");
        assert!(LlamaConfig::from_json_str(&gelu).is_err());
        let yarn = TINYLLAMA.replace(
            "\"rope_scaling\":null",
            "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":2.0}",
        );
        let err = format!("{:#}", LlamaConfig::from_json_str(&yarn).unwrap_err());
        assert!(err.contains("yarn"), "{err}");
    }
}
