//! One entry point for commands that accept any model directory: an ordinary Llama-family
//! checkpoint or a recurrent (Raven) one evaluated at a chosen recurrence.

use std::path::Path;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::generate::CausalLm;
use crate::llama::{KvCache, LlamaModel};
use crate::recurrent::{is_recurrent_dir, InitialState, RecurrentCache, RecurrentModel};

pub enum AnyModel {
    Llama(LlamaModel),
    /// A recurrent model run at `recurrence` iterations, its state drawn with `seed`.
    Recurrent {
        model: RecurrentModel,
        recurrence: usize,
        seed: u64,
    },
}

pub enum AnyCache {
    Llama(KvCache),
    Recurrent(RecurrentCache),
}

impl AnyModel {
    /// Loads `dir`; `recurrence` defaults to the config's `mean_recurrence` and is refused for
    /// ordinary models.
    pub fn load(
        dir: &Path,
        device: Device,
        dtype: Kind,
        recurrence: Option<usize>,
        seed: u64,
    ) -> Result<Self> {
        if is_recurrent_dir(dir) {
            let model = RecurrentModel::load(dir, device, dtype)?;
            let recurrence = recurrence.unwrap_or(model.config.mean_recurrence);
            if recurrence == 0 {
                bail!("--recurrence must be at least 1");
            }
            Ok(AnyModel::Recurrent {
                model,
                recurrence,
                seed,
            })
        } else {
            if recurrence.is_some() {
                bail!(
                    "{}: --recurrence applies only to recurrent models; this one is not",
                    dir.display()
                );
            }
            Ok(AnyModel::Llama(LlamaModel::load(dir, device, dtype)?))
        }
    }

    pub fn max_context(&self) -> usize {
        match self {
            AnyModel::Llama(m) => m.config.max_position_embeddings,
            AnyModel::Recurrent { model, .. } => model.config.max_position_embeddings,
        }
    }

    pub fn eos_token_ids(&self) -> Vec<i64> {
        match self {
            AnyModel::Llama(m) => m.config.eos_token_ids(),
            // Released recurrent configs carry Huginn's ids; the caller takes them from the tokenizer.
            AnyModel::Recurrent { .. } => Vec::new(),
        }
    }
}

impl AnyModel {
    /// Logits for `ids` appended after what `cache` holds (recurrent: at the model's
    /// recurrence, state seeded per position).
    fn forward_with_cache(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut AnyCache,
    ) -> Tensor {
        match (self, cache) {
            (AnyModel::Llama(m), AnyCache::Llama(c)) => m.forward_with_cache(ids, mask, c),
            (
                AnyModel::Recurrent {
                    model,
                    recurrence,
                    seed,
                },
                AnyCache::Recurrent(c),
            ) => {
                model
                    .forward_with_cache(
                        ids,
                        mask,
                        *recurrence,
                        &InitialState::Random { seed: *seed },
                        c,
                    )
                    .logits
            }
            _ => unreachable!("a cache is only ever made by its own model"),
        }
    }
}

impl CausalLm for AnyModel {
    type Cache = AnyCache;

    fn new_cache(&self) -> AnyCache {
        match self {
            AnyModel::Llama(m) => AnyCache::Llama(m.new_cache()),
            AnyModel::Recurrent { model, .. } => AnyCache::Recurrent(model.new_cache()),
        }
    }

    fn forward_cached(&self, ids: &Tensor, cache: &mut AnyCache) -> Tensor {
        self.forward_with_cache(ids, None, cache)
    }

    fn forward_cached_masked(&self, ids: &Tensor, mask: &Tensor, cache: &mut AnyCache) -> Tensor {
        self.forward_with_cache(ids, Some(mask), cache)
    }

    fn forward_full(&self, ids: &Tensor) -> Tensor {
        match self {
            AnyModel::Llama(m) => m.forward(ids, None),
            AnyModel::Recurrent {
                model,
                recurrence,
                seed,
            } => {
                model
                    .forward(
                        ids,
                        None,
                        *recurrence,
                        0,
                        &InitialState::Random { seed: *seed },
                    )
                    .logits
            }
        }
    }

    fn forward_masked(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        match self {
            AnyModel::Llama(m) => m.forward(ids, Some(mask)),
            AnyModel::Recurrent {
                model,
                recurrence,
                seed,
            } => {
                model
                    .forward(
                        ids,
                        Some(mask),
                        *recurrence,
                        0,
                        &InitialState::Random { seed: *seed },
                    )
                    .logits
            }
        }
    }

    fn device(&self) -> Device {
        match self {
            AnyModel::Llama(m) => m.device(),
            AnyModel::Recurrent { model, .. } => model.device(),
        }
    }

    fn vocab_size(&self) -> usize {
        match self {
            AnyModel::Llama(m) => m.config.vocab_size,
            AnyModel::Recurrent { model, .. } => model.config.vocab_size,
        }
    }
}
