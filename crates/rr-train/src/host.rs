//! Reading a tensor's values on the host. On a GPU a read waits for every kernel queued before
//! it (a synchronisation that leaves the device idle while the host catches up), so the
//! training step never reads: loss, gradient norm and the non-finite flags stay on the device
//! and the trainer reads them once per logged step. Every read in this crate goes through
//! [`read_f64s`] or [`read_i64s`], which count the reads of the calling thread so that tests can hold a step
//! to none.

use std::cell::Cell;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Host reads made so far on this thread.
pub fn reads() -> u64 {
    READS.with(Cell::get)
}

/// Every value of `t` (any shape, any numeric dtype) as f64 on the host: one read.
pub fn read_f64s(t: &Tensor) -> Result<Vec<f64>> {
    Vec::<f64>::try_from(&on_host(t, Kind::Double)).context("reading a tensor on the host")
}

/// Every value of the integer tensor `t` as i64 on the host (exact beyond 2⁵³): one read.
pub fn read_i64s(t: &Tensor) -> Result<Vec<i64>> {
    Vec::<i64>::try_from(&on_host(t, Kind::Int64)).context("reading a tensor on the host")
}

/// `t` flattened on the CPU in `kind`: the read itself, counted.
fn on_host(t: &Tensor, kind: Kind) -> Tensor {
    READS.with(|r| r.set(r.get() + 1));
    t.detach()
        .to_device(Device::Cpu)
        .to_kind(kind)
        .reshape([-1])
}

/// The value of a one-element tensor as f64: one read.
pub fn read_f64(t: &Tensor) -> Result<f64> {
    let values = read_f64s(t)?;
    anyhow::ensure!(
        values.len() == 1,
        "reading a scalar: the tensor has {} values",
        values.len()
    );
    Ok(values[0])
}
