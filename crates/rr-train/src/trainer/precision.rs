//! Mixed precision as bf16 autocast over fp32 parameters: the model keeps its fp32 weights (the
//! leaves the optimizer updates) and computes in the compute dtype, each weight cast at each of
//! its uses (`AnyModel::set_compute_kind`). Autograd then sums the gradients of the k
//! with-gradient uses of a core weight in fp32, on the weight itself; a bf16 copy of the model
//! would sum them in bf16 and round the total to bf16.

use anyhow::Result;
use rr_model::device::{bf16_is_fast, parse_dtype};
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
