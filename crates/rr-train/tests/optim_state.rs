//! Optimizer state: save -> load -> continue is bit-identical to an uninterrupted run, and
//! loading is strict.

use std::path::Path;

use rr_model::weights::{write_safetensors, SafetensorsFiles};
use rr_recipe::{AdamWConfig, MuonConfig, OptimizerConfig};
use rr_train::optim::{self, Optimizer};
use tch::{Device, Kind, Tensor};

const SHAPES: [(&str, &[i64]); 4] = [
    ("transformer.adapter.weight", &[4, 8]),
    ("transformer.core_block.0.attn.Wqkv.weight", &[12, 4]),
    ("transformer.ln_f.weight", &[4]),
    ("transformer.wte.weight", &[16, 4]),
];
const MULTIPLIERS: [f64; 6] = [0.1, 0.5, 1.0, 1.0, 0.8, 0.3];

/// Initial values and per-parameter loss targets, from a fixed seed.
fn fixtures() -> (Vec<Tensor>, Vec<Tensor>) {
    tch::manual_seed(42);
    let init = SHAPES
        .iter()
        .map(|(_, s)| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
        .collect();
    let targets = SHAPES
        .iter()
        .map(|(_, s)| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
        .collect();
    (init, targets)
}

fn params_from(values: &[Tensor]) -> Vec<(String, Tensor)> {
    SHAPES
        .iter()
        .zip(values)
        .map(|((n, _), v)| (n.to_string(), v.copy().set_requires_grad(true)))
        .collect()
}

/// A deterministic loss whose gradient depends on the parameters and the step.
fn backward(params: &[(String, Tensor)], targets: &[Tensor], step: usize) {
    let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
    for ((_, p), t) in params.iter().zip(targets) {
        let shifted = t * (1.0 + 0.25 * step as f64);
        loss = loss + (p.sin() * shifted).sum(Kind::Float) + (p * p).sum(Kind::Float) * 0.05;
    }
    loss.backward();
}

fn run_steps(
    opt: &mut dyn Optimizer,
    params: &[(String, Tensor)],
    targets: &[Tensor],
    steps: std::ops::Range<usize>,
) {
    for step in steps {
        opt.zero_grad();
        backward(params, targets, step);
        opt.step(MULTIPLIERS[step]);
    }
}

fn save_params(params: &[(String, Tensor)], path: &Path) {
    let named: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, p)| (n.clone(), p.detach()))
        .collect();
    write_safetensors(&named, path).unwrap();
}

fn load_params(path: &Path) -> Vec<(String, Tensor)> {
    let files = SafetensorsFiles::open_files(&[path.to_path_buf()]).unwrap();
    let zeros: Vec<Tensor> = SHAPES
        .iter()
        .map(|(_, s)| Tensor::zeros(*s, (Kind::Float, Device::Cpu)))
        .collect();
    let params = params_from(&zeros);
    let _guard = tch::no_grad_guard();
    for (name, p) in &params {
        p.shallow_clone().copy_(&files.tensor(name).unwrap());
    }
    params
}

fn open(path: &Path) -> SafetensorsFiles {
    SafetensorsFiles::open_files(&[path.to_path_buf()]).unwrap()
}

fn check_resume_is_bit_identical(config: OptimizerConfig, expected_state: &[&str]) {
    let (init, targets) = fixtures();
    let dir = tempfile::tempdir().unwrap();

    // Uninterrupted: 6 steps.
    let straight = params_from(&init);
    let mut opt = optim::build(&config, straight.clone_shallow()).unwrap();
    run_steps(opt.as_mut(), &straight, &targets, 0..6);
    let straight_state = opt.state_tensors();

    // Interrupted after 3 steps: save, drop everything, rebuild, load, continue.
    let (model_path, opt_path) = (
        dir.path().join("model.safetensors"),
        dir.path().join("optimizer.safetensors"),
    );
    {
        let first = params_from(&init);
        let mut opt = optim::build(&config, first.clone_shallow()).unwrap();
        run_steps(opt.as_mut(), &first, &targets, 0..3);
        save_params(&first, &model_path);
        write_safetensors(&opt.state_tensors(), &opt_path).unwrap();
    }
    let resumed = load_params(&model_path);
    let mut opt = optim::build(&config, resumed.clone_shallow()).unwrap();
    opt.load_state(&open(&opt_path)).unwrap();
    run_steps(opt.as_mut(), &resumed, &targets, 3..6);

    for ((name, a), (_, b)) in straight.iter().zip(&resumed) {
        assert!(
            a.equal(b),
            "{name}: resumed run differs from the uninterrupted run"
        );
        assert!(!a.equal(&init[SHAPES.iter().position(|(n, _)| n == name).unwrap()]));
    }
    let resumed_state = opt.state_tensors();
    let names: Vec<&str> = resumed_state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, expected_state);
    for ((n, a), (_, b)) in straight_state.iter().zip(&resumed_state) {
        assert!(a.equal(b), "state `{n}` differs");
    }
}

trait CloneShallow {
    fn clone_shallow(&self) -> Vec<(String, Tensor)>;
}
impl CloneShallow for Vec<(String, Tensor)> {
    fn clone_shallow(&self) -> Vec<(String, Tensor)> {
        self.iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }
}

#[test]
fn adamw_resume_is_bit_identical() {
    let mut names = Vec::new();
    for (n, _) in SHAPES {
        names.push(format!("adam.m.{n}"));
        names.push(format!("adam.v.{n}"));
        names.push(format!("adam.step.{n}"));
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    check_resume_is_bit_identical(
        OptimizerConfig::AdamW(AdamWConfig {
            lr: 1e-2,
            ..AdamWConfig::default()
        }),
        &names,
    );
}

#[test]
fn muon_resume_is_bit_identical() {
    check_resume_is_bit_identical(
        OptimizerConfig::Muon(MuonConfig {
            lr: 2e-2,
            adam_lr: 1e-2,
            ..MuonConfig::default()
        }),
        &[
            "muon.momentum.transformer.adapter.weight",
            "muon.momentum.transformer.core_block.0.attn.Wqkv.weight",
            "muon.step",
            "adam.m.transformer.ln_f.weight",
            "adam.v.transformer.ln_f.weight",
            "adam.step.transformer.ln_f.weight",
            "adam.m.transformer.wte.weight",
            "adam.v.transformer.wte.weight",
            "adam.step.transformer.wte.weight",
        ],
    );
}

/// The state after two Muon steps, with its values, for the error tests.
fn trained_muon() -> (Box<dyn Optimizer>, Vec<(String, Tensor)>) {
    let (init, targets) = fixtures();
    let params = params_from(&init);
    let mut opt = optim::build(&OptimizerConfig::default(), params.clone_shallow()).unwrap();
    run_steps(opt.as_mut(), &params, &targets, 0..2);
    let state: Vec<(String, Tensor)> = opt
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    (opt, state)
}

/// Loads `state` (edited by `edit`) into a fresh Muon and returns the error message; the
/// optimizer's state must be unchanged (still zero) after the failure.
fn load_error(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> String {
    let (_, mut state) = trained_muon();
    edit(&mut state);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    write_safetensors(&state, &path).unwrap();
    let (init, _) = fixtures();
    let mut fresh = optim::build(&OptimizerConfig::default(), params_from(&init)).unwrap();
    let before: Vec<(String, Tensor)> = fresh
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let err = format!("{:#}", fresh.load_state(&open(&path)).unwrap_err());
    for ((n, a), (_, b)) in before.iter().zip(&fresh.state_tensors()) {
        assert!(a.equal(b), "state `{n}` changed by a failed load");
    }
    err
}

#[test]
fn missing_tensor_is_named() {
    for missing in [
        "adam.v.transformer.wte.weight",
        "muon.momentum.transformer.adapter.weight",
        "muon.step",
    ] {
        let err = load_error(|s| s.retain(|(n, _)| n != missing));
        assert!(
            err.contains(&format!("`{missing}`")) && err.contains("missing"),
            "{err}"
        );
    }
}

#[test]
fn wrong_shape_or_dtype_is_named() {
    let name = "muon.momentum.transformer.core_block.0.attn.Wqkv.weight";
    let err = load_error(|s| {
        let t = &mut s.iter_mut().find(|(n, _)| n == name).unwrap().1;
        *t = Tensor::zeros([4, 12], (Kind::Float, Device::Cpu));
    });
    assert!(err.contains(name) && err.contains("shape"), "{err}");
    let name = "adam.m.transformer.ln_f.weight";
    let err = load_error(|s| {
        let t = &mut s.iter_mut().find(|(n, _)| n == name).unwrap().1;
        *t = t.to_kind(Kind::BFloat16);
    });
    assert!(err.contains(name) && err.contains("BFloat16"), "{err}");
}

#[test]
fn unexpected_tensor_is_rejected() {
    let err = load_error(|s| {
        s.push((
            "muon.momentum.transformer.extra.weight".into(),
            Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
        ))
    });
    assert!(
        err.contains("muon.momentum.transformer.extra.weight") && err.contains("unexpected"),
        "{err}"
    );
    let err = load_error(|s| {
        s.push((
            "adam.m.lm_head.weight".into(),
            Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
        ))
    });
    assert!(err.contains("adam.m.lm_head.weight"), "{err}");
}

/// A Muon state file does not load into AdamW (the 2-D weights have no Adam moments).
#[test]
fn muon_state_does_not_load_into_adamw() {
    let (_, state) = trained_muon();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    write_safetensors(&state, &path).unwrap();
    let (init, _) = fixtures();
    let mut adamw = optim::build(
        &OptimizerConfig::AdamW(AdamWConfig::default()),
        params_from(&init),
    )
    .unwrap();
    let err = format!("{:#}", adamw.load_state(&open(&path)).unwrap_err());
    assert!(err.contains("adam.m.transformer.adapter.weight"), "{err}");
}

/// One step of `opt` through [`Optimizer::step_unless`] with `skip`; `poison` fills the
/// gradients with NaN and ±inf first (what a skipped step sees).
fn step_unless(
    opt: &mut dyn Optimizer,
    params: &[(String, Tensor)],
    targets: &[Tensor],
    step: usize,
    skip: bool,
    poison: bool,
) {
    opt.zero_grad();
    backward(params, targets, step);
    if poison {
        for (i, (_, p)) in params.iter().enumerate() {
            let value = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY][i % 3];
            let _ = p.grad().fill_(value);
        }
    }
    opt.step_unless(MULTIPLIERS[step], &Tensor::from(skip))
        .unwrap();
}

/// A step skipped on the device (`step_unless` with `skip` true, non-finite gradients) leaves
/// every parameter and every state tensor (moments, momentum, step counts) exactly as it was,
/// and is not counted: steps 0, 1, skipped, 2 end bit for bit where steps 0, 1, 2 of
/// [`Optimizer::step`] end (a counted skip would change Adam's bias corrections, an applied
/// one the moments). Not skipped, `step_unless` is `step` bit for bit.
fn check_skipped_step_is_a_no_op(config: OptimizerConfig) {
    let (init, targets) = fixtures();
    let straight = params_from(&init);
    let mut opt = optim::build(&config, straight.clone_shallow()).unwrap();
    run_steps(opt.as_mut(), &straight, &targets, 0..3);

    let skipping = params_from(&init);
    let mut opt_s = optim::build(&config, skipping.clone_shallow()).unwrap();
    for step in 0..2 {
        step_unless(opt_s.as_mut(), &skipping, &targets, step, false, false);
    }
    let before: Vec<Tensor> = skipping.iter().map(|(_, p)| p.copy()).collect();
    let state_before: Vec<(String, Tensor)> = opt_s
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    step_unless(opt_s.as_mut(), &skipping, &targets, 2, true, true);
    for ((name, p), b) in skipping.iter().zip(&before) {
        assert!(p.equal(b), "{name}: changed by a skipped step");
    }
    for ((n, a), (_, b)) in opt_s.state_tensors().iter().zip(&state_before) {
        assert!(a.equal(b), "state `{n}` changed by a skipped step");
    }
    step_unless(opt_s.as_mut(), &skipping, &targets, 2, false, false);
    for ((name, a), (_, b)) in straight.iter().zip(&skipping) {
        assert!(
            a.equal(b),
            "{name}: differs from the run without the skipped step"
        );
    }
    for ((n, a), (_, b)) in opt.state_tensors().iter().zip(&opt_s.state_tensors()) {
        assert!(
            a.equal(b),
            "state `{n}` differs from the run without the skipped step"
        );
    }
}

#[test]
fn a_skipped_adamw_step_is_a_no_op_and_not_counted() {
    check_skipped_step_is_a_no_op(OptimizerConfig::AdamW(AdamWConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamWConfig::default()
    }));
}

#[test]
fn a_skipped_muon_step_is_a_no_op_and_not_counted() {
    check_skipped_step_is_a_no_op(OptimizerConfig::Muon(MuonConfig {
        lr: 2e-2,
        adam_lr: 1e-2,
        weight_decay: 0.1,
        ..MuonConfig::default()
    }));
}
