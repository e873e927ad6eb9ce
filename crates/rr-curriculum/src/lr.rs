//! Learning-rate schedules (spec §5).
//!
//! The released models use warmup–stable–decay (WSD): a short linear warmup (125 steps), a
//! long constant phase, then a cosine decay to 0.001× the peak over the last 60 % of the run.
//! WSD keeps the learning rate high while the recurrence curriculum is still ramping, and its
//! decay phase can be started from any stable-phase checkpoint. Plain cosine (warmup, then
//! cosine over all remaining steps) is offered for ablations.
//!
//! Conventions (all steps 0-based, `T = total_steps`, `N` = warmup steps):
//!
//! - **Warmup**: `lr(s) = peak · (s + 1) / N` for `s < N`, so the first update already moves
//!   (`peak/N`) and step `N − 1` is exactly `peak`. Strictly increasing.
//! - **Stable** (WSD only): exactly `peak`.
//! - **Decay** over the last `D` steps, starting at `d₀ = T − D`: with `x = (s − d₀ + 1) / D`
//!   in `(0, 1]`, `lr = floor + (peak − floor) · g(x)`, `g_cos(x) = (1 + cos πx) / 2`,
//!   `g_lin(x) = 1 − x`. The last step `T − 1` has `x = 1` and is exactly `floor`; the step
//!   before `d₀` is exactly `peak`. Non-increasing.
//! - `floor = floor_ratio · peak`. Values in the stable and decay phases are clamped to
//!   `[floor, peak]`, so rounding can never step outside the band.
//! - WSD: `D = round(decay_fraction · T)` (as for the curriculum ramp), and the decay never eats
//!   into the warmup: `D ≤ T − min(N, T)`. Cosine: `D = T − min(N, T)`.
//! - Steps at or past `T` keep the last value (the floor when there is a decay phase).
//!
//! Optimizers with several parameter groups at different base rates (Muon 1e-3, Adam 5e-5) share
//! one shape: use [`LrSchedule::multiplier_at`] (the same schedule with peak 1) and scale by the
//! group's own rate, or build one schedule per group.

use serde::{Deserialize, Serialize};

use crate::error::{check_unit, ConfigError};
use crate::schedule::ramp_steps;

/// Shape of the decay phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayShape {
    /// `(1 + cos πx) / 2` (the paper).
    #[default]
    Cosine,
    /// `1 − x`.
    Linear,
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

/// Where a step falls, independent of the peak.
enum Phase {
    /// Fraction of the peak reached, in `(0, 1]`.
    Warmup(f64),
    Stable,
    /// Remaining fraction `g(x)` of the distance from the floor to the peak, in `[0, 1]`.
    Decay(f64),
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

    fn phase(&self, step: usize, total_steps: usize) -> Phase {
        let n = self.warmup_steps();
        if step < n && step < total_steps {
            return Phase::Warmup((step + 1) as f64 / n as f64);
        }
        let (d0, d) = self.decay_window(total_steps);
        if d == 0 || step < d0 {
            return Phase::Stable;
        }
        let x = ((step - d0 + 1) as f64 / d as f64).min(1.0);
        let shape = match *self {
            LrSchedule::WarmupStableDecay { decay, .. } => decay,
            LrSchedule::Cosine { .. } => DecayShape::Cosine,
        };
        let g = if x >= 1.0 {
            0.0
        } else {
            match shape {
                DecayShape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * x).cos()),
                DecayShape::Linear => 1.0 - x,
            }
        };
        Phase::Decay(g)
    }

    fn interpolate(&self, step: usize, total_steps: usize, lo: f64, hi: f64) -> f64 {
        match self.phase(step, total_steps) {
            Phase::Warmup(frac) => hi * frac,
            Phase::Stable => hi,
            Phase::Decay(g) => (lo + (hi - lo) * g).clamp(lo, hi),
        }
    }

    /// Learning rate at 0-based optimizer step `step` of a run of `total_steps` steps.
    pub fn lr_at(&self, step: usize, total_steps: usize) -> f64 {
        self.interpolate(step, total_steps, self.floor(), self.peak())
    }

    /// The schedule's shape alone: `lr_at / peak`, in `[floor_ratio, 1]` after warmup. For
    /// scaling several parameter groups with different base rates by one schedule.
    pub fn multiplier_at(&self, step: usize, total_steps: usize) -> f64 {
        self.interpolate(step, total_steps, self.floor_ratio(), 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_schedule_landmarks() {
        let s = LrSchedule::paper(1e-3);
        let t = 50_000;
        assert_eq!(s.decay_window(t), (20_000, 30_000));
        assert_eq!(s.lr_at(0, t), 1e-3 / 125.0);
        assert_eq!(s.lr_at(124, t), 1e-3);
        assert_eq!(s.lr_at(125, t), 1e-3);
        assert_eq!(s.lr_at(19_999, t), 1e-3);
        assert!(s.lr_at(20_000, t) < 1e-3);
        // Halfway through the decay the cosine is at the midpoint of [floor, peak].
        let mid = s.lr_at(20_000 + 15_000 - 1, t);
        assert!((mid - (1e-6 + 1e-3) / 2.0).abs() < 1e-15, "{mid}");
        assert_eq!(s.lr_at(49_999, t), 1e-6);
        assert_eq!(s.lr_at(60_000, t), 1e-6);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn linear_decay_and_cosine_landmarks() {
        let s = LrSchedule::WarmupStableDecay {
            peak: 2.0,
            warmup_steps: 0,
            decay_fraction: 0.5,
            floor_ratio: 0.0,
            decay: DecayShape::Linear,
        };
        // T = 8: stable 0..4, decay steps 4..8 at x = 1/4, 2/4, 3/4, 1.
        let got: Vec<f64> = (0..8).map(|i| s.lr_at(i, 8)).collect();
        assert_eq!(got, vec![2.0, 2.0, 2.0, 2.0, 1.5, 1.0, 0.5, 0.0]);

        let c = LrSchedule::Cosine {
            peak: 1.0,
            warmup_steps: 2,
            floor_ratio: 0.1,
        };
        // T = 6: warmup 0.5, 1.0; cosine over 4 steps.
        assert_eq!(c.lr_at(0, 6), 0.5);
        assert_eq!(c.lr_at(1, 6), 1.0);
        let want = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos());
        assert!((c.lr_at(2, 6) - want).abs() < 1e-15);
        assert!((c.lr_at(3, 6) - 0.55).abs() < 1e-15);
        assert_eq!(c.lr_at(5, 6), 0.1);
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
        assert_eq!(s.lr_at(9, 30), 1.0);
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
