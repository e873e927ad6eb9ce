//! How many times a forward call iterates the core: a fixed `(n, k)` split for training and
//! evaluation (truncated backpropagation), or an adaptive depth with an exit rule for
//! inference (method.md §9, Huginn's KL criterion).

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

/// The most core iterations one forward call runs (a documented bound: far past any mean
/// recurrence a model is trained at, and a guard against runaway requests).
pub const MAX_RECURRENCE: usize = 1024;

/// When to stop iterating the core for a token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExitCriterion {
    /// Stop once KL(p_{i−1} ‖ p_i) between successive next-token distributions is below this.
    pub threshold: f64,
    /// Never stop before this many iterations (at least 2 are needed to compare anything).
    pub min_steps: usize,
    /// Always stop after this many.
    pub max_steps: usize,
}

impl Default for ExitCriterion {
    fn default() -> Self {
        Self {
            threshold: 1e-3,
            min_steps: 1,
            max_steps: 32,
        }
    }
}

impl ExitCriterion {
    /// Whether iteration `k` (1-based), whose next-token log-probabilities are `log_probs`,
    /// ends the loop given the previous iteration's `prev`. Every position of the chunk must
    /// have converged (for one decoded token of one sequence that is exactly per-token exit).
    pub fn converged(&self, k: usize, prev: Option<&Tensor>, log_probs: &Tensor) -> bool {
        match prev {
            Some(prev) => k >= self.min_steps && max_kl(prev, log_probs) < self.threshold,
            None => false,
        }
    }
}

/// The core iterations of one forward call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Depth {
    /// `no_grad` iterations that build no graph, then `with_grad` that do (truncated
    /// backpropagation, method.md §3). Recurrence r at inference is `(r, 0)`.
    Fixed { no_grad: usize, with_grad: usize },
    /// Probe the next-token distribution (coda, final norm, head) after every iteration and
    /// stop when the criterion holds for every position of the chunk.
    Adaptive(ExitCriterion),
}

impl Depth {
    /// Recurrence `r` at inference: every iteration without gradient.
    pub fn recurrence(r: usize) -> Self {
        Depth::Fixed {
            no_grad: r,
            with_grad: 0,
        }
    }

    /// The most iterations this depth runs; refuses an empty or inverted one.
    pub fn max_steps(&self) -> Result<usize> {
        let max = match *self {
            Depth::Fixed { no_grad, with_grad } => no_grad + with_grad,
            Depth::Adaptive(e) => {
                ensure!(
                    e.min_steps <= e.max_steps,
                    "exit criterion: min_steps {} > max_steps {}",
                    e.min_steps,
                    e.max_steps
                );
                // A negative threshold never exits and an infinite one always does (at
                // min_steps): limit cases the tests use. Only NaN means nothing.
                ensure!(
                    !e.threshold.is_nan(),
                    "exit criterion: the KL threshold is NaN"
                );
                e.max_steps
            }
        };
        ensure!(max >= 1, "at least one core iteration is needed");
        ensure!(
            max <= MAX_RECURRENCE,
            "recurrence {max} is beyond the supported {MAX_RECURRENCE}"
        );
        Ok(max)
    }

    /// Whether iteration `i` (0-based) builds an autograd graph.
    pub fn with_grad(&self, i: usize) -> bool {
        match *self {
            Depth::Fixed { no_grad, .. } => i >= no_grad,
            Depth::Adaptive(_) => false,
        }
    }
}

/// KL(p ‖ q) per position from log-probabilities [.., V], reduced by max over everything.
fn max_kl(log_p: &Tensor, log_q: &Tensor) -> f64 {
    (log_p.exp() * (log_p - log_q))
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)
        .max()
        .double_value(&[])
}
