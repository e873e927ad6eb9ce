//! `config.json` of a recurrent checkpoint, field for field as the published (Huginn / Raven)
//! files have it (`shared/spec/raven-format.md`), plus our `block_type`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{LlamaConfig, ModelType, RopeScaling};

/// Huginn's state scale √(2/(5·5280)); not rescaled to the model width (method.md §2).
pub const HUGINN_STD: f64 = 0.008703882797784892;
/// Huginn's output-projection init scale, kept for format compatibility.
pub const HUGINN_OUT_PROJ_STD: f64 = 0.0005356869554443541;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitValues {
    pub std: f64,
    #[serde(default = "default_std")]
    pub embedding: f64,
    #[serde(default = "default_out_proj")]
    pub out_proj: f64,
    #[serde(default = "default_embed_scale")]
    pub embed_scale: f64,
}

fn default_std() -> f64 {
    HUGINN_STD
}
fn default_out_proj() -> f64 {
    HUGINN_OUT_PROJ_STD
}
fn default_embed_scale() -> f64 {
    1.0
}
fn default_backprop_depth() -> usize {
    8
}
fn default_linear() -> String {
    "linear".into()
}
fn default_like_init() -> String {
    "like-init".into()
}

impl Default for InitValues {
    fn default() -> Self {
        Self {
            std: HUGINN_STD,
            embedding: HUGINN_STD,
            out_proj: HUGINN_OUT_PROJ_STD,
            embed_scale: 1.0,
        }
    }
}

/// `config.json` of a recurrent checkpoint, field for field as the published files have it.
/// Unknown keys (Huginn's bos/eos/pad ids, a stray `tie_word_embeddings`) are ignored: special
/// tokens come from the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecurrentConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: String,
    #[serde(default)]
    pub auto_map: BTreeMap<String, String>,
    /// Ours: the source block form. The authors' files (Llama sources) have no such key.
    #[serde(default = "default_block_type")]
    pub block_type: ModelType,
    pub n_embd: usize,
    /// Some files name it `num_attention_heads`.
    #[serde(alias = "num_attention_heads")]
    pub n_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_layers_in_prelude: usize,
    pub n_layers_in_recurrent_block: usize,
    pub n_layers_in_coda: usize,
    pub vocab_size: usize,
    #[serde(default)]
    pub padded_vocab_size: Option<usize>,
    pub norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Huginn's older name for θ; read when `rope_theta` is absent, never written.
    #[serde(default, skip_serializing)]
    pub rope_base: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub block_size: Option<usize>,
    #[serde(default)]
    pub tie_embeddings: bool,
    #[serde(default)]
    pub bias: bool,
    #[serde(default)]
    pub qk_bias: bool,
    pub mean_recurrence: usize,
    #[serde(default = "default_backprop_depth")]
    pub mean_backprop_depth: usize,
    #[serde(default = "default_linear")]
    pub injection_type: String,
    #[serde(default = "default_like_init")]
    pub state_init: String,
    #[serde(default)]
    pub init_values: InitValues,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_block_type() -> ModelType {
    ModelType::Llama
}

pub const RAVEN_MODEL_TYPE: &str = "huginn_raven";

impl RecurrentConfig {
    /// A recurrent config for blocks of `source` with the given stack sizes.
    pub fn from_source(
        source: &LlamaConfig,
        prelude: usize,
        core: usize,
        coda: usize,
        mean_recurrence: usize,
    ) -> Self {
        let auto_map = auto_map();
        Self {
            architectures: vec!["RavenForCausalLM".into()],
            model_type: RAVEN_MODEL_TYPE.into(),
            auto_map,
            block_type: source.model_type,
            n_embd: source.hidden_size,
            n_heads: source.num_attention_heads,
            num_key_value_heads: Some(source.num_kv_heads()),
            head_dim: Some(source.head_dim()),
            intermediate_size: source.intermediate_size,
            n_layers: prelude + core + coda,
            n_layers_in_prelude: prelude,
            n_layers_in_recurrent_block: core,
            n_layers_in_coda: coda,
            vocab_size: source.vocab_size,
            padded_vocab_size: Some(source.vocab_size),
            norm_eps: source.rms_norm_eps,
            rope_theta: Some(source.rope_theta),
            rope_base: None,
            rope_scaling: source.rope_scaling.clone(),
            max_position_embeddings: source.max_position_embeddings,
            block_size: Some(source.max_position_embeddings),
            tie_embeddings: false,
            bias: false,
            qk_bias: false,
            mean_recurrence,
            mean_backprop_depth: 8,
            injection_type: "linear".into(),
            state_init: "like-init".into(),
            init_values: InitValues::default(),
            torch_dtype: source.torch_dtype.clone(),
        }
    }

    pub fn from_path(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("{}: cannot read model config", file.display()))?;
        let mut cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid recurrent model config", file.display()))?;
        for note in cfg.normalize() {
            eprintln!("warning: {}: {note}", file.display());
        }
        cfg.validate()
            .with_context(|| format!("{}", file.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.model_type != RAVEN_MODEL_TYPE {
            bail!(
                "model_type is `{}`, expected `{RAVEN_MODEL_TYPE}`",
                self.model_type
            );
        }
        for (name, n) in [
            ("n_layers_in_prelude", self.n_layers_in_prelude),
            (
                "n_layers_in_recurrent_block",
                self.n_layers_in_recurrent_block,
            ),
            ("n_layers_in_coda", self.n_layers_in_coda),
            ("padded_vocab_size", self.padded_vocab_size()),
        ] {
            let limit = if name == "padded_vocab_size" {
                crate::config::MAX_DIM
            } else {
                crate::config::MAX_LAYERS
            };
            if n > limit {
                bail!("`{name}` {n} is beyond the supported {limit}");
            }
        }
        if self.n_layers_in_recurrent_block == 0 {
            bail!("n_layers_in_recurrent_block must be at least 1 (an empty core cannot recur)");
        }
        if self.injection_type != "linear" {
            bail!(
                "injection_type `{}` is not supported (only `linear`)",
                self.injection_type
            );
        }
        if self.bias || self.qk_bias {
            bail!("biases (bias / qk_bias) are not supported");
        }
        if self.tie_embeddings {
            bail!("tie_embeddings must be false: the head is stored as its own tensor");
        }
        if self.init_values.std.is_nan() || self.init_values.std <= 0.0 {
            bail!("init_values.std must be positive");
        }
        if self.mean_recurrence == 0 {
            bail!("mean_recurrence must be at least 1");
        }
        if self.padded_vocab_size() < self.vocab_size {
            bail!("padded_vocab_size is smaller than vocab_size");
        }
        self.block_config().validate()
    }

    /// Settles what real files leave open, returning one line for each thing it settled:
    /// an `n_layers` that disagrees with the three stacks (which are authoritative) is
    /// replaced by their sum; a missing `rope_theta` is taken from Huginn's `rope_base`, or is
    /// the default 10000.
    pub fn normalize(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let total =
            self.n_layers_in_prelude + self.n_layers_in_recurrent_block + self.n_layers_in_coda;
        if total != self.n_layers {
            notes.push(format!(
                "n_layers is {}, but prelude + core + coda = {total}; using the three stacks",
                self.n_layers
            ));
            self.n_layers = total;
        }
        if self.rope_theta.is_none() {
            let (theta, from) = match self.rope_base {
                Some(base) => (base, "rope_base"),
                None => (10_000.0, "the default"),
            };
            notes.push(format!("no rope_theta; using RoPE θ {theta} from {from}"));
            self.rope_theta = Some(theta);
        }
        notes
    }

    pub fn padded_vocab_size(&self) -> usize {
        self.padded_vocab_size.unwrap_or(self.vocab_size)
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_theta.or(self.rope_base).unwrap_or(10_000.0)
    }

    /// The per-block hyperparameters as a `LlamaConfig`, which the shared blocks are built from.
    pub fn block_config(&self) -> LlamaConfig {
        LlamaConfig {
            model_type: self.block_type,
            hidden_size: self.n_embd,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.n_layers,
            num_attention_heads: self.n_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            vocab_size: self.padded_vocab_size(),
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.norm_eps,
            rope_theta: self.rope_theta(),
            rope_scaling: self.rope_scaling.clone(),
            rope_parameters: None,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
            hidden_act: None,
            attention_bias: false,
            mlp_bias: false,
            torch_dtype: self.torch_dtype.clone(),
        }
    }

    /// Transformer-block parameters of one layer (method.md §7 counts only these).
    pub fn params_per_layer(&self) -> usize {
        self.block_config().params_per_layer()
    }

    /// Parameters the config implies (blocks, embeddings, head, adapter, final norm), in u128
    /// so that no config can overflow it; compared with the files before allocating.
    pub fn parameter_elements(&self) -> u128 {
        let h = self.n_embd as u128;
        let v = self.padded_vocab_size() as u128;
        let layers = (self.n_layers_in_prelude
            + self.n_layers_in_recurrent_block
            + self.n_layers_in_coda) as u128;
        layers * self.params_per_layer() as u128 + 2 * v * h + 2 * h * h + h
    }

    /// `N_p + N_c + r·N_core`: effective parameters at recurrence r (method.md §7).
    pub fn effective_parameters(&self, r: usize) -> usize {
        let per = self.params_per_layer();
        per * (self.n_layers_in_prelude
            + self.n_layers_in_coda
            + r * self.n_layers_in_recurrent_block)
    }
}

/// The Python configuration and modelling code written beside every recurrent checkpoint, by
/// the names `auto_map` gives them, so that transformers loads the directory with
/// `trust_remote_code=True` (and lm-evaluation-harness's `hf` model runs it).
pub const PYTHON_FILES: [(&str, &str); 2] = [
    (
        "raven_config_minimal.py",
        include_str!("python/raven_config_minimal.py"),
    ),
    (
        "raven_modeling_minimal.py",
        include_str!("python/raven_modeling_minimal.py"),
    ),
];

/// Writes `config.json` and the Python files of [`PYTHON_FILES`] into `dir`: every recurrent
/// save goes through here, so every recurrent checkpoint opens in transformers as it is.
pub fn write_config(config: &RecurrentConfig, dir: &Path) -> Result<()> {
    let mut config = config.clone();
    config.auto_map = auto_map();
    let mut text = serde_json::to_string_pretty(&config)?;
    text.push('\n');
    let files = std::iter::once(("config.json", text.as_str())).chain(PYTHON_FILES);
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::write(&path, content)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

/// `auto_map` naming the classes of [`PYTHON_FILES`].
fn auto_map() -> BTreeMap<String, String> {
    [
        ("AutoConfig", "raven_config_minimal.RavenConfig"),
        (
            "AutoModelForCausalLM",
            "raven_modeling_minimal.RavenForCausalLM",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Whether a model directory holds a recurrent (Raven) checkpoint.
pub fn is_recurrent_dir(dir: &Path) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        model_type: Option<String>,
    }
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Probe>(&t).ok())
        .and_then(|p| p.model_type)
        .is_some_and(|t| t == RAVEN_MODEL_TYPE)
}
