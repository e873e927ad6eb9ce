//! One decoding step over sequences that each own their KV cache: the step of continuous
//! batching (`rr serve`). Every row feeds one token; rows may sit at different lengths, run
//! different recurrences or exit rules and keep their caches in different modes.
//!
//! The rows share the passes that every token makes (embedding, prelude, coda, final norm,
//! head): their caches are left-padded to the longest, stacked into one batch with a key mask
//! (padded keys are never attended to, and positions count only real tokens, so a row gets
//! what it gets alone), and split back afterwards. The core runs, iteration by iteration, on
//! the sub-batch of rows still iterating: a row that reached its recurrence or met its exit
//! rule costs no more core compute. Each row's cache follows the rules of
//! `recurrent/cache.rs` exactly as a forward call of that row alone would.

use anyhow::{bail, ensure, Result};
use tch::{Device, Kind, Tensor};

use crate::any::{AnyCache, AnyModel};
use crate::llama::{AttnMask, KvCache, LayerKv, LlamaModel, Prologue, Rope};
use crate::recurrent::{Depth, InitialState, RecurrentCache, RecurrentModel};

/// One row of a step: the token it feeds, its cache, and how deep its core runs.
pub struct RowStep<'a> {
    pub token: i64,
    pub cache: &'a mut AnyCache,
    /// Recurrent models: this row's depth (a fixed recurrence or an exit rule).
    pub depth: Depth,
    /// Recurrent models: where this row's state starts.
    pub init: &'a InitialState,
}

/// What one step produces.
pub struct StepOutput {
    /// Next-token logits [B, V] (f32, CPU), one row per input row.
    pub logits: Tensor,
    /// Core iterations each row ran (0 for a static model).
    pub steps: Vec<usize>,
}

impl AnyModel {
    /// Feeds one token per row, each appended to its own cache (module docs).
    pub fn step_rows(&self, rows: &mut [RowStep]) -> Result<StepOutput> {
        ensure!(!rows.is_empty(), "a decoding step needs at least one row");
        let _no_grad = tch::no_grad_guard();
        let tokens: Vec<i64> = rows.iter().map(|r| r.token).collect();
        self.check_tokens(&tokens)?;
        match self {
            AnyModel::Static(m) => {
                let mut caches = Vec::with_capacity(rows.len());
                for row in rows.iter_mut() {
                    match &mut *row.cache {
                        AnyCache::Static(c) => caches.push(c),
                        AnyCache::Recurrent(_) => bail!("a recurrent cache for a static model"),
                    }
                }
                static_step(m, &tokens, &mut caches)
            }
            AnyModel::Recurrent(m) => {
                let mut caches = Vec::with_capacity(rows.len());
                let mut depths = Vec::with_capacity(rows.len());
                let mut inits = Vec::with_capacity(rows.len());
                for row in rows.iter_mut() {
                    depths.push(row.depth);
                    inits.push(row.init);
                    match &mut *row.cache {
                        AnyCache::Recurrent(c) => caches.push(c),
                        AnyCache::Static(_) => bail!("a static cache for a recurrent model"),
                    }
                }
                recurrent_step(m, &tokens, &depths, &inits, &mut caches)
            }
        }
    }
}

/// The rows' cache lengths and padding, merged: what a stacked batch needs.
struct Lengths {
    /// Each row's cached positions.
    rows: Vec<i64>,
    /// The longest.
    max: i64,
    /// [B, max] bool over the stacked caches (left padding false); None when no row is padded.
    key_mask: Option<Tensor>,
}

impl Lengths {
    fn new(rows: Vec<i64>, own_masks: &[Option<&Tensor>], device: Device) -> Self {
        let max = rows.iter().copied().max().unwrap_or(0);
        let padded = rows.iter().any(|&n| n != max) || own_masks.iter().any(Option::is_some);
        let key_mask = padded.then(|| {
            let per_row: Vec<Tensor> = rows
                .iter()
                .zip(own_masks)
                .map(|(&n, own)| {
                    let real = match own {
                        Some(m) => m.to_kind(Kind::Bool).to_device(device),
                        None => Tensor::ones([1, n], (Kind::Bool, device)),
                    };
                    let pad = Tensor::zeros([1, max - n], (Kind::Bool, device));
                    Tensor::cat(&[pad, real], 1)
                })
                .collect();
            Tensor::cat(&per_row, 0)
        });
        Self {
            rows,
            max,
            key_mask,
        }
    }

    /// The prologue of one new token per row, on top of the stacked caches.
    fn prologue(&self, rope: &Rope, kind: Kind, ids: &Tensor) -> Prologue {
        Prologue::new(
            rope,
            kind,
            ids,
            None,
            Some((self.max, self.key_mask.as_ref())),
        )
    }

    /// A row's key mask after its new token: None stays None.
    fn grown_mask(own: Option<&Tensor>) -> Option<Tensor> {
        own.map(|m| {
            let m = m.to_kind(Kind::Bool);
            Tensor::cat(&[m.shallow_clone(), m.ones_like().narrow(1, 0, 1)], 1)
        })
    }
}

/// One layer's keys/values of some rows (`layers[j]` holding `lens[j]` positions), each
/// left-padded with zeros to `max` positions, stacked on the batch.
fn stack(layers: &[&LayerKv], lens: &[i64], max: i64) -> LayerKv {
    let Some((like, _)) = layers.iter().find_map(|l| l.kv.as_ref()) else {
        return LayerKv::default();
    };
    let size = like.size();
    let zeros = |n: i64| Tensor::zeros([1, size[1], n, size[3]], (like.kind(), like.device()));
    let pad = |t: &Tensor, n: i64| match max - n {
        0 => t.shallow_clone(),
        missing => Tensor::cat(&[zeros(missing), t.shallow_clone()], 2),
    };
    let (mut ks, mut vs) = (Vec::new(), Vec::new());
    for (layer, &n) in layers.iter().zip(lens) {
        match &layer.kv {
            Some((k, v)) => {
                ks.push(pad(k, n));
                vs.push(pad(v, n));
            }
            None => {
                ks.push(zeros(max));
                vs.push(zeros(max));
            }
        }
    }
    LayerKv {
        kv: Some((Tensor::cat(&ks, 0), Tensor::cat(&vs, 0))),
        write_at: None,
        room: None,
    }
}

/// The inverse of [`stack`] after one new position: row `j` gets its own `lens[j] + 1`
/// positions back, copied (when there are several rows) so the stacked tensors can be freed.
fn unstack(stacked: LayerKv, lens: &[i64], max: i64) -> Vec<LayerKv> {
    let Some((k, v)) = stacked.kv else {
        return lens.iter().map(|_| LayerKv::default()).collect();
    };
    lens.iter()
        .enumerate()
        .map(|(j, &n)| {
            let own = |t: &Tensor| {
                let row = t.narrow(0, j as i64, 1).narrow(2, max - n, n + 1);
                if lens.len() == 1 {
                    row
                } else {
                    row.copy()
                }
            };
            LayerKv {
                kv: Some((own(&k), own(&v))),
                write_at: None,
                room: None,
            }
        })
        .collect()
}

/// Every layer of a stack (prelude, core slot, coda, a static model's layers) of some rows,
/// stacked layer by layer.
fn stack_layers(per_row: &[&Vec<LayerKv>], lens: &[i64], max: i64) -> Vec<LayerKv> {
    let n_layers = per_row.first().map_or(0, |r| r.len());
    (0..n_layers)
        .map(|l| {
            let layer: Vec<&LayerKv> = per_row.iter().map(|r| &r[l]).collect();
            stack(&layer, lens, max)
        })
        .collect()
}

/// The inverse of [`stack_layers`] after one new position: each row's layers.
fn unstack_layers(stacked: Vec<LayerKv>, lens: &[i64], max: i64) -> Vec<Vec<LayerKv>> {
    let mut per_row: Vec<Vec<LayerKv>> = lens.iter().map(|_| Vec::new()).collect();
    for layer in stacked {
        for (row, own) in per_row.iter_mut().zip(unstack(layer, lens, max)) {
            row.push(own);
        }
    }
    per_row
}

/// The prologue restricted to the rows at `index` (the core's sub-batch).
fn select_rows(p: &Prologue, index: &Tensor) -> Prologue {
    let mask = match &p.mask {
        AttnMask::Causal => AttnMask::Causal,
        AttnMask::None => AttnMask::None,
        AttnMask::Explicit(m) => AttnMask::Explicit(m.index_select(0, index)),
    };
    Prologue {
        positions: p.positions.index_select(0, index),
        mask,
        cos_sin: (
            p.cos_sin.0.index_select(0, index),
            p.cos_sin.1.index_select(0, index),
        ),
        key_mask: None,
        past: p.past,
        t: p.t,
    }
}

fn ids_tensor(tokens: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(tokens)
        .view([tokens.len() as i64, 1])
        .to_device(device)
}

fn last_logits(logits: Tensor) -> Tensor {
    logits
        .select(1, -1)
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
}

fn static_step(m: &LlamaModel, tokens: &[i64], caches: &mut [&mut KvCache]) -> Result<StepOutput> {
    let masks: Vec<Option<&Tensor>> = caches.iter().map(|c| c.key_mask.as_ref()).collect();
    let lengths = Lengths::new(caches.iter().map(|c| c.len).collect(), &masks, m.device());
    let ids = ids_tensor(tokens, m.device());
    let p = lengths.prologue(&m.rope, m.compute_kind(), &ids);
    let per_row: Vec<&Vec<LayerKv>> = caches.iter().map(|c| &c.layers).collect();
    let mut stacked = stack_layers(&per_row, &lengths.rows, lengths.max);
    let mut x =
        Tensor::embedding(&m.embed_tokens, &ids, -1, false, false).to_kind(m.compute_kind());
    for (layer, kv) in m.layers.iter().zip(stacked.iter_mut()) {
        x = layer.forward(&x, &p.cos_sin, &p.mask, Some(kv));
    }
    let own = unstack_layers(stacked, &lengths.rows, lengths.max);
    for (c, layers) in caches.iter_mut().zip(own) {
        c.layers = layers;
        c.len += 1;
        c.key_mask = Lengths::grown_mask(c.key_mask.as_ref());
    }
    Ok(StepOutput {
        logits: last_logits(m.head(&m.norm.forward(&x))),
        steps: vec![0; tokens.len()],
    })
}

fn recurrent_step(
    m: &RecurrentModel,
    tokens: &[i64],
    depths: &[Depth],
    inits: &[&InitialState],
    caches: &mut [&mut RecurrentCache],
) -> Result<StepOutput> {
    // Refuse a bad depth before any cache changes.
    for depth in depths {
        depth.max_steps()?;
    }
    let masks: Vec<Option<&Tensor>> = caches.iter().map(|c| c.key_mask.as_ref()).collect();
    let lengths = Lengths::new(caches.iter().map(|c| c.len).collect(), &masks, m.device());
    let ids = ids_tensor(tokens, m.device());
    let p = lengths.prologue(&m.rope, m.compute_kind(), &ids);

    let per_row: Vec<&Vec<LayerKv>> = caches.iter().map(|c| &c.prelude).collect();
    let mut prelude = stack_layers(&per_row, &lengths.rows, lengths.max);
    let e = m.prelude_forward(&ids, &p, Some(&mut prelude));
    for (c, own) in caches
        .iter_mut()
        .zip(unstack_layers(prelude, &lengths.rows, lengths.max))
    {
        c.prelude = own;
    }
    let state = initial_states(m, &p, &e, inits);

    let (state, steps) = iterate_core(m, &p, &e, state, depths, caches, &lengths)?;

    for (c, &k) in caches.iter_mut().zip(&steps) {
        let past = c.len;
        c.fill_unwritten_slots(k, past, 1);
    }
    let per_row: Vec<&Vec<LayerKv>> = caches.iter().map(|c| &c.coda).collect();
    let mut coda = stack_layers(&per_row, &lengths.rows, lengths.max);
    let hidden = m.coda_forward(&state, &p, Some(&mut coda));
    for (c, own) in caches
        .iter_mut()
        .zip(unstack_layers(coda, &lengths.rows, lengths.max))
    {
        c.coda = own;
        c.len += 1;
        c.key_mask = Lengths::grown_mask(c.key_mask.as_ref());
        debug_assert!(c.is_consistent());
    }
    Ok(StepOutput {
        logits: last_logits(m.logits(&hidden)),
        steps,
    })
}

/// The core loop of a step: iteration k runs over the rows still iterating (below their
/// recurrence, their exit rule not met). Returns the final states and each row's iterations.
fn iterate_core(
    m: &RecurrentModel,
    p: &Prologue,
    e: &Tensor,
    mut state: Tensor,
    depths: &[Depth],
    caches: &mut [&mut RecurrentCache],
    lengths: &Lengths,
) -> Result<(Tensor, Vec<usize>)> {
    let max_steps = depths
        .iter()
        .map(Depth::max_steps)
        .collect::<Result<Vec<_>>>()?;
    let mut steps = vec![0; depths.len()];
    let mut prev_log_probs: Vec<Option<Tensor>> = depths.iter().map(|_| None).collect();
    let mut active: Vec<usize> = (0..depths.len()).collect();
    let mut k = 0;
    while !active.is_empty() {
        state = core_iteration(m, p, e, &state, caches, &active, k, lengths);
        k += 1;
        for &i in &active {
            steps[i] = k;
        }
        active.retain(|&i| k < max_steps[i]);
        let adaptive: Vec<usize> = active
            .iter()
            .copied()
            .filter(|&i| matches!(depths[i], Depth::Adaptive(_)))
            .collect();
        if adaptive.is_empty() {
            continue;
        }
        let log_probs = probe(m, p, &state, caches, &adaptive, lengths);
        for (j, &i) in adaptive.iter().enumerate() {
            let Depth::Adaptive(exit) = depths[i] else {
                unreachable!("filtered to adaptive rows")
            };
            let row = log_probs.narrow(0, j as i64, 1);
            if exit.converged(k, prev_log_probs[i].as_ref(), &row) {
                active.retain(|&a| a != i);
            }
            prev_log_probs[i] = Some(row);
        }
    }

    Ok((state, steps))
}

/// Each row's initial state at its token's position, scaled as `RecurrentModel::forward`
/// scales a drawn one.
fn initial_states(m: &RecurrentModel, p: &Prologue, e: &Tensor, inits: &[&InitialState]) -> Tensor {
    let std = m.config.init_values.std;
    let scale = m.config.init_values.embed_scale;
    let rows: Vec<Tensor> = inits
        .iter()
        .enumerate()
        .map(|(i, init)| {
            let i = i as i64;
            let s = init.draw(&p.positions.narrow(0, i, 1), &e.narrow(0, i, 1), std);
            if scale != 1.0 && init.is_drawn() {
                s * scale
            } else {
                s
            }
        })
        .collect();
    Tensor::cat(&rows, 0)
}

fn row_index(rows: &[usize], device: Device) -> Tensor {
    Tensor::from_slice(&rows.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device)
}

/// Core iteration `k` (0-based) for the rows `active`; returns the whole batch's state with
/// theirs advanced.
#[allow(clippy::too_many_arguments)]
fn core_iteration(
    m: &RecurrentModel,
    p: &Prologue,
    e: &Tensor,
    state: &Tensor,
    caches: &mut [&mut RecurrentCache],
    active: &[usize],
    k: usize,
    lengths: &Lengths,
) -> Tensor {
    let lens: Vec<i64> = active.iter().map(|&i| lengths.rows[i]).collect();
    for &i in active {
        let past = caches[i].len;
        caches[i].core_slot(k, past);
    }
    let slot = |c: &RecurrentCache| c.mode.slot(k);
    let per_row: Vec<&Vec<LayerKv>> = active
        .iter()
        .map(|&i| &caches[i].core[slot(caches[i])])
        .collect();
    let mut stacked = stack_layers(&per_row, &lens, lengths.max);
    let advanced = if active.len() == caches.len() {
        m.core_step(state, e, p, Some(&mut stacked))
    } else {
        let index = row_index(active, state.device());
        let x = m.core_step(
            &state.index_select(0, &index),
            &e.index_select(0, &index),
            &select_rows(p, &index),
            Some(&mut stacked),
        );
        state.index_copy(0, &index, &x)
    };
    for (&i, own) in active
        .iter()
        .zip(unstack_layers(stacked, &lens, lengths.max))
    {
        let s = slot(caches[i]);
        caches[i].core[s] = own;
    }
    advanced
}

/// Next-token log-probabilities [n, V] (f32) of the rows `rows` at their current state, from
/// scratch copies of their coda caches (the caches are left as they are).
fn probe(
    m: &RecurrentModel,
    p: &Prologue,
    state: &Tensor,
    caches: &[&mut RecurrentCache],
    rows: &[usize],
    lengths: &Lengths,
) -> Tensor {
    let index = row_index(rows, state.device());
    let lens: Vec<i64> = rows.iter().map(|&i| lengths.rows[i]).collect();
    let per_row: Vec<&Vec<LayerKv>> = rows.iter().map(|&i| &caches[i].coda).collect();
    let mut coda = stack_layers(&per_row, &lens, lengths.max);
    let hidden = m.coda_forward(
        &state.index_select(0, &index),
        &select_rows(p, &index),
        Some(&mut coda),
    );
    m.logits(&hidden)
        .select(1, -1)
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float)
}
