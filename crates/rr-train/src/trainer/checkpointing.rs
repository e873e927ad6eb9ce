//! Activation checkpointing per core iteration: the k with-gradient iterations run without
//! keeping their activations, and each is recomputed in the backward pass.
//!
//! tch has no custom autograd functions, so the backward is taken in segments, each a
//! `backward()` of its own whose parameter gradients add up in `.grad`:
//!
//! ```text
//! e  = prelude(embed(ids))                      with grad: its graph is kept
//! ê  = leaf copy of e (requires grad)           every core iteration reads ê
//! s₀ = initial state; n iterations, no grad
//! s_{j+1} = core(s_j, ê) for j < k, no grad     only s₀ … s_{k−1} are kept
//! L  = loss(coda(ŝ_k)), ŝ_k a leaf copy of s_k  backward: coda, head, dL/ds_k
//! for j = k−1 … 0:                              recompute iteration j with grad from a
//!     out = core(ŝ_j, ê);                       leaf ŝ_j; backward of Σ out ⊙ dL/ds_{j+1}
//!     backward(Σ out ⊙ dL/ds_{j+1})             gives dL/ds_j, adds to ê.grad and the
//!                                               core's parameter gradients
//! backward(Σ e ⊙ ê.grad)                        the prelude and the embedding
//! ```
//!
//! `Σ out ⊙ g` has gradient exactly `g` with respect to `out` (the vector–Jacobian product of
//! the stored path). Memory: the stored path keeps every with-gradient iteration's activations
//! (k of them); this keeps k states [B, T, h] and one iteration's activations at a time, for
//! one more forward of each iteration. The values are those of the stored path; only the
//! order in which the k contributions to a gradient are summed differs (test).

use anyhow::Result;
use rr_model::{InitialState, RecurrentModel};
use tch::Tensor;

/// The micro-batch's mean cross-entropy (returned detached) after backpropagating
/// `loss / grad_accum` into the parameters' `.grad`, with `n` iterations without and `k` with
/// gradient, each with-gradient iteration recomputed in the backward pass.
pub fn checkpointed_backward(
    model: &RecurrentModel,
    input: &Tensor,
    labels: &Tensor,
    (n, k): (usize, usize),
    init: &InitialState,
    grad_accum: usize,
) -> Result<Tensor> {
    let p = model.prologue(input);
    let e_graph = model.prelude_forward(input, &p, None);
    let e = e_graph.detach().set_requires_grad(true);
    let (last, mut inputs) = tch::no_grad(|| {
        let mut state = model.initial_state(&p, &e, init);
        for _ in 0..n {
            state = model.core_step(&state, &e, &p, None);
        }
        let mut inputs = Vec::with_capacity(k);
        for _ in 0..k {
            let next = model.core_step(&state, &e, &p, None);
            inputs.push(std::mem::replace(&mut state, next));
        }
        (state, inputs)
    });

    let last = last.set_requires_grad(true);
    let hidden = model.coda_forward(&last, &p, None);
    let h = hidden.size()[2];
    let loss =
        crate::loss::chunked_cross_entropy(&hidden.view([-1, h]), &model.head_weight(), labels);
    (&loss / grad_accum as f64).backward();

    let mut grad_out = last.grad();
    while let Some(state) = inputs.pop() {
        let state = state.set_requires_grad(true);
        let out = model.core_step(&state, &e, &p, None);
        (out * &grad_out).sum(grad_out.kind()).backward();
        grad_out = state.grad();
    }
    let grad_e = e.grad();
    if grad_e.defined() {
        (e_graph * grad_e).sum(e.kind()).backward();
    }
    Ok(loss.detach())
}
