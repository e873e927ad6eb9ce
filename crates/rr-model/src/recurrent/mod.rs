//! The depth-recurrent model (Huginn / "Raven" layout): a prelude of blocks that runs once, a
//! recurrent core that runs r times on a latent state, a coda that runs once.
//!
//! ```text
//! e = prelude(embed(ids))
//! s = initial state                                   # state.rs
//! repeat r times: s = core(adapter(cat[s, e]))        # state first, prelude output second
//! logits = lm_head(ln_f(coda(s)))
//! ```
//!
//! One forward engine serves training (fixed `(n, k)`: truncated backpropagation), evaluation
//! (fixed `(r, 0)`) and decoding (a KV cache with per-iteration slots, `cache.rs`, and an
//! optional adaptive depth with an exit rule, `depth.rs`).
//!
//! Variable names mirror the published checkpoint (`transformer.core_block.3.attn.Wqkv.weight`),
//! see `shared/spec/raven-format.md`. Blocks keep their source form (Llama pre-norm or OLMo-2
//! post-norm with QK-norm); the published format has no field for that, so we add
//! `block_type` (absent = `llama`, which is what the authors' files hold).

mod cache;
mod config;
mod depth;
mod state;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use crate::llama::{linear, Block, LayerKv, Layout, Prologue, RmsNorm, Rope};
use crate::weights::{write_safetensors, FromCheckpoint};

pub use crate::weights::dtype_name;
pub use cache::{CacheMode, CacheStats, RecurrentCache};
pub use config::{
    is_recurrent_dir, write_config, InitValues, RecurrentConfig, HUGINN_OUT_PROJ_STD, HUGINN_STD,
    PYTHON_FILES, RAVEN_MODEL_TYPE,
};
pub use depth::{Depth, ExitCriterion, MAX_RECURRENCE};
pub use state::{truncated_normal, truncated_normal_rows, InitialState};

impl FromCheckpoint for RecurrentModel {
    type Config = RecurrentConfig;
    fn read_config(dir: &Path) -> Result<RecurrentConfig> {
        RecurrentConfig::from_path(dir)
    }
    fn parameter_elements(config: &RecurrentConfig) -> u128 {
        config.parameter_elements()
    }
    fn build(vs: nn::VarStore, config: RecurrentConfig) -> Self {
        Self::new(vs, config)
    }
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn ignorable(&self, name: &str) -> bool {
        name.ends_with("freqs_cis")
    }
    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "{} prelude, {} core, {} coda layers",
            c.n_layers_in_prelude, c.n_layers_in_recurrent_block, c.n_layers_in_coda
        )
    }
}

/// What one forward call produces.
pub struct RecurrentOutput {
    /// The final-normed hidden states [B, T, h] that the head multiplies (training computes
    /// its loss from these in chunks, without the full logits; see [`RecurrentModel::logits`]).
    pub hidden: Tensor,
    /// The final latent state [B, T, h] (the coda's input).
    pub state: Tensor,
    /// Core iterations run.
    pub steps: usize,
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
    /// Dtype of the activations; `None`: the weights' dtype ([`RecurrentModel::set_compute_kind`]).
    compute: Option<Kind>,
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
            compute: None,
        }
    }

    /// Loads a recurrent checkpoint directory; parameters in `dtype` whatever the file holds.
    pub fn load(dir: &Path, device: Device, dtype: Kind) -> Result<Self> {
        <Self as FromCheckpoint>::load(dir, device, dtype)
    }

    /// Every parameter by its checkpoint name, sorted.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        crate::weights::sorted_variables(&self.vs)
    }

    /// Writes `config.json` and `model.safetensors` into an existing directory `dir`.
    pub fn save_weights_and_config(&self, dir: &Path) -> Result<()> {
        let mut config = self.config.clone();
        config.torch_dtype = Some(crate::weights::dtype_name(self.wte.kind()).to_string());
        write_config(&config, dir)?;
        write_safetensors(&self.named_tensors(), &dir.join("model.safetensors"))
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Dtype of the parameters.
    pub fn dtype(&self) -> Kind {
        self.wte.kind()
    }

    /// Dtype the forward computes in: the parameters' unless set otherwise.
    pub fn compute_kind(&self) -> Kind {
        self.compute.unwrap_or_else(|| self.dtype())
    }

    /// Computes in `kind` over parameters kept in their own dtype (mixed precision, as bf16
    /// autocast over fp32 weights): the embedded input is cast to `kind`, and every weight is
    /// cast to it at each of its uses ([`crate::llama::at_use`]), so the k with-gradient uses of
    /// a core weight sum their gradients in the weight's dtype.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = Some(kind);
    }

    /// An empty KV cache for decoding with this model.
    pub fn new_cache(&self, mode: CacheMode) -> Result<RecurrentCache> {
        RecurrentCache::new(
            self.prelude.len(),
            self.core_block.len(),
            self.coda.len(),
            mode,
        )
    }

    /// The forward pass: `input_ids` [B, T] (padding marked 0 in `attention_mask`), appended
    /// after what `cache` holds or as a fresh sequence, iterating the core to `depth` from
    /// `init`. Without a cache nothing is kept; with one, its slots grow by the rules of
    /// `cache.rs`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        depth: Depth,
        init: &InitialState,
        mut cache: Option<&mut RecurrentCache>,
    ) -> Result<RecurrentOutput> {
        let max_steps = depth.max_steps()?;
        let p = Prologue::new(
            &self.rope,
            self.compute_kind(),
            input_ids,
            attention_mask,
            cache.as_ref().map(|c| (c.len, c.key_mask.as_ref())),
        );
        let e = self.prelude_forward(input_ids, &p, cache.as_mut().map(|c| &mut c.prelude));
        let mut state = init.draw(&p.positions, &e, self.config.init_values.std);
        // The authors scale a drawn state like the embeddings (`embed_scale`); a given or zero
        // state is used as it is.
        let embed_scale = self.config.init_values.embed_scale;
        if embed_scale != 1.0 && init.is_drawn() {
            state *= embed_scale;
        }

        // With an exit rule, the coda and head run after every iteration on a scratch copy of
        // the coda's cache; the last probe's hidden states and cache are kept.
        let mut probe: Option<(Tensor, Vec<LayerKv>)> = None;
        let mut prev_log_probs: Option<Tensor> = None;
        let mut k = 0;
        while k < max_steps {
            let slot = cache.as_mut().map(|c| c.core_slot(k, p.past));
            let step = || self.core_step(&state, &e, &p, slot);
            state = if depth.with_grad(k) {
                step()
            } else {
                tch::no_grad(step)
            };
            k += 1;
            if let Depth::Adaptive(exit) = depth {
                let (hidden, coda_kv) = self.coda_probe(&state, &p, cache.as_deref());
                let log_probs = self
                    .logits(&hidden)
                    .to_kind(Kind::Float)
                    .log_softmax(-1, Kind::Float);
                let done = exit.converged(k, prev_log_probs.as_ref(), &log_probs);
                probe = Some((hidden, coda_kv));
                prev_log_probs = Some(log_probs);
                if done {
                    break;
                }
            }
        }

        let hidden = match probe {
            Some((hidden, coda_kv)) => {
                if let Some(c) = cache.as_mut() {
                    c.coda = coda_kv;
                }
                hidden
            }
            None => self.coda_forward(&state, &p, cache.as_mut().map(|c| &mut c.coda)),
        };
        if let Some(c) = cache {
            c.fill_unwritten_slots(k, p.past, p.t);
            c.len = p.past + p.t;
            c.key_mask = p.key_mask;
            debug_assert!(c.is_consistent());
        }
        Ok(RecurrentOutput {
            hidden,
            state,
            steps: k,
        })
    }

    /// Logits [B, T, vocab_size] from final-normed hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        linear(hidden, &self.head_weight())
    }

    /// Embedding and prelude: `e`, the input every core iteration sees.
    pub(crate) fn prelude_forward(
        &self,
        input_ids: &Tensor,
        p: &Prologue,
        mut cache: Option<&mut Vec<LayerKv>>,
    ) -> Tensor {
        let mut e = Tensor::embedding(
            &self.wte,
            &input_ids.to_device(self.device()),
            -1,
            false,
            false,
        )
        .to_kind(self.compute_kind());
        if self.config.init_values.embed_scale != 1.0 {
            e *= self.config.init_values.embed_scale;
        }
        for (i, block) in self.prelude.iter().enumerate() {
            e = block.forward(&e, &p.cos_sin, &p.mask, cache.as_mut().map(|c| &mut c[i]));
        }
        e
    }

    /// One recurrence: `core(adapter(cat[state, e]))`, the adapter's input state first.
    pub fn core_step(
        &self,
        state: &Tensor,
        e: &Tensor,
        p: &Prologue,
        mut cache: Option<&mut Vec<LayerKv>>,
    ) -> Tensor {
        let mut x = linear(&Tensor::cat(&[state, e], -1), &self.adapter);
        for (j, block) in self.core_block.iter().enumerate() {
            x = block.forward(&x, &p.cos_sin, &p.mask, cache.as_mut().map(|c| &mut c[j]));
        }
        x
    }

    /// Coda and final norm on the latent state.
    pub(crate) fn coda_forward(
        &self,
        state: &Tensor,
        p: &Prologue,
        mut cache: Option<&mut Vec<LayerKv>>,
    ) -> Tensor {
        let mut h = state.shallow_clone();
        for (i, block) in self.coda.iter().enumerate() {
            h = block.forward(&h, &p.cos_sin, &p.mask, cache.as_mut().map(|c| &mut c[i]));
        }
        self.ln_f.forward(&h)
    }

    /// `coda_forward` that leaves `cache` untouched: appends go to a scratch copy of its coda
    /// slots, returned for the caller to keep or drop.
    fn coda_probe(
        &self,
        state: &Tensor,
        p: &Prologue,
        cache: Option<&RecurrentCache>,
    ) -> (Tensor, Vec<LayerKv>) {
        match cache {
            Some(c) => {
                let mut scratch: Vec<LayerKv> = c.coda.iter().map(cache::shallow).collect();
                let hidden = self.coda_forward(state, p, Some(&mut scratch));
                (hidden, scratch)
            }
            None => (self.coda_forward(state, p, None), Vec::new()),
        }
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
