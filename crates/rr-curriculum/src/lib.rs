//! Recurrence sampling, mean-recurrence and learning-rate schedules (pure Rust, no tch).
//!
//! Everything in this crate is a pure function of plain numbers (a step index, a seed, a
//! micro-batch counter), so that the trainer, the compute accountant and the tests can all ask
//! "what happens at step t" without running a model, and so that a resumed run reproduces the
//! uninterrupted one bit for bit. The crate deliberately has no `tch` dependency: it builds and
//! tests in seconds on any machine.
//!
//! - [`sampler`]: the per-micro-batch Poisson–lognormal draw of the number of recurrences and its
//!   split into no-grad and with-grad iterations (spec §3).
//! - [`schedule`]: the mean-recurrence curriculum (constant, linear, 1−√) and the optional
//!   backprop-depth ramp (spec §4), evaluated in exact integer arithmetic.
//! - [`lr`]: learning-rate schedules (warmup–stable–decay, cosine; spec §5).
//! - [`Curriculum`]: the three recurrence pieces bundled as one recipe section.
//!
//! Step convention used throughout: `step` is the **0-based index of the optimizer step** being
//! taken (the first update is step 0, the last of a run of `total_steps` is `total_steps − 1`).

pub mod lr;
pub mod sampler;
pub mod schedule;

mod error;

pub use error::ConfigError;
pub use lr::{DecayShape, LrSchedule};
pub use sampler::{Draw, RecurrenceSampler};
pub use schedule::{BackpropDepthSchedule, MeanSchedule, RampShape};

use serde::{Deserialize, Serialize};

/// The recurrence part of a training recipe: how the mean recurrence grows, how each
/// micro-batch's recurrence is drawn around it, and (optionally) how the backprop depth grows.
///
/// It exists so that the trainer needs one call per micro-batch ([`Curriculum::draw`]) and so
/// that the whole thing is one TOML table:
///
/// ```toml
/// [curriculum.mean]
/// shape = "one_minus_sqrt"
/// target = 32
/// ramp_fraction = 0.75
///
/// [curriculum.sampler]        # optional; these are the defaults
/// backprop_depth = 8
/// cap = 256
///
/// [curriculum.backprop_ramp]  # optional; absent = fixed sampler.backprop_depth
/// end = 8                     # the cap; depth ⌈1 + 7(t + 1)/W⌉: 2, …, 8
/// ramp_fraction = 0.25
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curriculum {
    /// Mean recurrence as a function of the optimizer step.
    pub mean: MeanSchedule,
    /// Per-micro-batch sampler (backprop depth and cap).
    #[serde(default)]
    pub sampler: RecurrenceSampler,
    /// Optional ramp of the backprop depth. When present, its value at the current step replaces
    /// `sampler.backprop_depth` (the cap still comes from `sampler`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backprop_ramp: Option<BackpropDepthSchedule>,
}

impl Curriculum {
    /// Check every part; call once when a recipe is loaded.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.mean.validate()?;
        self.sampler.validate()?;
        if let Some(r) = &self.backprop_ramp {
            r.validate()?;
        }
        Ok(())
    }

    /// Backprop depth in force at `step`.
    pub fn backprop_depth_at(&self, step: usize, total_steps: usize) -> usize {
        match &self.backprop_ramp {
            Some(r) => r.depth_at(step, total_steps),
            None => self.sampler.backprop_depth,
        }
    }

    /// The draw for one micro-batch of optimizer step `step`.
    ///
    /// `micro_batch` is the run-global micro-batch counter (e.g. `step * accumulation + i`), the
    /// same on every rank, so that all ranks and a resumed run draw the same recurrence.
    pub fn draw(&self, step: usize, total_steps: usize, base_seed: u64, micro_batch: u64) -> Draw {
        let sampler = RecurrenceSampler {
            backprop_depth: self.backprop_depth_at(step, total_steps),
            ..self.sampler
        };
        sampler.draw(self.mean.mean_at(step, total_steps), base_seed, micro_batch)
    }
}
