//! Global gradient-norm clipping and the finiteness check.

mod support;

use rr_train::optim::{clip_grad_norm, clip_grad_norm_lazy, grads_are_finite};
use tch::{Kind, Tensor};

fn param(values: &[f32]) -> Tensor {
    Tensor::from_slice(values).set_requires_grad(true)
}

/// Makes `p.grad()` exactly `g`.
fn set_grad(p: &Tensor, g: &[f32]) {
    (p * Tensor::from_slice(g)).sum(Kind::Float).backward();
}

fn grad(p: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(p.grad().to_kind(Kind::Double)).unwrap()
}

/// The global norm of the grads [3, 4] and [12]: three squares, their sum (K = 3, in any order)
/// and a square root (1 rounding, halving the relative error of the sum), each within fp32
/// rounding of 13: 3 + 3 + 1 roundings of values up to 169, relative, on 13.
fn norm_bound(norm: f64) -> f64 {
    support::elementwise_bound(7, norm)
}

/// Grads [3, 4] and [12]: norm = sqrt(9 + 16 + 144) = sqrt(169) = 13.
fn setup() -> Vec<Tensor> {
    let (a, b) = (param(&[0.0, 0.0]), param(&[0.0]));
    set_grad(&a, &[3.0, 4.0]);
    set_grad(&b, &[12.0]);
    vec![a, b]
}

#[test]
fn norm_and_scaling() {
    let ps = setup();
    // coef = 6.5 / (13 + 1e-6) = 0.49999996...; grads -> [1.5, 2], [6] (to ~1e-7 relative)
    let norm = clip_grad_norm(&ps, 6.5);
    support::assert_close("norm", &[norm], &[13.0], norm_bound(13.0));
    let coef = 6.5 / (13.0 + 1e-6);
    let got: Vec<f64> = grad(&ps[0]).into_iter().chain(grad(&ps[1])).collect();
    // The norm's 7 roundings carry into coef relatively; + 1e-6, the quotient, clamp and
    // product add 3, on grads up to 12·coef.
    let bound = support::elementwise_bound(7 + 3, 12.0 * coef);
    support::assert_close(
        "clipped grads",
        &got,
        &[3.0 * coef, 4.0 * coef, 12.0 * coef],
        bound,
    );
    // Clipping again measures the clipped norm, 6.5 less the 1e-6 of the denominator: the
    // grads' 10 roundings and this norm's 7.
    let again = clip_grad_norm(&ps, 6.5);
    let bound = support::elementwise_bound(10 + 7, 13.0 * coef);
    support::assert_close("clipped norm", &[again], &[13.0 * coef], bound);
}

#[test]
fn no_clipping_below_the_limit() {
    let ps = setup();
    let norm = clip_grad_norm(&ps, 100.0);
    support::assert_close("norm", &[norm], &[13.0], norm_bound(13.0));
    // coef = min(1, 100/13) = 1: the gradients are multiplied by exactly 1.
    assert_eq!(grad(&ps[0]), vec![3.0, 4.0]);
    assert_eq!(grad(&ps[1]), vec![12.0]);
    let lazy = clip_grad_norm_lazy(&ps, 100.0).unwrap();
    assert_eq!(lazy.kind(), Kind::Float);
    assert_eq!(lazy.size(), Vec::<i64>::new());
}

#[test]
fn parameters_without_gradient_are_ignored() {
    let mut ps = setup();
    ps.push(param(&[5.0, 5.0])); // never reached by backward
    let norm = clip_grad_norm(&ps, 1e9);
    support::assert_close("norm", &[norm], &[13.0], norm_bound(13.0));
    assert!(grads_are_finite(&ps));
    assert_eq!(clip_grad_norm(&[param(&[1.0])], 1.0), 0.0);
    assert!(clip_grad_norm_lazy(&[], 1.0).is_none());
}

#[test]
fn finiteness() {
    let ps = setup();
    assert!(grads_are_finite(&ps));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let q = param(&[1.0, 1.0, 1.0]);
        set_grad(&q, &[0.0, bad, 0.0]);
        let mut all = setup();
        all.push(q);
        assert!(!grads_are_finite(&all), "{bad} not detected");
        assert!(!clip_grad_norm(&all, 1.0).is_finite());
    }
}
