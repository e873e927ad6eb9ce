//! Optimizers with fp32 state that is saved and restored: AdamW, and Muon with auxiliary Adam.
//!
//! # Conventions shared by every optimizer here
//!
//! * **Parameters** are the fp32 master tensors of a `VarStore` (`Kind::Float`, `requires_grad`),
//!   each identified by its checkpoint name (`transformer.core_block.0.attn.Wqkv.weight`).
//!   Constructors take `(name, tensor)` pairs (or a whole `VarStore`), refuse duplicate names
//!   and non-fp32 parameters, and keep the parameters sorted by name, so the order of every
//!   update and of the state tensors is deterministic.
//! * **Gradients** are read with `p.grad()` after `backward()`. All updates run under
//!   `tch::no_grad`. A parameter whose gradient is *undefined* (never reached by a backward
//!   pass) is skipped entirely: no weight decay, no moment update, no step count, just as
//!   PyTorch skips `p.grad is None`. Note that tch has no way to set a gradient back to
//!   "none": [`Optimizer::zero_grad`] zeroes defined gradients in place (as tch's own
//!   optimizers do), so a parameter that took part in one backward pass and not in the next
//!   one *does* receive a step with a zero gradient (its moments decay and weight decay
//!   applies). Frozen parameters must therefore simply not be given to the optimizer.
//! * **Learning rate.** Every optimizer stores its *peak* learning rate(s) in its config;
//!   [`Optimizer::step`] takes the schedule's multiplier (a value in `[0, 1]` relative to the
//!   peak) and multiplies each parameter group's configured base learning rate by it. Muon
//!   has two groups with different peak learning rates (Muon 1e-3, auxiliary Adam 5e-5), and
//!   one multiplier serves both, which is why the trait does not take an absolute rate. The
//!   concrete types also offer absolute-rate steps ([`AdamW::step_with_lr`],
//!   [`Muon::step_with_lrs`]).
//! * **State** is fp32 and lives on each parameter's device. [`Optimizer::state_tensors`]
//!   returns it under stable names (below); write it with
//!   `rr_model::weights::write_safetensors(&state, path)` and restore it with
//!   [`Optimizer::load_state`] from `rr_model::weights::SafetensorsFiles::open_files`.
//!
//! # State tensor names (`optimizer.safetensors`)
//!
//! | name | dtype, shape | meaning |
//! |---|---|---|
//! | `adam.m.<param>` | f32, param's shape | Adam first moment |
//! | `adam.v.<param>` | f32, param's shape | Adam second moment |
//! | `adam.step.<param>` | i64, `[]` | number of Adam updates of this parameter, skipped ones not counted (PyTorch's per-parameter `state["step"]`, used by the bias corrections) |
//! | `muon.momentum.<param>` | f32, param's shape | Muon momentum buffer |
//! | `muon.step` | i64, `[]` | number of [`Muon`] steps taken, skipped ones not counted (informational) |
//!
//! `AdamW` writes only `adam.*`; `Muon` writes `muon.*` for its 2-D weights and `adam.*` for
//! the parameters of its auxiliary Adam. Loading is strict: every expected tensor must be
//! present with the right dtype and shape (the error names the tensor), and a tensor under
//! one of the optimizer's prefixes that belongs to no parameter is an error too (it means the
//! checkpoint is for a different model or a different optimizer split). Nothing is modified
//! unless the whole state validates.

mod adamw;
mod clip;
mod muon;
mod state;

use anyhow::Result;
use rr_model::weights::SafetensorsFiles;
use rr_recipe::OptimizerConfig;
use tch::Tensor;

pub use adamw::AdamW;
pub use clip::{clip_grad_norm, clip_grad_norm_lazy, grads_are_finite};
pub use muon::{muon_eligible, muon_scale, newton_schulz, Muon};

/// What the trainer needs from an optimizer: step, zero the gradients, save and restore.
pub trait Optimizer {
    /// One update of every parameter that has a gradient. Each parameter group uses its
    /// configured base learning rate times `lr_multiplier` (the schedule's value relative to
    /// the peak, normally in `[0, 1]`).
    fn step(&mut self, lr_multiplier: f64);

    /// Zeroes every defined gradient in place (tch cannot reset a gradient to none).
    fn zero_grad(&mut self);

    /// The optimizer state under the names documented in [`crate::optim`]. The tensors are
    /// shallow clones of the live state (no copy): write them before the next `step`.
    fn state_tensors(&self) -> Vec<(String, Tensor)>;

    /// Restores the state written from [`Optimizer::state_tensors`]. Fails, naming the
    /// tensor, on a missing tensor, a wrong dtype or shape, or an unexpected tensor under
    /// this optimizer's prefixes; on failure the state is left unchanged.
    fn load_state(&mut self, files: &SafetensorsFiles) -> Result<()>;

    /// Names of the parameters this optimizer updates, sorted.
    fn param_names(&self) -> Vec<String>;

    /// [`Optimizer::step`] that is a no-op where `skip`, a 0-d bool on the parameters'
    /// device, is true (a non-finite loss or gradient), decided on the device without a host
    /// read, as PyTorch's fused optimizers take `found_inf` from a `GradScaler`: parameters,
    /// moments, momentum buffers and step counts are left exactly as they were, so a skipped
    /// step does not count.
    fn step_unless(&mut self, lr_multiplier: f64, skip: &Tensor) -> Result<()>;

    /// [`Optimizer::step_unless`] in a data-parallel run, once the gradients are averaged (so
    /// `skip` is the same on every rank): the same update on every rank, with the work that
    /// divides among ranks divided (Muon's Newton–Schulz). By default every rank does all of it.
    fn step_split_unless(
        &mut self,
        lr_multiplier: f64,
        skip: &Tensor,
        _ranks: &mut dyn SplitWork,
    ) -> Result<()> {
        self.step_unless(lr_multiplier, skip)
    }
}

/// The ranks of a data-parallel run, as an optimizer sees them to divide its work.
pub trait SplitWork {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Every rank's `input` (same shape and kind on all), in rank order.
    fn all_gather(&mut self, input: &Tensor) -> Result<Vec<Tensor>>;
}

/// Builds the optimizer `config` describes over `params` (`(checkpoint name, fp32 tensor)`
/// pairs).
pub fn build(
    config: &OptimizerConfig,
    params: Vec<(String, Tensor)>,
) -> Result<Box<dyn Optimizer>> {
    Ok(match config {
        OptimizerConfig::AdamW(c) => Box::new(AdamW::new(params, *c)?),
        OptimizerConfig::Muon(c) => Box::new(Muon::new(params, c.clone())?),
    })
}

/// Builds the optimizer `config` describes over the trainable variables of `vs`.
pub fn build_for(config: &OptimizerConfig, vs: &tch::nn::VarStore) -> Result<Box<dyn Optimizer>> {
    build(config, state::trainable_variables(vs))
}
