//! The fixed-shape per-token decode step, which a CUDA graph can capture (issue 15).
//!
//! [`RecurrentModel::forward`] with a cache grows every key/value tensor by concatenation, so
//! each token's step has new shapes and new addresses. Here every buffer is allocated once, at
//! the longest sequence the generation can reach, and each token's step reads and writes only
//! those buffers:
//!
//! - inputs: the token ids [B, 1], their positions [B, 1] (counting real tokens, as
//!   [`crate::llama::Prologue`] does) and the cache column they go to [1], all tensors the
//!   caller overwrites before each step;
//! - keys/values: one [B, n_kv, L, D] pair per prelude and coda layer and per core layer of
//!   each iteration slot, written in place at the column ([`LayerKv::write_at`]); attention
//!   sees the columns up to this one that are not padding;
//! - the output: next-token logits [B, V] in fp32.
//!
//! The arithmetic is the dynamic path's (same blocks, same slots: iteration `i` uses slot
//! `mode.slot(i)`), so both give the same tokens. It covers a fixed recurrence only: every
//! token runs all `r` iterations and writes every slot, so no slot ever needs the dynamic
//! path's fill rule (adaptive exit and warm start stay on the dynamic path).

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

use super::{CacheMode, CacheStats, InitialState, RecurrentCache, RecurrentModel};
use crate::llama::{AttnMask, LayerKv, Prologue};
use rr_torch_ext::cuda_graph::CudaGraph;

/// A recurrent model's decode state in fixed-shape buffers, after a prompt was prefilled.
pub struct StaticDecoder {
    recurrence: usize,
    mode: CacheMode,
    init: InitialState,
    /// [B, 1] int64: the token each row feeds now.
    ids: Tensor,
    /// [B, 1] int64: its position.
    positions: Tensor,
    /// [1] int64: the cache column it is written into (all rows share it: left padding).
    column: Tensor,
    /// [1, L] int64: 0..L, compared with `column` to hide the columns not yet written.
    column_index: Tensor,
    /// [B, L] bool: false for the prompt's padding; every later column is a real token.
    real_keys: Tensor,
    prelude: Vec<LayerKv>,
    core: Vec<Vec<LayerKv>>,
    coda: Vec<LayerKv>,
    /// Columns written so far.
    len: i64,
    graph: Option<CudaGraph<Tensor>>,
}

impl StaticDecoder {
    /// Moves `cache` (a prompt run at `recurrence` iterations) into buffers of `capacity`
    /// columns. `init` is where every token's state starts (not a given per-call state).
    pub fn new(
        model: &RecurrentModel,
        cache: RecurrentCache,
        capacity: i64,
        recurrence: usize,
        init: &InitialState,
    ) -> Result<Self> {
        let device = model.device();
        ensure!(
            cache.core.len() == cache.mode.written(recurrence),
            "the fixed-shape step continues a cache filled at recurrence {recurrence}, not one \
             with {} core slots",
            cache.core.len()
        );
        ensure!(
            capacity > cache.len,
            "a capacity of {capacity} leaves no room after {} cached positions",
            cache.len
        );
        let init = match init {
            InitialState::Given(_) => {
                anyhow::bail!(
                    "the fixed-shape step draws each token's state; it takes no given state"
                )
            }
            // Moved to the device once: a host copy cannot be part of a captured graph.
            InitialState::ByPosition(rows) => InitialState::ByPosition(rows.to_device(device)),
            other => other.clone(),
        };
        let b = cache
            .prelude
            .iter()
            .chain(cache.core.iter().flatten())
            .chain(cache.coda.iter())
            .find_map(|l| l.kv.as_ref().map(|(k, _)| k.size()[0]))
            .ok_or_else(|| anyhow::anyhow!("the fixed-shape step needs a prefilled cache"))?;
        let column = Tensor::zeros([1], (Kind::Int64, device));
        let preallocate = |layers: &[LayerKv]| -> Result<Vec<LayerKv>> {
            layers
                .iter()
                .map(|l| preallocated(l, capacity, &column))
                .collect()
        };
        let real_keys = Tensor::ones([b, capacity], (Kind::Bool, device));
        if let Some(mask) = &cache.key_mask {
            real_keys.narrow(1, 0, cache.len).copy_(mask);
        }
        Ok(Self {
            recurrence,
            mode: cache.mode,
            init,
            ids: Tensor::zeros([b, 1], (Kind::Int64, device)),
            positions: Tensor::zeros([b, 1], (Kind::Int64, device)),
            column_index: Tensor::arange(capacity, (Kind::Int64, device)).view([1, capacity]),
            real_keys,
            prelude: preallocate(&cache.prelude)?,
            core: cache
                .core
                .iter()
                .map(|slot| preallocate(slot))
                .collect::<Result<_>>()?,
            coda: preallocate(&cache.coda)?,
            column,
            len: cache.len,
            graph: None,
        })
    }

    /// Columns written so far (the prompt's and every step's).
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Next-token logits [B, V] (fp32, on the device) for one new token per row: `ids` and
    /// `positions` are [B] host values. With `cuda_graph`, the step is captured on its first
    /// call and replayed from then on; otherwise it runs eagerly.
    pub fn step(
        &mut self,
        model: &RecurrentModel,
        ids: &[i64],
        positions: &[i64],
        cuda_graph: bool,
    ) -> Result<Tensor> {
        let capacity = self.column_index.size()[1];
        ensure!(
            self.len < capacity,
            "the fixed-shape cache is full ({capacity} columns)"
        );
        let b = self.ids.size()[0] as usize;
        ensure!(
            ids.len() == b && positions.len() == b,
            "one token per row of {b}"
        );
        let device = self.ids.device();
        let as_column = |v: &[i64]| Tensor::from_slice(v).view([b as i64, 1]).to_device(device);
        self.ids.copy_(&as_column(ids));
        self.positions.copy_(&as_column(positions));
        let _ = self.column.fill_(self.len);
        self.len += 1;
        if !cuda_graph {
            return Ok(self.forward(model));
        }
        if self.graph.is_none() {
            // The warm-ups and the capture rewrite this column with the same values: harmless.
            let graph = CudaGraph::capture(device, || Ok(self.forward(model)))?;
            self.graph = Some(graph);
        }
        let graph = self.graph.as_ref().expect("captured above");
        Ok(graph.replay()?.shallow_clone())
    }

    /// The step itself: only the buffers are read and written, every shape is fixed.
    fn forward(&mut self, model: &RecurrentModel) -> Tensor {
        let (b, capacity) = (self.real_keys.size()[0], self.real_keys.size()[1]);
        let visible = self
            .real_keys
            .logical_and(&self.column_index.le_tensor(&self.column))
            .view([b, 1, 1, capacity]);
        let p = Prologue {
            positions: self.positions.shallow_clone(),
            mask: AttnMask::Explicit(visible),
            cos_sin: model.rope.cos_sin(&self.positions, model.compute_kind()),
            key_mask: None,
            past: self.len - 1,
            t: 1,
        };
        let e = model.prelude_forward(&self.ids, &p, Some(&mut self.prelude));
        let mut state = self
            .init
            .draw(&p.positions, &e, model.config.init_values.std);
        let embed_scale = model.config.init_values.embed_scale;
        if embed_scale != 1.0 && self.init.is_drawn() {
            state *= embed_scale;
        }
        for i in 0..self.recurrence {
            let slot = &mut self.core[self.mode.slot(i)];
            state = model.core_step(&state, &e, &p, Some(slot));
        }
        let hidden = model.coda_forward(&state, &p, Some(&mut self.coda));
        model.logits(&hidden).select(1, 0).to_kind(Kind::Float)
    }

    /// What the buffers hold, counted like [`RecurrentCache::stats`] (at full capacity).
    pub fn stats(&self) -> CacheStats {
        let layers = self
            .prelude
            .iter()
            .chain(self.core.iter().flatten())
            .chain(self.coda.iter());
        let (mut tensors, mut elements) = (0, 0);
        for (k, v) in layers.filter_map(|l| l.kv.as_ref()) {
            tensors += 2;
            elements += k.numel() as i64 + v.numel() as i64;
        }
        CacheStats {
            core_slots: self.core.len(),
            tensors,
            elements,
        }
    }

    pub fn device(&self) -> Device {
        self.ids.device()
    }
}

/// `layer`'s keys/values copied into the first columns of `capacity`-column buffers that
/// `append` writes at `column`.
fn preallocated(layer: &LayerKv, capacity: i64, column: &Tensor) -> Result<LayerKv> {
    let (k, v) = layer
        .kv
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the prompt left an empty cache layer"))?;
    let buffer = |t: &Tensor| {
        let mut size = t.size();
        let len = size[2];
        size[2] = capacity;
        let full = Tensor::zeros(size.as_slice(), (t.kind(), t.device()));
        full.narrow(2, 0, len).copy_(t);
        full
    };
    Ok(LayerKv {
        kv: Some((buffer(k), buffer(v))),
        write_at: Some(column.shallow_clone()),
        room: None,
    })
}
