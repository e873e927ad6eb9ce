//! The `[optimizer]` section: the spec's defaults, partial configs and unknown keys.

use rr_recipe::{AdamWConfig, MuonConfig, OptimizerConfig};

const COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

#[test]
fn adamw_defaults_and_serde() {
    let d = AdamWConfig::default();
    assert_eq!(
        d,
        AdamWConfig {
            lr: 5e-5,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 1e-4
        }
    );
    let c: AdamWConfig = serde_json::from_str(r#"{"lr": 1e-4, "betas": [0.8, 0.9]}"#).unwrap();
    assert_eq!(
        c,
        AdamWConfig {
            lr: 1e-4,
            betas: (0.8, 0.9),
            ..d
        }
    );
    assert!(serde_json::from_str::<AdamWConfig>(r#"{"lrr": 1}"#).is_err());
    let o: OptimizerConfig = serde_json::from_str(r#"{"kind": "adamw", "eps": 1e-6}"#).unwrap();
    assert_eq!(o, OptimizerConfig::AdamW(AdamWConfig { eps: 1e-6, ..d }));
    let back: OptimizerConfig = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
    assert_eq!(back, o);
}

#[test]
fn muon_defaults_and_serde() {
    let d = MuonConfig::default();
    assert_eq!(
        (d.lr, d.momentum, d.nesterov, d.ns_steps),
        (1e-3, 0.95, true, 5)
    );
    assert_eq!(d.ns_coefficients, COEFFS);
    assert_eq!(d.weight_decay, 1e-4);
    assert_eq!(
        (d.adam_lr, d.adam_betas, d.adam_eps, d.adam_weight_decay),
        (5e-5, (0.9, 0.95), 1e-10, 1e-4)
    );
    // A partial config keeps the aux Adam's eps 1e-10 (not AdamW's 1e-8).
    let c: OptimizerConfig =
        serde_json::from_str(r#"{"kind": "muon", "lr": 0.002, "adam_lr": 1e-4}"#).unwrap();
    assert_eq!(
        c,
        OptimizerConfig::Muon(MuonConfig {
            lr: 0.002,
            adam_lr: 1e-4,
            ..d.clone()
        })
    );
    assert_eq!(OptimizerConfig::default(), OptimizerConfig::Muon(d));
    assert!(serde_json::from_str::<OptimizerConfig>(r#"{"kind": "muon", "adam": {}}"#).is_err());
    assert!(serde_json::from_str::<OptimizerConfig>(r#"{"kind": "sgd"}"#).is_err());
}
