//! Learning-rate schedules (spec §5).
//!
//! The released models use warmup–stable–decay (WSD): a short linear warmup (125 steps), a
//! long constant phase, then a cosine decay to 0.001× the peak over the last 60 % of the run.
//! WSD keeps the learning rate high while the recurrence curriculum is still ramping, and its
//! decay phase can be started from any stable-phase checkpoint. Plain cosine (warmup, then
//! cosine over all remaining steps) is offered for ablations.
//!
//! The multiplier is transformers' `get_wsd_schedule` lambda (`_get_wsd_scheduler_lambda` in
//! `transformers/optimization.py`, `warmup_type = "linear"`, `num_cycles = 0.5`), which the
//! authors' `train.py` uses through `LambdaLR`: the 0-based optimizer step `k` is the lambda's
//! `current_step`. With `ρ = floor_ratio`, `N` warmup steps, decay length `D` starting at
//! `d₀ = T − D` (`T = total_steps`):
//!
//! - **Warmup** (`k < N`): `m = ρ + (1 − ρ)·k/N`. The first step runs at `ρ` (0.001× with the
//!   paper's recipe), step `N − 1` at `ρ + (1 − ρ)(N − 1)/N`, just below 1.
//! - **Stable** (`N ≤ k < d₀`): `m = 1`.
//! - **Decay** (`d₀ ≤ k < T`): progress `p = (k − d₀)/D` in `[0, 1)`, `m = ρ + (1 − ρ)·g(p)`
//!   with `g_cos(p) = (1 + cos πp)/2`, `g_lin(p) = 1 − p`, `g_1-sqrt(p) = 1 − √p`. The first
//!   decay step is exactly 1; the last step `T − 1` is `ρ + (1 − ρ)·g((D − 1)/D)`, just above ρ.
//! - **After** (`k ≥ T`): `m = ρ`.
//!
//! `lr = peak · m`. WSD: `D = round(decay_fraction · T)` (as for the curriculum ramp), and the
//! decay never eats into the warmup: `D ≤ T − min(N, T)` (transformers' stable length
//! `T − N − D` is then never negative). Cosine: the same lambda with no stable phase,
//! `D = T − min(N, T)`.
//!
//! Optimizers with several parameter groups at different base rates (Muon 1e-3, Adam 5e-5) share
//! one shape: use [`LrSchedule::multiplier_at`] (the same schedule with peak 1) and scale by the
//! group's own rate, or build one schedule per group.

use serde::{Deserialize, Serialize};

use crate::error::{check_unit, ConfigError};
use crate::schedule::ramp_steps;

/// Shape `g` of the decay phase (transformers' `decay_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayShape {
    /// `(1 + cos πp) / 2` (the paper).
    #[default]
    Cosine,
    /// `1 − p`.
    Linear,
    /// `1 − √p`. TOML: `"one_minus_sqrt"` or `"1-sqrt"`.
    #[serde(alias = "1-sqrt")]
    OneMinusSqrt,
}

/// A learning-rate schedule. A config value; TOML: `kind = "warmup_stable_decay"` or
/// `kind = "cosine"` plus the variant's fields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// Linear warmup, constant at `peak`, then decay to `floor_ratio · peak` over the last
    /// `decay_fraction` of the steps.
    WarmupStableDecay {
        /// Peak learning rate.
        peak: f64,
        /// Linear warmup length in steps (0 = none).
        warmup_steps: usize,
        /// Fraction of all steps spent decaying, in `[0, 1]` (0 = constant after warmup).
        decay_fraction: f64,
        /// Final learning rate as a fraction of the peak, in `[0, 1]`.
        floor_ratio: f64,
        /// Decay shape (default cosine).
        #[serde(default)]
        decay: DecayShape,
    },
    /// Linear warmup, then cosine from `peak` to `floor_ratio · peak` over all remaining steps.
    Cosine {
        /// Peak learning rate.
        peak: f64,
        /// Linear warmup length in steps (0 = none).
        warmup_steps: usize,
        /// Final learning rate as a fraction of the peak, in `[0, 1]`.
        floor_ratio: f64,
    },
}

impl LrSchedule {
    /// The paper's schedule (spec §5): warmup 125, cosine decay to 0.001× over the last 60 %.
    pub fn paper(peak: f64) -> Self {
        LrSchedule::WarmupStableDecay {
            peak,
            warmup_steps: 125,
            decay_fraction: 0.6,
            floor_ratio: 0.001,
            decay: DecayShape::Cosine,
        }
    }

    /// Peak learning rate.
    pub fn peak(&self) -> f64 {
        match *self {
            LrSchedule::WarmupStableDecay { peak, .. } | LrSchedule::Cosine { peak, .. } => peak,
        }
    }

    /// `floor_ratio`.
    pub fn floor_ratio(&self) -> f64 {
        match *self {
            LrSchedule::WarmupStableDecay { floor_ratio, .. }
            | LrSchedule::Cosine { floor_ratio, .. } => floor_ratio,
        }
    }

    /// Final learning rate, `floor_ratio · peak`.
    pub fn floor(&self) -> f64 {
        self.floor_ratio() * self.peak()
    }

    fn warmup_steps(&self) -> usize {
        match *self {
            LrSchedule::WarmupStableDecay { warmup_steps, .. }
            | LrSchedule::Cosine { warmup_steps, .. } => warmup_steps,
        }
    }

    /// Reject a non-positive or non-finite peak and fractions outside `[0, 1]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let peak = self.peak();
        if !(peak.is_finite() && peak > 0.0) {
            return Err(ConfigError::new(
                "lr.peak",
                format!("must be finite and positive, got {peak}"),
            ));
        }
        check_unit("lr.floor_ratio", self.floor_ratio(), 0.0, 1.0)?;
        if let LrSchedule::WarmupStableDecay { decay_fraction, .. } = *self {
            check_unit("lr.decay_fraction", decay_fraction, 0.0, 1.0)?;
        }
        Ok(())
    }

    /// First step of the decay phase and its length `D` (`D = 0`: no decay).
    pub fn decay_window(&self, total_steps: usize) -> (usize, usize) {
        let n = self.warmup_steps().min(total_steps);
        let room = total_steps - n;
        let d = match *self {
            LrSchedule::WarmupStableDecay { decay_fraction, .. } => {
                ramp_steps(decay_fraction, total_steps).min(room)
            }
            LrSchedule::Cosine { .. } => room,
        };
        (total_steps - d, d)
    }

    /// The decay shape in force (always cosine for [`LrSchedule::Cosine`]).
    fn decay_shape(&self) -> DecayShape {
        match *self {
            LrSchedule::WarmupStableDecay { decay, .. } => decay,
            LrSchedule::Cosine { .. } => DecayShape::Cosine,
        }
    }

    /// Learning rate at 0-based optimizer step `step` of a run of `total_steps` steps:
    /// `peak · multiplier_at(step)`.
    pub fn lr_at(&self, step: usize, total_steps: usize) -> f64 {
        self.peak() * self.multiplier_at(step, total_steps)
    }

    /// The schedule's shape alone (transformers' WSD lambda, see the module docs): `lr_at / peak`,
    /// in `[floor_ratio, 1]`. For scaling several parameter groups with different base rates by
    /// one schedule.
    pub fn multiplier_at(&self, step: usize, total_steps: usize) -> f64 {
        let rho = self.floor_ratio();
        let n = self.warmup_steps();
        if step < n && step < total_steps {
            return rho + (1.0 - rho) * (step as f64 / n as f64);
        }
        let (d0, d) = self.decay_window(total_steps);
        if step < d0 {
            return 1.0;
        }
        if step >= total_steps {
            return rho;
        }
        let p = (step - d0) as f64 / d as f64;
        let g = match self.decay_shape() {
            DecayShape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            DecayShape::Linear => 1.0 - p,
            DecayShape::OneMinusSqrt => 1.0 - p.sqrt(),
        };
        rho + (1.0 - rho) * g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's schedule over T = 50,000 steps: N = 125, D = 30,000, d₀ = 20,000, ρ = 0.001.
    /// Expected values from transformers' lambda, by hand.
    #[test]
    fn paper_schedule_matches_transformers_lambda() {
        let s = LrSchedule::paper(1.0);
        let t = 50_000;
        assert_eq!(s.decay_window(t), (20_000, 30_000));
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-12 * want;
        // First warmup step: 0.001 + 0.999 · 0/125.
        assert_eq!(s.multiplier_at(0, t), 0.001);
        // Second: 0.001 + 0.999 · 1/125 = 0.001 + 0.007992.
        assert!(close(s.multiplier_at(1, t), 0.008992));
        // Last warmup step: 0.001 + 0.999 · 124/125 = 0.001 + 0.991008.
        assert!(close(s.multiplier_at(124, t), 0.992008));
        // Stable from step 125 up to the step before the decay.
        assert_eq!(s.multiplier_at(125, t), 1.0);
        assert_eq!(s.multiplier_at(19_999, t), 1.0);
        // First decay step: p = 0, (1 + cos 0)/2 = 1.
        assert_eq!(s.multiplier_at(20_000, t), 1.0);
        // Mid-decay: p = 15,000/30,000 = 1/2, g = (1 + cos π/2)/2 = 1/2, 0.001 + 0.999/2.
        assert!(close(s.multiplier_at(35_000, t), 0.5005));
        // Last step: p = 29,999/30,000, g = (1 − cos(π/30,000))/2 = sin²(π/60,000)
        // ≈ x²(1 − x²/3) with x = π/60,000 = 5.2359877559830e-5, so g = 2.7415567755750e-9 and
        // 0.001 + 0.999 · g = 0.001 + 2.7388152187994e-9.
        assert!(close(s.multiplier_at(49_999, t), 0.001_000_002_738_815_219));
        // Past the end: ρ.
        assert_eq!(s.multiplier_at(50_000, t), 0.001);
        // The learning rate is the peak times the multiplier.
        let p = LrSchedule::paper(1e-3);
        assert_eq!(p.lr_at(0, t), 1e-3 * 0.001);
        assert!(p.validate().is_ok());
    }

    #[test]
    fn linear_and_one_minus_sqrt_decay_and_cosine() {
        let s = LrSchedule::WarmupStableDecay {
            peak: 2.0,
            warmup_steps: 0,
            decay_fraction: 0.5,
            floor_ratio: 0.0,
            decay: DecayShape::Linear,
        };
        // T = 8: stable 0..4, decay steps 4..8 at p = 0, 1/4, 2/4, 3/4; ρ after.
        let got: Vec<f64> = (0..9).map(|i| s.lr_at(i, 8)).collect();
        assert_eq!(got, vec![2.0, 2.0, 2.0, 2.0, 2.0, 1.5, 1.0, 0.5, 0.0]);

        let q = LrSchedule::WarmupStableDecay {
            peak: 1.0,
            warmup_steps: 0,
            decay_fraction: 0.5,
            floor_ratio: 0.2,
            decay: DecayShape::OneMinusSqrt,
        };
        // T = 8, decay 4..8: p = 1/4 gives 1 − 1/2 = 0.5, 0.2 + 0.8 · 0.5 = 0.6; p = 0 gives 1.
        assert_eq!(q.lr_at(4, 8), 1.0);
        assert!((q.lr_at(5, 8) - 0.6).abs() < 1e-15);

        let c = LrSchedule::Cosine {
            peak: 1.0,
            warmup_steps: 2,
            floor_ratio: 0.1,
        };
        // T = 6: warmup 0.1 + 0.9 · 0/2 = 0.1 and 0.1 + 0.9 · 1/2 = 0.55; cosine over steps 2..6.
        assert_eq!(c.lr_at(0, 6), 0.1);
        assert!((c.lr_at(1, 6) - 0.55).abs() < 1e-15);
        assert_eq!(c.lr_at(2, 6), 1.0);
        // p = 2/4: 0.1 + 0.9 · (1 + cos π/2)/2 = 0.55.
        assert!((c.lr_at(4, 6) - 0.55).abs() < 1e-15);
        assert_eq!(c.lr_at(6, 6), 0.1);
    }

    #[test]
    fn decay_never_overlaps_warmup() {
        let s = LrSchedule::WarmupStableDecay {
            peak: 1.0,
            warmup_steps: 10,
            decay_fraction: 1.0,
            floor_ratio: 0.0,
            decay: DecayShape::Cosine,
        };
        assert_eq!(s.decay_window(30), (10, 20));
        assert_eq!(s.lr_at(10, 30), 1.0);
        assert_eq!(s.decay_window(5), (5, 0));
    }

    #[test]
    fn validation() {
        assert!(LrSchedule::paper(0.0).validate().is_err());
        assert!(LrSchedule::paper(f64::NAN).validate().is_err());
        assert!(LrSchedule::Cosine {
            peak: 1.0,
            warmup_steps: 0,
            floor_ratio: 1.5
        }
        .validate()
        .is_err());
    }
}
