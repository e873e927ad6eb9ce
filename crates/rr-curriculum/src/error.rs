//! One small error type for invalid configuration values.
//!
//! Evaluation functions in this crate never fail (they clamp, as documented on each); the
//! `validate` methods are where a bad recipe is rejected with a message naming the field, so
//! that a typo in a TOML file stops a run at load time rather than silently training on a
//! clamped value.

use std::fmt;

/// A configuration value outside its allowed range.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Dotted name of the offending field, e.g. `"mean.ramp_fraction"`.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// `Ok` when `x` is a finite number in `[lo, hi]`.
pub(crate) fn check_unit(field: &'static str, x: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
    if x.is_finite() && x >= lo && x <= hi {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be a finite number in [{lo}, {hi}], got {x}"),
        ))
    }
}
