// torch's c10d process groups for data-parallel training: a TCPStore rendezvous (rank 0 hosts
// it, as torchrun's MASTER_ADDR:MASTER_PORT) and ProcessGroupGloo (CPU tensors) or
// ProcessGroupNCCL (CUDA tensors, only when built with RR_WITH_NCCL). Same error rule as
// ext.cpp: C++ exceptions never cross FFI; every entry point returns 0 or -1 and keeps the
// message for rr_ext_last_error().
//
// Each rank also stamps `rr/alive/<rank>` in the store once a second from a background thread,
// so that a rank whose collective failed can name the peer that died or stopped (its stamp goes
// stale); a dead rank 0 takes the store with it, which names rank 0.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Backend.hpp>

#ifdef RR_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef RR_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace rr_ext {
void set_last_error(const std::string& msg);
}

namespace {

using Clock = std::chrono::system_clock;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

std::string alive_key(int rank) { return "rr/alive/" + std::to_string(rank); }

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank = 0;
  int world = 1;
  bool nccl = false;
  std::chrono::milliseconds timeout{0};
  std::thread heartbeat;
  std::mutex mutex;
  std::condition_variable stop_cv;
  bool stopping = false;

  void stamp() {
    auto ms = std::to_string(now_ms());
    store->set(alive_key(rank), std::vector<uint8_t>(ms.begin(), ms.end()));
  }

  void start_heartbeat() {
    stamp();
    heartbeat = std::thread([this] {
      std::unique_lock<std::mutex> lock(mutex);
      while (!stop_cv.wait_for(lock, std::chrono::seconds(1), [this] { return stopping; })) {
        try {
          stamp();
        } catch (...) {
          return;  // the store is gone (rank 0 exited): nothing left to stamp
        }
      }
    });
  }

  ~Group() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    stop_cv.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }

  void wait(c10::intrusive_ptr<c10d::Work> work) {
    if (!work->wait(timeout)) throw std::runtime_error("timed out");
  }
};

#define RR_DIST_GUARD(body)                       \
  try {                                           \
    body;                                         \
    return 0;                                     \
  } catch (const std::exception& e) {             \
    rr_ext::set_last_error(e.what());             \
    return -1;                                    \
  }

c10::intrusive_ptr<c10d::Backend> make_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                               int rank, int world, bool nccl,
                                               std::chrono::milliseconds timeout) {
  if (nccl) {
#ifdef RR_WITH_NCCL
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
#else
    throw std::runtime_error(
        "this rr was built without NCCL (CUDA headers were missing at build time)");
#endif
  }
#ifdef RR_WITH_GLOO
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  options->threads = 1;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
#else
  throw std::runtime_error(
      "this rr was built without Gloo (its headers were missing at build time; run `cargo "
      "xtask setup`)");
#endif
}

// Every tensor flattened into one buffer, all-reduced with one call, copied back.
void all_reduce_flat(Group& g, std::vector<at::Tensor>& tensors, bool average) {
  std::vector<at::Tensor> flat_parts;
  flat_parts.reserve(tensors.size());
  for (auto& t : tensors) flat_parts.push_back(t.reshape({-1}));
  std::vector<at::Tensor> bucket{tensors.size() == 1 ? flat_parts[0].contiguous()
                                                     : at::cat(flat_parts)};
  c10d::AllreduceOptions opts;
  // Gloo has no AVG: sum, then divide.
  bool divide = average && !g.nccl;
  opts.reduceOp = (average && g.nccl) ? c10d::ReduceOp::AVG : c10d::ReduceOp::SUM;
  g.wait(g.backend->allreduce(bucket, opts));
  if (divide) bucket[0].div_(g.world);
  int64_t offset = 0;
  for (auto& t : tensors) {
    auto n = t.numel();
    auto part = bucket[0].narrow(0, offset, n).view(t.sizes());
    if (!part.is_same(t)) t.copy_(part);
    offset += n;
  }
}

}  // namespace

extern "C" {

int rr_pg_new(const char* master_addr, int port, int rank, int world, int64_t timeout_ms,
              int nccl, void** out) {
  RR_DIST_GUARD({
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions store_opts;
    store_opts.port = static_cast<std::uint16_t>(port);
    store_opts.isServer = rank == 0;
    store_opts.numWorkers = world;
    store_opts.timeout = timeout;
    auto g = std::make_unique<Group>();
    g->store = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), store_opts);
    g->rank = rank;
    g->world = world;
    g->nccl = nccl != 0;
    g->timeout = timeout;
    g->backend = make_backend(g->store, rank, world, g->nccl, timeout);
    g->start_heartbeat();
    *out = g.release();
  })
}

void rr_pg_free(void* pg) {
  auto* g = static_cast<Group*>(pg);
  try {
#ifdef RR_WITH_NCCL
    if (g->nccl) c10::static_intrusive_pointer_cast<c10d::ProcessGroupNCCL>(g->backend)->shutdown();
#endif
  } catch (...) {
  }
  delete g;
}

int rr_pg_all_reduce(void* pg, at::Tensor** tensors, int64_t n, int average) {
  RR_DIST_GUARD({
    std::vector<at::Tensor> list;
    for (int64_t i = 0; i < n; ++i) list.push_back(*tensors[i]);
    all_reduce_flat(*static_cast<Group*>(pg), list, average != 0);
  })
}

int rr_pg_broadcast(void* pg, at::Tensor* tensor, int root) {
  RR_DIST_GUARD({
    auto* g = static_cast<Group*>(pg);
    std::vector<at::Tensor> list{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    g->wait(g->backend->broadcast(list, opts));
  })
}

// `outputs` holds `world` tensors shaped like `input`; rank i's input lands in outputs[i].
int rr_pg_all_gather(void* pg, at::Tensor* input, at::Tensor** outputs) {
  RR_DIST_GUARD({
    auto* g = static_cast<Group*>(pg);
    std::vector<at::Tensor> inputs{*input};
    std::vector<std::vector<at::Tensor>> gathered(1);
    for (int i = 0; i < g->world; ++i) gathered[0].push_back(*outputs[i]);
    g->wait(g->backend->allgather(gathered, inputs));
  })
}

int rr_pg_barrier(void* pg) {
  RR_DIST_GUARD({
    auto* g = static_cast<Group*>(pg);
    g->wait(g->backend->barrier());
  })
}

// After a failed collective: waits `grace_ms` (longer than the heartbeat period), then writes 1
// into lost[r] for every rank whose stamp is older than that. If the store itself is
// unreachable, rank 0 (its host) is the lost one.
int rr_pg_lost_ranks(void* pg, int64_t grace_ms, int* lost) {
  RR_DIST_GUARD({
    auto* g = static_cast<Group*>(pg);
    std::this_thread::sleep_for(std::chrono::milliseconds(grace_ms));
    int64_t now = now_ms();
    for (int r = 0; r < g->world; ++r) {
      lost[r] = 0;
      if (r == g->rank) continue;
      try {
        if (!g->store->check({alive_key(r)})) {
          lost[r] = 1;
          continue;
        }
        auto bytes = g->store->get(alive_key(r));
        int64_t stamp = std::stoll(std::string(bytes.begin(), bytes.end()));
        lost[r] = now - stamp > grace_ms ? 1 : 0;
      } catch (...) {
        for (int q = 0; q < g->world; ++q) lost[q] = q == 0 ? 1 : 0;
        return 0;
      }
    }
  })
}

int rr_pg_built_with(int* gloo, int* nccl) {
#ifdef RR_WITH_GLOO
  *gloo = 1;
#else
  *gloo = 0;
#endif
#ifdef RR_WITH_NCCL
  *nccl = 1;
#else
  *nccl = 0;
#endif
  return 0;
}

}  // extern "C"
