//! torch's c10d process groups for data-parallel training, through `csrc/dist.cpp`: a
//! `TCPStore` rendezvous at `MASTER_ADDR:MASTER_PORT` (rank 0 hosts it) and `ProcessGroupGloo`
//! for CPU tensors or `ProcessGroupNCCL` for CUDA tensors, behind one [`ProcessGroup`].
//!
//! Every collective waits at most the group's timeout. A collective that fails (a peer died, its
//! connection closed) or times out becomes an error naming this rank, the operation and, when
//! the peers' heartbeats in the store tell, the rank that was lost.

use std::ffi::{c_void, CString};
use std::os::raw::{c_char, c_int};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tch::{Device, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn rr_pg_new(
        master_addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        nccl: c_int,
        out: *mut *mut c_void,
    ) -> c_int;
    fn rr_pg_free(pg: *mut c_void);
    fn rr_pg_all_reduce(
        pg: *mut c_void,
        tensors: *mut *mut C_tensor,
        n: i64,
        average: c_int,
    ) -> c_int;
    fn rr_pg_broadcast(pg: *mut c_void, tensor: *mut C_tensor, root: c_int) -> c_int;
    fn rr_pg_all_gather(
        pg: *mut c_void,
        input: *mut C_tensor,
        outputs: *mut *mut C_tensor,
    ) -> c_int;
    fn rr_pg_barrier(pg: *mut c_void) -> c_int;
    fn rr_pg_lost_ranks(pg: *mut c_void, grace_ms: i64, lost: *mut c_int) -> c_int;
    fn rr_pg_built_with(gloo: *mut c_int, nccl: *mut c_int) -> c_int;
}

/// Where a rank finds the others: torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
/// `MASTER_ADDR`, `MASTER_PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// The heartbeat period in dist.cpp is one second; a stamp older than this is a lost rank.
const HEARTBEAT_GRACE: Duration = Duration::from_millis(2500);

/// Which collective library a group runs on; it follows the device of the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    pub fn for_device(device: Device) -> Self {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }
}

/// Whether this build has each backend: (Gloo, NCCL).
pub fn backends_built() -> (bool, bool) {
    let (mut gloo, mut nccl) = (0, 0);
    // SAFETY: writes two ints.
    unsafe { rr_pg_built_with(&mut gloo, &mut nccl) };
    (gloo != 0, nccl != 0)
}

/// One rank's membership of a c10d process group.
pub struct ProcessGroup {
    handle: *mut c_void,
    rank: usize,
    world: usize,
    backend: Backend,
}

// SAFETY: the handle is only used through &self / &mut self, one call at a time per group, and
// c10d's backends are safe to drive from any thread.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group: connects to (rank 0: hosts) the TCPStore, then builds the backend.
    /// Blocks until all `world` ranks have joined or `timeout` passes.
    pub fn new(rdv: &Rendezvous, backend: Backend, timeout: Duration) -> Result<Self> {
        ensure!(
            rdv.rank < rdv.world,
            "RANK {} is not below WORLD_SIZE {}",
            rdv.rank,
            rdv.world
        );
        if backend == Backend::Nccl {
            ensure!(
                tch::Cuda::is_available(),
                "rank {}: NCCL runs on CUDA devices and this machine has none (Gloo is the CPU backend)",
                rdv.rank
            );
            ensure!(
                backends_built().1,
                "rank {}: this rr was built without NCCL (the CUDA headers were missing at build \
                 time; run `cargo xtask setup` and rebuild)",
                rdv.rank
            );
        }
        let addr = CString::new(rdv.master_addr.as_str()).context("MASTER_ADDR has a NUL byte")?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: `addr` outlives the call; on success `handle` owns a Group freed in Drop.
        let code = unsafe {
            rr_pg_new(
                addr.as_ptr(),
                rdv.master_port as c_int,
                rdv.rank as c_int,
                rdv.world as c_int,
                timeout.as_millis() as i64,
                (backend == Backend::Nccl) as c_int,
                &mut handle,
            )
        };
        crate::check(code, "c10d").with_context(|| {
            format!(
                "rank {}: cannot join the {backend:?} process group of {} at {}:{}",
                rdv.rank, rdv.world, rdv.master_addr, rdv.master_port
            )
        })?;
        Ok(Self {
            handle,
            rank: rdv.rank,
            world: rdv.world,
            backend,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Sums (or averages) each tensor across ranks in place, all of them in one flattened
    /// call. The tensors must share a dtype and device.
    pub fn all_reduce(&self, tensors: &[Tensor], average: bool) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let mut ptrs = crate::ptrs(tensors);
        // SAFETY: live tensors for the duration of the call; results are written into them.
        let code = unsafe {
            rr_pg_all_reduce(
                self.handle,
                ptrs.as_mut_ptr(),
                ptrs.len() as i64,
                average as c_int,
            )
        };
        self.checked(code, "all-reduce")
    }

    /// Rank `root`'s `tensor` into every rank's `tensor`.
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        // SAFETY: a live tensor; the backend writes into its storage.
        let code =
            unsafe { rr_pg_broadcast(self.handle, tensor.as_ptr() as *mut _, root as c_int) };
        self.checked(code, "broadcast")
    }

    /// Every rank's `input`, in rank order.
    pub fn all_gather(&self, input: &Tensor) -> Result<Vec<Tensor>> {
        let outputs: Vec<Tensor> = (0..self.world).map(|_| input.empty_like()).collect();
        let mut ptrs = crate::ptrs(&outputs);
        // SAFETY: `outputs` holds `world` live tensors shaped like `input`.
        let code =
            unsafe { rr_pg_all_gather(self.handle, input.as_ptr() as *mut _, ptrs.as_mut_ptr()) };
        self.checked(code, "all-gather")?;
        Ok(outputs)
    }

    pub fn barrier(&self) -> Result<()> {
        // SAFETY: the handle is live.
        let code = unsafe { rr_pg_barrier(self.handle) };
        self.checked(code, "barrier")
    }

    /// A failed collective's error, with the lost ranks when the heartbeats name them.
    fn checked(&self, code: c_int, op: &str) -> Result<()> {
        let Err(cause) = crate::check(code, op) else {
            return Ok(());
        };
        let lost = self.lost_ranks();
        let who = match lost.as_slice() {
            [] => "no peer's heartbeat stopped (a rank may be hung)".to_string(),
            [r] => format!("lost rank {r}"),
            many => format!("lost ranks {many:?}"),
        };
        Err(cause.context(format!(
            "rank {}: {op} failed in a group of {}: {who}",
            self.rank, self.world
        )))
    }

    fn lost_ranks(&self) -> Vec<usize> {
        let mut lost = vec![0 as c_int; self.world];
        // SAFETY: `lost` has `world` slots.
        let code = unsafe {
            rr_pg_lost_ranks(
                self.handle,
                HEARTBEAT_GRACE.as_millis() as i64,
                lost.as_mut_ptr(),
            )
        };
        if code != 0 {
            return Vec::new();
        }
        (0..self.world).filter(|&r| lost[r] != 0).collect()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from rr_pg_new and is freed once.
        unsafe { rr_pg_free(self.handle) }
    }
}

impl Rendezvous {
    /// From torchrun's environment variables; `None` when `WORLD_SIZE` is unset (one process).
    pub fn from_env() -> Result<Option<Self>> {
        let Ok(world) = std::env::var("WORLD_SIZE") else {
            return Ok(None);
        };
        let number = |name: &str, default: Option<&str>| -> Result<usize> {
            let value = std::env::var(name)
                .ok()
                .or(default.map(str::to_string))
                .with_context(|| format!("{name} is not set (WORLD_SIZE is {world})"))?;
            value
                .trim()
                .parse()
                .with_context(|| format!("{name}={value:?} is not a number"))
        };
        let world = number("WORLD_SIZE", None)?;
        ensure!(world >= 1, "WORLD_SIZE must be at least 1");
        let rank = number("RANK", None)?;
        ensure!(rank < world, "RANK {rank} is not below WORLD_SIZE {world}");
        let port = number("MASTER_PORT", Some("29500"))?;
        Ok(Some(Self {
            rank,
            world,
            local_rank: number("LOCAL_RANK", Some("0"))?,
            master_addr: std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into()),
            master_port: u16::try_from(port).context("MASTER_PORT is not a port number")?,
        }))
    }
}
