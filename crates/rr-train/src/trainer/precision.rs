//! Mixed precision: fp32 master weights that the optimizer updates, and, when the compute
//! dtype is lower, a second copy of the model in that dtype that runs forward and backward.
//! Its gradients are accumulated in fp32 on the masters, and it is refreshed from the masters
//! before every step.

use std::path::Path;

use anyhow::Result;
use rr_model::device::{bf16_is_fast, parse_dtype};
use rr_model::AnyModel;
use tch::{Device, Kind};

/// The compute dtype a recipe's `training.dtype` asks for on `device`: `auto` is bf16 on
/// CUDA and fp32 on the CPU (exact and the same on every CPU). bf16 asked for on a CPU that
/// only emulates it runs in fp32 instead, with a warning: there it is several times slower.
pub fn compute_kind(setting: Option<&str>, device: Device) -> Result<Kind> {
    let kind = match setting {
        None | Some("auto") if device.is_cuda() => Kind::BFloat16,
        None | Some("auto") => Kind::Float,
        Some(name) => parse_dtype(name)?,
    };
    if kind == Kind::BFloat16 && !bf16_is_fast(device) {
        eprintln!(
            "warning: training.dtype = bf16, but this CPU has no native bf16 ({}); computing in fp32",
            rr_model::device::cpu_capability()
        );
        return Ok(Kind::Float);
    }
    Ok(kind)
}

/// The compute copy of the model, when the compute dtype is not fp32.
pub struct Precision {
    compute: Option<AnyModel>,
}

impl Precision {
    /// Loads the compute copy from `dir` when `kind` is not fp32.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let compute = match kind {
            Kind::Float => None,
            _ => Some(AnyModel::load(dir, device, kind)?),
        };
        Ok(Self { compute })
    }

    pub fn compute(&self) -> Option<&AnyModel> {
        self.compute.as_ref()
    }

    /// Copies the fp32 master weights into the compute copy (before each step).
    pub fn refresh(&self, master: &AnyModel) {
        if let Some(compute) = &self.compute {
            copy_weights(master, compute);
        }
    }
}

/// Copies the fp32 master weights into the compute-dtype model.
pub fn copy_weights(master: &AnyModel, compute: &AnyModel) {
    let _guard = tch::no_grad_guard();
    let masters = master.vs().variables();
    for (name, mut p) in compute.vs().variables() {
        if let Some(m) = masters.get(&name) {
            p.copy_(m);
        }
    }
}

/// Adds the compute model's gradients (cast to fp32) to the master gradients and clears them.
pub(crate) fn accumulate_grads(compute: &AnyModel, master: &AnyModel) {
    let _guard = tch::no_grad_guard();
    let masters = master.vs().variables();
    for (name, p) in compute.vs().variables() {
        let mut g = p.grad();
        if !g.defined() {
            continue;
        }
        if let Some(m) = masters.get(&name) {
            let mut mg = m.grad();
            if mg.defined() {
                let _ = mg.g_add_(&g.to_kind(Kind::Float));
            } else {
                // First gradient of this parameter: define it through a no-op backward.
                tch::with_grad(|| (m * 0.0).sum(Kind::Float)).backward();
                m.grad().copy_(&g.to_kind(Kind::Float));
            }
        }
        let _ = g.zero_();
    }
}
