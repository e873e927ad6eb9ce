//! AdamW with decoupled weight decay, step for step the arithmetic of PyTorch's
//! `torch.optim.AdamW` (single-tensor path, no amsgrad, no maximize).
//!
//! For each parameter `p` with a defined gradient `g`, with learning rate `lr`:
//!
//! ```text
//! t  += 1                                   (per-parameter step count)
//! p  *= 1 - lr·wd                           (decoupled weight decay, FIRST, skipped if wd = 0)
//! m   = m.lerp(g, 1 - β1)                   (= β1·m + (1-β1)·g; PyTorch uses lerp_)
//! v   = β2·v + ((1-β2)·g)·g                 (PyTorch: v.mul_(β2).addcmul_(g, g, value=1-β2))
//! bc1 = 1 - β1^t,  bc2 = 1 - β2^t           (host f64)
//! p  += ((-lr / bc1) · m) / (sqrt(v) / sqrt(bc2) + eps)
//! ```
//!
//! The last line is PyTorch's `p.addcdiv_(m, denom, value=-lr/bc1)`; tch's `addcdiv_` has no
//! `value` argument, so the scaled numerator is divided and added, in the order of the CPU
//! kernel (`self + value * t1 / t2`). On CPU the result equals PyTorch 2.11's
//! `torch.optim.AdamW(foreach=False)` bit for bit (checked over 5 steps of 1000 elements);
//! other kernels (CUDA, foreach, fused) may round differently in the last bit. All state is
//! fp32 on the parameter's device.
//!
//! The optimizer runs this update as PyTorch's fused multi-tensor kernel (`_fused_adamw_`,
//! through `rr-torch-ext`): one kernel for all parameters instead of about six launches per
//! parameter. `step_plain` spells the same arithmetic out op by op; the tests hold the two
//! together (on CPU both match PyTorch bit for bit on the reference case).
//!
//! **Skipped steps.** [`AdamW::step_fused_unless`] takes a 0-d bool `skip` on the device (a
//! non-finite loss or gradient, never read on the host) and makes the step a no-op where it is
//! true, as `torch.optim.AdamW(fused=True)` under a `GradScaler` does with `found_inf`:
//! parameters, both moments and the step count are left exactly as they were (the count is
//! advanced by `1 − skip` on the device, so a skipped step does not count in the bias
//! corrections). `skip` goes to the kernel as its `found_inf`, which the kernel reads on the
//! device, so a skipped step costs nothing beyond the flag and an ordinary step costs what
//! `step_fused` does.

use std::collections::BTreeSet;

use anyhow::Result;
use rr_model::weights::SafetensorsFiles;
use rr_recipe::AdamWConfig;
use tch::{Kind, Tensor};

use super::state::{self, check_params, read_checked, read_step, reject_unexpected};
use super::Optimizer;

struct AdamParam {
    name: String,
    param: Tensor,
    m: Tensor,
    v: Tensor,
    /// Updates taken by this parameter (PyTorch's per-parameter `state["step"]`), an fp32
    /// scalar on the parameter's device as the fused kernel reads it (exact to 2²⁴ steps).
    step_t: Tensor,
}

/// AdamW over named fp32 parameters. See the module documentation for the exact update.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<AdamParam>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("config", &self.config)
            .field(
                "params",
                &self.params.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl AdamW {
    /// Takes `(checkpoint name, fp32 tensor)` pairs; the moments start at zero.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let params = check_params(params)?
            .into_iter()
            .map(|(name, param)| {
                let m = Tensor::zeros_like(&param).detach();
                let v = Tensor::zeros_like(&param).detach();
                let step_t = Tensor::zeros([], (Kind::Float, param.device()));
                AdamParam {
                    name,
                    param,
                    m,
                    v,
                    step_t,
                }
            })
            .collect();
        Ok(Self { config, params })
    }

    /// AdamW over every trainable variable of `vs`.
    pub fn from_var_store(vs: &tch::nn::VarStore, config: AdamWConfig) -> Result<Self> {
        Self::new(state::trainable_variables(vs), config)
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// One step with the absolute learning rate `lr` (the config's `lr` is ignored), through
    /// the fused kernel.
    pub fn step_with_lr(&mut self, lr: f64) {
        self.step_fused(lr)
            .expect("fused AdamW over fp32 parameters on one device");
    }

    /// The update through PyTorch's fused multi-tensor kernel (all parameters must be fp32 on
    /// one device).
    pub fn step_fused(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut lists: [Vec<Tensor>; 5] = Default::default();
        for st in &mut self.params {
            let g = st.param.grad();
            if !g.defined() {
                continue;
            }
            let _ = st.step_t.shallow_clone().g_add_scalar_(1.0);
            lists[0].push(st.param.shallow_clone());
            lists[1].push(g);
            lists[2].push(st.m.shallow_clone());
            lists[3].push(st.v.shallow_clone());
            lists[4].push(st.step_t.shallow_clone());
        }
        let [p, g, m, v, s] = &lists;
        self.fused(p, g, m, v, s, lr)
    }

    /// [`AdamW::step_fused`] that is a no-op where the 0-d bool `skip` (on the parameters'
    /// device) is true, decided on the device (see the module documentation).
    pub fn step_fused_unless(&mut self, lr: f64, skip: &Tensor) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let advance = skip.logical_not().to_kind(Kind::Float);
        let mut lists: [Vec<Tensor>; 5] = Default::default();
        for st in &mut self.params {
            let g = st.param.grad();
            if !g.defined() {
                continue;
            }
            let _ = st.step_t.shallow_clone().g_add_(&advance);
            lists[0].push(st.param.shallow_clone());
            lists[1].push(g);
            lists[2].push(st.m.shallow_clone());
            lists[3].push(st.v.shallow_clone());
            lists[4].push(st.step_t.shallow_clone());
        }
        let [p, g, m, v, s] = &lists;
        let found_inf = skip.to_kind(Kind::Float).reshape([1]);
        self.fused_with(p, g, m, v, s, lr, Some(&found_inf))
    }

    fn fused(
        &self,
        p: &[Tensor],
        g: &[Tensor],
        m: &[Tensor],
        v: &[Tensor],
        steps: &[Tensor],
        lr: f64,
    ) -> Result<()> {
        self.fused_with(p, g, m, v, steps, lr, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn fused_with(
        &self,
        p: &[Tensor],
        g: &[Tensor],
        m: &[Tensor],
        v: &[Tensor],
        steps: &[Tensor],
        lr: f64,
        found_inf: Option<&Tensor>,
    ) -> Result<()> {
        rr_torch_ext::fused_adamw_(
            p,
            g,
            m,
            v,
            steps,
            lr,
            self.config.betas,
            self.config.weight_decay,
            self.config.eps,
            found_inf,
        )
    }

    /// The update as separate tensor ops per parameter, in PyTorch's single-tensor order (the
    /// readable reference for the fused kernel).
    pub fn step_plain(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        let (b1, b2) = self.config.betas;
        let (eps, wd) = (self.config.eps, self.config.weight_decay);
        for st in &mut self.params {
            let g = st.param.grad();
            if !g.defined() {
                continue;
            }
            let _ = st.step_t.shallow_clone().g_add_scalar_(1.0);
            let t = crate::host::read_f64(&st.step_t).expect("reading the step count");
            if wd != 0.0 {
                let _ = st.param.g_mul_scalar_(1.0 - lr * wd);
            }
            let _ = st.m.lerp_(&g, 1.0 - b1);
            let _ = st.v.g_mul_scalar_(b2);
            // addcmul_'s kernel computes `self + value * t1 * t2`; tch's has value = 1, so
            // t1 = (1-β2)·g, which keeps the kernel's order of operations.
            let _ = st.v.addcmul_(&g.g_mul_scalar(1.0 - b2), &g);
            // Python evaluates these in double with `**`, i.e. C `pow`.
            let bc1 = 1.0 - b1.powf(t);
            let bc2 = 1.0 - b2.powf(t);
            let step_size = lr / bc1;
            let bc2_sqrt = bc2.powf(0.5);
            let denom = st.v.sqrt().g_div_scalar(bc2_sqrt).g_add_scalar(eps);
            // addcdiv's kernel computes `self + (value * t1) / t2`, in that order.
            let _ = st.param.addcdiv_(&st.m.g_mul_scalar(-step_size), &denom);
        }
    }

    /// Names of the state tensors of one parameter: `adam.m.`, `adam.v.`, `adam.step.`.
    fn names(name: &str) -> [String; 3] {
        [
            format!("adam.m.{name}"),
            format!("adam.v.{name}"),
            format!("adam.step.{name}"),
        ]
    }

    /// The prefixes under which this optimizer owns every tensor.
    pub(crate) const PREFIXES: [&'static str; 3] = ["adam.m.", "adam.v.", "adam.step."];
}

impl Optimizer for AdamW {
    fn step(&mut self, lr_multiplier: f64) {
        self.step_with_lr(self.config.lr * lr_multiplier);
    }

    fn step_unless(&mut self, lr_multiplier: f64, skip: &Tensor) -> Result<()> {
        self.step_fused_unless(self.config.lr * lr_multiplier, skip)
    }

    fn zero_grad(&mut self) {
        for st in &self.params {
            state::zero_grad(&st.param);
        }
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.params.len());
        for st in &self.params {
            let [m, v, s] = Self::names(&st.name);
            out.push((m, st.m.shallow_clone()));
            out.push((v, st.v.shallow_clone()));
            out.push((s, st.step_t.to_kind(Kind::Int64)));
        }
        out
    }

    fn load_state(&mut self, files: &SafetensorsFiles) -> Result<()> {
        let mut expected = BTreeSet::new();
        let mut loaded = Vec::with_capacity(self.params.len());
        for st in &self.params {
            let [m, v, s] = Self::names(&st.name);
            let shape = st.param.size();
            let mt = read_checked(files, &m, Kind::Float, &shape)?;
            let vt = read_checked(files, &v, Kind::Float, &shape)?;
            let step = read_step(files, &s)?;
            expected.extend([m, v, s]);
            loaded.push((mt, vt, step));
        }
        reject_unexpected(files, &Self::PREFIXES, &expected)?;
        let _guard = tch::no_grad_guard();
        for (st, (mt, vt, step)) in self.params.iter_mut().zip(loaded) {
            st.m.copy_(&mt);
            st.v.copy_(&vt);
            let _ = st.step_t.fill_(step as f64);
        }
        Ok(())
    }

    fn param_names(&self) -> Vec<String> {
        self.params.iter().map(|p| p.name.clone()).collect()
    }
}
