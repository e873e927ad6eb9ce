//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_` computes it, and a
//! finiteness check. Parameters whose gradient is undefined are ignored by both.

use tch::{Kind, Tensor};

/// The defined gradients of `params`.
fn grads(params: &[Tensor]) -> Vec<Tensor> {
    params
        .iter()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .collect()
}

/// Clips in place and returns the pre-clip global L2 norm as a 0-d fp32 tensor on the first
/// gradient's device, without any host synchronisation; `None` when no parameter has a
/// gradient. Arithmetic as PyTorch's `clip_grad_norm_`:
///
/// ```text
/// norm = ‖(‖g_1‖₂, …, ‖g_n‖₂)‖₂        (fp32)
/// coef = min(1, max_norm / (norm + 1e-6))
/// g_i *= coef                          (always multiplied, as PyTorch does; a non-finite
///                                       norm therefore makes every gradient NaN)
/// ```
pub fn clip_grad_norm_lazy(params: &[Tensor], max_norm: f64) -> Option<Tensor> {
    let _guard = tch::no_grad_guard();
    let grads = grads(params);
    let device = grads.first()?.device();
    let norms: Vec<Tensor> = grads
        .iter()
        .map(|g| g.norm_scalaropt_dtype(2.0, Kind::Float).to_device(device))
        .collect();
    let total = Tensor::stack(&norms, 0).norm_scalaropt_dtype(2.0, Kind::Float);
    let coef = (total.g_add_scalar(1e-6).reciprocal() * max_norm).clamp_max(1.0);
    for mut g in grads {
        let c = coef.to_device(g.device()).to_kind(g.kind());
        let _ = g.g_mul_(&c);
    }
    Some(total)
}

/// Clips the gradients of `params` in place to global L2 norm `max_norm` (see
/// [`clip_grad_norm_lazy`] for the formula) and returns the pre-clip norm. Syncs the host
/// once, to read the norm. Returns 0.0 when no parameter has a gradient; the result may be
/// NaN or infinite when a gradient is.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    match clip_grad_norm_lazy(params, max_norm) {
        Some(total) => crate::host::read_f64(&total).expect("reading the gradient norm"),
        None => 0.0,
    }
}

/// True when every element of every defined gradient is finite (one host sync).
pub fn grads_are_finite(params: &[Tensor]) -> bool {
    let _guard = tch::no_grad_guard();
    let grads = grads(params);
    let Some(first) = grads.first() else {
        return true;
    };
    let device = first.device();
    let flags: Vec<Tensor> = grads
        .iter()
        .map(|g| g.isfinite().all().to_device(device))
        .collect();
    let all = Tensor::stack(&flags, 0).all();
    crate::host::read_f64(&all).expect("reading the finiteness flag") != 0.0
}
