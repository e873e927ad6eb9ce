//! The per-micro-batch recurrence draw of spec §3.
//!
//! Training a depth-recurrent model at a single fixed recurrence teaches it to work only at that
//! depth; drawing the recurrence afresh for every micro-batch from a heavy-tailed distribution
//! around the scheduled mean teaches it to work over a range of depths (and to extrapolate past
//! them at test time). Backpropagating through all of a long draw would cost memory linear in
//! the draw, so only the last `backprop_depth` iterations carry gradient (truncated BPTT); the
//! earlier ones run under no-grad.
//!
//! The draw, exactly as the reference:
//!
//! ```text
//! bp   = backprop_depth                                   (default 8)
//! t, s = (0, mean) if mean < bp else (mean − bp, bp)
//! σ    = 0.5;  μ = ln(t + s) − σ²/2                       (so E[rate] = mean)
//! rate ~ LogNormal(μ, σ);  p = Poisson(rate) + 1          (so E[p] = mean + 1)
//! p    = min(p, cap)                                      (our addition, see below)
//! n_no_grad = max(p − s, 0);  k_grad = min(s, p)
//! ```
//!
//! **Cap.** The lognormal–Poisson tail is long (at mean 32 the maximum of 200k draws is ≈ 340,
//! ten times the mean), and a single such draw stalls every rank for the time of ten ordinary
//! steps. We cap `p` at [`RecurrenceSampler::cap`], **default 256** (a fixed number, not a
//! multiple of the mean, so that the cost of the worst step is known in advance). At the
//! released means it is almost never hit (exact tail, integrated numerically: P(p > 256) is
//! 6·10⁻⁶ at mean 32, about one draw in 160k; 5·10⁻¹³ at mean 8; 10⁻¹⁶ at mean 4), so the
//! statistics of spec §3 are unchanged. At mean 64 it would clip 0.14 % of draws; raise `cap`
//! for such targets. `n_no_grad` and `k_grad` follow from the capped `p`.
//!
//! **Degenerate inputs.** `mean = 0` is treated as `mean = 1` (the mean schedules never
//! produce 0; with a literal 0 the formula would give `ln 0`, a rate of 0 and a draw with no
//! gradient-carrying iteration at all, which trains nothing in the core). Likewise
//! `backprop_depth = 0` and `cap = 0` are treated as 1. [`RecurrenceSampler::validate`] rejects
//! those values in a recipe; `draw` itself never fails.
//!
//! **Seeding.** Each draw gets its own RNG, seeded from `(base_seed, micro_batch)` through a
//! splitmix64 stream ([`rr_util::seed::stream`]) and [`StdRng::seed_from_u64`]. A draw is
//! therefore a pure function of its arguments: it does not depend on how many draws came before,
//! in which order they were made, or on which rank; a resumed run that replays the micro-batch
//! counter gets the same numbers.
//! For a fixed `base_seed` distinct micro-batch counters give distinct RNG seeds (the map is a
//! bijection). `StdRng` is not promised value-stable across `rand` major versions; the lockfile
//! pins `rand` 0.9 and a golden-value test in this module fails if the stream ever changes.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal, Poisson};
use rr_util::seed;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// σ of the lognormal rate (spec §3).
pub const SIGMA: f64 = 0.5;
/// Default maximum backprop depth (spec §3).
pub const DEFAULT_BACKPROP_DEPTH: usize = 8;
/// Default cap on the total recurrence `p` of one draw (our choice; see the module docs).
pub const DEFAULT_CAP: usize = 256;
/// The largest cap a recipe may set: beyond it one training step would run for hours.
pub const MAX_CAP: usize = 1024;
/// The largest backprop depth a recipe may set: activation memory grows with it (the paper
/// and the default use 8).
pub const MAX_BACKPROP_DEPTH: usize = 64;

/// Outcome of one draw: run `no_grad` iterations without gradient, then `with_grad` with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Draw {
    /// Total recurrence `p` (after the cap); always `no_grad + with_grad`, always ≥ 1.
    pub total: usize,
    /// Iterations run without gradient (`n_no_grad`).
    pub no_grad: usize,
    /// Iterations run with gradient (`k_grad`), at most the backprop depth; always ≥ 1.
    pub with_grad: usize,
}

/// The spec §3 recurrence sampler. A config value: `Copy`, serde, TOML-ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurrenceSampler {
    /// Maximum number of iterations that carry gradient (`bp`, default 8).
    #[serde(default = "default_backprop_depth")]
    pub backprop_depth: usize,
    /// Cap on the total recurrence `p` of a draw (default 256; see the module docs).
    #[serde(default = "default_cap")]
    pub cap: usize,
}

fn default_backprop_depth() -> usize {
    DEFAULT_BACKPROP_DEPTH
}
fn default_cap() -> usize {
    DEFAULT_CAP
}

impl Default for RecurrenceSampler {
    fn default() -> Self {
        Self {
            backprop_depth: DEFAULT_BACKPROP_DEPTH,
            cap: DEFAULT_CAP,
        }
    }
}

impl RecurrenceSampler {
    /// Reject values that `draw` would have to clamp.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backprop_depth == 0 {
            return Err(ConfigError::new(
                "sampler.backprop_depth",
                "must be at least 1",
            ));
        }
        if self.cap == 0 {
            return Err(ConfigError::new("sampler.cap", "must be at least 1"));
        }
        if self.backprop_depth > MAX_BACKPROP_DEPTH {
            return Err(ConfigError::new(
                "sampler.backprop_depth",
                "must be at most 64 (the default is 8)",
            ));
        }
        if self.cap > MAX_CAP {
            return Err(ConfigError::new("sampler.cap", "must be at most 1024"));
        }
        Ok(())
    }

    /// The `(t, s)` split of spec §3 for a mean: `s = min(mean, bp)` iterations may carry
    /// gradient, `t = mean − s`. Inputs are clamped to ≥ 1 as in [`Self::draw`].
    pub fn split(&self, mean: usize) -> (usize, usize) {
        let mean = mean.max(1);
        let bp = self.backprop_depth.max(1);
        if mean < bp {
            (0, mean)
        } else {
            (mean - bp, bp)
        }
    }

    /// The lognormal rate for `mean` (`E[rate] = mean`), drawn from `rng`.
    fn rate(mean: usize, rng: &mut StdRng) -> f64 {
        // t + s == mean by construction of the split.
        let mu = (mean as f64).ln() - SIGMA * SIGMA / 2.0;
        LogNormal::new(mu, SIGMA)
            .expect("σ = 0.5 is valid and μ is finite for mean ≥ 1")
            .sample(rng)
    }

    /// Draw the recurrence of one micro-batch.
    ///
    /// `mean` is the scheduled mean recurrence (≥ 1; 0 is treated as 1), `base_seed` the run's
    /// seed, `micro_batch` the run-global micro-batch counter. Same arguments, same draw.
    pub fn draw(&self, mean: usize, base_seed: u64, micro_batch: u64) -> Draw {
        let mean = mean.max(1);
        let (t, s) = self.split(mean);
        debug_assert_eq!(t + s, mean);
        let mut rng = StdRng::seed_from_u64(stream_seed(base_seed, micro_batch));
        let rate = Self::rate(mean, &mut rng);
        // rate > 0 and finite for any representable mean (exp of a finite normal); guard anyway
        // so that an underflow to 0 means "Poisson(0) = 0" instead of a panic.
        let poisson = if rate > 0.0 && rate.is_finite() {
            let r = rate.min(Poisson::<f64>::MAX_LAMBDA);
            Poisson::new(r)
                .expect("rate checked positive and finite")
                .sample(&mut rng) as u64
        } else {
            0
        };
        let p = usize::try_from(poisson)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let total = p.min(self.cap.max(1));
        Draw {
            total,
            no_grad: total.saturating_sub(s),
            with_grad: s.min(total),
        }
    }
}

/// Tag so that this crate's streams do not coincide with a plain splitmix64 of the same seed
/// used elsewhere in the project (e.g. the data order).
const DOMAIN: u64 = 0x7265_6375_7272_656E; // "recurren"

/// The RNG seed for one micro-batch: the `micro_batch`-th output of a splitmix64 stream whose
/// start is itself a mix of `base_seed`. Injective in `micro_batch` for a fixed `base_seed`.
pub fn stream_seed(base_seed: u64, micro_batch: u64) -> u64 {
    seed::stream(seed::mix(base_seed ^ DOMAIN), micro_batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_spec() {
        let s = RecurrenceSampler::default();
        assert_eq!(s.split(1), (0, 1));
        assert_eq!(s.split(4), (0, 4));
        assert_eq!(s.split(7), (0, 7));
        assert_eq!(s.split(8), (0, 8));
        assert_eq!(s.split(9), (1, 8));
        assert_eq!(s.split(32), (24, 8));
        assert_eq!(s.split(0), (0, 1), "mean 0 is treated as 1");
        let s2 = RecurrenceSampler {
            backprop_depth: 3,
            cap: 10,
        };
        assert_eq!(s2.split(2), (0, 2));
        assert_eq!(s2.split(3), (0, 3));
        assert_eq!(s2.split(5), (2, 3));
    }

    /// Pins the random stream: if `rand`'s `StdRng`, `seed_from_u64`, the distributions or our
    /// seed mixer ever change value-wise, resumed runs would no longer match; this catches it.
    #[test]
    fn golden_values() {
        let s = RecurrenceSampler::default();
        let got: Vec<usize> = (0..12).map(|m| s.draw(32, 74, m).total).collect();
        assert_eq!(got, GOLDEN_32_SEED74);
        let got: Vec<usize> = (0..12).map(|m| s.draw(4, 74, m).total).collect();
        assert_eq!(got, GOLDEN_4_SEED74);
    }
    const GOLDEN_32_SEED74: [usize; 12] = [28, 26, 17, 30, 47, 26, 27, 57, 28, 27, 27, 54];
    const GOLDEN_4_SEED74: [usize; 12] = [6, 4, 4, 3, 8, 4, 1, 10, 4, 5, 4, 7];

    #[test]
    fn stream_seed_is_injective_in_micro_batch() {
        let mut seen = std::collections::HashSet::new();
        for m in 0..100_000u64 {
            assert!(seen.insert(stream_seed(74, m)));
        }
        assert_ne!(stream_seed(74, 0), stream_seed(75, 0));
        // The values themselves are pinned (resumed runs replay them).
        assert_eq!(stream_seed(74, 0), 0x3428_dc68_934c_edd2);
        assert_eq!(stream_seed(74, 1), 0xebe9_3333_30c1_31c7);
        assert_eq!(stream_seed(0, u64::MAX), 0xe45e_ba0f_be3c_37fa);
    }

    #[test]
    fn degenerate_inputs_are_clamped() {
        let s = RecurrenceSampler {
            backprop_depth: 0,
            cap: 0,
        };
        let d = s.draw(0, 1, 2);
        assert_eq!(
            d,
            Draw {
                total: 1,
                no_grad: 0,
                with_grad: 1
            }
        );
        assert!(s.validate().is_err());
        assert!(RecurrenceSampler::default().validate().is_ok());
    }
}
