//! Muon: Newton–Schulz quality, one step against a reference built from plain tch ops,
//! Nesterov momentum, the shape factor, the parameter split and the auxiliary Adam.

mod support;

use rr_recipe::MuonConfig;
use rr_train::optim::{muon_eligible, muon_scale, newton_schulz, AdamW, Muon, Optimizer};
use tch::{Device, Kind, Tensor};

const COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

/// Makes `p.grad()` exactly `g` (d/dp sum(p·g) = g).
fn set_grad(p: &Tensor, g: &Tensor) {
    (p * g).sum(Kind::Float).backward();
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

/// Smallest and largest singular value, as square roots of the eigenvalues of the smaller
/// Gram matrix, in f64 (`linalg_svdvals` through tch passes a `driver` that CPU rejects).
fn singular_values(x: &Tensor) -> (f64, f64) {
    let x = x.to_kind(Kind::Double);
    let (r, c) = (x.size()[0], x.size()[1]);
    let gram = if r <= c {
        x.matmul(&x.transpose(0, 1))
    } else {
        x.transpose(0, 1).matmul(&x)
    };
    let ev = gram.linalg_eigvalsh("L").clamp_min(0.0).sqrt();
    (
        f64::try_from(ev.min()).unwrap(),
        f64::try_from(ev.max()).unwrap(),
    )
}

/// The quintic iteration maps every singular value of the normalised input into roughly
/// [0.68, 1.13] (it is not exactly orthogonal). The input's normalised spectrum spans
/// about a factor 6 for a Gaussian 64×32 matrix.
#[test]
fn newton_schulz_output_is_nearly_orthogonal() {
    tch::manual_seed(7);
    for shape in [[64i64, 32], [32, 64]] {
        let g = randn(&shape);
        let (in_min, in_max) = singular_values(&g);
        let x = newton_schulz(&g, 5, COEFFS, Kind::BFloat16);
        assert_eq!(x.kind(), Kind::BFloat16);
        assert_eq!(x.size(), shape.to_vec());
        let (lo, hi) = singular_values(&x);
        eprintln!(
            "{shape:?}: input singular values [{in_min:.3}, {in_max:.3}] (ratio {:.2}), \
             output [{lo:.4}, {hi:.4}] (ratio {:.3})",
            in_max / in_min,
            hi / lo
        );
        assert!(
            in_max / in_min > 3.0,
            "the test input should have a wide spectrum"
        );
        assert!(
            lo >= 0.6 && hi <= 1.2,
            "{shape:?}: output singular values [{lo}, {hi}]"
        );
        assert!(hi / lo < 2.0);
    }
}

/// A low-rank input stays low-rank (zero singular values are fixed points), the output of
/// a zero matrix is zero (no NaN from the 1e-7 guard), and 0 steps is just the normalisation.
#[test]
fn newton_schulz_edge_cases() {
    let z = newton_schulz(
        &Tensor::zeros([3, 5], (Kind::Float, Device::Cpu)),
        5,
        COEFFS,
        Kind::BFloat16,
    );
    assert_eq!(f64::try_from(z.abs().sum(Kind::Float)).unwrap(), 0.0);
    let g = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 4.0]).view([2, 2]);
    let x0 = newton_schulz(&g, 0, COEFFS, Kind::BFloat16).to_kind(Kind::Float);
    // ‖g‖_F = 5: X = g/5 = [[0.6, 0], [0, 0.8]] (bf16: 0.6 -> 0.6015625, 0.8 -> 0.80078125).
    // Exact by construction: 5 and 5 + 1e-7 are the same bf16, and each quotient is rounded
    // once from its fp32 value, in any kernel.
    let want = Tensor::from_slice(&[0.6015625f32, 0.0, 0.0, 0.80078125]).view([2, 2]);
    assert!(x0.equal(&want), "{x0}");
}

/// The reference Muon step, written out with plain tch ops in the documented order.
fn reference_step(p0: &Tensor, buf: &Tensor, g: &Tensor, lr: f64, wd: f64) -> (Tensor, Tensor) {
    let mu = 0.95;
    let buf = buf * mu + g; // buf = μ·buf + g
    let u = g + &buf * mu; // Nesterov: u = g + μ·buf
    let (rows, cols) = (u.size()[0], u.size()[1]);
    // bf16 as the reference, where this CPU multiplies bf16 natively (else the optimizer
    // iterates in fp32, see `optim::muon`).
    let kind = if rr_model::device::bf16_is_fast(Device::Cpu) {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let mut x = u.to_kind(kind);
    if rows > cols {
        x = x.transpose(0, 1);
    }
    x = &x / (x.norm() + 1e-7);
    let (a, b, c) = COEFFS;
    for _ in 0..5 {
        let am = x.matmul(&x.transpose(0, 1));
        let bm = &am * b + (&am * c).matmul(&am);
        x = &x * a + bm.matmul(&x);
    }
    if rows > cols {
        x = x.transpose(0, 1);
    }
    let scale = (rows as f64 / cols as f64).max(1.0).sqrt();
    let update = x.to_kind(Kind::Float) * scale;
    let p = p0 * (1.0 - lr * wd) - update * lr;
    (p, buf)
}

/// Rounded fp32 operations of one Muon step on a parameter element: decay (1), the update's
/// kind conversion and scale (2), × lr (1), the addition (1), with one to spare; the momentum
/// buffer: 2.
const ROUNDINGS_PER_STEP: usize = 6;

/// Two default-config steps (lr 1e-3, wd 1e-4) on 6×4 and 4×6 matrices equal the reference.
/// The reference runs the same tensor operations on the same shapes and kind as the optimizer
/// (so the same kernels, in any build), leaving only the element-wise rounding of the update.
#[test]
fn muon_steps_match_reference() {
    tch::manual_seed(11);
    for shape in [[6i64, 4], [4, 6]] {
        let p0 = randn(&shape);
        let p = p0.copy().set_requires_grad(true);
        let name = "transformer.core_block.0.attn.Wqkv.weight".to_string();
        let mut opt = Muon::new(vec![(name, p.shallow_clone())], MuonConfig::default()).unwrap();
        assert_eq!(opt.adam_param_names(), Vec::<String>::new());
        let (mut p_ref, mut buf_ref) = (p0.copy(), Tensor::zeros_like(&p0));
        for _ in 0..2 {
            let g = randn(&shape);
            opt.zero_grad();
            set_grad(&p, &g);
            opt.step(1.0);
            (p_ref, buf_ref) = reference_step(&p_ref, &buf_ref, &g, 1e-3, 1e-4);
            let bound =
                support::elementwise_bound(2 * ROUNDINGS_PER_STEP, support::max_abs(&p_ref));
            support::assert_within(&format!("{shape:?}: p"), &p.detach(), &p_ref, bound);
        }
        // The test can fail: the parameter did move by about lr per element, far beyond the bound.
        let moved = max_abs_diff(&p.detach(), &p0);
        let bound = support::elementwise_bound(2 * ROUNDINGS_PER_STEP, support::max_abs(&p_ref));
        assert!(
            moved > 100.0 * bound,
            "{shape:?}: moved only {moved:e} (bound {bound:.3e})"
        );
        let bound = support::elementwise_bound(2 * 2, support::max_abs(&buf_ref));
        support::assert_within(
            "momentum buffer",
            &opt.state_tensors()[0].1,
            &buf_ref,
            bound,
        );
    }
}

/// buf₁ = g₁; buf₂ = 0.95·g₁ + g₂.
///   g₁ = [[1, 2], [3, 4]], g₂ = [[0.5, -1], [2, 0]]
///   buf₂ = [[0.95 + 0.5, 1.9 - 1], [2.85 + 2, 3.8 + 0]] = [[1.45, 0.9], [4.85, 3.8]]
#[test]
fn nesterov_buffer_after_two_steps() {
    let p = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut opt = Muon::new(
        vec![("adapter.weight".into(), p.shallow_clone())],
        MuonConfig::default(),
    )
    .unwrap();
    let g1 = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
    let g2 = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0]).view([2, 2]);
    set_grad(&p, &g1);
    opt.step(1.0);
    let buf = |o: &Muon| {
        let s = o.state_tensors();
        s.iter()
            .find(|(n, _)| n == "muon.momentum.adapter.weight")
            .unwrap()
            .1
            .copy()
    };
    assert!(max_abs_diff(&buf(&opt), &g1) == 0.0);
    opt.zero_grad();
    set_grad(&p, &g2);
    opt.step(1.0);
    // Two roundings (× 0.95, + g₂), and the decimal want's own rounding to fp32.
    let want = Tensor::from_slice(&[1.45f32, 0.9, 4.85, 3.8]).view([2, 2]);
    support::assert_within(
        "buffer",
        &buf(&opt),
        &want,
        support::elementwise_bound(3, 4.85),
    );
    assert_eq!(opt.steps(), 2);
}

/// max(1, rows/cols)^0.5: √2 for 4×2, 1 for 2×4. Checked on the applied update too (lr 1,
/// wd 0): ‖Δp‖ / ‖NS(u)‖ is the factor, with u = g + 0.95·g on the first step (formed as the
/// optimizer forms it: 1.95·g rounds differently, and one bf16 ulp of input moves NS's output
/// by far more than fp32 rounding).
#[test]
fn shape_scale_factor() {
    assert_eq!(muon_scale(4, 2), 2f64.sqrt());
    assert_eq!(muon_scale(2, 4), 1.0);
    assert_eq!(muon_scale(3, 3), 1.0);
    tch::manual_seed(3);
    let cfg = MuonConfig {
        lr: 1.0,
        weight_decay: 0.0,
        ..MuonConfig::default()
    };
    for (shape, factor) in [([4i64, 2], 2f64.sqrt()), ([2, 4], 1.0)] {
        let p = Tensor::zeros(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = Muon::new(vec![("w".into(), p.shallow_clone())], cfg.clone()).unwrap();
        let g = randn(&shape);
        set_grad(&p, &g);
        opt.step(1.0);
        // The optimizer iterates in bf16 where this CPU multiplies bf16 natively, else fp32.
        let kind = if rr_model::device::bf16_is_fast(Device::Cpu) {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        let ns = newton_schulz(&(&g + &g * 0.95), 5, COEFFS, kind).to_kind(Kind::Float);
        let want = &ns * (-factor);
        // The same NS kernels on the same input; the scale, × lr and the addition to 0 round.
        let bound = support::elementwise_bound(3, support::max_abs(&want));
        support::assert_within(
            &format!("{shape:?}: -{factor}·NS(u)"),
            &p.detach(),
            &want,
            bound,
        );
        // Each norm sums 8 squares (K = 8, relative ε each, halved by the root), plus the
        // update's rounding: the ratio is within 2·8·ε + 3u of the factor, relatively.
        let ratio = f64::try_from(p.detach().norm()).unwrap() / f64::try_from(ns.norm()).unwrap();
        let bound =
            (support::reorder_bound(2 * 8, 1.0) + support::elementwise_bound(3, 1.0)) * factor;
        support::assert_close(&format!("{shape:?}: ratio"), &[ratio], &[factor], bound);
    }
}

#[test]
fn eligibility_split() {
    let cases: &[(&str, &[i64], bool)] = &[
        ("transformer.core_block.0.attn.Wqkv.weight", &[96, 32], true),
        ("transformer.prelude.1.mlp.proj.weight", &[32, 64], true),
        ("transformer.adapter.weight", &[32, 64], true),
        ("model.layers.0.self_attn.q_proj.weight", &[32, 32], true),
        ("transformer.wte.weight", &[100, 32], false),
        ("lm_head.weight", &[100, 32], false),
        ("model.embed_tokens.weight", &[100, 32], false),
        ("transformer.ln_f.weight", &[32], false),
        ("transformer.core_block.0.norm_1.weight", &[32], false),
        ("conv.weight", &[4, 4, 3, 3], false),
    ];
    for &(name, shape, want) in cases {
        assert_eq!(muon_eligible(name, shape), want, "{name} {shape:?}");
    }
}

/// The non-eligible parameters get AdamW with the auxiliary config, and `step(k)` scales
/// both groups' base learning rates by k.
#[test]
fn aux_adam_and_lr_multiplier() {
    tch::manual_seed(5);
    let mk = |t: &Tensor| t.copy().set_requires_grad(true);
    let (w0, e0, n0) = (randn(&[4, 3]), randn(&[10, 3]), randn(&[3]));
    let (gw, ge, gn) = (randn(&[4, 3]), randn(&[10, 3]), randn(&[3]));
    let (w, e, n) = (mk(&w0), mk(&e0), mk(&n0));
    let cfg = MuonConfig::default();
    let mut opt = Muon::new(
        vec![
            ("transformer.adapter.weight".into(), w.shallow_clone()),
            ("transformer.wte.weight".into(), e.shallow_clone()),
            ("transformer.ln_f.weight".into(), n.shallow_clone()),
        ],
        cfg.clone(),
    )
    .unwrap();
    assert_eq!(opt.muon_param_names(), vec!["transformer.adapter.weight"]);
    assert_eq!(
        opt.adam_param_names(),
        vec!["transformer.ln_f.weight", "transformer.wte.weight"]
    );
    set_grad(&w, &gw);
    set_grad(&e, &ge);
    set_grad(&n, &gn);
    opt.step(0.5);

    // Reference: AdamW with the aux config at lr 0.5·5e-5, Muon reference at lr 0.5·1e-3.
    let (e2, n2) = (mk(&e0), mk(&n0));
    let mut adam = AdamW::new(
        vec![
            ("e".into(), e2.shallow_clone()),
            ("n".into(), n2.shallow_clone()),
        ],
        cfg.aux_adam(),
    )
    .unwrap();
    assert_eq!(cfg.aux_adam().eps, 1e-10);
    set_grad(&e2, &ge);
    set_grad(&n2, &gn);
    adam.step_with_lr(0.5 * 5e-5);
    assert!(e.equal(&e2) && n.equal(&n2));
    let (w_ref, _) = reference_step(&w0, &Tensor::zeros_like(&w0), &gw, 0.5e-3, 1e-4);
    let bound = support::elementwise_bound(ROUNDINGS_PER_STEP, support::max_abs(&w_ref));
    support::assert_within("Muon group", &w.detach(), &w_ref, bound);
    // The embedding moved (by about lr = 2.5e-5 per element), by more than rounding.
    let moved = max_abs_diff(&e.detach(), &e0);
    let bound = support::elementwise_bound(16, support::max_abs(&e0));
    assert!(
        moved > bound,
        "the embedding moved only {moved:e} (bound {bound:.3e})"
    );
}

/// One of two ranks, exchanging all-gather inputs with the other over channels (threads stand
/// in for processes).
struct TwoRanks {
    rank: usize,
    to_other: std::sync::mpsc::Sender<Tensor>,
    from_other: std::sync::mpsc::Receiver<Tensor>,
}

impl rr_train::optim::SplitWork for TwoRanks {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        2
    }
    fn all_gather(&mut self, input: &Tensor) -> anyhow::Result<Vec<Tensor>> {
        self.to_other
            .send(input.copy())
            .map_err(|_| anyhow::anyhow!("the other rank is gone"))?;
        let theirs = self.from_other.recv()?;
        Ok(match self.rank {
            0 => vec![input.copy(), theirs],
            _ => vec![theirs, input.copy()],
        })
    }
}

/// Two Muon steps over matrices `start` with gradients `grads`, split over `ranks` if given.
fn two_muon_steps(ranks: Option<TwoRanks>, start: Vec<Tensor>, grads: Vec<Tensor>) -> Vec<Tensor> {
    let params: Vec<Tensor> = start
        .iter()
        .map(|p| p.copy().set_requires_grad(true))
        .collect();
    for (p, g) in params.iter().zip(&grads) {
        set_grad(p, g);
    }
    let named = ["a.weight", "b.weight", "c.weight"]
        .iter()
        .map(|n| n.to_string())
        .zip(params.iter().map(Tensor::shallow_clone))
        .collect();
    let mut muon = Muon::new(named, MuonConfig::default()).unwrap();
    match ranks {
        None => (0..2).for_each(|_| muon.step_with_lrs(0.02, 0.0)),
        Some(mut r) => {
            for _ in 0..2 {
                muon.step_split_with_lrs(0.02, 0.0, &mut r).unwrap();
            }
        }
    }
    params.iter().map(Tensor::detach).collect()
}

#[test]
fn split_newton_schulz_gives_the_unsplit_step() {
    // Three Muon matrices of different shapes over 2 ranks: runs (a, b) and (c, padding).
    // Both ranks must end with the unsplit step's parameters, bit for bit (the same ops on the
    // same tensors, only on another rank).
    let shapes: [&[i64]; 3] = [&[4, 6], &[6, 3], &[5, 5]];
    let grads: Vec<Tensor> = shapes.iter().map(|s| randn(s)).collect();
    let start: Vec<Tensor> = shapes.iter().map(|s| randn(s)).collect();
    let whole = two_muon_steps(
        None,
        start.iter().map(Tensor::copy).collect(),
        grads.iter().map(Tensor::copy).collect(),
    );
    let (tx0, rx1) = std::sync::mpsc::channel();
    let (tx1, rx0) = std::sync::mpsc::channel();
    let ranks = [
        TwoRanks {
            rank: 0,
            to_other: tx0,
            from_other: rx0,
        },
        TwoRanks {
            rank: 1,
            to_other: tx1,
            from_other: rx1,
        },
    ];
    let threads: Vec<_> = ranks
        .into_iter()
        .map(|r| {
            let (s, g): (Vec<Tensor>, Vec<Tensor>) = (
                start.iter().map(Tensor::copy).collect(),
                grads.iter().map(Tensor::copy).collect(),
            );
            std::thread::spawn(move || two_muon_steps(Some(r), s, g))
        })
        .collect();
    for (rank, t) in threads.into_iter().enumerate() {
        let split = t.join().unwrap();
        for (i, (a, b)) in whole.iter().zip(&split).enumerate() {
            assert!(
                a.equal(b),
                "rank {rank}, parameter {i}: {}",
                max_abs_diff(a, b)
            );
        }
        assert!(
            max_abs_diff(&whole[0], &start[0]) > 1e-3,
            "the step moved nothing"
        );
    }
}
