//! Muon (momentum + Newton–Schulz orthogonalisation) for the 2-D weights, with an auxiliary
//! AdamW for everything else (embeddings, head, norms).
//!
//! For each Muon parameter `p` (shape `rows × cols`) with a defined gradient `g`, learning
//! rate `lr`, momentum `μ`:
//!
//! ```text
//! buf    = μ·buf + g                        (fp32)
//! u      = g + μ·buf                        (Nesterov; `buf` itself when nesterov = false)
//! X      = newton_schulz(u)                 (bf16 where fast, see [`newton_schulz`])
//! update = f32(X) · max(1, rows/cols)^0.5   (fp32)
//! p     *= 1 - lr·wd                        (decoupled weight decay, skipped if wd = 0)
//! p     += update · (-lr)
//! ```
//!
//! This is the formulation of Keller Jordan's Muon as the spec gives it (`buf.mul_(μ).add_(g)`,
//! `g.add(buf, alpha=μ)`). His later version keeps an EMA instead (`buf.lerp_(g, 1-μ)`,
//! `g.lerp_(buf, μ)`), which is exactly `(1-μ)` times the same `u`; Newton–Schulz divides by
//! the Frobenius norm first, so the two differ only through the `1e-7` in that division and
//! rounding.
//!
//! The Newton–Schulz iteration runs in bf16, as the reference does, wherever bf16 matmuls are
//! fast: on CUDA and on CPUs with native bf16 (AVX-512 BF16). On other CPUs (AVX2 only) oneDNN
//! emulates bf16 at several times the cost of fp32, so the iteration runs in fp32 there
//! (`rr_model::device::bf16_is_fast`); the momentum, the scaling and the parameter update are
//! fp32 everywhere.
//!
//! A step skipped on the device ([`Optimizer::step_unless`]) computes the advanced buffer and
//! the updated parameter out of place and keeps the old values where `skip` holds (a select,
//! so non-finite gradients cannot leak in); the step count advances by `1 − skip`, and the
//! auxiliary Adam skips as [`AdamW::step_fused_unless`] does.

use std::collections::BTreeSet;

use anyhow::Result;
use rr_model::weights::SafetensorsFiles;
use rr_recipe::MuonConfig;
use tch::{Kind, Tensor};

use super::adamw::AdamW;
use super::state::{self, check_params, read_checked, read_step, reject_unexpected};
use super::{Optimizer, SplitWork};

/// Which parameters Muon updates: exactly the 2-D ones, except the token embedding and the
/// output head (`wte`, `embed_tokens`, `lm_head` as a component of the dotted name). So the
/// attention, MLP and adapter matrices of the prelude, core block and coda go to Muon, and
/// embeddings, head and all 1-D norm weights (and any bias) go to the auxiliary Adam.
pub fn muon_eligible(name: &str, shape: &[i64]) -> bool {
    shape.len() == 2
        && !name
            .split('.')
            .any(|c| matches!(c, "wte" | "lm_head" | "embed_tokens"))
}

/// Muon's shape factor `max(1, rows/cols)^0.5`: `sqrt(2)` for a 4×2 matrix, `1` for 2×4.
pub fn muon_scale(rows: i64, cols: i64) -> f64 {
    (1f64).max(rows as f64 / cols as f64).sqrt()
}

/// The quintic Newton–Schulz iteration of Muon in `kind` (bf16 in the reference) on a 2-D
/// tensor `g` of any float kind. Returns a tensor of `kind` and `g`'s shape (possibly
/// non-contiguous).
///
/// ```text
/// X = kind(G); if rows > cols { X = Xᵀ }
/// X = X / (‖X‖_F + 1e-7)
/// repeat steps: A = X·Xᵀ;  B = b·A + (c·A)·A;  X = a·X + B·X
/// if rows > cols { X = Xᵀ }
/// ```
///
/// The grouping `(c·A)·A` is Python's for `c * A @ A`, as in the reference. With the
/// coefficients (3.4445, −4.7750, 2.0315) and 5 steps the result is not exactly orthogonal:
/// its singular values lie roughly in [0.68, 1.13].
pub fn newton_schulz(
    g: &Tensor,
    steps: usize,
    coefficients: (f64, f64, f64),
    kind: Kind,
) -> Tensor {
    let size = g.size();
    assert_eq!(
        size.len(),
        2,
        "newton_schulz needs a 2-D tensor, got shape {size:?}"
    );
    let (a, b, c) = coefficients;
    let tall = size[0] > size[1];
    let mut x = g.to_kind(kind);
    if tall {
        x = x.transpose(0, 1);
    }
    x = &x / (x.norm() + 1e-7);
    for _ in 0..steps {
        let am = x.matmul(&x.transpose(0, 1));
        let bm = am.g_mul_scalar(b) + am.g_mul_scalar(c).matmul(&am);
        x = x.g_mul_scalar(a) + bm.matmul(&x);
    }
    if tall {
        x = x.transpose(0, 1);
    }
    x
}

struct MuonParam {
    name: String,
    param: Tensor,
    momentum: Tensor,
    /// `max(1, rows/cols)^0.5`
    scale: f64,
}

/// Muon for the parameters accepted by [`muon_eligible`], AdamW for the rest.
pub struct Muon {
    config: MuonConfig,
    params: Vec<MuonParam>,
    adam: AdamW,
    /// Steps taken, skipped ones not counted: an i64 scalar on the parameters' device.
    steps: Tensor,
}

impl std::fmt::Debug for Muon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muon")
            .field("config", &self.config)
            .field("muon_params", &self.muon_param_names())
            .field("adam", &self.adam)
            .finish()
    }
}

impl Muon {
    /// Splits `params` with [`muon_eligible`]; momentum buffers and Adam moments start at zero.
    pub fn new(params: Vec<(String, Tensor)>, config: MuonConfig) -> Result<Self> {
        config.validate()?;
        let params = check_params(params)?;
        let device = params.first().map_or(tch::Device::Cpu, |(_, p)| p.device());
        let (muon, adam): (Vec<_>, Vec<_>) = params
            .into_iter()
            .partition(|(name, p)| muon_eligible(name, &p.size()));
        let adam = AdamW::new(adam, config.aux_adam())?;
        let params = muon
            .into_iter()
            .map(|(name, param)| {
                let size = param.size();
                let momentum = Tensor::zeros_like(&param).detach();
                MuonParam {
                    name,
                    param,
                    momentum,
                    scale: muon_scale(size[0], size[1]),
                }
            })
            .collect();
        Ok(Self {
            config,
            params,
            adam,
            steps: Tensor::zeros([], (Kind::Int64, device)),
        })
    }

    /// Muon over every trainable variable of `vs`.
    pub fn from_var_store(vs: &tch::nn::VarStore, config: MuonConfig) -> Result<Self> {
        Self::new(state::trainable_variables(vs), config)
    }

    pub fn config(&self) -> &MuonConfig {
        &self.config
    }

    /// Names of the parameters updated by Muon, sorted.
    pub fn muon_param_names(&self) -> Vec<String> {
        self.params.iter().map(|p| p.name.clone()).collect()
    }

    /// Names of the parameters updated by the auxiliary Adam, sorted.
    pub fn adam_param_names(&self) -> Vec<String> {
        self.adam.param_names()
    }

    /// Number of steps taken, skipped ones not counted (saved as `muon.step`); one host read.
    pub fn steps(&self) -> u64 {
        crate::host::read_f64(&self.steps).expect("reading the step count") as u64
    }

    /// One step with absolute learning rates for the Muon group and the auxiliary Adam.
    pub fn step_with_lrs(&mut self, muon_lr: f64, adam_lr: f64) {
        self.update(muon_lr, adam_lr, None)
            .expect("Muon over fp32 parameters on one device");
    }

    /// One step on one process, a no-op where `skip` is true ([`Optimizer::step_unless`]).
    fn update(&mut self, muon_lr: f64, adam_lr: f64, skip: Option<&Tensor>) -> Result<()> {
        {
            let _guard = tch::no_grad_guard();
            for i in 0..self.params.len() {
                if let Some(u) = self.advance_momentum(i, skip) {
                    let update = self.orthogonal_update(i, &u);
                    self.apply(i, &update, muon_lr, skip);
                }
            }
        }
        self.finish_step(adam_lr, skip)
    }

    /// The auxiliary Adam's step and the step count.
    fn finish_step(&mut self, adam_lr: f64, skip: Option<&Tensor>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        match skip {
            None => {
                self.adam.step_fused(adam_lr)?;
                let _ = self.steps.g_add_scalar_(1);
            }
            Some(skip) => {
                self.adam.step_fused_unless(adam_lr, skip)?;
                let _ = self.steps.g_add_(&skip.logical_not().to_kind(Kind::Int64));
            }
        }
        Ok(())
    }

    /// [`Muon::step_with_lrs`] with the Newton–Schulz iterations divided among ranks, as the
    /// authors' `MuonWithAuxAdam` does: in each run of `world` consecutive parameters, rank r
    /// orthogonalises the r-th, and the updates are all-gathered (flattened, zero-padded to
    /// the longest of the run). Momentum buffers advance on every rank (cheap, element-wise),
    /// so each rank's optimizer state stays complete for checkpoints. The result is the same
    /// update as on one process.
    pub fn step_split_with_lrs(
        &mut self,
        muon_lr: f64,
        adam_lr: f64,
        ranks: &mut dyn SplitWork,
    ) -> Result<()> {
        self.update_split(muon_lr, adam_lr, None, ranks)
    }

    /// [`Muon::step_split_with_lrs`], a no-op where `skip` is true.
    fn update_split(
        &mut self,
        muon_lr: f64,
        adam_lr: f64,
        skip: Option<&Tensor>,
        ranks: &mut dyn SplitWork,
    ) -> Result<()> {
        let (rank, world) = (ranks.rank(), ranks.world());
        {
            let _guard = tch::no_grad_guard();
            let momenta: Vec<Option<Tensor>> = (0..self.params.len())
                .map(|i| self.advance_momentum(i, skip))
                .collect();
            for base in (0..self.params.len()).step_by(world) {
                let run = base..(base + world).min(self.params.len());
                let longest = run.clone().map(|i| self.params[i].param.numel()).max();
                let padded = longest.unwrap_or(0) as i64;
                let mine = base + rank;
                let flat = Tensor::zeros([padded], (Kind::Float, self.device()));
                if let Some(Some(u)) = momenta.get(mine) {
                    let update = self.orthogonal_update(mine, u).reshape([-1]);
                    flat.narrow(0, 0, update.size()[0]).copy_(&update);
                }
                let gathered = ranks.all_gather(&flat)?;
                for i in run {
                    if momenta[i].is_some() {
                        let size = self.params[i].param.size();
                        let n = self.params[i].param.numel() as i64;
                        let update = gathered[i - base].narrow(0, 0, n).view(size.as_slice());
                        self.apply(i, &update, muon_lr, skip);
                    }
                }
            }
        }
        self.finish_step(adam_lr, skip)
    }

    /// `buf = μ·buf + g` for parameter `i` (left as it was where `skip` holds); returns `u`
    /// (Nesterov or the advanced `buf`), or `None` when the parameter has no gradient.
    fn advance_momentum(&mut self, i: usize, skip: Option<&Tensor>) -> Option<Tensor> {
        let mu = self.config.momentum;
        let st = &mut self.params[i];
        let g = st.param.grad();
        if !g.defined() {
            return None;
        }
        let advanced = st.momentum.g_mul_scalar(mu) + &g;
        let kept = match skip {
            Some(skip) => st.momentum.where_self(skip, &advanced),
            None => advanced.shallow_clone(),
        };
        st.momentum.copy_(&kept);
        Some(if self.config.nesterov {
            &g + advanced.g_mul_scalar(mu)
        } else {
            advanced
        })
    }

    /// `f32(newton_schulz(u)) · scale` for parameter `i`.
    fn orthogonal_update(&self, i: usize, u: &Tensor) -> Tensor {
        let st = &self.params[i];
        let ns_kind = if rr_model::device::bf16_is_fast(st.param.device()) {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        let x = newton_schulz(
            u,
            self.config.ns_steps,
            self.config.ns_coefficients,
            ns_kind,
        );
        x.to_kind(Kind::Float).g_mul_scalar(st.scale)
    }

    /// Decoupled weight decay, then `p += update · (-lr)`; `p` is left as it was where `skip`
    /// holds.
    fn apply(&mut self, i: usize, update: &Tensor, lr: f64, skip: Option<&Tensor>) {
        let wd = self.config.weight_decay;
        let st = &mut self.params[i];
        let mut updated = match skip {
            Some(_) => st.param.copy(),
            None => st.param.shallow_clone(),
        };
        if wd != 0.0 {
            let _ = updated.g_mul_scalar_(1.0 - lr * wd);
        }
        let _ = updated.g_add_(&update.g_mul_scalar(-lr));
        if let Some(skip) = skip {
            st.param.copy_(&st.param.where_self(skip, &updated));
        }
    }

    fn device(&self) -> tch::Device {
        self.params
            .first()
            .map_or(tch::Device::Cpu, |st| st.param.device())
    }

    const PREFIXES: [&'static str; 2] = ["muon.momentum.", "muon.step"];
    const STEP: &'static str = "muon.step";
}

impl Optimizer for Muon {
    /// Muon lr = `config.lr · lr_multiplier`, auxiliary Adam lr = `config.adam_lr · lr_multiplier`.
    fn step(&mut self, lr_multiplier: f64) {
        self.step_with_lrs(
            self.config.lr * lr_multiplier,
            self.config.adam_lr * lr_multiplier,
        );
    }

    fn step_unless(&mut self, lr_multiplier: f64, skip: &Tensor) -> Result<()> {
        self.update(
            self.config.lr * lr_multiplier,
            self.config.adam_lr * lr_multiplier,
            Some(skip),
        )
    }

    fn step_split_unless(
        &mut self,
        lr_multiplier: f64,
        skip: &Tensor,
        ranks: &mut dyn SplitWork,
    ) -> Result<()> {
        self.update_split(
            self.config.lr * lr_multiplier,
            self.config.adam_lr * lr_multiplier,
            Some(skip),
            ranks,
        )
    }

    fn zero_grad(&mut self) {
        for st in &self.params {
            state::zero_grad(&st.param);
        }
        self.adam.zero_grad();
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|st| {
                (
                    format!("muon.momentum.{}", st.name),
                    st.momentum.shallow_clone(),
                )
            })
            .collect();
        out.push((Self::STEP.to_string(), self.steps.copy()));
        out.extend(self.adam.state_tensors());
        out
    }

    fn load_state(&mut self, files: &SafetensorsFiles) -> Result<()> {
        let mut expected = BTreeSet::new();
        let mut loaded = Vec::with_capacity(self.params.len());
        for st in &self.params {
            let name = format!("muon.momentum.{}", st.name);
            loaded.push(read_checked(files, &name, Kind::Float, &st.param.size())?);
            expected.insert(name);
        }
        let steps = read_step(files, Self::STEP)?;
        expected.insert(Self::STEP.to_string());
        reject_unexpected(files, &Self::PREFIXES, &expected)?;
        // The Adam half validates everything before it copies anything; ours is validated
        // already, so a failure there leaves both halves untouched.
        self.adam.load_state(files)?;
        let _guard = tch::no_grad_guard();
        for (st, t) in self.params.iter_mut().zip(loaded) {
            st.momentum.copy_(&t);
        }
        let _ = self.steps.fill_(steps as i64);
        Ok(())
    }

    fn param_names(&self) -> Vec<String> {
        let mut names = self.muon_param_names();
        names.extend(self.adam.param_names());
        names.sort();
        names
    }
}
