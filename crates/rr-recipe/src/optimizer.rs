//! The `[optimizer]` section: which optimizer, and its hyperparameters with the spec's
//! defaults (method.md §5). The optimizers themselves live in `rr-train` (`rr_train::optim`),
//! which builds one from these values.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Choice of optimizer, as written in a training config:
/// `{"kind": "muon", "lr": 0.001, ...}` or `{"kind": "adamw", "lr": 5e-5, ...}`.
/// Omitted fields take the spec's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
    Muon(MuonConfig),
}

impl Default for OptimizerConfig {
    /// Muon with the spec's constants (the released models' recipe).
    fn default() -> Self {
        OptimizerConfig::Muon(MuonConfig::default())
    }
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<()> {
        match self {
            OptimizerConfig::AdamW(c) => c.validate(),
            OptimizerConfig::Muon(c) => c.validate(),
        }
    }
}

/// AdamW hyperparameters. Defaults are the spec's AdamW ablation recipe:
/// lr 5e-5, betas (0.9, 0.95), eps 1e-8, weight decay 1e-4.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Peak learning rate; the optimizer's step multiplies it by the schedule's multiplier.
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Decoupled weight decay: `p *= 1 - lr·weight_decay` before the Adam step.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 5e-5,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            bail!("adamw: lr must be finite and >= 0, got {}", self.lr);
        }
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            bail!("adamw: betas must lie in [0, 1), got ({b1}, {b2})");
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            bail!("adamw: eps must be finite and > 0, got {}", self.eps);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "adamw: weight_decay must be finite and >= 0, got {}",
                self.weight_decay
            );
        }
        Ok(())
    }
}

/// Muon hyperparameters, defaulting to the spec's constants. The auxiliary Adam's settings
/// are flat `adam_*` fields (not a nested AdamW config) so that a partial JSON config can
/// never pick up AdamW's different default `eps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MuonConfig {
    /// Peak Muon learning rate (1e-3).
    pub lr: f64,
    /// Momentum μ (0.95).
    pub momentum: f64,
    /// Nesterov momentum (true).
    pub nesterov: bool,
    /// Newton–Schulz iterations (5).
    pub ns_steps: usize,
    /// Newton–Schulz coefficients (a, b, c) = (3.4445, −4.7750, 2.0315).
    pub ns_coefficients: (f64, f64, f64),
    /// Decoupled weight decay of the Muon parameters (1e-4).
    pub weight_decay: f64,
    /// Peak learning rate of the auxiliary Adam (5e-5).
    pub adam_lr: f64,
    /// Betas of the auxiliary Adam ((0.9, 0.95)).
    pub adam_betas: (f64, f64),
    /// Eps of the auxiliary Adam (1e-10).
    pub adam_eps: f64,
    /// Decoupled weight decay of the auxiliary Adam (1e-4).
    pub adam_weight_decay: f64,
}

impl Default for MuonConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            ns_coefficients: (3.4445, -4.7750, 2.0315),
            weight_decay: 1e-4,
            adam_lr: 5e-5,
            adam_betas: (0.9, 0.95),
            adam_eps: 1e-10,
            adam_weight_decay: 1e-4,
        }
    }
}

impl MuonConfig {
    /// The auxiliary Adam's configuration.
    pub fn aux_adam(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.adam_lr,
            betas: self.adam_betas,
            eps: self.adam_eps,
            weight_decay: self.adam_weight_decay,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            bail!("muon: lr must be finite and >= 0, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("muon: momentum must lie in [0, 1), got {}", self.momentum);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "muon: weight_decay must be finite and >= 0, got {}",
                self.weight_decay
            );
        }
        let (a, b, c) = self.ns_coefficients;
        if ![a, b, c].iter().all(|x| x.is_finite()) {
            bail!("muon: ns_coefficients must be finite, got ({a}, {b}, {c})");
        }
        self.aux_adam().validate()
    }
}
