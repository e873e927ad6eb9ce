//! The recurrent model's KV cache (method.md §9): one slot per prelude and coda layer, as in a
//! plain transformer, and *iteration slots* for the core.
//!
//! # What each iteration attends to
//!
//! Core slot `s` holds one `LayerKv` per core layer with keys/values for every cached position.
//! When a token runs iteration `i`, each core layer attends to its own (and its chunk's)
//! keys/values of iteration `i`, computed now, and, for every earlier token, the keys/values
//! stored in slot `slot(i)`.
//!
//! [`CacheMode::Full`]: `slot(i) = i`; memory grows with the deepest iteration run.
//! [`CacheMode::LatestM`]`(m)`: `slot(i) = i mod m`; a token's iteration `i` *overwrites* its
//! own entry in slot `i mod m`, so after a token is done, slot `s` holds, for that token, the
//! keys/values of the **latest iteration `j` with `j ≡ s (mod m)`** it ran. A later token at
//! iteration `i` therefore sees, for each earlier token, the most recent iteration with the same
//! residue. Memory is `m` slots per core layer whatever r is (Huginn's "latest-m4" with m = 4).
//! With `m ≥ r` no slot is ever overwritten and the mode equals `Full` exactly.
//!
//! # Tokens that ran fewer iterations (adaptive exit, or a shallower prompt)
//!
//! A later token may run more iterations than an earlier one did. Every slot must then still
//! hold an entry for every earlier position. Rule ("last computed"): when a chunk of tokens
//! finishes after `k` iterations, every slot it did not write gets a copy of the keys/values of
//! its **last** iteration `k − 1`; a slot created later (a token going deeper than any before)
//! starts as a copy of the previous slot, which by the same rule holds every earlier token's
//! last iteration. In `Full` mode this means: slot `j` holds, for token `t` that ran `k_t`
//! iterations, the keys/values of iteration `min(j, k_t − 1)`, which is what Huginn's lookup of
//! the latest available step returns. Copies are of K/V only; nothing is recomputed.
//!
//! Invariant: after every forward call, every slot (prelude, core, coda) holds exactly `len`
//! positions.

use anyhow::{ensure, Result};
use tch::Tensor;

use crate::llama::LayerKv;

/// How the core's iteration slots are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// One slot per iteration: exact, memory grows with r.
    #[default]
    Full,
    /// `m` slots per core layer, iteration `i` reads and writes slot `i mod m` (module docs).
    LatestM(usize),
}

impl CacheMode {
    pub(crate) fn slot(self, iteration: usize) -> usize {
        match self {
            CacheMode::Full => iteration,
            CacheMode::LatestM(m) => iteration % m,
        }
    }

    /// Slots that `k` iterations write: `0..written(k)`.
    pub(crate) fn written(self, k: usize) -> usize {
        match self {
            CacheMode::Full => k,
            CacheMode::LatestM(m) => k.min(m),
        }
    }
}

/// Keys and values for recurrent decoding, with the policy of its core slots.
#[derive(Debug)]
pub struct RecurrentCache {
    pub prelude: Vec<LayerKv>,
    /// `core[s]` holds the core layers' entries of slot `s`.
    pub core: Vec<Vec<LayerKv>>,
    pub coda: Vec<LayerKv>,
    /// [B, S] bool over all cached positions; None while nothing is padded.
    pub key_mask: Option<Tensor>,
    /// Number of cached positions S.
    pub len: i64,
    pub mode: CacheMode,
    n_core: usize,
}

/// How much a [`RecurrentCache`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Core iteration slots in use.
    pub core_slots: usize,
    /// Stored key and value tensors (prelude, core and coda).
    pub tensors: usize,
    /// Elements in those tensors.
    pub elements: i64,
}

pub(crate) fn shallow(layer: &LayerKv) -> LayerKv {
    LayerKv {
        kv: layer
            .kv
            .as_ref()
            .map(|(k, v)| (k.shallow_clone(), v.shallow_clone())),
        write_at: None,
        room: None,
    }
}

fn kv_len(layer: &LayerKv) -> i64 {
    layer.kv.as_ref().map_or(0, |(k, _)| k.size()[2])
}

impl RecurrentCache {
    /// An empty cache for a model with the given stack sizes.
    pub fn new(prelude: usize, core: usize, coda: usize, mode: CacheMode) -> Result<Self> {
        if let CacheMode::LatestM(m) = mode {
            ensure!(m >= 1, "latest-m cache needs m >= 1");
        }
        let layers = |n: usize| (0..n).map(|_| LayerKv::default()).collect::<Vec<_>>();
        Ok(Self {
            prelude: layers(prelude),
            core: Vec::new(),
            coda: layers(coda),
            key_mask: None,
            len: 0,
            mode,
            n_core: core,
        })
    }

    /// The core slot that iteration `iteration` of a chunk appended after `past` positions
    /// reads and writes, made ready: created from the previous slot if it is new (module
    /// docs), and without this chunk's entry of an earlier iteration (latest-m overwrites).
    pub(crate) fn core_slot(&mut self, iteration: usize, past: i64) -> &mut Vec<LayerKv> {
        let slot = self.mode.slot(iteration);
        if slot >= self.core.len() {
            let fresh = match self.core.last() {
                Some(prev) if past > 0 => prev.iter().map(shallow).collect(),
                _ => (0..self.n_core).map(|_| LayerKv::default()).collect(),
            };
            self.core.push(fresh);
        }
        for layer in self.core[slot].iter_mut() {
            if kv_len(layer) > past {
                let (pk, pv) = layer.kv.take().expect("non-empty");
                layer.kv = Some((pk.narrow(2, 0, past), pv.narrow(2, 0, past)));
            }
        }
        &mut self.core[slot]
    }

    /// After a chunk of `t` tokens ran `k` iterations: every slot it did not write gets a copy
    /// of its last iteration's keys/values (module docs).
    pub(crate) fn fill_unwritten_slots(&mut self, k: usize, past: i64, t: i64) {
        let last = self.mode.slot(k - 1);
        for s in self.mode.written(k)..self.core.len() {
            for j in 0..self.n_core {
                let (lk, lv) = self.core[last][j].kv.as_ref().expect("written");
                let (nk, nv) = (lk.narrow(2, past, t), lv.narrow(2, past, t));
                let _ = self.core[s][j].append(nk, nv);
            }
        }
    }

    /// Whether every slot holds exactly `len` positions (the invariant; for debug checks).
    pub(crate) fn is_consistent(&self) -> bool {
        self.prelude
            .iter()
            .chain(self.core.iter().flatten())
            .chain(self.coda.iter())
            .all(|l| kv_len(l) == self.len)
    }

    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn stats(&self) -> CacheStats {
        let mut tensors = 0;
        let mut elements = 0;
        let all = self
            .prelude
            .iter()
            .chain(self.core.iter().flatten())
            .chain(self.coda.iter());
        for layer in all {
            if let Some((k, v)) = &layer.kv {
                tensors += 2;
                elements += k.numel() as i64 + v.numel() as i64;
            }
        }
        CacheStats {
            core_slots: self.core.len(),
            tensors,
            elements,
        }
    }
}
