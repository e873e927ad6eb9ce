// CUDA graphs through at::cuda::CUDAGraph, for the fixed-shape decode step: capture once on a
// side stream from the pool (the legacy default stream cannot be captured), replay on the
// caller's stream. Needs the CUDA headers, so the bodies exist only with RR_WITH_CUDA; without
// it every entry point fails with a message. Same error rule as ext.cpp.
#include <ATen/ATen.h>

#ifdef RR_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

namespace rr_ext {
void set_last_error(const std::string& msg);
}

#define RR_GRAPH_GUARD(body)                      \
  try {                                           \
    body;                                         \
    return 0;                                     \
  } catch (const std::exception& e) {             \
    rr_ext::set_last_error(e.what());             \
    return -1;                                    \
  }

#ifdef RR_WITH_CUDA
namespace {

// One graph and the side stream it is captured on. `outer` is the caller's stream while the
// side stream is current (between enter and leave).
struct Graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream side;
  std::optional<c10::cuda::CUDAStream> outer;

  explicit Graph(c10::DeviceIndex device) : side(c10::cuda::getStreamFromPool(false, device)) {}
};

}  // namespace
#endif

extern "C" {

int rr_cuda_graph_new(int device, void** out) {
  RR_GRAPH_GUARD({
#ifdef RR_WITH_CUDA
    *out = new Graph(static_cast<c10::DeviceIndex>(device));
#else
    (void)device;
    (void)out;
    throw std::runtime_error("this rr was built without CUDA headers: no CUDA graphs");
#endif
  })
}

void rr_cuda_graph_free(void* g) {
#ifdef RR_WITH_CUDA
  delete static_cast<Graph*>(g);
#else
  (void)g;
#endif
}

// Makes the side stream current, after the work already queued on the caller's stream is
// done (warm-up runs and the capture then see the inputs the caller wrote).
int rr_cuda_graph_enter_side_stream(void* g) {
  RR_GRAPH_GUARD({
#ifdef RR_WITH_CUDA
    auto* graph = static_cast<Graph*>(g);
    auto outer = c10::cuda::getCurrentCUDAStream(graph->side.device_index());
    outer.synchronize();
    graph->outer = outer;
    c10::cuda::setCurrentCUDAStream(graph->side);
#else
    (void)g;
    throw std::runtime_error("no CUDA graphs in this build");
#endif
  })
}

// Waits for the side stream and makes the caller's stream current again.
int rr_cuda_graph_leave_side_stream(void* g) {
  RR_GRAPH_GUARD({
#ifdef RR_WITH_CUDA
    auto* graph = static_cast<Graph*>(g);
    if (!graph->outer) throw std::runtime_error("the side stream was not entered");
    graph->side.synchronize();
    c10::cuda::setCurrentCUDAStream(*graph->outer);
    graph->outer.reset();
#else
    (void)g;
    throw std::runtime_error("no CUDA graphs in this build");
#endif
  })
}

// Kernels launched on the current (side) stream from here to capture_end are recorded, not
// run; their allocations come from the graph's private pool and stay valid while it lives.
int rr_cuda_graph_capture_begin(void* g) {
  RR_GRAPH_GUARD({
#ifdef RR_WITH_CUDA
    static_cast<Graph*>(g)->graph.capture_begin();
#else
    (void)g;
    throw std::runtime_error("no CUDA graphs in this build");
#endif
  })
}

int rr_cuda_graph_capture_end(void* g) {
  RR_GRAPH_GUARD({
#ifdef RR_WITH_CUDA
    static_cast<Graph*>(g)->graph.capture_end();
#else
    (void)g;
    throw std::runtime_error("no CUDA graphs in this build");
#endif
  })
}

// Runs the recorded kernels again on the current stream, reading and writing the same memory.
int rr_cuda_graph_replay(void* g) {
  RR_GRAPH_GUARD({
#ifdef RR_WITH_CUDA
    static_cast<Graph*>(g)->graph.replay();
#else
    (void)g;
    throw std::runtime_error("no CUDA graphs in this build");
#endif
  })
}

int rr_cuda_graph_built() {
#ifdef RR_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

}  // extern "C"
