//! Float tolerances of the model tests: the reordering bound and the accumulation depth of a
//! decoder or recurrent forward. The rule and the table of tests: docs/TESTING.md.
//!
//! Needs only `tch` and `serde_json`, so crates without the rest of `common`'s dependencies
//! include it alone: `#[path = "../../rr-model/tests/common/tolerance.rs"] mod tolerance;`.
#![allow(dead_code)]

use serde_json::Value;

fn cfg_usize(cfg: &Value, key: &str) -> usize {
    cfg[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config.{key} missing or not an integer")) as usize
}

/// fp32 machine epsilon ε = 2⁻²³ (twice the unit roundoff u = 2⁻²⁴).
pub const FP32_EPS: f64 = f32::EPSILON as f64;

/// The largest |value| of `reference`, at least 1 (the hidden states behind small outputs are
/// normalised to O(1), so rounding is never measured against less).
pub fn magnitude(reference: &tch::Tensor) -> f64 {
    reference.abs().max().double_value(&[]).max(1.0)
}

/// Bound on |a − b| where `a` and `b` are two fp32 evaluations of one function whose sums run
/// in different orders (another BLAS blocking, thread count, batch shape or implementation):
///
/// ```text
/// tolerance = K · ε · M        K = accumulation depth, M = magnitude(reference)
/// ```
///
/// * A length-n sum rounded in any order is within (n − 1)·u·max|partial sum| of the exact sum
///   (recursive summation, Higham, *Accuracy and Stability of Numerical Algorithms*, §4.2), so
///   two orders are within 2(n − 1)·u < n·ε of each other, partial sums taken no larger than M.
/// * A forward chains sums (norm, projection, attention, MLP, ...). The error of each reaches
///   the output with gain about 1 (RMSNorm rescales, the residual adds), so their lengths add up
///   to the depth K of the output: [`LayerShape::depth`], [`decoder_depth`], [`recurrent_depth`].
///
/// It is the worst case over rounding, with no cancellation: a machine measures the random-walk
/// size (about √K·u·M), far below it, whatever its BLAS or thread count; a real bug (a wrong
/// sign, a dropped or mis-scaled term) moves outputs by O(M), far above it.
pub fn fp32_tolerance(reference: &tch::Tensor, depth: usize) -> f64 {
    fp32_reorder_bound(depth, magnitude(reference))
}

/// `K · ε · M` for a magnitude chosen by the caller (gradients: their own largest |value|,
/// with no floor at 1, since their scale is not set by a norm).
pub fn fp32_reorder_bound(depth: usize, magnitude: f64) -> f64 {
    depth as f64 * FP32_EPS * magnitude
}

/// The shape of one decoder layer (Llama or OLMo-2), from an HF config (`hidden_size`, ...) or a
/// Raven one (`n_embd`, `n_heads`, `block_type`).
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    pub hidden: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    /// OLMo-2's RMSNorm over q and k.
    pub qk_norm: bool,
}

impl LayerShape {
    pub fn from_config(cfg: &Value) -> Self {
        let int = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| cfg[*k].as_u64())
                .map(|x| x as usize)
        };
        let hidden = int(&["hidden_size", "n_embd"]).expect("config: hidden size");
        let heads = int(&["num_attention_heads", "n_heads"]).expect("config: heads");
        let olmo = cfg["model_type"] == "olmo2" || cfg["block_type"] == "olmo2";
        Self {
            hidden,
            heads,
            head_dim: int(&["head_dim"]).unwrap_or(hidden / heads),
            intermediate: cfg_usize(cfg, "intermediate_size"),
            qk_norm: olmo,
        }
    }

    /// Accumulation depth of one output of the layer over `t` positions: the lengths of the
    /// sums it passes through, one after the other.
    pub fn depth(&self, t: usize) -> usize {
        let (h, q) = (self.hidden, self.heads * self.head_dim);
        h // RMSNorm before attention (OLMo-2: after it, the same length)
            + h // q, k, v projections
            + if self.qk_norm { q } else { 0 } // OLMo-2 q/k RMSNorm
            + self.head_dim // q·k
            + 2 * t // softmax normaliser, probabilities·v
            + q // output projection
            + h // RMSNorm around the MLP
            + h // gate and up projections
            + self.intermediate // down projection
    }
}

/// Accumulation depth of one logit of an HF decoder (`config.json` as JSON) over `t` positions:
/// every layer, the final RMSNorm and the LM head.
pub fn decoder_depth(cfg: &Value, t: usize) -> usize {
    let layer = LayerShape::from_config(cfg);
    cfg_usize(cfg, "num_hidden_layers") * layer.depth(t) + 2 * layer.hidden
}

/// Accumulation depth of one logit of a Raven model (`config.json` as JSON) at recurrence `r`
/// over `t` positions: prelude, r × (adapter over [state, embedding] + core block), coda, final
/// norm and LM head.
pub fn recurrent_depth(cfg: &Value, r: usize, t: usize) -> usize {
    let layer = LayerShape::from_config(cfg);
    let layers = cfg_usize(cfg, "n_layers_in_prelude")
        + r * cfg_usize(cfg, "n_layers_in_recurrent_block")
        + cfg_usize(cfg, "n_layers_in_coda");
    layers * layer.depth(t) + r * 2 * layer.hidden + 2 * layer.hidden
}

/// Asserts `max |got − want| ≤ tolerance`, printing both (seen with `--nocapture`) so a failure
/// elsewhere says by how much.
pub fn assert_within(what: &str, got: &tch::Tensor, want: &tch::Tensor, tolerance: f64) -> f64 {
    let d = (got - want).abs().max().double_value(&[]);
    eprintln!("{what}: max |Δ| = {d:.3e}, bound {tolerance:.3e}");
    assert!(
        d <= tolerance,
        "{what}: max |Δ| = {d:.3e} exceeds the bound {tolerance:.3e}"
    );
    d
}
