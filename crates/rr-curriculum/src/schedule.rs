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
//! **Backprop-depth ramp.** Optional and separate. The authors' training code ramps the depth
//! with cap 8 as `k(t) = min(8, ⌈1 + 7·(t + 1)/W⌉)` for the 0-based step `t < W`, and 8 after: it
//! starts at 2 (for W ≥ 7), reaches 8 at the last ramp step `t = W − 1`, and never takes the
//! value one. For a cap `c` other than 8 we keep the same form, `k(t) = ⌈1 + (c − 1)(t + 1)/W⌉`, that
//! is `1 + ⌈(c − 1)(t + 1)/W⌉`, an integer ceiling division, exact at the ties. With c = 8 and
//! W = 700 each depth 2…8 holds for exactly 100 steps (tested).

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

/// Optional ramp of the backprop depth up to `end` (the authors': 2 → 8). A config value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackpropDepthSchedule {
    /// Depth cap `c`: reached at the last ramp step and kept after (default 8).
    #[serde(default = "eight")]
    pub end: usize,
    /// Ramp length as a fraction of all optimizer steps, in `[0, 1]`.
    pub ramp_fraction: f64,
}

fn eight() -> usize {
    8
}

impl BackpropDepthSchedule {
    /// Reject a cap of 0 and a fraction outside `[0, 1]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.end == 0 {
            return Err(ConfigError::new("backprop_ramp.end", "must be at least 1"));
        }
        check_unit("backprop_ramp.ramp_fraction", self.ramp_fraction, 0.0, 1.0)
    }

    /// Ramp length `W` in steps (same rounding as [`MeanSchedule::ramp_steps`]).
    pub fn ramp_steps(&self, total_steps: usize) -> usize {
        ramp_steps(self.ramp_fraction, total_steps)
    }

    /// Backprop depth at 0-based optimizer step `step`: `min(c, ⌈1 + (c − 1)(t + 1)/W⌉)` during
    /// the ramp, `c` after. Always in `[1, c]` (a cap of 0 is treated as 1).
    pub fn depth_at(&self, step: usize, total_steps: usize) -> usize {
        let cap = self.end.max(1) as u128;
        let w = self.ramp_steps(total_steps) as u128;
        let t = step as u128;
        if t >= w {
            return cap as usize;
        }
        // ⌈1 + x⌉ = 1 + ⌈x⌉ with x = (c − 1)(t + 1)/W ≤ c − 1 for t < W.
        (1 + ((cap - 1) * (t + 1)).div_ceil(w)).min(cap) as usize
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

    /// The authors' ramp `⌈1 + 7(t + 1)/W⌉` with W = 700 (25 % of 2,800 steps): `7(t + 1)/700 =
    /// (t + 1)/100`, so t = 0 gives ⌈1.01⌉ = 2, t = 99 gives exactly 2, t = 100 gives ⌈2.01⌉ = 3
    /// and t = 699 gives 1 + 7 = 8. Each depth 2…8 holds for 100 steps.
    #[test]
    fn backprop_ramp_authors_form() {
        let b = BackpropDepthSchedule {
            end: 8,
            ramp_fraction: 0.25,
        };
        let total = 2_800;
        assert_eq!(b.ramp_steps(total), 700);
        assert_eq!(b.depth_at(0, total), 2);
        assert_eq!(b.depth_at(99, total), 2); // 1 + 7·100/700 = 2 exactly
        assert_eq!(b.depth_at(100, total), 3); // 1 + 7·101/700 = 2.01
        assert_eq!(b.depth_at(599, total), 7); // 1 + 7·600/700 = 7 exactly
        assert_eq!(b.depth_at(600, total), 8); // 1 + 7·601/700 = 7.01
        assert_eq!(b.depth_at(699, total), 8); // 1 + 7 = 8
        assert_eq!(b.depth_at(700, total), 8);
        let depths: Vec<usize> = (0..800).map(|t| b.depth_at(t, total)).collect();
        assert_eq!(depths.iter().filter(|&&x| x == 1).count(), 0);
        for d in 2..=7 {
            assert_eq!(depths.iter().filter(|&&x| x == d).count(), 100, "depth {d}");
        }
        assert_eq!(depths.iter().filter(|&&x| x == 8).count(), 200);
        assert!(b.validate().is_ok());
        assert!(BackpropDepthSchedule {
            end: 0,
            ramp_fraction: 0.1
        }
        .validate()
        .is_err());
    }

    /// Cap 4 over W = 10 steps: `⌈1 + 3(t + 1)/10⌉`.
    #[test]
    fn backprop_ramp_other_cap() {
        let b = BackpropDepthSchedule {
            end: 4,
            ramp_fraction: 0.5,
        };
        let total = 20; // W = 10
        let want = [
            2, // t=0: 1 + 0.3
            2, // t=1: 1 + 0.6
            2, // t=2: 1 + 0.9
            3, // t=3: 1 + 1.2
            3, // t=4: 1 + 1.5
            3, // t=5: 1 + 1.8
            4, // t=6: 1 + 2.1
            4, // t=7: 1 + 2.4
            4, // t=8: 1 + 2.7
            4, // t=9: 1 + 3.0
            4, // t=10: after the ramp
        ];
        let got: Vec<usize> = (0..=10).map(|t| b.depth_at(t, total)).collect();
        assert_eq!(got, want);
        // No ramp: the cap from step 0.
        let flat = BackpropDepthSchedule {
            end: 8,
            ramp_fraction: 0.0,
        };
        assert_eq!(flat.depth_at(0, 100), 8);
    }
}
