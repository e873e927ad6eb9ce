//! The config types appear in TOML recipes: they must round-trip, accept the documented
//! spellings and defaults, and reject unknown fields (a typo must not silently fall back to a
//! default). serde_json stands in for TOML here; the derive is format-agnostic.

use rr_curriculum::{
    BackpropDepthSchedule, Curriculum, DecayShape, LrSchedule, MeanSchedule, RampShape,
    RecurrenceSampler,
};
use serde_json::{from_str, to_string};

#[test]
fn round_trips() {
    let c = Curriculum {
        mean: MeanSchedule::one_minus_sqrt(32, 0.75),
        sampler: RecurrenceSampler {
            backprop_depth: 6,
            cap: 100,
        },
        backprop_ramp: Some(BackpropDepthSchedule {
            end: 8,
            ramp_fraction: 0.25,
        }),
    };
    assert_eq!(from_str::<Curriculum>(&to_string(&c).unwrap()).unwrap(), c);
    for lr in [
        LrSchedule::paper(1e-3),
        LrSchedule::Cosine {
            peak: 5e-5,
            warmup_steps: 10,
            floor_ratio: 0.1,
        },
        LrSchedule::WarmupStableDecay {
            peak: 1.0,
            warmup_steps: 0,
            decay_fraction: 0.2,
            floor_ratio: 0.0,
            decay: DecayShape::Linear,
        },
    ] {
        assert_eq!(
            from_str::<LrSchedule>(&to_string(&lr).unwrap()).unwrap(),
            lr
        );
    }
}

#[test]
fn documented_spellings_and_defaults() {
    let c: Curriculum =
        from_str(r#"{"mean": {"shape": "1-sqrt", "target": 4, "ramp_fraction": 0.75}}"#).unwrap();
    assert_eq!(c.mean.shape, RampShape::OneMinusSqrt);
    assert_eq!(
        c.sampler,
        RecurrenceSampler {
            backprop_depth: 8,
            cap: 256
        }
    );
    assert_eq!(c.backprop_ramp, None);
    c.validate().unwrap();

    let m: MeanSchedule = from_str(r#"{"shape": "constant", "target": 8}"#).unwrap();
    assert_eq!(m, MeanSchedule::constant(8));
    let m: MeanSchedule =
        from_str(r#"{"shape": "one_minus_sqrt", "target": 8, "ramp_fraction": 0.5}"#).unwrap();
    assert_eq!(m.shape, RampShape::OneMinusSqrt);

    let s: RecurrenceSampler = from_str(r#"{"cap": 64}"#).unwrap();
    assert_eq!(
        s,
        RecurrenceSampler {
            backprop_depth: 8,
            cap: 64
        }
    );

    let b: BackpropDepthSchedule = from_str(r#"{"ramp_fraction": 0.1}"#).unwrap();
    assert_eq!(b.end, 8);

    let lr: LrSchedule = from_str(
        r#"{"kind": "warmup_stable_decay", "peak": 0.001, "warmup_steps": 125, "decay_fraction": 0.6, "floor_ratio": 0.001}"#,
    )
    .unwrap();
    assert_eq!(
        lr,
        LrSchedule::paper(1e-3),
        "decay shape defaults to cosine"
    );
}

#[test]
fn unknown_fields_are_rejected() {
    for bad in [
        r#"{"mean": {"shape": "linear", "target": 4, "ramp_fraction": 0.25}, "extra": 1}"#,
        r#"{"mean": {"shape": "linear", "target": 4, "ramp_frac": 0.25}}"#,
        r#"{"mean": {"shape": "linear", "target": 4}, "sampler": {"backprop": 8}}"#,
        r#"{"mean": {"shape": "linear", "target": 4}, "backprop_ramp": {"ramp_fraction": 0.1, "stop": 8}}"#,
        r#"{"mean": {"shape": "sqrt", "target": 4}}"#,
    ] {
        assert!(from_str::<Curriculum>(bad).is_err(), "accepted: {bad}");
    }
    for bad in [
        r#"{"kind": "cosine", "peak": 1.0, "warmup_steps": 0, "floor_ratio": 0.1, "decay_fraction": 0.5}"#,
        r#"{"kind": "warmup_stable_decay", "peak": 1.0, "warmup_steps": 0, "decay_fraction": 0.5, "floor_ratio": 0.1, "min_lr": 0}"#,
        r#"{"kind": "wsd", "peak": 1.0, "warmup_steps": 0, "floor_ratio": 0.1}"#,
    ] {
        assert!(from_str::<LrSchedule>(bad).is_err(), "accepted: {bad}");
    }
}

#[test]
fn validation_rejects_bad_values() {
    assert!(MeanSchedule::linear(0, 0.25).validate().is_err());
    assert!(MeanSchedule::linear(4, 1.5).validate().is_err());
    assert!(MeanSchedule::linear(4, f64::NAN).validate().is_err());
    assert!(MeanSchedule::one_minus_sqrt(32, 0.75).validate().is_ok());
    let mut c = Curriculum {
        mean: MeanSchedule::constant(4),
        sampler: RecurrenceSampler::default(),
        backprop_ramp: None,
    };
    assert!(c.validate().is_ok());
    c.sampler.cap = 0;
    assert!(c.validate().is_err());
}
