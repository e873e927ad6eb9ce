//! Mean-recurrence curriculum and backprop-depth ramp (spec §4).
//!
//! A freshly retrofitted model has never iterated its core; starting it at the target mean
//! recurrence wastes compute on deep, unproductive rollouts and destabilises early training.
//! The curriculum therefore grows the mean recurrence from 1 to the target `R` over the first
//! `W` optimizer steps:
//!
//! ```text
//! mean(t) = max(1, ceil(R · f(t / W)))   for t < W,     mean(t) = R   for t ≥ W
//! f_linear(u) = u,   f_1-sqrt(u) = 1 − √(1 − u)
//! ```
//!
//! The 1−√ shape rises fast at first and slowly near the end, spending most of the ramp at high
//! recurrence (released models: 1−√ over 75 %; other runs: linear over 25 %).
//!
//! **Exact evaluation.** `ceil` of a floating-point product is fragile exactly where it matters:
//! at the steps where `R·f(t/W)` is an integer. For R = 4 over W = 37,500 (75 % of 50,000 steps)
//! `R·f` is exactly 2 at t = 28,125, and a float evaluation that lands at 2.000…04 there would switch
//! one step early. We therefore evaluate both shapes in integer arithmetic:
//!
//! - linear: `ceil(R·t/W)` is an integer ceiling division;
//! - 1−√: `ceil(R − √((W−t)·R²/W)) = R − ⌊√((W−t)·R²/W)⌋`, and
//!   `⌊√(X/W)⌋ = isqrt(⌊X/W⌋)` for integers, computed in `u128` (exact for `R < 2³²`; larger
//!   targets are saturated to `u32::MAX`, far beyond anything trainable).
//!
//! For R = 4, W = 37,500 the real-valued crossings `W·(1 − (1 − k/R)²)` are 16,406.25, 28,125 and
//! 35,156.25, so the schedule is 1 on steps 0…16,406, 2 on 16,407…28,125, 3 on 28,126…35,156 and
//! 4 from 35,157 on (tested). The numbers 16,406 / 28,125 / 35,156 are thus the *last* steps at
//! the old value when `t` is the 0-based optimizer step, as everywhere in this crate.
//!
//! **Ramp length.** `W = round(ramp_fraction · total_steps)` (round half away from zero). Rounding
//! to nearest, rather than floor or ceil, is robust to fractions that are not exact in binary
//! (`0.29 · 100 = 28.999…`, `0.7 · 10 = 7.000…1`). `W = 0` means no ramp.
//!
//! **Backprop-depth ramp.** Optional and separate (spec §4 says "1 → 8, linear" and nothing
//! about rounding). We give each depth of `start..=end` an equal share of the ramp:
//! `depth(t) = min(end, start + ⌊(end − start + 1)·t / W⌋)` for `t < W`, `end` after; with
//! 1 → 8 that is depth 1 for the first eighth of the ramp, 2 for the second, and so on.

use serde::{Deserialize, Serialize};

use crate::error::{check_unit, ConfigError};

/// Shape `f` of the mean-recurrence ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RampShape {
    /// `mean(t) = R` at every step (no curriculum).
    Constant,
    /// `f(u) = u`.
    Linear,
    /// `f(u) = 1 − √(1 − u)` (the released models). TOML: `"one_minus_sqrt"` or `"1-sqrt"`.
    #[serde(alias = "1-sqrt")]
    OneMinusSqrt,
}

/// Mean recurrence as a function of the optimizer step. A config value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanSchedule {
    /// Ramp shape.
    pub shape: RampShape,
    /// Target mean recurrence `R` (≥ 1), reached at step `W` and kept after.
    pub target: usize,
    /// Ramp length as a fraction of all optimizer steps, in `[0, 1]`; ignored for `Constant`.
    #[serde(default)]
    pub ramp_fraction: f64,
}

impl MeanSchedule {
    /// No curriculum: `R` from the first step.
    pub fn constant(target: usize) -> Self {
        Self {
            shape: RampShape::Constant,
            target,
            ramp_fraction: 0.0,
        }
    }
    /// Linear ramp over `ramp_fraction` of the run (the paper's other runs: 0.25).
    pub fn linear(target: usize, ramp_fraction: f64) -> Self {
        Self {
            shape: RampShape::Linear,
            target,
            ramp_fraction,
        }
    }
    /// 1−√ ramp over `ramp_fraction` of the run (the released models: 0.75).
    pub fn one_minus_sqrt(target: usize, ramp_fraction: f64) -> Self {
        Self {
            shape: RampShape::OneMinusSqrt,
            target,
            ramp_fraction,
        }
    }

    /// Reject a target of 0 (or absurdly large) and a ramp fraction outside `[0, 1]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.target == 0 {
            return Err(ConfigError::new("mean.target", "must be at least 1"));
        }
        if self.target > MAX_TARGET {
            return Err(ConfigError::new(
                "mean.target",
                format!("must be at most {MAX_TARGET}"),
            ));
        }
        check_unit("mean.ramp_fraction", self.ramp_fraction, 0.0, 1.0)
    }

    /// Ramp length `W` in steps for a run of `total_steps` (0 for `Constant`).
    pub fn ramp_steps(&self, total_steps: usize) -> usize {
        match self.shape {
            RampShape::Constant => 0,
            _ => ramp_steps(self.ramp_fraction, total_steps),
        }
    }

    /// Mean recurrence at 0-based optimizer step `step` of a run of `total_steps` steps.
    /// Always in `[1, max(1, target)]`; a target of 0 is treated as 1.
    pub fn mean_at(&self, step: usize, total_steps: usize) -> usize {
        let r = self.target.clamp(1, u32::MAX as usize) as u128;
        let w = self.ramp_steps(total_steps) as u128;
        let t = step as u128;
        if t >= w {
            return r as usize;
        }
        let m = match self.shape {
            RampShape::Constant => r,
            // ceil(R·t/W)
            RampShape::Linear => (r * t).div_ceil(w),
            // ceil(R·(1 − √(1 − t/W))) = R − ⌊√((W − t)·R² / W)⌋
            RampShape::OneMinusSqrt => r - (((w - t) * r * r) / w).isqrt(),
        };
        m.max(1) as usize
    }
}

/// Largest accepted target mean recurrence in a recipe.
pub const MAX_TARGET: usize = 1 << 16;

/// `round(fraction · total_steps)`, fraction clamped to `[0, 1]` (NaN → 0).
pub(crate) fn ramp_steps(fraction: f64, total_steps: usize) -> usize {
    let f = if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    };
    ((f * total_steps as f64).round() as usize).min(total_steps)
}

/// Optional linear ramp of the backprop depth (spec §4: 1 → 8). A config value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackpropDepthSchedule {
    /// Depth at step 0 (default 1).
    #[serde(default = "one")]
    pub start: usize,
    /// Depth at the end of the ramp and after (default 8).
    #[serde(default = "eight")]
    pub end: usize,
    /// Ramp length as a fraction of all optimizer steps, in `[0, 1]`.
    pub ramp_fraction: f64,
}

fn one() -> usize {
    1
}
fn eight() -> usize {
    8
}

impl BackpropDepthSchedule {
    /// Reject `start = 0`, `start > end` and a fraction outside `[0, 1]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.start == 0 {
            return Err(ConfigError::new(
                "backprop_ramp.start",
                "must be at least 1",
            ));
        }
        if self.start > self.end {
            return Err(ConfigError::new(
                "backprop_ramp.end",
                "must be at least `start`",
            ));
        }
        check_unit("backprop_ramp.ramp_fraction", self.ramp_fraction, 0.0, 1.0)
    }

    /// Ramp length `W` in steps (same rounding as [`MeanSchedule::ramp_steps`]).
    pub fn ramp_steps(&self, total_steps: usize) -> usize {
        ramp_steps(self.ramp_fraction, total_steps)
    }

    /// Backprop depth at 0-based optimizer step `step`. Always in `[start, end]` (after clamping
    /// `start` to ≥ 1 and `end` to ≥ `start`).
    pub fn depth_at(&self, step: usize, total_steps: usize) -> usize {
        let start = self.start.max(1);
        let end = self.end.max(start);
        let w = self.ramp_steps(total_steps) as u128;
        if step as u128 >= w {
            return end;
        }
        let levels = (end - start) as u128 + 1;
        let k = levels * step as u128 / w;
        (start as u128 + k).min(end as u128) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec requirement: R = 4, 1−√ over 75 % of 50,000 steps switches exactly around steps
    /// 16,406, 28,125 and 35,156 (the floors of the real crossings 16,406.25, 28,125, 35,156.25).
    #[test]
    fn one_minus_sqrt_switch_steps_r4() {
        let s = MeanSchedule::one_minus_sqrt(4, 0.75);
        let total = 50_000;
        assert_eq!(s.ramp_steps(total), 37_500);
        assert_eq!(s.mean_at(0, total), 1);
        assert_eq!(s.mean_at(16_406, total), 1);
        assert_eq!(s.mean_at(16_407, total), 2);
        assert_eq!(
            s.mean_at(28_125, total),
            2,
            "R·f = 2 exactly here; ceil(2) = 2"
        );
        assert_eq!(s.mean_at(28_126, total), 3);
        assert_eq!(s.mean_at(35_156, total), 3);
        assert_eq!(s.mean_at(35_157, total), 4);
        assert_eq!(s.mean_at(37_499, total), 4);
        assert_eq!(s.mean_at(37_500, total), 4);
        assert_eq!(s.mean_at(49_999, total), 4);
        // These are the only changes of value over the whole run.
        let mut changes = Vec::new();
        for t in 1..total {
            let (a, b) = (s.mean_at(t - 1, total), s.mean_at(t, total));
            if a != b {
                changes.push((t - 1, a, b));
            }
        }
        assert_eq!(
            changes,
            vec![(16_406, 1, 2), (28_125, 2, 3), (35_156, 3, 4)]
        );
    }

    /// The integer evaluation agrees with a direct float evaluation wherever the float one is
    /// not within rounding distance of an integer (i.e. everywhere it can be trusted).
    #[test]
    fn exact_matches_float_away_from_ties() {
        for &(r, total, frac) in &[
            (4usize, 50_000usize, 0.75f64),
            (32, 50_000, 0.75),
            (32, 10_007, 0.25),
            (7, 999, 0.5),
        ] {
            for shape in [RampShape::Linear, RampShape::OneMinusSqrt] {
                let s = MeanSchedule {
                    shape,
                    target: r,
                    ramp_fraction: frac,
                };
                let w = s.ramp_steps(total) as f64;
                for t in 0..s.ramp_steps(total) {
                    let u = t as f64 / w;
                    let f = match shape {
                        RampShape::Linear => u,
                        _ => 1.0 - (1.0 - u).sqrt(),
                    };
                    let x = r as f64 * f;
                    if (x - x.round()).abs() < 1e-9 {
                        continue;
                    }
                    let want = (x.ceil() as usize).max(1);
                    assert_eq!(s.mean_at(t, total), want, "{shape:?} R={r} t={t}");
                }
            }
        }
    }

    #[test]
    fn linear_r32_quarter() {
        let s = MeanSchedule::linear(32, 0.25);
        let total = 50_000; // W = 12,500; each value gets 12,500/32 = 390.625 steps
        assert_eq!(s.mean_at(0, total), 1);
        assert_eq!(s.mean_at(390, total), 1); // 32·390/12500 = 0.9984
        assert_eq!(s.mean_at(391, total), 2);
        assert_eq!(s.mean_at(6_250, total), 16); // exactly 16
        assert_eq!(s.mean_at(6_251, total), 17);
        assert_eq!(s.mean_at(12_499, total), 32);
        assert_eq!(s.mean_at(12_500, total), 32);
    }

    #[test]
    fn ramp_rounding() {
        assert_eq!(ramp_steps(0.29, 100), 29);
        assert_eq!(ramp_steps(0.7, 10), 7);
        assert_eq!(ramp_steps(0.5, 3), 2); // 1.5 rounds half away from zero
        assert_eq!(ramp_steps(0.0, 100), 0);
        assert_eq!(ramp_steps(1.0, 100), 100);
        assert_eq!(ramp_steps(f64::NAN, 100), 0);
        assert_eq!(ramp_steps(2.0, 100), 100);
    }

    #[test]
    fn backprop_ramp_equal_shares() {
        let b = BackpropDepthSchedule {
            start: 1,
            end: 8,
            ramp_fraction: 0.25,
        };
        let total = 3_200; // W = 800, 100 steps per depth
        let depths: Vec<usize> = (0..900).map(|t| b.depth_at(t, total)).collect();
        for d in 1..=8 {
            assert_eq!(
                depths.iter().filter(|&&x| x == d).count(),
                if d == 8 { 200 } else { 100 }
            );
        }
        assert_eq!(b.depth_at(0, total), 1);
        assert_eq!(b.depth_at(99, total), 1);
        assert_eq!(b.depth_at(100, total), 2);
        assert_eq!(b.depth_at(799, total), 8);
        assert!(b.validate().is_ok());
        assert!(BackpropDepthSchedule {
            start: 0,
            end: 8,
            ramp_fraction: 0.1
        }
        .validate()
        .is_err());
        assert!(BackpropDepthSchedule {
            start: 9,
            end: 8,
            ramp_fraction: 0.1
        }
        .validate()
        .is_err());
    }
}
