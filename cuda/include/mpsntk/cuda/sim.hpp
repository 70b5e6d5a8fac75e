/// @file sim.hpp
/// @brief SIMT simulator: the part of the CUDA programming model that the engine's kernels use,
/// for a host C++ compiler, so that the same kernel sources (cuda/src/*.cu) run on the CPU.
///
/// Every simulated thread is a fiber with its own stack; a block's fibers run one at a time
/// until they finish or wait at a barrier (__syncthreads, or the warp-wide exchange of an
/// mma.sync), so barriers have their real meaning and a divergent barrier is reported as a
/// deadlock instead of hanging.  Blocks run one after another, which is what makes
/// `__shared__` (a thread_local static here) block-shared.  The tensor-core instructions are
/// modelled from the PTX ISA's fragment tables (written out in sim.cpp, independently of
/// mpsntk/mma_tile.hpp, which the kernels use to place their operands).  The order in which
/// blocks and threads run can be reversed or shuffled (set_schedule): a kernel without data
/// races gives bit-identical results under every order.  Fixed-size arrays (shared memory,
/// per-thread registers) are bounds-checked where the compiler supports it (-fsanitize=bounds,
/// trapping).
///
/// Asynchronous copies (cp.async) land late or early, as the hardware may: under the forward
/// schedule when the issuing thread waits for their group, under the reverse schedule at once,
/// under the shuffled one either way at random, so a read before the wait (or without the
/// barrier that publishes other threads' copies) sees stale data.  Dynamic shared memory starts
/// every block as 0xFF bytes (NaN), so reads of unwritten bytes show.
///
/// Not modelled: timing, memory spaces (device pointers are host pointers), streams (work runs
/// when launched), and the hardware's summation order inside an mma.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "mpsntk/cuda/engine.hpp"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace mpsntk::cuda::sim {

/// Built-in variables of the running simulated thread.
struct ThreadContext {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
const ThreadContext& context();

/// __syncthreads(): every live thread of the block arrives before any continues.
void syncthreads();

/// mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64: c += A B over the warp's fragments.
void mma_m8n8k4_f64(double* c, const double* a, const double* b);
/// mma.sync.aligned.m16n8k8.row.col.f64.f64.f64.f64 (sm_90).
void mma_m16n8k8_f64(double* c, const double* a, const double* b);
/// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 with cvt.rna.tf32.f32 operands.
void mma_m16n8k8_tf32(float* c, const float* a, const float* b);

/// cp.async.ca.shared.global of `bytes` (4, 8 or 16) from src to dst, or zeros when !valid
/// (src-size 0: src is not read); both addresses aligned to `bytes`.
void cp_async(void* dst, const void* src, std::size_t bytes, bool valid);
/// cp.async.commit_group: this thread's copies since the last commit form a group.
void cp_async_commit();
/// cp.async.wait_group: this thread's groups but the `pending` most recent ones have landed.
void cp_async_wait(int pending);
/// The running block's dynamic shared memory (the launch's shared_bytes, 16-byte aligned).
void* dynamic_shared();

/// Run body() as every thread of every block of the grid, with shared_bytes of dynamic shared
/// memory; throws CudaError ("where: name: ...") like a failed launch (invalid configuration) or
/// a failed kernel (deadlock at a barrier, malformed mma, copies never waited for).  The stream
/// is only recorded (see streams_used).
void launch(const char* name, const std::string& where, dim3 grid, dim3 block, std::size_t shared_bytes,
            const void* stream, const std::function<void()>& body);

/// The distinct stream handles that launches and copies were queued on since the last call
/// (per host thread), so that tests can check which stream the engine uses.
std::vector<std::uintptr_t> streams_used();
void record_stream(const void* stream);
/// Kernel launches since the last call (per host thread), counted by kernel name, so that
/// tests can check how many launches a computation takes.
std::map<std::string, int> launches_made();

enum class Schedule { forward, reverse, shuffled };
/// Order in which blocks, and threads within a block, are run (per host thread); `shuffled`
/// draws a fresh random order for every launch from a generator seeded here.  The schedule also
/// decides when cp.async copies land (see above).
void set_schedule(Schedule s, std::uint64_t seed = 0);

/// The architecture of the code the simulated sm_90 card runs (image_arch(); 90 by default): 80
/// stands for a build whose newest code for it is compute_80 PTX.
void set_image_arch(int arch);

/// Kernels that check the simulator itself (cuda/sim/selftest.cpp).
namespace selftest {
/// One warp's mma.sync on row-major A (M x K), B (K x N), C (M x N), fragments loaded with the
/// maps of mpsntk/mma_tile.hpp; returns D in C.  kind: "f64" (m8n8k4), "f64_sm90" (m16n8k8) or
/// "tf32" (m16n8k8).
void mma(const std::string& kind, const void* a, const void* b, void* c);
/// 256 threads write s[t] = tag * 1000 + t to shared memory and read s[(t + 1) % 256] into
/// out[t], with or without the __syncthreads() in between (without it: a data race).
void shared_exchange(int tag, bool sync, int* out);
/// Kernels that must fail: "divergent" (a barrier only some threads reach), "deadlock" (lanes
/// waiting at __syncthreads() and in mma.sync at once), "async_pending" (threads that exit
/// with cp.async copies never waited for), "async_misaligned" (an 8-byte cp.async to an address
/// that is not a multiple of 8), "bounds" (a shared-memory index past the end: the simulator is
/// compiled with array-bounds traps, so this kills the process).
void fault(const std::string& kind);
/// An empty kernel on the given launch configuration.
void empty_launch(dim3 grid, dim3 block);
/// 256 threads copy src[t] into dynamic shared memory with cp.async, then (each optionally)
/// wait for the copy and __syncthreads(), and read the copy of thread (t + 1) % 256 into out[t]:
/// without the wait or the barrier, a data race.
void async_exchange(const int* src, bool wait, bool sync, int* out);
}  // namespace selftest

}  // namespace mpsntk::cuda::sim

#define threadIdx (::mpsntk::cuda::sim::context().thread_idx)
#define blockIdx (::mpsntk::cuda::sim::context().block_idx)
#define blockDim (::mpsntk::cuda::sim::context().block_dim)
#define gridDim (::mpsntk::cuda::sim::context().grid_dim)
#define __syncthreads() ::mpsntk::cuda::sim::syncthreads()
template <class T>
inline T __ldg(const T* p) {  // read-only cache load: a plain load here
  return *p;
}

// ---- the runtime API calls the engine's host code makes (memory is host memory here)
using cudaStream_t = struct CUstream_sim*;
enum cudaError_t { cudaSuccess = 0 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToDevice = 3 };
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind, cudaStream_t stream) {
  ::mpsntk::cuda::sim::record_stream(stream);
  if (bytes) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75 };
inline cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
/// The simulated device is an sm_90 part: every instruction the kernels use exists on it.
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = 9;
  return cudaSuccess;
}
inline const char* cudaGetErrorName(cudaError_t) { return "cudaSuccess"; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }
