//! Mixed precision as bf16 autocast over fp32 weights (`set_compute_kind`): each weight is cast
//! at each use, so the k with-gradient uses of a core weight sum their gradients in fp32. A
//! bf16 copy of the model (the former training path) sums them in bf16 instead.
//!
//! The three bf16-compute paths below run the same forward and backward bit for bit (the same
//! bf16 weights, activations and per-use gradient contributions `c_1 … c_8`); they differ only
//! in where the eight contributions of a core weight are summed:
//!
//! - fp64 weights: the exact sum `S = Σ c_j` (to fp64 precision, ~2^-53);
//! - fp32 weights (the new path): `fl32(Σ c_j)`, off by at most `7 · 2^-24 · Σ|c_j|`;
//! - bf16 weights (the old path): `flbf16(Σ c_j)`, rounded to bf16 (8 significant bits) at
//!   least once, so each element is at least as far from `S` as the nearest bf16 number is.
//!
//! Bounds, norm-wise relative to `‖S‖`: the new path's error is at most `7 · 2^-24 · κ` with
//! `κ = Σ‖c_j‖ / ‖S‖` (cancellation across iterations); we allow κ ≤ 64, i.e. 2^-15 ≈ 3.1e-5.
//! The old path's error is at least `‖S − bf16(S)‖ / ‖S‖` (computed, about 2^-10), which must
//! exceed that bound. An fp32 forward (the reference of everything else) is reported as well:
//! bf16 forward rounding (~2^-8 per use) dominates both paths' distance to it.

use rr_model::config::LlamaConfig;
use rr_model::recurrent::{InitialState, RecurrentConfig, RecurrentModel};
use rr_model::Depth;
use tch::{nn, Device, Kind, Tensor};

const VOCAB: i64 = 512;
const HIDDEN: i64 = 128;
const K: usize = 8;

/// A (1, 2, 1) recurrent model with parameters in `kind`, all holding the values of `source`
/// (or fresh random fp32-representable values when `source` is None).
fn model(kind: Kind, source: Option<&RecurrentModel>) -> RecurrentModel {
    let block: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10_000.0,
    }))
    .unwrap();
    let config = RecurrentConfig::from_source(&block, 1, 2, 1, K);
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(kind);
    let model = RecurrentModel::new(vs, config);
    tch::no_grad(|| {
        let from = source.map(|s| s.vs.variables());
        for (name, mut t) in model.named_tensors() {
            match &from {
                Some(vars) => {
                    t.copy_(&vars[&name]);
                }
                None if name.contains("norm") || name.contains("ln_f") => {
                    let _ = t.fill_(1.0);
                }
                None => {
                    let _ = t.normal_(0.0, 0.05);
                }
            }
        }
    });
    model
}

/// Gradient (as fp64) of every core-block parameter after 8 with-gradient iterations and the
/// loss `Σ hidden · probe`, the forward computing in `compute`.
fn core_grads(model: &mut RecurrentModel, compute: Kind, ids: &Tensor, probe: &Tensor) -> Tensor {
    model.set_compute_kind(compute);
    let depth = Depth::Fixed {
        no_grad: 0,
        with_grad: K,
    };
    let init = InitialState::RandomPerRow {
        seed: 7,
        first_row: 0,
    };
    let out = model.forward(ids, None, depth, &init, None).unwrap();
    (out.hidden.to_kind(Kind::Float) * probe)
        .sum(Kind::Float)
        .backward();
    let grads: Vec<Tensor> = model
        .named_tensors()
        .into_iter()
        .filter(|(name, _)| name.contains("core_block") || name.contains("adapter"))
        .map(|(_, p)| p.grad().to_kind(Kind::Double).view([-1]))
        .collect();
    Tensor::cat(&grads, 0)
}

fn norm(t: &Tensor) -> f64 {
    f64::try_from(t.norm()).unwrap()
}

#[test]
fn core_gradients_accumulate_in_fp32_over_bf16_compute() {
    tch::manual_seed(3);
    let mut fp32 = model(Kind::Float, None);
    let mut fp64 = model(Kind::Double, Some(&fp32));
    let mut bf16 = model(Kind::BFloat16, Some(&fp32));
    let ids = Tensor::randint(VOCAB, [2, 32], (Kind::Int64, Device::Cpu));
    let probe = Tensor::randn([2, 32, HIDDEN], (Kind::Float, Device::Cpu));

    let exact = core_grads(&mut fp64, Kind::BFloat16, &ids, &probe);
    let new = core_grads(&mut fp32, Kind::BFloat16, &ids, &probe);
    let old = core_grads(&mut bf16, Kind::BFloat16, &ids, &probe);
    for (_, p) in fp32.named_tensors() {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let reference = core_grads(&mut fp32, Kind::Float, &ids, &probe);

    let size = norm(&exact);
    assert!(size > 0.0 && size.is_finite());
    let new_err = norm(&(&new - &exact)) / size;
    let old_err = norm(&(&old - &exact)) / size;
    let floor = norm(&(&exact - exact.to_kind(Kind::BFloat16).to_kind(Kind::Double))) / size;
    let bound = 7.0 * 2f64.powi(-24) * 64.0;
    let ref_size = norm(&reference);
    let new_vs_ref = norm(&(&new - &reference)) / ref_size;
    let old_vs_ref = norm(&(&old - &reference)) / ref_size;
    eprintln!(
        "k = {K}: accumulation error new {new_err:.3e}, old {old_err:.3e} (bf16 floor {floor:.3e}, \
         bound {bound:.3e}); against the fp32 forward: new {new_vs_ref:.3e}, old {old_vs_ref:.3e}"
    );
    assert!(
        new_err <= bound,
        "fp32 accumulation: {new_err:e} > {bound:e}"
    );
    assert!(floor > bound, "the test cannot tell the paths apart");
    assert!(
        old_err >= floor * (1.0 - 1e-9),
        "bf16 accumulation: {old_err:e} below the bf16 rounding floor {floor:e}"
    );
    // The fp32 forward is a different computation: the mixed path sits at bf16-forward
    // distance from it, far above the accumulation error, and well under 10 %.
    assert!(new_vs_ref < 0.1, "{new_vs_ref}");
    assert!(new_vs_ref > bound);
}
