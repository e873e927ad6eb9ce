//! Compute accounting, the one FLOP counter of the workspace: the trainer's running count and
//! `rr bench` both call it.
//!
//! Two counts share [`StackParams`] (block parameters per stack):
//!
//! * **Training FLOPs exactly as method.md §7** ([`StackParams::training_flops`], what the
//!   trainer records and compute-matched baselines spend). Only transformer-block parameters
//!   count (embeddings, head, adapter and final norm do not). Effective parameters at recurrence
//!   r: `N_p + N_c + r·N_core`. Training FLOPs of one step with B tokens at scheduled mean
//!   recurrence r: `6·B·[N_p + N_c + min(r, 8)·N_core + (1/3)·max(r − 8, 0)·N_core]` —
//!   backprop runs through at most 8 iterations, the rest cost a forward pass (a third of
//!   forward + backward). A static model costs `6·N·B`.
//! * **Model FLOPs** ([`ModelFlops`], what `rr bench` divides by the measured time): every
//!   matmul of the pass (attention projections, MLP, adapter, head) at 2 FLOPs per parameter
//!   and token, plus causal attention scores and values at `2·T·n_heads·head_dim` per token
//!   and layer ([`BlockDims::attention_flops`]). A training step is the forward at r plus a
//!   backward, twice the forward, through the parts it runs through: prelude, coda, head and
//!   the `k` iterations with gradient ([`PassFlops::training`]). §7 is the same rule on
//!   2 FLOPs per block parameter (norms included; no attention, head or adapter) at
//!   `k = min(r, 8)`.

use serde::{Deserialize, Serialize};

/// Transformer-block parameters of each stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackParams {
    pub prelude: u64,
    pub core: u64,
    pub coda: u64,
}

/// Backprop depth assumed by the §7 formula.
pub const BACKPROP_DEPTH: f64 = 8.0;

impl StackParams {
    /// From a per-layer count and the number of layers in each stack.
    pub fn from_layers(per_layer: u64, prelude: usize, core: usize, coda: usize) -> Self {
        Self {
            prelude: per_layer * prelude as u64,
            core: per_layer * core as u64,
            coda: per_layer * coda as u64,
        }
    }

    pub fn effective_parameters(&self, r: u64) -> u64 {
        self.prelude + self.coda + r * self.core
    }

    /// FLOPs of one training step of `tokens` tokens at scheduled mean recurrence `r`.
    pub fn training_flops(&self, tokens: u64, r: f64) -> f64 {
        let with_grad = r.min(BACKPROP_DEPTH);
        let forward_only = (r - BACKPROP_DEPTH).max(0.0);
        6.0 * tokens as f64
            * ((self.prelude + self.coda) as f64
                + with_grad * self.core as f64
                + forward_only / 3.0 * self.core as f64)
    }
}

/// FLOPs of one training step of a static (non-recurrent) model with `params` block parameters.
pub fn static_training_flops(params: u64, tokens: u64) -> f64 {
    6.0 * params as f64 * tokens as f64
}

/// The matmul dimensions of one Llama-family transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl BlockDims {
    /// Matmul parameters of one block: q, k, v, o, gate, up, down (norms are not matmuls).
    pub fn matmul_params(&self) -> u64 {
        let (h, d) = (self.hidden as u64, self.head_dim as u64);
        let attention = h * (self.heads + 2 * self.kv_heads) as u64 * d + self.heads as u64 * d * h;
        attention + 3 * h * self.intermediate as u64
    }

    /// Forward FLOPs per token of causal attention (scores and weighted values) at sequence
    /// length `t`: `2·t·heads·head_dim`, half of the full `t × t` products.
    pub fn attention_flops(&self, t: usize) -> f64 {
        2.0 * (t * self.heads * self.head_dim) as f64
    }
}

/// Model FLOPs of a recurrent model whose stacks are all blocks of one shape (see the module
/// docs). A static model is one with no core, run at r = 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFlops {
    pub block: BlockDims,
    pub vocab: usize,
    pub prelude: usize,
    pub core: usize,
    pub coda: usize,
}

impl ModelFlops {
    /// Matmul parameters of each stack.
    pub fn stack_params(&self) -> StackParams {
        StackParams::from_layers(
            self.block.matmul_params(),
            self.prelude,
            self.core,
            self.coda,
        )
    }

    /// Forward FLOPs per token of the LM head: `2·hidden·vocab`.
    pub fn head_flops(&self) -> f64 {
        2.0 * self.block.hidden as f64 * self.vocab as f64
    }

    /// Forward FLOPs per token of the adapter, a `[2h → h]` linear map of the recurrent state
    /// and the prelude output: `2·2h·h`.
    pub fn adapter_flops(&self) -> f64 {
        let h = self.block.hidden as f64;
        2.0 * 2.0 * h * h
    }

    /// Forward FLOPs per token at sequence length `t` of the parts that run once (prelude,
    /// coda, head) and of one core iteration (the core's blocks and the adapter).
    pub fn pass_flops(&self, t: usize) -> PassFlops {
        let stacks = self.stack_params();
        let attention = self.block.attention_flops(t);
        PassFlops {
            once: 2.0 * (stacks.prelude + stacks.coda) as f64
                + (self.prelude + self.coda) as f64 * attention
                + self.head_flops(),
            iteration: 2.0 * stacks.core as f64
                + self.core as f64 * attention
                + self.adapter_flops(),
        }
    }

    /// Model FLOPs of a no-grad forward of `tokens` tokens at sequence length `t` and
    /// recurrence `r`.
    pub fn forward_flops(&self, tokens: usize, t: usize, r: usize) -> f64 {
        self.pass_flops(t).forward(tokens, r)
    }

    /// Model FLOPs of a training step: forward at `r`, backward through `k` iterations.
    pub fn training_flops(&self, tokens: usize, t: usize, r: usize, k: usize) -> f64 {
        self.pass_flops(t).training(tokens, r, k)
    }
}

/// Forward FLOPs per token of a recurrent pass: the parts that run once and one iteration of
/// the core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassFlops {
    pub once: f64,
    pub iteration: f64,
}

impl PassFlops {
    /// A no-grad forward of `tokens` tokens at recurrence `r`.
    pub fn forward(&self, tokens: usize, r: usize) -> f64 {
        tokens as f64 * (self.once + r as f64 * self.iteration)
    }

    /// A training step of `tokens` tokens: the forward at recurrence `r`, and a backward (twice
    /// the forward) through the parts run once and the last `k` iterations.
    pub fn training(&self, tokens: usize, r: usize, k: usize) -> f64 {
        tokens as f64
            * (3.0 * self.once + r as f64 * self.iteration + 2.0 * k as f64 * self.iteration)
    }
}

/// The value at `x` of the piecewise-linear curve through `points` (sorted by x, as a run's
/// evaluation checkpoints are by FLOPs): how an equal-FLOPs point is read off a baseline's
/// held-out curve. `None` outside the curve's range (no extrapolation) or for an empty curve.
pub fn interpolate(points: &[(f64, f64)], x: f64) -> Option<f64> {
    let i = points.partition_point(|p| p.0 < x);
    match (i.checked_sub(1).map(|j| points[j]), points.get(i)) {
        (_, Some(&(x1, y1))) if x1 == x => Some(y1),
        (Some((x0, y0)), Some(&(x1, y1))) => Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tinyllama_484_effective_parameters_match_the_paper() {
        // method.md §7: 44,044,288 per layer; 704.7M at r = 1 and 11.63B at r = 32.
        let s = StackParams::from_layers(44_044_288, 4, 8, 4);
        assert_eq!(s.effective_parameters(1), 704_708_608);
        assert_eq!(
            (s.effective_parameters(32) as f64 / 1e7).round() / 100.0,
            11.63
        );
    }

    #[test]
    fn flops_count_at_most_eight_backprop_iterations() {
        let s = StackParams {
            prelude: 10,
            core: 100,
            coda: 20,
        };
        // r = 4: 6·B·(30 + 4·100)
        assert_eq!(s.training_flops(2, 4.0), 6.0 * 2.0 * 430.0);
        // r = 32: 6·B·(30 + 8·100 + 24/3·100)
        assert_eq!(s.training_flops(1, 32.0), 6.0 * (30.0 + 800.0 + 800.0));
        assert_eq!(static_training_flops(50, 3), 900.0);
    }

    /// TinyLlama's block: its §7 parameter count is the matmul parameters plus two norms.
    #[test]
    fn matmul_params_are_the_block_without_its_norms() {
        let block = BlockDims {
            hidden: 2048,
            intermediate: 5632,
            heads: 32,
            kv_heads: 4,
            head_dim: 64,
        };
        assert_eq!(block.matmul_params() + 2 * 2048, 44_044_288);
        assert_eq!(block.attention_flops(1024), 2.0 * 1024.0 * 2048.0);
    }

    #[test]
    fn model_flops_by_hand() {
        // h 256, heads 4 × 64, kv 2, intermediate 704, vocab 8192, layers (1, 2, 1).
        let m = ModelFlops {
            block: BlockDims {
                hidden: 256,
                intermediate: 704,
                heads: 4,
                kv_heads: 2,
                head_dim: 64,
            },
            vocab: 8192,
            prelude: 1,
            core: 2,
            coda: 1,
        };
        let matmuls = 256.0 * (4.0 + 4.0) * 64.0 + 256.0 * 256.0 + 3.0 * 256.0 * 704.0;
        assert_eq!(m.block.matmul_params() as f64, matmuls);
        let block = 2.0 * matmuls + 2.0 * 128.0 * 256.0;
        let once = 2.0 * block + 2.0 * 256.0 * 8192.0;
        let iteration = 2.0 * block + 4.0 * 256.0 * 256.0;
        assert_eq!(m.pass_flops(128), PassFlops { once, iteration });
        assert_eq!(m.forward_flops(10, 128, 3), 10.0 * (once + 3.0 * iteration));
        assert_eq!(
            m.training_flops(10, 128, 4, 2),
            10.0 * (3.0 * once + 4.0 * iteration + 4.0 * iteration)
        );
    }

    /// §7 is the model-FLOP training rule on 2 FLOPs per block parameter, at k = min(r, 8).
    #[test]
    fn section_7_is_the_training_rule_on_block_parameters() {
        let s = StackParams::from_layers(44_044_288, 4, 8, 4);
        let pass = PassFlops {
            once: 2.0 * (s.prelude + s.coda) as f64,
            iteration: 2.0 * s.core as f64,
        };
        for r in [1, 4, 8, 9, 16, 32] {
            let section_7 = s.training_flops(1024, r as f64);
            let rule = pass.training(1024, r, r.min(8));
            assert!((section_7 / rule - 1.0).abs() < 1e-12, "r = {r}");
        }
    }

    /// Equal-FLOPs points on a baseline's held-out curve, by hand: checkpoints at 0, 2e18 and
    /// 6e18 FLOPs with losses 3.0, 2.5 and 2.1.
    #[test]
    fn interpolate_reads_equal_flops_points() {
        let curve = [(0.0, 3.0), (2e18, 2.5), (6e18, 2.1)];
        // At a checkpoint: its value.
        assert_eq!(interpolate(&curve, 2e18), Some(2.5));
        assert_eq!(interpolate(&curve, 0.0), Some(3.0));
        assert_eq!(interpolate(&curve, 6e18), Some(2.1));
        // 1e18 is halfway between 0 and 2e18: (3.0 + 2.5) / 2 = 2.75.
        assert!((interpolate(&curve, 1e18).unwrap() - 2.75).abs() < 1e-12);
        // 5e18 is 3/4 of the way from 2e18 to 6e18: 2.5 − 0.4 · 3/4 = 2.2.
        assert!((interpolate(&curve, 5e18).unwrap() - 2.2).abs() < 1e-12);
        // Outside the curve: no extrapolation.
        assert_eq!(interpolate(&curve, 7e18), None);
        assert_eq!(interpolate(&curve, -1.0), None);
        assert_eq!(interpolate(&[], 1.0), None);
    }
}
