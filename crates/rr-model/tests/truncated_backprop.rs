//! Truncated backpropagation through the recurrence: with n iterations without gradient and k
//! with, parameter gradients equal those of a reference that runs the n iterations, detaches
//! the state, and backpropagates through the last k only; and the no-grad iterations build no
//! graph.

mod common;

use rr_model::recurrent::{InitialState, RecurrentModel};
use tch::{Device, Kind, Tensor};

fn model() -> (RecurrentModel, tempfile::TempDir) {
    let fixture = common::load_raven_fixture("raven_llama").unwrap();
    let dir = common::write_raven_model_dir(&fixture["config"]).unwrap();
    let model = RecurrentModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    (model, dir)
}

/// Parameter gradients of the mean logit-loss after the given forward.
fn grads(model: &RecurrentModel, run: impl Fn() -> Tensor) -> Vec<(String, Tensor)> {
    for (_, p) in model.named_tensors() {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let logits = run();
    let labels = Tensor::from_slice(&[3i64, 5, 7, 11, 13, 17, 19, 23]);
    let loss = logits
        .view([-1, logits.size()[2]])
        .cross_entropy_for_logits(&labels);
    loss.backward();
    model
        .named_tensors()
        .into_iter()
        .map(|(n, p)| (n, p.grad().copy()))
        .collect()
}

#[test]
fn gradients_equal_the_detached_reference() {
    let (model, _dir) = model();
    let ids = Tensor::from_slice(&[1i64, 4, 9, 16, 25, 36, 49, 64]).view([1, 8]);
    let h = model.config.n_embd as i64;
    let state = rr_model::recurrent::truncated_normal_rows(3, 1, 8, h, 0.5, tch::Device::Cpu);
    let (n, k) = (3, 2);
    let truncated = grads(&model, || {
        common::recurrent_forward(
            &model,
            &ids,
            n,
            k,
            &InitialState::Given(state.shallow_clone()),
        )
        .logits
    });
    let reference = grads(&model, || {
        // n iterations, then the state is cut from the graph; k iterations with gradient.
        let after_n = common::recurrent_forward(
            &model,
            &ids,
            0,
            n,
            &InitialState::Given(state.shallow_clone()),
        )
        .state
        .detach();
        common::recurrent_forward(&model, &ids, 0, k, &InitialState::Given(after_n)).logits
    });
    let full = grads(&model, || {
        common::recurrent_forward(
            &model,
            &ids,
            0,
            n + k,
            &InitialState::Given(state.shallow_clone()),
        )
        .logits
    });
    // A gradient passes the forward's sums and then the backward's, of about the same lengths:
    // twice the forward depth at n + k iterations, relative to the gradient's own magnitude.
    let fixture = common::load_raven_fixture("raven_llama").unwrap();
    let depth = 2 * common::recurrent_depth(&fixture["config"], n + k, 8);
    let mut core_differs_from_full = false;
    let mut worst_ratio: f64 = 0.0;
    for (((name, a), (_, b)), (_, c)) in truncated.iter().zip(&reference).zip(&full) {
        assert!(a.defined() && b.defined(), "{name}: no gradient");
        let diff = (a - b).abs().max().double_value(&[]);
        let tol = common::fp32_reorder_bound(depth, b.abs().max().double_value(&[]));
        worst_ratio = worst_ratio.max(diff / tol.max(f64::MIN_POSITIVE));
        assert!(
            diff <= tol,
            "{name}: truncated vs detached reference differ by {diff:.3e} > bound {tol:.3e}"
        );
        let to_full = (a - c).abs().max().double_value(&[]);
        if name.contains("core_block") && to_full > 100.0 * tol {
            core_differs_from_full = true;
        }
    }
    eprintln!("truncated vs detached reference: worst |Δgrad| / bound = {worst_ratio:.3e}");
    // Backpropagating through all n + k iterations gives other gradients: the cut matters.
    assert!(core_differs_from_full);
}

#[test]
fn no_grad_iterations_build_no_graph() {
    let (model, _dir) = model();
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, 4]);
    let out = common::recurrent_forward(&model, &ids, 5, 0, &InitialState::Zeros);
    assert!(
        !out.state.requires_grad(),
        "state after no-grad iterations carries a graph"
    );
    let out = common::recurrent_forward(&model, &ids, 5, 1, &InitialState::Zeros);
    assert!(out.state.requires_grad());
}
