//! One model type for everything that accepts any model directory: an ordinary Llama-family
//! checkpoint (static) or a recurrent (Raven) one. Inference goes through one forward; the
//! test-time recurrence and the state seed are arguments of each call, never fields.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::llama::{KvCache, LlamaModel};
use crate::recurrent::{
    is_recurrent_dir, CacheMode, CacheStats, Depth, InitialState, RecurrentCache, RecurrentModel,
    StateChoice,
};

pub enum AnyModel {
    Static(LlamaModel),
    Recurrent(RecurrentModel),
}

pub enum AnyCache {
    Static(KvCache),
    Recurrent(RecurrentCache),
}

impl AnyCache {
    /// What a recurrent cache holds; None for a static one.
    pub fn stats(&self) -> Option<CacheStats> {
        match self {
            AnyCache::Static(_) => None,
            AnyCache::Recurrent(c) => Some(c.stats()),
        }
    }
}

/// How an evaluation or a generation runs a recurrent model: the core's recurrence and the
/// seed of the initial state (`InitialState::Random`). Static models ignore both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestTime {
    pub recurrence: usize,
    pub seed: u64,
}

impl TestTime {
    pub fn depth(&self) -> Depth {
        Depth::recurrence(self.recurrence)
    }

    pub fn init(&self) -> InitialState {
        InitialState::Random { seed: self.seed }
    }
}

/// What one inference forward call produces.
pub struct LmOutput {
    /// [B, T, vocab_size]
    pub logits: Tensor,
    /// The final latent state [B, T, h] of a recurrent model.
    pub state: Option<Tensor>,
    /// Core iterations run (0 for a static model).
    pub steps: usize,
}

impl AnyModel {
    /// Loads `dir` with parameters in `dtype`, recurrent or not as its config says.
    pub fn load(dir: &Path, device: Device, dtype: Kind) -> Result<Self> {
        Ok(if is_recurrent_dir(dir) {
            AnyModel::Recurrent(RecurrentModel::load(dir, device, dtype)?)
        } else {
            AnyModel::Static(LlamaModel::load(dir, device, dtype)?)
        })
    }

    pub fn is_recurrent(&self) -> bool {
        matches!(self, AnyModel::Recurrent(_))
    }

    /// The recurrence to run at: `requested`, else the config's `mean_recurrence` (what the
    /// model was trained for). A static model takes none.
    pub fn recurrence(&self, requested: Option<usize>) -> Result<usize> {
        match (self, requested) {
            (AnyModel::Recurrent(_), Some(0)) => bail!("--recurrence must be at least 1"),
            (AnyModel::Recurrent(_), Some(r)) if r > crate::recurrent::MAX_RECURRENCE => bail!(
                "--recurrence {r} is beyond the supported {}",
                crate::recurrent::MAX_RECURRENCE
            ),
            (AnyModel::Recurrent(_), Some(r)) => Ok(r),
            (AnyModel::Recurrent(m), None) => Ok(m.config.mean_recurrence),
            (AnyModel::Static(_), Some(_)) => {
                bail!("--recurrence applies only to recurrent models; this one is not")
            }
            (AnyModel::Static(_), None) => Ok(1),
        }
    }

    /// The initial state `choice` asks for on this model, `seed` keying a random one. Only a
    /// recurrent model has a state to choose; a static one accepts only the default.
    pub fn initial_state(&self, choice: &StateChoice, seed: u64) -> Result<InitialState> {
        let width = match self {
            AnyModel::Recurrent(m) => m.config.n_embd,
            AnyModel::Static(_) if *choice == StateChoice::Random => 0,
            AnyModel::Static(_) => bail!("--initial-state applies only to recurrent models"),
        };
        Ok(match choice {
            StateChoice::Random => InitialState::Random { seed },
            StateChoice::Zero => InitialState::Zeros,
            StateChoice::File(path) => {
                InitialState::from_file(path, width).context("--initial-state")?
            }
        })
    }

    pub fn vs(&self) -> &nn::VarStore {
        match self {
            AnyModel::Static(m) => &m.vs,
            AnyModel::Recurrent(m) => &m.vs,
        }
    }

    pub fn device(&self) -> Device {
        self.vs().device()
    }

    /// Computes in `kind` over parameters kept in their own dtype (mixed precision; see
    /// [`RecurrentModel::set_compute_kind`]).
    pub fn set_compute_kind(&mut self, kind: Kind) {
        match self {
            AnyModel::Static(m) => m.set_compute_kind(kind),
            AnyModel::Recurrent(m) => m.set_compute_kind(kind),
        }
    }

    /// Dtype of the parameters.
    pub fn dtype(&self) -> Kind {
        match self {
            AnyModel::Static(m) => m.dtype(),
            AnyModel::Recurrent(m) => m.dtype(),
        }
    }

    /// Dtype the forward computes in.
    pub fn compute_kind(&self) -> Kind {
        match self {
            AnyModel::Static(m) => m.compute_kind(),
            AnyModel::Recurrent(m) => m.compute_kind(),
        }
    }

    pub fn max_context(&self) -> usize {
        match self {
            AnyModel::Static(m) => m.config.max_position_embeddings,
            AnyModel::Recurrent(m) => m.config.max_position_embeddings,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            AnyModel::Static(m) => m.config.vocab_size,
            AnyModel::Recurrent(m) => m.config.vocab_size,
        }
    }

    pub fn eos_token_ids(&self) -> Vec<i64> {
        match self {
            AnyModel::Static(m) => m.config.eos_token_ids(),
            // Released recurrent configs carry Huginn's ids; the caller takes them from the tokenizer.
            AnyModel::Recurrent(_) => Vec::new(),
        }
    }

    /// Refuses token ids outside the vocabulary before any compute.
    pub fn check_tokens<'a>(&self, ids: impl IntoIterator<Item = &'a i64>) -> Result<()> {
        let vocab = self.vocab_size() as i64;
        if let Some(bad) = ids.into_iter().find(|&&id| id < 0 || id >= vocab) {
            bail!("token id {bad} is out of range for a vocabulary of {vocab}");
        }
        Ok(())
    }

    /// An empty KV cache (the mode applies to a recurrent model's core slots).
    pub fn new_cache(&self, mode: CacheMode) -> Result<AnyCache> {
        Ok(match self {
            AnyModel::Static(m) => AnyCache::Static(m.new_cache()),
            AnyModel::Recurrent(m) => AnyCache::Recurrent(m.new_cache(mode)?),
        })
    }

    /// Logits for `ids` [B, T] (padding marked 0 in `mask`), appended after what `cache`
    /// holds or as a fresh sequence. A recurrent model iterates its core to `depth` from
    /// `init`; a static one ignores both.
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut AnyCache>,
        depth: Depth,
        init: &InitialState,
    ) -> Result<LmOutput> {
        match (self, cache) {
            (AnyModel::Static(m), cache) => {
                let cache = match cache {
                    Some(AnyCache::Static(c)) => Some(c),
                    None => None,
                    Some(AnyCache::Recurrent(_)) => bail!("a recurrent cache for a static model"),
                };
                let logits = m.head(&m.hidden(ids, mask, cache));
                Ok(LmOutput {
                    logits,
                    state: None,
                    steps: 0,
                })
            }
            (AnyModel::Recurrent(m), cache) => {
                let cache = match cache {
                    Some(AnyCache::Recurrent(c)) => Some(c),
                    None => None,
                    Some(AnyCache::Static(_)) => bail!("a static cache for a recurrent model"),
                };
                let out = m.forward(ids, mask, depth, init, cache)?;
                Ok(LmOutput {
                    logits: m.logits(&out.hidden),
                    state: Some(out.state),
                    steps: out.steps,
                })
            }
        }
    }

    /// Logits [B, T, V] of a fresh (padded) batch at the test-time settings `tt`.
    pub fn logits(&self, ids: &Tensor, mask: Option<&Tensor>, tt: TestTime) -> Result<Tensor> {
        Ok(self
            .forward(ids, mask, None, tt.depth(), &tt.init())?
            .logits)
    }

    /// Final-normed hidden states [B, T, h] of a fresh batch and the head weight [V, h] that
    /// turns them into logits: what training computes its chunked loss from.
    pub fn hidden_and_head(
        &self,
        ids: &Tensor,
        depth: Depth,
        init: &InitialState,
    ) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            AnyModel::Static(m) => (m.hidden(ids, None, None), m.lm_head.shallow_clone()),
            AnyModel::Recurrent(m) => {
                let out = m.forward(ids, None, depth, init, None)?;
                (out.hidden, m.head_weight())
            }
        })
    }

    /// Writes the model (config, weights) into the existing directory `dir`.
    pub fn save_weights_and_config(&self, dir: &Path) -> Result<()> {
        match self {
            AnyModel::Static(m) => m.save_weights_and_config(dir),
            AnyModel::Recurrent(m) => m.save_weights_and_config(dir),
        }
    }
}
