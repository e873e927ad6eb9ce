//! Effective parameters and training FLOPs exactly as method.md §7.
//!
//! Only transformer-block parameters count (embeddings, head, adapter and final norm do not).
//! Effective parameters at recurrence r: `N_p + N_c + r·N_core`. Training FLOPs of one step with
//! B tokens at scheduled mean recurrence r: `6·B·[N_p + N_c + min(r, 8)·N_core +
//! (1/3)·max(r − 8, 0)·N_core]` — backprop runs through at most 8 iterations, the rest cost a
//! forward pass (a third of forward + backward). A static model costs `6·N·B`.

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
}
