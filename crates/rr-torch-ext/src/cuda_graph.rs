//! CUDA graphs (`at::cuda::CUDAGraph`, through `csrc/cuda_graph.cpp`): a sequence of kernels
//! recorded once and replayed with one launch, reading and writing the same memory each time.
//! What a graph computes must therefore have fixed shapes and addresses: its inputs are tensors
//! the caller overwrites in place before each replay, its outputs are the tensors the captured
//! code returned.
//!
//! [`CudaGraph::capture`] follows `torch.cuda.graph`: warm-up runs on a side stream (lazy
//! initialisation such as cuBLAS workspaces must not happen inside the capture), then the
//! capture on the same side stream, then back to the caller's stream.

use std::ffi::c_void;
use std::os::raw::c_int;

use anyhow::{bail, Context, Result};
use tch::Device;

extern "C" {
    fn rr_cuda_graph_new(device: c_int, out: *mut *mut c_void) -> c_int;
    fn rr_cuda_graph_free(g: *mut c_void);
    fn rr_cuda_graph_enter_side_stream(g: *mut c_void) -> c_int;
    fn rr_cuda_graph_leave_side_stream(g: *mut c_void) -> c_int;
    fn rr_cuda_graph_capture_begin(g: *mut c_void) -> c_int;
    fn rr_cuda_graph_capture_end(g: *mut c_void) -> c_int;
    fn rr_cuda_graph_replay(g: *mut c_void) -> c_int;
    fn rr_cuda_graph_built() -> c_int;
}

/// Whether this build can capture CUDA graphs (it had the CUDA headers).
pub fn cuda_graphs_built() -> bool {
    // SAFETY: reads a constant.
    unsafe { rr_cuda_graph_built() != 0 }
}

/// Warm-up runs before a capture, as `torch.cuda.graph`'s documentation recommends.
const WARMUP_RUNS: usize = 2;

/// A captured CUDA graph and what its capture returned.
pub struct CudaGraph<T> {
    handle: *mut c_void,
    /// The captured code's result: tensors in the graph's memory, rewritten by each replay.
    outputs: T,
}

impl<T> CudaGraph<T> {
    /// Runs `step` [`WARMUP_RUNS`] times, then captures one more run of it on `device`. `step`
    /// must be idempotent (the warm-ups really run) and free of host synchronisation (no
    /// reads of device values, no copies from pageable host memory) while capturing.
    pub fn capture(device: Device, mut step: impl FnMut() -> Result<T>) -> Result<Self> {
        let Device::Cuda(index) = device else {
            bail!("CUDA graphs need a CUDA device, not {device:?}");
        };
        let mut handle = std::ptr::null_mut();
        // SAFETY: on success `handle` owns a Graph freed in Drop.
        crate::check(
            unsafe { rr_cuda_graph_new(index as c_int, &mut handle) },
            "CUDA graph",
        )?;
        let mut graph = CudaGraphHandle(handle);
        // SAFETY (all calls below): `graph.0` is live until `graph` drops.
        crate::check(
            unsafe { rr_cuda_graph_enter_side_stream(graph.0) },
            "CUDA graph: side stream",
        )?;
        let captured = (|| {
            for _ in 0..WARMUP_RUNS {
                step().context("CUDA graph warm-up")?;
            }
            crate::check(
                unsafe { rr_cuda_graph_capture_begin(graph.0) },
                "CUDA graph: capture begin",
            )?;
            let outputs = step();
            // The capture must end whatever the step did, or the stream stays in capture mode.
            let ended = crate::check(
                unsafe { rr_cuda_graph_capture_end(graph.0) },
                "CUDA graph: capture end",
            );
            let outputs = outputs.context("CUDA graph capture")?;
            ended.map(|()| outputs)
        })();
        let left = crate::check(
            unsafe { rr_cuda_graph_leave_side_stream(graph.0) },
            "CUDA graph: back from the side stream",
        );
        let outputs = captured?;
        left?;
        Ok(Self {
            handle: std::mem::replace(&mut graph.0, std::ptr::null_mut()),
            outputs,
        })
    }

    /// Runs the captured kernels again on the current stream; the outputs then hold their
    /// results for the inputs as they are now.
    pub fn replay(&self) -> Result<&T> {
        // SAFETY: the handle is live.
        crate::check(
            unsafe { rr_cuda_graph_replay(self.handle) },
            "CUDA graph replay",
        )?;
        Ok(&self.outputs)
    }
}

/// Frees a graph handle on every exit path of a capture.
struct CudaGraphHandle(*mut c_void);

impl Drop for CudaGraphHandle {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a handle from rr_cuda_graph_new, freed once.
            unsafe { rr_cuda_graph_free(self.0) }
        }
    }
}

impl<T> Drop for CudaGraph<T> {
    fn drop(&mut self) {
        // SAFETY: a handle from rr_cuda_graph_new, freed once.
        unsafe { rr_cuda_graph_free(self.handle) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn capture_on_cpu_is_a_clear_error() {
        let err = CudaGraph::capture(Device::Cpu, || Ok(()))
            .err()
            .expect("no graph on CPU");
        assert!(err.to_string().contains("need a CUDA device"), "{err}");
    }

    #[test]
    fn replay_recomputes_from_the_inputs_as_they_are_now() {
        if !tch::Cuda::is_available() || !cuda_graphs_built() {
            println!(
                "skipped: needs CUDA (available: {}) and a build with CUDA headers (built: {})",
                tch::Cuda::is_available(),
                cuda_graphs_built()
            );
            return;
        }
        let device = Device::Cuda(0);
        let _guard = tch::no_grad_guard();
        let mut x = Tensor::zeros([4], (Kind::Float, device));
        let graph = CudaGraph::capture(device, || Ok((&x * 2.0) + 1.0)).unwrap();
        for value in [3.0, -1.5] {
            let _ = x.fill_(value);
            let y = graph.replay().unwrap();
            assert_eq!(
                Vec::<f32>::try_from(y).unwrap(),
                vec![(2.0 * value + 1.0) as f32; 4]
            );
        }
    }
}
