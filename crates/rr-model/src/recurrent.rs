//! The depth-recurrent model (Huginn / "Raven" layout): a prelude of blocks that runs once, a
//! recurrent core that runs r times on a latent state, a coda that runs once.
//!
//! ```text
//! e = prelude(embed(ids))
//! s = initial state (truncated normal, σ0 = init_values.std, cut at ±3σ0)
//! repeat r times: s = core(adapter(cat[s, e]))      # state first, prelude output second
//! logits = lm_head(ln_f(coda(s)))
//! ```
//!
//! Variable names mirror the published checkpoint (`transformer.core_block.3.attn.Wqkv.weight`),
//! see `shared/spec/raven-format.md`. Blocks keep their source form (Llama pre-norm or OLMo-2
//! post-norm with QK-norm); the published format has no field for that, so we add
//! `block_type` (absent = `llama`, which is what the authors' files hold).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use crate::config::{LlamaConfig, ModelType, RopeScaling};
use crate::llama::{extend_key_mask, positions_and_mask, Block, LayerKv, Layout, RmsNorm, Rope};
use crate::weights::{write_safetensors, SafetensorsFiles};

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
        let auto_map = [
            ("AutoConfig", "raven_config_minimal.RavenConfig"),
            (
                "AutoModelForCausalLM",
                "raven_modeling_minimal.RavenForCausalLM",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
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
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid recurrent model config", file.display()))?;
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
        if self.n_layers_in_recurrent_block == 0 {
            bail!("n_layers_in_recurrent_block must be at least 1 (an empty core cannot recur)");
        }
        let total =
            self.n_layers_in_prelude + self.n_layers_in_recurrent_block + self.n_layers_in_coda;
        if total != self.n_layers {
            bail!(
                "n_layers is {}, but prelude + core + coda = {total}",
                self.n_layers
            );
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

    /// `N_p + N_c + r·N_core`: effective parameters at recurrence r (method.md §7).
    pub fn effective_parameters(&self, r: usize) -> usize {
        let per = self.params_per_layer();
        per * (self.n_layers_in_prelude
            + self.n_layers_in_coda
            + r * self.n_layers_in_recurrent_block)
    }
}

/// Where the latent state starts.
#[derive(Debug)]
pub enum InitialState {
    /// Truncated normal (σ0, cut at ±3σ0), drawn per token position from a generator seeded
    /// by `(seed, position)`: the same seed gives the same state whatever the batch, its
    /// order, its padding, or whether the tokens come through a cache.
    Random {
        seed: u64,
    },
    Zeros,
    /// A given state [B, T, h].
    Given(Tensor),
}

/// Keys and values for recurrent decoding: one slot per prelude layer, per (iteration, core
/// layer) pair, and per coda layer.
#[derive(Debug, Default)]
pub struct RecurrentCache {
    pub prelude: Vec<LayerKv>,
    /// `core[i]` holds the core layers' slots of iteration i.
    pub core: Vec<Vec<LayerKv>>,
    pub coda: Vec<LayerKv>,
    pub key_mask: Option<Tensor>,
    pub len: i64,
}

pub struct RecurrentOutput {
    /// [B, T, vocab]
    pub logits: Tensor,
    /// The final latent state [B, T, h] (the coda's input).
    pub state: Tensor,
}

pub struct RecurrentModel {
    pub config: RecurrentConfig,
    pub vs: nn::VarStore,
    pub wte: Tensor,
    pub prelude: Vec<Block>,
    /// [h, 2h]: columns [:, :h] act on the state, [:, h:] on the prelude output.
    pub adapter: Tensor,
    pub core_block: Vec<Block>,
    pub coda: Vec<Block>,
    pub ln_f: RmsNorm,
    pub lm_head: Tensor,
    pub rope: Rope,
}

impl RecurrentModel {
    /// Builds the model with placeholder weights in `vs`.
    pub fn new(vs: nn::VarStore, config: RecurrentConfig) -> Self {
        let block_cfg = config.block_config();
        let root = vs.root();
        let tr = &root / "transformer";
        let h = config.n_embd as i64;
        let v = config.padded_vocab_size() as i64;
        let stack = |name: &str, n: usize| -> Vec<Block> {
            (0..n)
                .map(|i| Block::new(&tr / name / i, &block_cfg, Layout::Raven))
                .collect()
        };
        let wte = (&tr / "wte").var("weight", &[v, h], Init::Const(0.0));
        let prelude = stack("prelude", config.n_layers_in_prelude);
        let adapter = (&tr / "adapter").var("weight", &[h, 2 * h], Init::Const(0.0));
        let core_block = stack("core_block", config.n_layers_in_recurrent_block);
        let coda = stack("coda", config.n_layers_in_coda);
        let ln_f = RmsNorm::new(&tr / "ln_f", h, config.norm_eps);
        let lm_head = (&root / "lm_head").var("weight", &[v, h], Init::Const(0.0));
        let rope = Rope::new(&block_cfg, vs.device());
        Self {
            config,
            vs,
            wte,
            prelude,
            adapter,
            core_block,
            coda,
            ln_f,
            lm_head,
            rope,
        }
    }

    /// Loads a recurrent checkpoint directory; parameters in `dtype` whatever the file holds.
    pub fn load(dir: &Path, device: Device, dtype: Kind) -> Result<Self> {
        let config = RecurrentConfig::from_path(dir)?;
        let files = SafetensorsFiles::open_dir(dir)?;
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(dtype);
        let model = Self::new(vs, config);
        let vars = model.vs.variables();
        for name in files.names() {
            if !vars.contains_key(name) && !name.ends_with("freqs_cis") {
                let file = files
                    .file_of(name)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                bail!(
                    "{file}: tensor `{name}` does not belong to the model described by config.json \
                     ({} prelude, {} core, {} coda layers)",
                    model.config.n_layers_in_prelude,
                    model.config.n_layers_in_recurrent_block,
                    model.config.n_layers_in_coda
                );
            }
        }
        files.load_into(&model.vs, |name| name.to_string())?;
        Ok(model)
    }

    /// Every parameter by its checkpoint name, sorted.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Writes `config.json` and `model.safetensors` into an existing directory `dir`.
    pub fn save_weights_and_config(&self, dir: &Path) -> Result<()> {
        let mut config = self.config.clone();
        config.torch_dtype = Some(dtype_name(self.wte.kind()).to_string());
        write_config(&config, dir)?;
        write_safetensors(&self.named_tensors(), &dir.join("model.safetensors"))
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn dtype(&self) -> Kind {
        self.wte.kind()
    }

    pub fn new_cache(&self) -> RecurrentCache {
        let layers = |n: usize| (0..n).map(|_| LayerKv::default()).collect::<Vec<_>>();
        RecurrentCache {
            prelude: layers(self.prelude.len()),
            core: Vec::new(),
            coda: layers(self.coda.len()),
            key_mask: None,
            len: 0,
        }
    }

    /// The full forward pass: `num_steps_no_grad` iterations that build no graph, then
    /// `num_steps_with_grad` that do. At evaluation, recurrence r is (r, 0).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        num_steps_no_grad: usize,
        num_steps_with_grad: usize,
        initial_state: &InitialState,
    ) -> RecurrentOutput {
        self.forward_impl(
            input_ids,
            attention_mask,
            num_steps_no_grad,
            num_steps_with_grad,
            initial_state,
            None,
        )
    }

    /// As `forward` at recurrence `r`, appending to and attending over `cache`.
    pub fn forward_with_cache(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        r: usize,
        initial_state: &InitialState,
        cache: &mut RecurrentCache,
    ) -> RecurrentOutput {
        self.forward_impl(input_ids, attention_mask, r, 0, initial_state, Some(cache))
    }

    fn forward_impl(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        num_steps_no_grad: usize,
        num_steps_with_grad: usize,
        initial_state: &InitialState,
        cache: Option<&mut RecurrentCache>,
    ) -> RecurrentOutput {
        let (hidden, state) = self.hidden_impl(
            input_ids,
            attention_mask,
            num_steps_no_grad,
            num_steps_with_grad,
            initial_state,
            cache,
        );
        RecurrentOutput {
            logits: hidden.linear::<&Tensor>(&self.head_weight(), None),
            state,
        }
    }

    /// As `forward`, but returns the final-normed hidden states [B, T, h] that the head
    /// multiplies (training computes its loss from these in chunks, without the full logits).
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        num_steps_no_grad: usize,
        num_steps_with_grad: usize,
        initial_state: &InitialState,
    ) -> Tensor {
        self.hidden_impl(
            input_ids,
            attention_mask,
            num_steps_no_grad,
            num_steps_with_grad,
            initial_state,
            None,
        )
        .0
    }

    /// (final-normed hidden states, final latent state).
    fn hidden_impl(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        num_steps_no_grad: usize,
        num_steps_with_grad: usize,
        initial_state: &InitialState,
        mut cache: Option<&mut RecurrentCache>,
    ) -> (Tensor, Tensor) {
        let (b, t) = input_ids.size2().expect("input_ids must be [B, T]");
        let device = self.device();
        let past = cache.as_ref().map_or(0, |c| c.len);
        let key_mask = extend_key_mask(
            cache.as_ref().and_then(|c| c.key_mask.as_ref()),
            attention_mask,
            b,
            past,
            t,
            device,
        );
        let (positions, mask) = positions_and_mask(b, t, past, key_mask.as_ref(), device);
        let cos_sin = self.rope.cos_sin(&positions, self.dtype());

        let mut e = Tensor::embedding(&self.wte, &input_ids.to_device(device), -1, false, false);
        if self.config.init_values.embed_scale != 1.0 {
            e *= self.config.init_values.embed_scale;
        }
        for (i, block) in self.prelude.iter().enumerate() {
            e = block.forward(
                &e,
                &cos_sin,
                &mask,
                cache.as_mut().map(|c| &mut c.prelude[i]),
            );
        }

        let mut state = self.initial_state(initial_state, &positions, &e);
        let total = num_steps_no_grad + num_steps_with_grad;
        if let Some(c) = cache.as_mut() {
            while c.core.len() < total {
                c.core.push(
                    (0..self.core_block.len())
                        .map(|_| LayerKv::default())
                        .collect(),
                );
            }
        }
        for step in 0..total {
            let iteration_cache = cache.as_mut().map(|c| &mut c.core[step]);
            if step < num_steps_no_grad {
                state =
                    tch::no_grad(|| self.core_step(&state, &e, &cos_sin, &mask, iteration_cache));
            } else {
                state = self.core_step(&state, &e, &cos_sin, &mask, iteration_cache);
            }
        }

        let mut h = state.shallow_clone();
        for (i, block) in self.coda.iter().enumerate() {
            h = block.forward(&h, &cos_sin, &mask, cache.as_mut().map(|c| &mut c.coda[i]));
        }
        if let Some(c) = cache {
            c.len = past + t;
            c.key_mask = key_mask;
        }
        (self.ln_f.forward(&h), state)
    }

    /// The head's rows for the real vocabulary, [vocab_size, h] (the padding rows never
    /// produce a logit).
    pub fn head_weight(&self) -> Tensor {
        if self.config.padded_vocab_size() > self.config.vocab_size {
            self.lm_head.narrow(0, 0, self.config.vocab_size as i64)
        } else {
            self.lm_head.shallow_clone()
        }
    }

    /// One recurrence: `core(adapter(cat[state, e]))`. Public for the inference loops of
    /// `recurrent_infer`, which drive the iterations themselves.
    pub fn core_step(
        &self,
        state: &Tensor,
        e: &Tensor,
        cos_sin: &(Tensor, Tensor),
        mask: &crate::llama::AttnMask,
        mut cache: Option<&mut Vec<LayerKv>>,
    ) -> Tensor {
        let mut x = Tensor::cat(&[state, e], -1).linear::<&Tensor>(&self.adapter, None);
        for (j, block) in self.core_block.iter().enumerate() {
            x = block.forward(&x, cos_sin, mask, cache.as_mut().map(|c| &mut c[j]));
        }
        x
    }

    /// The initial latent state for tokens at `positions` [B, T], shaped and typed like `like`.
    pub fn initial_state(&self, init: &InitialState, positions: &Tensor, like: &Tensor) -> Tensor {
        match init {
            InitialState::Zeros => like.zeros_like().detach(),
            InitialState::Given(s) => s.to_device(like.device()).to_kind(like.kind()),
            InitialState::Random { seed } => {
                let (b, t, h) = like.size3().expect("[B, T, h]");
                let pos: Vec<i64> = Vec::try_from(positions.to_device(Device::Cpu).flatten(0, -1))
                    .expect("positions");
                let std = self.config.init_values.std;
                let mut values = Vec::with_capacity(pos.len() * h as usize);
                for p in pos {
                    values.extend(truncated_normal_row(*seed, p as u64, h as usize, std));
                }
                Tensor::from_slice(&values)
                    .view([b, t, h])
                    .to_device(like.device())
                    .to_kind(like.kind())
            }
        }
    }

    pub fn parameter_counts(&self) -> BTreeMap<&'static str, usize> {
        let per = self.config.params_per_layer();
        let h = self.config.n_embd;
        let v = self.config.padded_vocab_size();
        BTreeMap::from([
            ("prelude", per * self.config.n_layers_in_prelude),
            ("core", per * self.config.n_layers_in_recurrent_block),
            ("coda", per * self.config.n_layers_in_coda),
            ("embeddings", v * h),
            ("head", v * h),
            ("adapter", 2 * h * h),
            ("final norm", h),
        ])
    }
}

/// `h` values ~ N(0, std²) cut at ±3·std (resampled), from a generator seeded by
/// `(seed, position)` through SplitMix64 so neighbouring seeds give unrelated streams.
pub fn truncated_normal_row(seed: u64, position: u64, h: usize, std: f64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(splitmix64(
        seed ^ splitmix64(position.wrapping_add(0x5851_f42d_4c95_7f2d)),
    ));
    (0..h)
        .map(|_| loop {
            let z: f64 = rng.sample(StandardNormal);
            if z.abs() <= 3.0 {
                break (z * std) as f32;
            }
        })
        .collect()
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

pub fn write_config(config: &RecurrentConfig, dir: &Path) -> Result<()> {
    let mut text = serde_json::to_string_pretty(config)?;
    text.push('\n');
    let path = dir.join("config.json");
    std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))
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
