//! Property tests of the schedules: shape invariants that must hold for every target, ramp
//! length, run length and step, not just the released recipe.

use proptest::prelude::*;
use rr_curriculum::{
    BackpropDepthSchedule, Curriculum, DecayShape, LrSchedule, MeanSchedule, RampShape,
    RecurrenceSampler,
};

fn shape() -> impl Strategy<Value = RampShape> {
    prop_oneof![
        Just(RampShape::Constant),
        Just(RampShape::Linear),
        Just(RampShape::OneMinusSqrt)
    ]
}

fn mean_schedule() -> impl Strategy<Value = MeanSchedule> {
    (shape(), 1usize..=128, 0.0f64..=1.0).prop_map(|(shape, target, ramp_fraction)| MeanSchedule {
        shape,
        target,
        ramp_fraction,
    })
}

fn lr_schedule() -> impl Strategy<Value = LrSchedule> {
    let wsd = (
        1e-6f64..1.0,
        prop_oneof![Just(0usize), 0usize..500],
        0.0f64..=1.0,
        0.0f64..=1.0,
        any::<bool>(),
    )
        .prop_map(|(peak, warmup_steps, decay_fraction, floor_ratio, lin)| {
            LrSchedule::WarmupStableDecay {
                peak,
                warmup_steps,
                decay_fraction,
                floor_ratio,
                decay: if lin {
                    DecayShape::Linear
                } else {
                    DecayShape::Cosine
                },
            }
        });
    let cos = (
        1e-6f64..1.0,
        prop_oneof![Just(0usize), 0usize..500],
        0.0f64..=1.0,
    )
        .prop_map(|(peak, warmup_steps, floor_ratio)| LrSchedule::Cosine {
            peak,
            warmup_steps,
            floor_ratio,
        });
    prop_oneof![wsd, cos]
}

/// Run lengths, biased towards tiny runs where phases collide (warmup longer than the run, a
/// decay of one step, a ramp of zero steps).
fn total_steps() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..64, 64usize..20_000]
}

fn warmup_of(s: &LrSchedule) -> usize {
    match *s {
        LrSchedule::WarmupStableDecay { warmup_steps, .. }
        | LrSchedule::Cosine { warmup_steps, .. } => warmup_steps,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mean_schedule_shape(s in mean_schedule(), total in total_steps()) {
        let w = s.ramp_steps(total);
        prop_assert!(w <= total);
        let mut prev = 0;
        for t in 0..total + 10 {
            let m = s.mean_at(t, total);
            prop_assert!((1..=s.target).contains(&m), "t={} m={}", t, m);
            prop_assert!(m >= prev, "not monotone at t={}: {} < {}", t, m, prev);
            if t >= w {
                prop_assert_eq!(m, s.target, "t={} ≥ W={}", t, w);
            }
            prev = m;
        }
        if w > 0 && s.shape != RampShape::Constant {
            prop_assert_eq!(s.mean_at(0, total), 1);
        }
        if s.shape == RampShape::Constant {
            prop_assert_eq!(s.mean_at(0, total), s.target);
        }
    }

    /// The integer evaluation meets the definition `m = max(1, ceil(R·f(t/W)))` exactly, stated
    /// as inequalities on integers (no floating point anywhere), for large runs too.
    #[test]
    fn mean_schedule_is_exact_ceiling(target in 1usize..=4096, total in 1usize..10_000_000, frac in 0.0f64..=1.0, pos in 0.0f64..1.0) {
        for shape in [RampShape::Linear, RampShape::OneMinusSqrt] {
            let s = MeanSchedule { shape, target, ramp_fraction: frac };
            let w = s.ramp_steps(total) as u128;
            if w == 0 { continue; }
            let t = ((pos * w as f64) as u128).min(w - 1);
            let m = s.mean_at(t as usize, total) as u128;
            let r = target as u128;
            // R·f ≤ m, and (m > 1) ⇒ R·f > m − 1.
            let le = |k: u128| match shape {
                // R·t/W ≤ k
                RampShape::Linear => r * t <= k * w,
                // R(1 − √((W−t)/W)) ≤ k  ⇔  (R − k)²·W ≤ (W − t)·R²   (k ≤ R)
                _ => (r - k) * (r - k) * w <= (w - t) * r * r,
            };
            prop_assert!(le(m), "{:?} R={} W={} t={} m={}", shape, r, w, t, m);
            if m > 1 {
                prop_assert!(!le(m - 1), "{:?} R={} W={} t={} m={} not minimal", shape, r, w, t, m);
            }
        }
    }

    #[test]
    fn backprop_ramp_shape(start in 1usize..8, extra in 0usize..16, frac in 0.0f64..=1.0, total in 1usize..5_000) {
        let b = BackpropDepthSchedule { start, end: start + extra, ramp_fraction: frac };
        let w = b.ramp_steps(total);
        let mut prev = 0;
        for t in 0..total + 5 {
            let d = b.depth_at(t, total);
            prop_assert!((start..=start + extra).contains(&d));
            prop_assert!(d >= prev);
            if t >= w { prop_assert_eq!(d, start + extra); }
            prev = d;
        }
        if w > 0 { prop_assert_eq!(b.depth_at(0, total), start); }
    }

    #[test]
    fn lr_schedule_shape(s in lr_schedule(), total in total_steps()) {
        let (peak, floor) = (s.peak(), s.floor());
        let n = warmup_of(&s).min(total);
        let (d0, d) = s.decay_window(total);
        prop_assert!(d0 >= n && d0 + d == total);
        let mut prev = f64::NEG_INFINITY;
        for step in 0..total {
            let lr = s.lr_at(step, total);
            prop_assert!(lr.is_finite() && lr >= 0.0);
            if step < n {
                // Warmup: strictly increasing, reaching the peak exactly at its last step (a run
                // shorter than the warmup never reaches the peak).
                prop_assert!(lr > prev, "warmup not increasing at {}", step);
                prop_assert!(lr <= peak);
                let warmup = warmup_of(&s);
                prop_assert!((lr - peak * (step + 1) as f64 / warmup as f64).abs() <= 1e-15 * peak);
                if step + 1 == warmup { prop_assert_eq!(lr, peak); }
            } else {
                prop_assert!(lr >= floor && lr <= peak, "step {}: {} outside [{}, {}]", step, lr, floor, peak);
                if step < d0 {
                    prop_assert_eq!(lr, peak, "stable phase at {}", step);
                } else {
                    // The first decay step is compared with the peak (also when the decay
                    // starts at step 0).
                    let before = if step == d0 { peak } else { prev };
                    prop_assert!(lr <= before, "decay not monotone at {}: {} > {}", step, lr, before);
                }
            }
            // The multiplier is the same shape with peak 1.
            let m = s.multiplier_at(step, total);
            prop_assert!((m * peak - lr).abs() <= 1e-12 * peak, "multiplier {} vs lr {}", m, lr);
            prev = lr;
        }
        if d > 0 {
            let last = s.lr_at(total - 1, total);
            prop_assert!((last - floor).abs() <= 1e-12 * floor.max(f64::MIN_POSITIVE), "last {} vs floor {}", last, floor);
            prop_assert_eq!(s.lr_at(total + 7, total), last);
        }
    }

    /// The curriculum bundle draws with the scheduled mean and the ramped backprop depth.
    #[test]
    fn curriculum_draw_consistent(step in 0usize..1000, mb in any::<u64>(), seed in any::<u64>()) {
        let c = Curriculum {
            mean: MeanSchedule::one_minus_sqrt(32, 0.75),
            sampler: RecurrenceSampler::default(),
            backprop_ramp: Some(BackpropDepthSchedule { start: 1, end: 8, ramp_fraction: 0.5 }),
        };
        let total = 1000;
        let bp = c.backprop_depth_at(step, total);
        let d = c.draw(step, total, seed, mb);
        let direct = RecurrenceSampler { backprop_depth: bp, cap: 256 }.draw(c.mean.mean_at(step, total), seed, mb);
        prop_assert_eq!(d, direct);
        prop_assert!(d.with_grad <= bp);
        prop_assert_eq!(d.no_grad + d.with_grad, d.total);
    }

    #[test]
    fn draw_invariants(mean in 0usize..200, bp in 1usize..16, cap in 1usize..300, seed in any::<u64>(), mb in any::<u64>()) {
        let s = RecurrenceSampler { backprop_depth: bp, cap };
        let d = s.draw(mean, seed, mb);
        prop_assert_eq!(d, s.draw(mean, seed, mb));
        prop_assert_eq!(d.no_grad + d.with_grad, d.total);
        prop_assert!(d.total >= 1 && d.total <= cap);
        prop_assert!(d.with_grad >= 1 && d.with_grad <= bp);
        let (_, sdepth) = s.split(mean);
        prop_assert_eq!(d.with_grad, sdepth.min(d.total));
    }
}
