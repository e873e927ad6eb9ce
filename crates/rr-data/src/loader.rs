//! Deterministic, resumable micro-batches: [`Loader`] (one split of one packed set),
//! [`Mixture`] (several loaders drawn by weight) and [`Phases`] (mixtures by training step).
//!
//! * Order: epoch `e` of a loader visits every row of its split exactly once, in the order of a
//!   Fisher–Yates permutation seeded by `hash(seed, e)` (see [`Loader::epoch_order`]). Batches
//!   run across epoch boundaries, so every batch has `batch_rows` rows.
//! * Mixture: micro-batch `k` (counted from 0 over the mixture's life) comes from source `i`
//!   chosen by `unit(hash(seed, k))` against the cumulative normalised weights; each source
//!   keeps its own loader state.
//! * Phases: `(until_step, mixture)` pairs; step `s` uses the first phase with
//!   `until_step = None` or `s < until_step`; steps past the last `until_step` stay in the last
//!   phase. Each phase's mixture has its own loaders (a set reused in two phases is read from
//!   the beginning of its own order again).
//! * Resume: `state()` is plain serde data; `restore(&state)` on an identically configured
//!   object continues exactly where the state was taken. A state from other data (another
//!   packed set, split or row count), another seed or other weights is refused.

use std::sync::Arc;

use anyhow::{bail, ensure, Result};
use rr_util::seed::{self as rng, SplitMix64};
use serde::{Deserialize, Serialize};

use super::manifest::Split;
use super::packed::PackedSet;

const ORDER_TAG: u64 = 0x6f72_6465_7221_2121; // "order!!!"
const MIX_TAG: u64 = 0x6d69_7874_7572_6521; // "mixture!"

/// A micro-batch on the host: `rows × seq_len` ids, row-major. `labels` is `input` shifted by
/// one token (`input = row[..T]`, `labels = row[1..]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub input: Vec<i64>,
    pub labels: Vec<i64>,
    pub rows: usize,
    pub seq_len: usize,
    /// Index of the mixture source the batch came from (0 for a plain loader).
    pub source: usize,
    /// The rows of the packed split used, in batch order.
    pub row_ids: Vec<usize>,
}

impl Batch {
    /// The batch of rows `start..start + count` of `split` of `set` (clipped at the end; for
    /// sequential held-out evaluation). `None` when `start >= set.rows(split)`.
    pub fn sequential(set: &PackedSet, split: Split, start: usize, count: usize) -> Option<Batch> {
        let end = (start + count).min(set.rows(split));
        if start >= end {
            return None;
        }
        Some(Batch::from_rows(set, split, (start..end).collect(), 0))
    }

    pub(crate) fn from_rows(
        set: &PackedSet,
        split: Split,
        row_ids: Vec<usize>,
        source: usize,
    ) -> Self {
        let t = set.seq_len();
        let mut input = Vec::with_capacity(row_ids.len() * t);
        let mut labels = Vec::with_capacity(row_ids.len() * t);
        let mut row = vec![0i64; t + 1];
        for &i in &row_ids {
            set.read_row(split, i, &mut row);
            input.extend_from_slice(&row[..t]);
            labels.extend_from_slice(&row[1..]);
        }
        Self {
            input,
            labels,
            rows: row_ids.len(),
            seq_len: t,
            source,
            row_ids,
        }
    }
}

/// Where a [`Loader`] stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// [`PackedSet::id`] of the data.
    pub set_id: String,
    pub split: Split,
    /// Rows of the split (a sanity check).
    pub rows: usize,
    pub seed: u64,
    pub epoch: u64,
    /// Rows of `epoch` already yielded (`0..=rows`).
    pub position: usize,
}

/// Shuffled micro-batches over one split of one packed set.
pub struct Loader {
    set: Arc<PackedSet>,
    split: Split,
    batch_rows: usize,
    seed: u64,
    epoch: u64,
    position: usize,
    order: Vec<u32>,
}

impl Loader {
    /// A loader at the start of epoch 0. Errors when the split is empty or `batch_rows` is 0.
    pub fn new(set: Arc<PackedSet>, split: Split, batch_rows: usize, seed: u64) -> Result<Self> {
        ensure!(batch_rows > 0, "batch_rows must be at least 1");
        let rows = set.rows(split);
        if rows == 0 {
            bail!("{}: the {split} split has no rows", set.dir().display());
        }
        ensure!(
            rows <= u32::MAX as usize,
            "{}: too many rows for the loader",
            set.dir().display()
        );
        let order = Self::epoch_order(seed, 0, rows);
        Ok(Self {
            set,
            split,
            batch_rows,
            seed,
            epoch: 0,
            position: 0,
            order,
        })
    }

    /// The visiting order of epoch `epoch`: a permutation of `0..rows`.
    pub fn epoch_order(seed: u64, epoch: u64, rows: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..rows as u32).collect();
        let mut rng = SplitMix64::new(rng::hash(&[seed, ORDER_TAG, epoch]));
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order
    }

    pub fn set(&self) -> &Arc<PackedSet> {
        &self.set
    }

    pub fn split(&self) -> Split {
        self.split
    }

    pub fn batch_rows(&self) -> usize {
        self.batch_rows
    }

    pub fn seq_len(&self) -> usize {
        self.set.seq_len()
    }

    pub fn rows(&self) -> usize {
        self.order.len()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn position(&self) -> usize {
        self.position
    }

    /// The next row index in visiting order (moving to the next epoch when one is done).
    pub fn next_row_id(&mut self) -> usize {
        if self.position == self.order.len() {
            self.epoch += 1;
            self.position = 0;
            self.order = Self::epoch_order(self.seed, self.epoch, self.order.len());
        }
        let id = self.order[self.position] as usize;
        self.position += 1;
        id
    }

    /// The next `batch_rows` rows.
    pub fn next_batch(&mut self) -> Batch {
        self.next_batch_from(0)
    }

    fn next_batch_from(&mut self, source: usize) -> Batch {
        let ids: Vec<usize> = (0..self.batch_rows).map(|_| self.next_row_id()).collect();
        Batch::from_rows(&self.set, self.split, ids, source)
    }

    pub fn state(&self) -> LoaderState {
        LoaderState {
            set_id: self.set.id().to_string(),
            split: self.split,
            rows: self.order.len(),
            seed: self.seed,
            epoch: self.epoch,
            position: self.position,
        }
    }

    /// Errors unless `state` was taken from a loader over the same data, split and seed.
    pub fn check_state(&self, state: &LoaderState) -> Result<()> {
        let dir = self.set.dir().display();
        if state.set_id != self.set.id()
            || state.split != self.split
            || state.rows != self.order.len()
        {
            bail!(
                "{dir}: loader state is for other data (set {} {} with {} rows; this is set {} {} \
                 with {} rows)",
                state.set_id,
                state.split,
                state.rows,
                self.set.id(),
                self.split,
                self.order.len()
            );
        }
        if state.seed != self.seed {
            bail!(
                "{dir}: loader state has seed {}, this loader seed {}",
                state.seed,
                self.seed
            );
        }
        if state.position > state.rows {
            bail!(
                "{dir}: loader state position {} exceeds {} rows",
                state.position,
                state.rows
            );
        }
        Ok(())
    }

    /// Continues from `state` (see [`Loader::check_state`]); unchanged on error.
    pub fn restore(&mut self, state: &LoaderState) -> Result<()> {
        self.check_state(state)?;
        if state.epoch != self.epoch {
            self.order = Self::epoch_order(self.seed, state.epoch, self.order.len());
        }
        self.epoch = state.epoch;
        self.position = state.position;
        Ok(())
    }
}

/// Where a [`Mixture`] stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureState {
    pub seed: u64,
    /// Normalised weights (a sanity check).
    pub weights: Vec<f64>,
    /// Micro-batches drawn so far.
    pub draws: u64,
    pub sources: Vec<LoaderState>,
}

/// Several loaders, one chosen per micro-batch by a seeded draw against their weights.
pub struct Mixture {
    sources: Vec<Loader>,
    weights: Vec<f64>,
    cumulative: Vec<f64>,
    seed: u64,
    draws: u64,
}

impl Mixture {
    /// Weights must be finite and non-negative with a positive sum (they are normalised).
    /// All sources must have the same `seq_len` and `batch_rows`.
    pub fn new(sources: Vec<(Loader, f64)>, seed: u64) -> Result<Self> {
        ensure!(!sources.is_empty(), "a mixture needs at least one source");
        let (loaders, weights): (Vec<Loader>, Vec<f64>) = sources.into_iter().unzip();
        for (i, w) in weights.iter().enumerate() {
            ensure!(
                w.is_finite() && *w >= 0.0,
                "mixture weight {i} is {w} (must be finite and ≥ 0)"
            );
        }
        let total: f64 = weights.iter().sum();
        ensure!(total > 0.0, "mixture weights sum to 0");
        let first = &loaders[0];
        for l in &loaders[1..] {
            ensure!(
                l.seq_len() == first.seq_len() && l.batch_rows() == first.batch_rows(),
                "mixture sources differ in shape: {} has seq_len {} × {} rows, {} has {} × {}",
                first.set().dir().display(),
                first.seq_len(),
                first.batch_rows(),
                l.set().dir().display(),
                l.seq_len(),
                l.batch_rows()
            );
        }
        let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        Ok(Self {
            sources: loaders,
            weights,
            cumulative,
            seed,
            draws: 0,
        })
    }

    /// One source with weight 1.
    pub fn single(loader: Loader) -> Self {
        Self::new(vec![(loader, 1.0)], 0).expect("a single source is a valid mixture")
    }

    pub fn sources(&self) -> &[Loader] {
        &self.sources
    }

    /// Normalised weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    pub fn draws(&self) -> u64 {
        self.draws
    }

    /// The source of micro-batch `draw`.
    pub fn source_of(&self, draw: u64) -> usize {
        let u = rng::unit(rng::hash(&[self.seed, MIX_TAG, draw]));
        let i = self.cumulative.partition_point(|&c| c <= u);
        // Guard the rounding of the last cumulative weight, and skip zero-weight sources.
        let i = i.min(self.sources.len() - 1);
        if self.weights[i] > 0.0 {
            i
        } else {
            (0..self.sources.len())
                .rev()
                .find(|&j| self.weights[j] > 0.0)
                .expect("a positive weight")
        }
    }

    pub fn next_batch(&mut self) -> Batch {
        let i = self.source_of(self.draws);
        self.draws += 1;
        self.sources[i].next_batch_from(i)
    }

    pub fn state(&self) -> MixtureState {
        MixtureState {
            seed: self.seed,
            weights: self.weights.clone(),
            draws: self.draws,
            sources: self.sources.iter().map(Loader::state).collect(),
        }
    }

    /// Errors unless `state` was taken from an identically configured mixture.
    pub fn check_state(&self, state: &MixtureState) -> Result<()> {
        if state.sources.len() != self.sources.len() {
            bail!(
                "mixture state has {} sources, this mixture {}",
                state.sources.len(),
                self.sources.len()
            );
        }
        if state.seed != self.seed {
            bail!(
                "mixture state has seed {}, this mixture seed {}",
                state.seed,
                self.seed
            );
        }
        let same = state.weights.len() == self.weights.len()
            && state
                .weights
                .iter()
                .zip(&self.weights)
                .all(|(a, b)| (a - b).abs() <= 1e-12);
        if !same {
            bail!(
                "mixture state has weights {:?}, this mixture {:?}",
                state.weights,
                self.weights
            );
        }
        for (i, (loader, s)) in self.sources.iter().zip(&state.sources).enumerate() {
            loader
                .check_state(s)
                .map_err(|e| anyhow::anyhow!("mixture source {i}: {e}"))?;
        }
        Ok(())
    }

    /// Continues from `state`; unchanged on error.
    pub fn restore(&mut self, state: &MixtureState) -> Result<()> {
        self.check_state(state)?;
        for (loader, s) in self.sources.iter_mut().zip(&state.sources) {
            loader.restore(s)?;
        }
        self.draws = state.draws;
        Ok(())
    }
}

/// Where [`Phases`] stands: one mixture state per phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhasesState {
    pub phases: Vec<(Option<usize>, MixtureState)>,
}

/// Mixtures by training step, e.g. healing data until step N, then math.
pub struct Phases {
    phases: Vec<(Option<usize>, Mixture)>,
}

impl Phases {
    /// `until_step`s must increase strictly; only the last may be `None`.
    pub fn new(phases: Vec<(Option<usize>, Mixture)>) -> Result<Self> {
        ensure!(!phases.is_empty(), "at least one phase is needed");
        let mut last: Option<usize> = None;
        for (i, (until, _)) in phases.iter().enumerate() {
            match until {
                None if i + 1 != phases.len() => {
                    bail!("phase {i} has no until_step but is not the last")
                }
                None => {}
                Some(u) => {
                    if let Some(prev) = last {
                        ensure!(*u > prev, "phase {i}: until_step {u} is not after {prev}");
                    }
                    last = Some(*u);
                }
            }
        }
        Ok(Self { phases })
    }

    pub fn single(mixture: Mixture) -> Self {
        Self {
            phases: vec![(None, mixture)],
        }
    }

    pub fn phases(&self) -> &[(Option<usize>, Mixture)] {
        &self.phases
    }

    /// The phase that serves step `step`.
    pub fn phase_of(&self, step: usize) -> usize {
        self.phases
            .iter()
            .position(|(until, _)| until.is_none_or(|u| step < u))
            .unwrap_or(self.phases.len() - 1)
    }

    /// A micro-batch for optimizer step `step` (call it once per micro-batch; with gradient
    /// accumulation several times with the same step).
    pub fn next_batch(&mut self, step: usize) -> Batch {
        let p = self.phase_of(step);
        self.phases[p].1.next_batch()
    }

    pub fn state(&self) -> PhasesState {
        PhasesState {
            phases: self.phases.iter().map(|(u, m)| (*u, m.state())).collect(),
        }
    }

    /// Continues from `state`; unchanged on error.
    pub fn restore(&mut self, state: &PhasesState) -> Result<()> {
        if state.phases.len() != self.phases.len()
            || state
                .phases
                .iter()
                .zip(&self.phases)
                .any(|((a, _), (b, _))| a != b)
        {
            let ours: Vec<_> = self.phases.iter().map(|(u, _)| *u).collect();
            let theirs: Vec<_> = state.phases.iter().map(|(u, _)| *u).collect();
            bail!("phases state has until_steps {theirs:?}, these phases {ours:?}");
        }
        for (i, ((_, m), (_, s))) in self.phases.iter().zip(&state.phases).enumerate() {
            m.check_state(s)
                .map_err(|e| anyhow::anyhow!("phase {i}: {e}"))?;
        }
        for ((_, m), (_, s)) in self.phases.iter_mut().zip(&state.phases) {
            m.restore(s)?;
        }
        Ok(())
    }
}
