// What tch 0.24 does not bind, over the wheel's own headers (no CUDA headers needed).
// Tensors cross the boundary as `at::Tensor*` (tch's C_tensor); C++ exceptions never do:
// every entry point returns 0 or -1 and keeps the message for rr_ext_last_error().
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <string>
#include <vector>

namespace {
thread_local std::string last_error;

std::vector<at::Tensor> list(at::Tensor** ptrs, int64_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) out.push_back(*ptrs[i]);
  return out;
}
}  // namespace

// dist.cpp reports through the same thread-local message.
namespace rr_ext {
void set_last_error(const std::string& msg) { last_error = msg; }
}  // namespace rr_ext

#define RR_GUARD(body)                          \
  try {                                         \
    body;                                       \
    return 0;                                   \
  } catch (const std::exception& e) {           \
    last_error = e.what();                      \
    return -1;                                  \
  }

extern "C" {

const char* rr_ext_last_error() { return last_error.c_str(); }

// torch.optim.AdamW(fused=True)'s kernel. The caller increments `steps` first, as the Python
// optimizer does (the kernel reads but does not advance them). `found_inf` (nullable): a 1-element
// fp32 tensor on the parameters' device; where it holds 1 the kernel leaves every tensor as it
// was, as under a GradScaler, and the flag is read by the kernel, never by the host.
int rr_ext_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                       at::Tensor** exp_avg_sqs, at::Tensor** steps, int64_t n, double lr,
                       double beta1, double beta2, double weight_decay, double eps,
                       at::Tensor* found_inf) {
  RR_GUARD({
    std::optional<at::Tensor> inf;
    if (found_inf != nullptr) inf = *found_inf;
    at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                      {}, list(steps, n), lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt, inf);
  })
}

// The global L2 norm of a list of tensors, in fp32, without leaving the device.
int rr_ext_global_norm(at::Tensor** tensors, int64_t n, at::Tensor** out) {
  RR_GUARD({
    auto norms = at::_foreach_norm(list(tensors, n), 2, at::kFloat);
    *out = new at::Tensor(at::stack(norms).norm());
  })
}

// TF32 for fp32 matmuls and convolutions on Ampere and later (a no-op elsewhere).
int rr_ext_set_tf32(int enabled) {
  RR_GUARD({
    at::globalContext().setAllowTF32CuBLAS(enabled != 0);
    at::globalContext().setAllowTF32CuDNN(enabled != 0);
  })
}

// The CUDA caching allocator's counters for one device: bytes allocated now, the peak since
// the last reset, and bytes reserved from the driver.
int rr_ext_cuda_memory(int device, int64_t* allocated, int64_t* peak, int64_t* reserved) {
  RR_GUARD({
    auto* alloc = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto stats = alloc->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].current;
    *peak = stats.allocated_bytes[all].peak;
    *reserved = stats.reserved_bytes[all].current;
  })
}

int rr_ext_cuda_reset_peak(int device) {
  RR_GUARD({
    c10::getDeviceAllocator(c10::DeviceType::CUDA)
        ->resetPeakStats(static_cast<c10::DeviceIndex>(device));
  })
}

}  // extern "C"
