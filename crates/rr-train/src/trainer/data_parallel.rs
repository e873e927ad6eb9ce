//! Data parallelism as PyTorch DDP does it, over torch's c10d (`rr_torch_ext::dist`): every rank
//! holds the whole model, computes the gradients of its own rows of each global micro-batch,
//! and the gradients are averaged across ranks (flattened into buckets of [`BUCKET_BYTES`],
//! one all-reduce each) before clipping and the optimizer step, which then gives the same
//! update on every rank (Muon divides its Newton–Schulz work among the ranks and all-gathers
//! the results). Rank 0 alone writes the run directory.
//!
//! The recipe's `micro_batch_size` is the *global* micro-batch: each of `world` ranks takes
//! `micro_batch_size / world` rows of it, so the global batch, the data order and the data
//! position (a function of the global step) do not depend on the world size, and a checkpoint
//! resumes at any world size that divides the micro-batch.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rr_torch_ext::dist::{Backend, ProcessGroup, Rendezvous};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

/// Gradient bucket size (DDP's default `bucket_cap_mb` is 25).
pub const BUCKET_BYTES: i64 = 25 << 20;

/// This process's place in a data-parallel run.
pub struct DataParallel {
    group: ProcessGroup,
    /// The recipe's device, with a GPU index of `LOCAL_RANK` (one GPU per process).
    device: Device,
    /// Seconds spent in collectives since the last [`DataParallel::take_comm_seconds`].
    comm_seconds: f64,
}

impl DataParallel {
    /// Joins the run that torchrun's environment describes (`None` without `WORLD_SIZE`); the
    /// backend follows `device` (Gloo on CPU, NCCL on CUDA). A world of one still joins a
    /// group and all-reduces, as DDP does: that is how one GPU measures the collectives' cost.
    pub fn from_env(device: Device, timeout: Duration) -> Result<Option<Self>> {
        let Some(rdv) = Rendezvous::from_env()? else {
            return Ok(None);
        };
        let device = match device {
            // One GPU per process: LOCAL_RANK picks it, as torchrun users expect.
            Device::Cuda(_) => Device::Cuda(rdv.local_rank),
            d => d,
        };
        let group = ProcessGroup::new(&rdv, Backend::for_device(device), timeout)?;
        Ok(Some(Self {
            group,
            device,
            comm_seconds: 0.0,
        }))
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world(&self) -> usize {
        self.group.world()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Refuses to start unless every rank runs the same recipe and model: each rank's
    /// fingerprint is gathered and compared with rank 0's; on a mismatch every rank stops
    /// with the same message, before any step.
    pub fn check_same_run(&self, recipe_hash: &str, params: &[(String, Tensor)]) -> Result<()> {
        let mine = fingerprint(recipe_hash, params);
        let all = self
            .group
            .all_gather(&Tensor::from_slice(&mine))
            .context("comparing recipes across ranks")?;
        let reference = crate::host::read_i64s(&all[0])?;
        for (rank, theirs) in all.iter().enumerate().skip(1) {
            if crate::host::read_i64s(theirs)? != reference {
                bail!(
                    "rank {rank} runs a different recipe or model than rank 0; refusing to start"
                );
            }
        }
        Ok(())
    }

    /// Rank 0's parameter values on every rank (DDP's start: identical replicas).
    pub fn broadcast_parameters(&mut self, params: &[Tensor]) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for p in params {
                self.group.broadcast(p, 0)?;
            }
            Ok(())
        })
    }

    /// Averages the gradients of `params` across ranks in place, bucket by bucket.
    pub fn average_gradients(&mut self, params: &[Tensor]) -> Result<()> {
        let started = Instant::now();
        let grads: Vec<Tensor> = params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        for bucket in buckets(&grads, BUCKET_BYTES) {
            self.group.all_reduce(bucket, true)?;
        }
        self.comm_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Replaces each value of `values` (on this rank's device) by its mean across ranks, in
    /// place and without reading it on the host.
    pub fn average(&mut self, values: &Tensor) -> Result<()> {
        let started = Instant::now();
        self.group.all_reduce(&[values.shallow_clone()], true)?;
        self.comm_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    pub fn take_comm_seconds(&mut self) -> f64 {
        std::mem::take(&mut self.comm_seconds)
    }
}

impl crate::optim::SplitWork for DataParallel {
    fn rank(&self) -> usize {
        self.group.rank()
    }

    fn world(&self) -> usize {
        self.group.world()
    }

    fn all_gather(&mut self, input: &Tensor) -> Result<Vec<Tensor>> {
        let started = Instant::now();
        let out = self.group.all_gather(input);
        self.comm_seconds += started.elapsed().as_secs_f64();
        out
    }
}

/// The rows of a global micro-batch of `global_rows` that `rank` of `world` takes.
pub fn shard_rows(global_rows: usize, rank: usize, world: usize) -> Result<std::ops::Range<usize>> {
    ensure!(
        global_rows.is_multiple_of(world),
        "training.micro_batch_size {global_rows} is the global micro-batch; it must divide \
         among {world} ranks"
    );
    let per_rank = global_rows / world;
    Ok(rank * per_rank..(rank + 1) * per_rank)
}

/// Consecutive runs of `tensors` of at most `cap` bytes each (a larger tensor alone).
fn buckets(tensors: &[Tensor], cap: i64) -> Vec<&[Tensor]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0i64);
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        if i > start && bytes + size > cap {
            out.push(&tensors[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < tensors.len() {
        out.push(&tensors[start..]);
    }
    out
}

/// The recipe's hash and every parameter's name, shape and dtype, as four 64-bit words.
fn fingerprint(recipe_hash: &str, params: &[(String, Tensor)]) -> [i64; 4] {
    let mut hasher = Sha256::new();
    hasher.update(recipe_hash.as_bytes());
    for (name, t) in params {
        hasher.update(format!("{name}{:?}{:?};", t.size(), t.kind()).as_bytes());
    }
    let digest = hasher.finalize();
    let word = |i: usize| i64::from_le_bytes(digest[8 * i..8 * i + 8].try_into().unwrap());
    [word(0), word(1), word(2), word(3)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn buckets_cut_at_the_cap_and_keep_order() {
        let t = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        // 4-byte floats: 10, 10, 30, 5 elements against a 80-byte cap.
        let tensors = [t(10), t(10), t(30), t(5)];
        let sizes: Vec<usize> = buckets(&tensors, 80).iter().map(|b| b.len()).collect();
        // 40+40 = 80 fits the cap; the 120-byte tensor goes alone; the 20 bytes after it
        // would make 140.
        assert_eq!(sizes, [2, 1, 1]);
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_micro_batch() {
        assert_eq!(shard_rows(8, 0, 2).unwrap(), 0..4);
        assert_eq!(shard_rows(8, 1, 2).unwrap(), 4..8);
        assert!(shard_rows(6, 0, 4).is_err());
    }
}
