//! Helpers shared by the optimizers: parameter-list checks and strict state loading.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use rr_model::weights::SafetensorsFiles;
use tch::{nn::VarStore, Kind, Tensor};

/// The trainable (`requires_grad`) variables of `vs` with their names, sorted by name.
pub(crate) fn trainable_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Sorts by name and checks: unique names, defined fp32 tensors.
pub(crate) fn check_params(mut params: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    params.sort_by(|a, b| a.0.cmp(&b.0));
    for w in params.windows(2) {
        if w[0].0 == w[1].0 {
            bail!("parameter `{}` is given to the optimizer twice", w[0].0);
        }
    }
    for (name, p) in &params {
        if !p.defined() {
            bail!("parameter `{name}` is an undefined tensor");
        }
        if p.kind() != Kind::Float {
            bail!(
                "parameter `{name}` is {:?}; optimizers need fp32 master weights (Kind::Float)",
                p.kind()
            );
        }
    }
    Ok(params)
}

/// Reads `name` from `files` and checks its dtype and shape.
pub(crate) fn read_checked(
    files: &SafetensorsFiles,
    name: &str,
    kind: Kind,
    shape: &[i64],
) -> Result<Tensor> {
    let t = files
        .tensor(name)
        .with_context(|| format!("optimizer state: tensor `{name}`"))?;
    if t.kind() != kind {
        bail!(
            "{}: optimizer state tensor `{name}` is {:?}, expected {kind:?}",
            files.describe(),
            t.kind()
        );
    }
    if t.size() != shape {
        bail!(
            "{}: optimizer state tensor `{name}` has shape {:?}, expected {shape:?}",
            files.describe(),
            t.size()
        );
    }
    Ok(t)
}

/// Reads an i64 scalar step counter.
pub(crate) fn read_step(files: &SafetensorsFiles, name: &str) -> Result<u64> {
    let t = read_checked(files, name, Kind::Int64, &[])?;
    let v = crate::host::read_f64(&t).with_context(|| format!("optimizer state tensor `{name}`"))?
        as i64;
    if v < 0 {
        bail!(
            "{}: optimizer state tensor `{name}` is negative ({v})",
            files.describe()
        );
    }
    Ok(v as u64)
}

/// Fails on a tensor whose name starts with one of `prefixes` but is not in `expected`.
pub(crate) fn reject_unexpected(
    files: &SafetensorsFiles,
    prefixes: &[&str],
    expected: &BTreeSet<String>,
) -> Result<()> {
    for name in files.names() {
        if prefixes.iter().any(|p| name.starts_with(p)) && !expected.contains(name) {
            bail!(
                "{}: unexpected optimizer state tensor `{name}` (no such parameter in this \
                 optimizer; is the checkpoint for another model or optimizer?)",
                files.describe()
            );
        }
    }
    Ok(())
}

/// Zeroes the gradient of `p` in place if it is defined.
pub(crate) fn zero_grad(p: &Tensor) {
    let mut g = p.grad();
    if g.defined() {
        let _guard = tch::no_grad_guard();
        let _ = g.detach_().zero_();
    }
}
