//! Float tolerances of the `rr-train` tests (include with `mod support;`). The rule and the table
//! of tests: docs/TESTING.md.
//!
//! Every bound is derived from the computation, relative to its magnitude:
//!
//! * **Element-wise chains** (optimizer updates, clipping): each rounded fp32 operation is
//!   exact × (1 + δ), |δ| ≤ u = 2⁻²⁴, so a chain of n operations on values up to M ends within
//!   n·u·M of exact arithmetic: [`elementwise_bound`]. A hand-computed (f64) value and any fp32
//!   kernel (scalar, AVX2, AVX-512, FMA or not) both sit inside it.
//! * **Reductions** (norms, matmuls, a forward and its loss): a length-K sum in any order is
//!   within (K − 1)·u·max|partial sum| of the exact sum (Higham, *Accuracy and Stability of
//!   Numerical Algorithms*, §4.2), so two orders (another BLAS blocking or thread count) are
//!   within K·ε·M, ε = 2u; chained sums add their lengths: [`reorder_bound`].
//!
//! Both are worst cases over rounding, so a measured error sits far below them on any machine,
//! while a formula bug (a wrong sign, a dropped or mis-scaled term) moves results by O(M).
#![allow(dead_code)]

use tch::Tensor;

/// fp32 unit roundoff u = 2⁻²⁴.
pub const FP32_UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;
/// fp32 machine epsilon ε = 2⁻²³.
pub const FP32_EPS: f64 = f32::EPSILON as f64;
/// bf16 unit roundoff 2⁻⁸ (8 significand bits).
pub const BF16_UNIT_ROUNDOFF: f64 = 1.0 / 256.0;

/// n rounded fp32 operations on values up to `magnitude`: n·u·M.
pub fn elementwise_bound(roundings: usize, magnitude: f64) -> f64 {
    roundings as f64 * FP32_UNIT_ROUNDOFF * magnitude
}

/// Two fp32 evaluations whose sums (accumulation depth K in all) run in other orders: K·ε·M.
pub fn reorder_bound(depth: usize, magnitude: f64) -> f64 {
    depth as f64 * FP32_EPS * magnitude
}

/// Largest |value|.
pub fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// Asserts `max |got − want| ≤ bound` and prints both (seen with `--nocapture`), so a failure
/// on another machine says by how much. Returns the difference.
pub fn assert_within(what: &str, got: &Tensor, want: &Tensor, bound: f64) -> f64 {
    let d = max_abs(&(got - want));
    eprintln!("{what}: max |Δ| = {d:.3e}, bound {bound:.3e}");
    assert!(
        d <= bound,
        "{what}: max |Δ| = {d:.3e} exceeds the bound {bound:.3e}"
    );
    d
}

/// [`assert_within`] for plain numbers.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], bound: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let d = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    eprintln!("{what}: max |Δ| = {d:.3e}, bound {bound:.3e}");
    assert!(
        d <= bound,
        "{what}: got {got:?}, want {want:?}: max |Δ| = {d:.3e} exceeds the bound {bound:.3e}"
    );
    d
}

/// Largest |value| of a slice.
pub fn max_abs_of(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |m, x| m.max(x.abs()))
}
