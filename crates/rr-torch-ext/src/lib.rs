//! The few libtorch functions that tch 0.24 does not bind, through a small C++ shim
//! (`csrc/ext.cpp`, compiled against the wheel's headers): the fused AdamW kernel, a one-kernel
//! global norm, the TF32 switch, and the CUDA caching allocator's memory counters; and c10d
//! process groups for data-parallel training ([`dist`]).

pub mod cuda_graph;
pub mod dist;

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

use anyhow::{bail, ensure, Result};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn rr_ext_last_error() -> *const c_char;
    fn rr_ext_fused_adamw(
        params: *mut *mut C_tensor,
        grads: *mut *mut C_tensor,
        exp_avgs: *mut *mut C_tensor,
        exp_avg_sqs: *mut *mut C_tensor,
        steps: *mut *mut C_tensor,
        n: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        found_inf: *mut C_tensor,
    ) -> c_int;
    fn rr_ext_global_norm(tensors: *mut *mut C_tensor, n: i64, out: *mut *mut C_tensor) -> c_int;
    fn rr_ext_set_tf32(enabled: c_int) -> c_int;
    fn rr_ext_cuda_memory(
        device: c_int,
        allocated: *mut i64,
        peak: *mut i64,
        reserved: *mut i64,
    ) -> c_int;
    fn rr_ext_cuda_reset_peak(device: c_int) -> c_int;
}

pub(crate) fn check(code: c_int, what: &str) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a pointer to its thread-local, NUL-terminated message.
    let msg = unsafe { CStr::from_ptr(rr_ext_last_error()) }.to_string_lossy();
    let first = msg.lines().next().unwrap_or("unknown error");
    bail!("{what}: {first}")
}

pub(crate) fn ptrs(tensors: &[Tensor]) -> Vec<*mut C_tensor> {
    // The shim only reads the handles (the kernels write through them to shared storage).
    tensors
        .iter()
        .map(|t| t.as_ptr() as *mut C_tensor)
        .collect()
}

/// One AdamW step over every tensor at once with `torch.optim.AdamW(fused=True)`'s kernel.
/// `steps` are fp32 scalar tensors that the caller has already advanced (the kernel reads the
/// bias-correction step from them). All tensors must share one device and dtype.
///
/// `found_inf`: a 1-element fp32 tensor on the same device; where it is 1 the kernel changes
/// nothing (`GradScaler`'s skipped step), decided on the device. The caller keeps `steps` from
/// advancing on such a step.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw_(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    steps: &[Tensor],
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    let n = params.len();
    ensure!(
        [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()]
            .iter()
            .all(|&l| l == n),
        "fused AdamW: lists of different lengths"
    );
    if let Some(f) = found_inf {
        ensure!(
            f.kind() == tch::Kind::Float && f.numel() == 1,
            "fused AdamW: found_inf must be one fp32 element, not {:?} {:?}",
            f.kind(),
            f.size()
        );
    }
    if n == 0 {
        return Ok(());
    }
    let (mut p, mut g, mut m, mut v, mut s) = (
        ptrs(params),
        ptrs(grads),
        ptrs(exp_avgs),
        ptrs(exp_avg_sqs),
        ptrs(steps),
    );
    // SAFETY: every pointer is a live at::Tensor owned by the slices above, which outlive the call.
    let code = unsafe {
        rr_ext_fused_adamw(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            s.as_mut_ptr(),
            n as i64,
            lr,
            betas.0,
            betas.1,
            weight_decay,
            eps,
            found_inf.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut C_tensor),
        )
    };
    check(code, "fused AdamW")
}

/// `sqrt(Σ‖t‖²)` over `tensors` as an fp32 scalar tensor on their device (no host sync).
pub fn global_norm(tensors: &[Tensor]) -> Result<Tensor> {
    ensure!(!tensors.is_empty(), "global norm of no tensors");
    let mut p = ptrs(tensors);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: as above; on success `out` is a new at::Tensor that Tensor::from_ptr takes over.
    check(
        unsafe { rr_ext_global_norm(p.as_mut_ptr(), p.len() as i64, &mut out) },
        "global norm",
    )?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Allows TF32 for fp32 matmuls and convolutions (PyTorch's `allow_tf32`); no effect on CPU.
pub fn set_tf32(enabled: bool) -> Result<()> {
    check(unsafe { rr_ext_set_tf32(enabled as c_int) }, "set TF32")
}

/// The CUDA caching allocator's counters for one device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaMemory {
    pub allocated: i64,
    /// Peak of `allocated` since the last [`cuda_reset_peak`].
    pub peak_allocated: i64,
    pub reserved: i64,
}

pub fn cuda_memory(device: usize) -> Result<CudaMemory> {
    let (mut allocated, mut peak_allocated, mut reserved) = (0i64, 0i64, 0i64);
    check(
        unsafe {
            rr_ext_cuda_memory(
                device as c_int,
                &mut allocated,
                &mut peak_allocated,
                &mut reserved,
            )
        },
        "CUDA memory stats",
    )?;
    Ok(CudaMemory {
        allocated,
        peak_allocated,
        reserved,
    })
}

pub fn cuda_reset_peak(device: usize) -> Result<()> {
    check(
        unsafe { rr_ext_cuda_reset_peak(device as c_int) },
        "CUDA reset peak",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn global_norm_is_the_norm_of_the_concatenation() {
        let a = Tensor::from_slice(&[3.0f32, 4.0]);
        let b = Tensor::from_slice(&[12.0f32]).view([1, 1]);
        let n = f64::try_from(global_norm(&[a, b]).unwrap()).unwrap();
        assert!((n - 13.0).abs() < 1e-6, "{n}");
    }

    #[test]
    fn errors_come_back_as_messages_not_aborts() {
        // Mismatched dtypes inside one fused call are rejected by the kernel.
        let p = [Tensor::zeros([2], (Kind::Float, Device::Cpu))];
        let g = [Tensor::zeros([2], (Kind::Double, Device::Cpu))];
        let m = [Tensor::zeros([2], (Kind::Float, Device::Cpu))];
        let v = [Tensor::zeros([2], (Kind::Float, Device::Cpu))];
        let s = [Tensor::ones([], (Kind::Float, Device::Cpu))];
        let err =
            fused_adamw_(&p, &g, &m, &v, &s, 1e-3, (0.9, 0.999), 0.0, 1e-8, None).unwrap_err();
        assert!(err.to_string().starts_with("fused AdamW:"), "{err}");
        assert!(cuda_memory(0).is_err() || tch::Cuda::is_available());
    }
}
