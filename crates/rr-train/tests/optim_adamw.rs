//! AdamW against hand-computed values.

mod support;

use rr_recipe::AdamWConfig;
use rr_train::optim::{AdamW, Optimizer};
use tch::{Kind, Tensor};

/// A fresh fp32 leaf parameter.
fn param(values: &[f32]) -> Tensor {
    Tensor::from_slice(values).set_requires_grad(true)
}

/// Makes `p.grad()` exactly `g`: d/dp sum(p * g) = g, accumulated onto a zeroed (or
/// undefined) gradient, so it is bit-exact.
fn set_grad(p: &Tensor, g: &[f32]) {
    (p * Tensor::from_slice(g)).sum(Kind::Float).backward();
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// Rounded fp32 operations of one AdamW step on one element: decay (1), m (3), v (4), m̂ (1),
/// √v̂ (2), + eps (1), the quotient (1), × lr (1), the subtraction (1), with one to spare.
const ROUNDINGS_PER_STEP: usize = 16;

/// `got` within `steps` AdamW steps of fp32 rounding of the exact `want`: the element-wise
/// bound of `support` on the largest value involved (every operation of the chain touches
/// values no larger than the parameters, moments or the update, all at most max |want|).
fn assert_close(got: &[f64], want: &[f64], steps: usize, what: &str) {
    let bound = support::elementwise_bound(ROUNDINGS_PER_STEP * steps, support::max_abs_of(want));
    support::assert_close(what, got, want, bound);
}

const CFG: AdamWConfig = AdamWConfig {
    lr: 0.01,
    betas: (0.9, 0.999),
    eps: 1e-8,
    weight_decay: 0.1,
};

/// Two steps, lr 0.01, betas (0.9, 0.999), eps 1e-8, wd 0.1 (so 1 - lr·wd = 0.999),
/// p0 = [0.25, -0.125], g1 = [0.5, -1.0], g2 = [-0.5, 3.0].
///
/// Step 1 (t = 1, bc1 = 1 - 0.9 = 0.1, bc2 = 1 - 0.999 = 0.001):
///   decay:  p = [0.25·0.999, -0.125·0.999]           = [0.24975, -0.124875]
///   m = 0.1·g1                                         = [0.05, -0.1]
///   v = 0.001·g1²                                      = [0.00025, 0.001]
///   m̂ = m/0.1 = [0.5, -1];  sqrt(v̂) = sqrt(v/0.001)    = [0.5, 1]
///   update = m̂ / (sqrt(v̂) + 1e-8)                      = [0.99999998, -0.99999999]
///   p -= 0.01·update                                   = [0.2397500002, -0.1148750001]
///
/// Step 2 (t = 2, bc1 = 1 - 0.81 = 0.19, bc2 = 1 - 0.998001 = 0.001999):
///   decay:  p·0.999                                    = [0.2395102501998, -0.1147601250999]
///   m = 0.9·m + 0.1·g2 = [0.045 - 0.05, -0.09 + 0.3]   = [-0.005, 0.21]
///   v = 0.999·v + 0.001·g2² = [0.00024975 + 0.00025, 0.000999 + 0.009]
///                                                      = [0.00049975, 0.009999]
///   m̂ = m/0.19                                         = [-1/38, 21/19] = [-0.0263157895, 1.1052631579]
///   v̂ = v/0.001999                                     = [0.25, 5.0020010005]
///   sqrt(v̂)                                            = [0.5, 2.2365153701]
///   update = m̂ / (sqrt(v̂) + 1e-8)                      = [-0.0526315779, 0.4941898311]
///   p -= 0.01·update                                   = [0.2400365660, -0.1197020234]
#[test]
fn two_steps_match_hand_computation() {
    let p = param(&[0.25, -0.125]);
    let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], CFG).unwrap();

    set_grad(&p, &[0.5, -1.0]);
    opt.step(1.0); // lr = 0.01 · 1.0
    assert_close(
        &values(&p),
        &[0.2397500002, -0.1148750001],
        1,
        "p after step 1",
    );

    opt.zero_grad();
    set_grad(&p, &[-0.5, 3.0]);
    opt.step(1.0);
    assert_close(
        &values(&p),
        &[0.2400365659787474, -0.1197020234107744],
        2,
        "p after step 2",
    );

    // The saved state matches the hand values too.
    let state = opt.state_tensors();
    let get = |n: &str| {
        state
            .iter()
            .find(|(name, _)| name == n)
            .unwrap()
            .1
            .shallow_clone()
    };
    assert_close(&values(&get("adam.m.w")), &[-0.005, 0.21], 2, "m");
    assert_close(&values(&get("adam.v.w")), &[0.00049975, 0.009999], 2, "v");
    assert_eq!(i64::try_from(&get("adam.step.w")).unwrap(), 2);
    assert_eq!(get("adam.m.w").kind(), Kind::Float);
}

/// Weight decay is applied before the Adam step and multiplies p (not the gradient): with a
/// zero gradient and fresh state the Adam term is 0/(0+eps) = 0, so one step is pure decay:
/// p = 0.25 · (1 - 0.01·0.1) = 0.24975.
#[test]
fn weight_decay_is_decoupled() {
    let p = param(&[0.25, -4.0]);
    let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], CFG).unwrap();
    set_grad(&p, &[0.0, 0.0]);
    opt.step(1.0);
    assert_close(&values(&p), &[0.24975, -3.996], 1, "p");
}

/// eps is added after the bias correction of sqrt(v) (it matters when eps is large):
/// lr 0.1, betas (0.5, 0.75), eps 0.5, wd 0, p0 = 1, g1 = 2, g2 = 0.
///   step 1: m = 0.5·2 = 1, v = 0.25·4 = 1, bc1 = 0.5, bc2 = 0.25
///           denom = sqrt(1)/sqrt(0.25) + 0.5 = 2.5, update = (1/0.5)/2.5 = 0.8
///           p = 1 - 0.1·0.8 = 0.92          ((sqrt(v)+eps)/sqrt(bc2) would give 0.9333)
///   step 2: m = 0.5·1 + 0 = 0.5, v = 0.75·1 + 0 = 0.75, bc1 = 0.75, bc2 = 1 - 0.5625 = 0.4375
///           denom = sqrt(0.75/0.4375) + 0.5 = 1.3093073414 + 0.5 = 1.8093073414
///           update = (0.5/0.75)/1.8093073414 = 0.3684651311
///           p = 0.92 - 0.1·0.3684651311 = 0.8831534869
#[test]
fn eps_is_added_after_bias_correction() {
    let p = param(&[1.0]);
    let cfg = AdamWConfig {
        lr: 0.1,
        betas: (0.5, 0.75),
        eps: 0.5,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], cfg).unwrap();
    set_grad(&p, &[2.0]);
    opt.step(1.0);
    assert_close(&values(&p), &[0.92], 1, "p after step 1");
    opt.zero_grad();
    set_grad(&p, &[0.0]);
    opt.step(1.0);
    assert_close(&values(&p), &[0.8831534868948834], 2, "p after step 2");
}

/// `step(k)` uses `k · config.lr`; `step_with_lr(lr)` uses `lr`; both give the same bits.
#[test]
fn lr_multiplier_scales_the_configured_lr() {
    let run = |f: &dyn Fn(&mut AdamW)| {
        let p = param(&[0.25, -0.125]);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], CFG).unwrap();
        set_grad(&p, &[0.5, -1.0]);
        f(&mut opt);
        p
    };
    let a = run(&|o| o.step(0.5));
    let b = run(&|o| o.step_with_lr(0.005));
    let c = run(&|o| o.step(1.0));
    assert!(a.equal(&b));
    assert!(!a.equal(&c));
    // Step 1 with lr 0.005: p = [0.25·0.9995 - 0.005·0.99999998, -0.125·0.9995 + 0.005·0.99999999]
    //                        = [0.2448750001, -0.11993750005]
    assert_close(&values(&a), &[0.2448750001, -0.11993750005], 1, "p");
}

/// A parameter that never received a gradient is skipped: no decay, no step count.
#[test]
fn parameters_without_gradient_are_skipped() {
    let p = param(&[0.25, -0.125]);
    let q = param(&[1.0, 2.0]);
    let mut opt = AdamW::new(
        vec![
            ("p".into(), p.shallow_clone()),
            ("q".into(), q.shallow_clone()),
        ],
        CFG,
    )
    .unwrap();
    set_grad(&p, &[0.5, -1.0]);
    opt.step(1.0);
    assert_eq!(values(&q), vec![1.0, 2.0]);
    let state = opt.state_tensors();
    let step_q = &state.iter().find(|(n, _)| n == "adam.step.q").unwrap().1;
    assert_eq!(i64::try_from(step_q).unwrap(), 0);
    assert_close(&values(&p), &[0.2397500002, -0.1148750001], 1, "p");
}

#[test]
fn rejects_bad_parameters_and_config() {
    let p = param(&[1.0]);
    let dup = vec![
        ("a".into(), p.shallow_clone()),
        ("a".into(), p.shallow_clone()),
    ];
    assert!(AdamW::new(dup, CFG)
        .unwrap_err()
        .to_string()
        .contains("twice"));
    let half = Tensor::from_slice(&[1.0f32])
        .to_kind(Kind::BFloat16)
        .set_requires_grad(true);
    let err = AdamW::new(vec![("h".into(), half)], CFG)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fp32"), "{err}");
    let bad = AdamWConfig {
        betas: (0.9, 1.0),
        ..CFG
    };
    assert!(AdamW::new(vec![("a".into(), p)], bad).is_err());
}

/// Final parameters (f32 bits) of PyTorch 2.11.0 `torch.optim.AdamW(lr=3e-3, betas=(0.9,
/// 0.95), eps=1e-8, weight_decay=0.1, foreach=False)` on CPU after 5 steps, from
/// `p0[i] = (i - 32)/64` and `grad_t[i] = ((7i + 13t) mod 17 - 8)/4`, i < 64, t = 0..5
/// (all exactly representable, so the inputs are the same everywhere):
///
/// ```python
/// i = torch.arange(64); p = torch.nn.Parameter((i - 32).float() / 64)
/// opt = torch.optim.AdamW([p], lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
/// for t in range(5):
///     p.grad = ((i * 7 + t * 13) % 17 - 8).float() / 4; opt.step()
/// ```
const PYTORCH_BITS: [u32; 64] = [
    0xbefca00c, 0xbef615d0, 0xbef37069, 0xbee344bd, 0xbee252a0, 0xbed5c474, 0xbecc8776, 0xbecc6953,
    0xbebc378e, 0xbeb92ea3, 0xbeaef420, 0xbea7417c, 0xbea41c03, 0xbe9540be, 0xbe927bf5, 0xbe88140b,
    0xbe80d8aa, 0xbe69a879, 0xbe5c9404, 0xbe574933, 0xbe36f1dc, 0xbe350da3, 0xbe1bf146, 0xbe09774f,
    0xbe093b08, 0xbdd1aef4, 0xbdc58b4e, 0xbd9ca145, 0xbd7bad5d, 0xbd6281b3, 0xbcd74ed6, 0xbcab0268,
    0xba1074f8, 0x3c5e64a9, 0x3d17bc96, 0x3d4c0e6c, 0x3d6139b3, 0x3db14b83, 0x3db513f7, 0x3de74cae,
    0x3e062050, 0x3e065c95, 0x3e26c024, 0x3e2cd1f7, 0x3e4146fc, 0x3e50ac47, 0x3e56f730, 0x3e74adc4,
    0x3e7a374f, 0x3e878393, 0x3e8ebef4, 0x3e9ac362, 0x3ea14d9d, 0x3ea3f305, 0x3eb41eb1, 0x3eb510cd,
    0x3ec19efa, 0x3ecadbf7, 0x3ecafa1b, 0x3edb2bdf, 0x3ede34ca, 0x3ee86f4d, 0x3ef021f2, 0x3ef34769,
];

/// Matches PyTorch's AdamW. On the x86-64 CPU kernels this was written on it matches bit
/// for bit (64 of 64); the assertion allows five steps of fp32 rounding so a different CPU's
/// vector kernels (FMA or not) cannot make it flaky, which still catches any change of formula
/// (a mis-scaled weight decay alone moves p by lr·wd·|p| ≈ 1.5e-4 per step).
#[test]
fn matches_pytorch_adamw() {
    let p0: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 64.0).collect();
    let p = param(&p0);
    let cfg = AdamWConfig {
        lr: 3e-3,
        betas: (0.9, 0.95),
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], cfg).unwrap();
    for t in 0..5 {
        let g: Vec<f32> = (0..64)
            .map(|i| ((7 * i + 13 * t) % 17 - 8) as f32 / 4.0)
            .collect();
        opt.zero_grad();
        set_grad(&p, &g);
        opt.step(1.0);
    }
    let got = Vec::<f32>::try_from(p.detach()).unwrap();
    let want: Vec<f32> = PYTORCH_BITS.iter().map(|&b| f32::from_bits(b)).collect();
    let exact = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() == b.to_bits())
        .count();
    eprintln!("{exact} of 64 elements bit-identical to PyTorch");
    let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
    let want: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    assert_close(&got, &want, 5, "p after 5 steps");
}

/// The plain per-parameter path (the readable reference of the fused kernel that `step` runs)
/// gives the hand-computed values of `two_steps_match_hand_computation` too.
#[test]
fn plain_path_matches_hand_computation() {
    let p = param(&[0.25, -0.125]);
    let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], CFG).unwrap();
    set_grad(&p, &[0.5, -1.0]);
    opt.step_fused(0.01).unwrap();
    assert_close(
        &values(&p),
        &[0.2397500002, -0.1148750001],
        1,
        "fused step 1",
    );
    opt.zero_grad();
    set_grad(&p, &[-0.5, 3.0]);
    opt.step_plain(0.01);
    assert_close(
        &values(&p),
        &[0.2400365659787474, -0.1197020234107744],
        2,
        "plain step 2",
    );
}

/// Fast path equals plain path: the fused kernel and the per-parameter ops agree to fp32
/// rounding over several steps on many parameters of different shapes, including one that
/// has no gradient.
#[test]
fn fused_kernel_agrees_with_plain_path() {
    tch::manual_seed(3);
    let shapes: [&[i64]; 4] = [&[64, 32], &[32], &[7, 5, 3], &[1000]];
    let make = || -> Vec<(String, Tensor)> {
        tch::manual_seed(3);
        shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    format!("p{i}"),
                    Tensor::randn(*s, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
                )
            })
            .collect()
    };
    let (a, b) = (make(), make());
    let mut plain = AdamW::new(
        a.iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
        CFG,
    )
    .unwrap();
    let mut fused = AdamW::new(
        b.iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
        CFG,
    )
    .unwrap();
    for step in 0..5 {
        tch::manual_seed(100 + step);
        for ((_, pa), (_, pb)) in a.iter().zip(&b).take(3) {
            let g = Tensor::randn(pa.size(), (Kind::Float, tch::Device::Cpu));
            (pa * &g).sum(Kind::Float).backward();
            (pb * &g).sum(Kind::Float).backward();
        }
        plain.step_plain(0.01);
        fused.step_fused(0.01).unwrap();
        plain.zero_grad();
        fused.zero_grad();
    }
    // Each path is within five steps of rounding of exact arithmetic, so of each other within
    // twice that.
    for ((name, pa), (_, pb)) in a.iter().zip(&b) {
        let bound = 2.0 * support::elementwise_bound(5 * ROUNDINGS_PER_STEP, support::max_abs(pa));
        support::assert_within(&format!("{name}: fused vs plain"), pb, pa, bound);
    }
    // The parameter without a gradient moved in neither.
    let initial = &make()[3].1;
    assert!(a[3].1.equal(initial) && b[3].1.equal(initial));
}
