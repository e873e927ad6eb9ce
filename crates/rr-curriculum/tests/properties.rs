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
        prop_oneof![
            Just(DecayShape::Cosine),
            Just(DecayShape::Linear),
            Just(DecayShape::OneMinusSqrt)
        ],
    )
        .prop_map(|(peak, warmup_steps, decay_fraction, floor_ratio, decay)| {
            LrSchedule::WarmupStableDecay {
                peak,
                warmup_steps,
                decay_fraction,
                floor_ratio,
                decay,
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

    /// The authors' form `⌈1 + (c − 1)(t + 1)/W⌉`, checked as the least integer bound: `d − 1 ≥
    /// (c − 1)(t + 1)/W` and `d − 2 < (c − 1)(t + 1)/W`, cross-multiplied.
    #[test]
    fn backprop_ramp_shape(cap in 1usize..24, frac in 0.0f64..=1.0, total in 1usize..5_000) {
        let b = BackpropDepthSchedule { end: cap, ramp_fraction: frac };
        let w = b.ramp_steps(total);
        let mut prev = 0;
        for t in 0..total + 5 {
            let d = b.depth_at(t, total);
            prop_assert!((1..=cap).contains(&d));
            prop_assert!(d >= prev);
            if t >= w {
                prop_assert_eq!(d, cap);
            } else {
                let x = (cap - 1) * (t + 1);
                prop_assert!((d - 1) * w >= x, "t={} W={} d={}", t, w, d);
                if d >= 2 { prop_assert!((d - 2) * w < x, "t={} W={} d={} not least", t, w, d); }
            }
            prev = d;
        }
        if w > 0 { prop_assert_eq!(b.depth_at(w - 1, total), cap); }
    }

    /// transformers' WSD lambda: warmup `ρ + (1 − ρ)k/N` from the floor towards the peak, the
    /// peak through the stable phase and at the first decay step, a monotone decay that stays
    /// above the floor, and the floor from step T on.
    #[test]
    fn lr_schedule_shape(s in lr_schedule(), total in total_steps()) {
        let (peak, floor, rho) = (s.peak(), s.floor(), s.floor_ratio());
        let n = warmup_of(&s).min(total);
        let (d0, d) = s.decay_window(total);
        prop_assert!(d0 >= n && d0 + d == total);
        let mut prev = f64::NEG_INFINITY;
        for step in 0..total {
            let lr = s.lr_at(step, total);
            prop_assert!(lr.is_finite() && lr >= 0.0);
            prop_assert!(lr >= floor * (1.0 - 1e-12) && lr <= peak, "step {}: {} outside [{}, {}]", step, lr, floor, peak);
            if step < n {
                let want = peak * (rho + (1.0 - rho) * step as f64 / warmup_of(&s) as f64);
                prop_assert!((lr - want).abs() <= 1e-12 * peak, "warmup {}: {} vs {}", step, lr, want);
                prop_assert!(lr >= prev, "warmup decreasing at {}", step);
                if step == 0 { prop_assert_eq!(lr, floor); }
            } else if step <= d0 {
                // The stable phase and the first decay step (progress 0) are exactly the peak.
                prop_assert_eq!(lr, peak, "stable phase at {}", step);
            } else {
                prop_assert!(lr <= prev, "decay not monotone at {}: {} > {}", step, lr, prev);
            }
            // The multiplier is the same shape with peak 1.
            let m = s.multiplier_at(step, total);
            prop_assert!((m * peak - lr).abs() <= 1e-12 * peak, "multiplier {} vs lr {}", m, lr);
            prev = lr;
        }
        prop_assert_eq!(s.lr_at(total, total), floor);
        prop_assert_eq!(s.lr_at(total + 7, total), floor);
    }

    /// The curriculum bundle draws with the scheduled mean and the ramped backprop depth.
    #[test]
    fn curriculum_draw_consistent(step in 0usize..1000, mb in any::<u64>(), seed in any::<u64>()) {
        let c = Curriculum {
            mean: MeanSchedule::one_minus_sqrt(32, 0.75),
            sampler: RecurrenceSampler::default(),
            backprop_ramp: Some(BackpropDepthSchedule { end: 8, ramp_fraction: 0.5 }),
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
