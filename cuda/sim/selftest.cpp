// Kernels that check the simulator: its tensor-core model against plain matrix products (with
// the kernels' own fragment maps), a data race that the reversed schedule exposes, and the
// faults and launch errors it must report.
#include <string>

#include "mpsntk/cuda/check.cuh"
#include "mpsntk/mma_tile.hpp"

namespace mpsntk::cuda::sim::selftest {
namespace {

template <class Mma>
void mma_op(double* c, const double* a, const double* b) {
  if constexpr (Mma::M == 8)
    mma_m8n8k4_f64(c, a, b);
  else
    mma_m16n8k8_f64(c, a, b);
}
template <class Mma>
void mma_op(float* c, const float* a, const float* b) {
  mma_m16n8k8_tf32(c, a, b);
}

template <class T, class Mma>
__global__ void mma_kernel(const T* A, const T* B, T* C) {
  const int lane = threadIdx.x;
  T a[Mma::A_REGS], b[Mma::B_REGS], c[Mma::C_REGS];
  for (int r = 0; r < Mma::A_REGS; ++r) a[r] = A[Mma::a_row(lane, r) * Mma::K + Mma::a_k(lane, r)];
  for (int r = 0; r < Mma::B_REGS; ++r) b[r] = B[Mma::b_k(lane, r) * Mma::N + Mma::b_col(lane, r)];
  for (int r = 0; r < Mma::C_REGS; ++r) c[r] = C[Mma::c_row(lane, r) * Mma::N + Mma::c_col(lane, r)];
  mma_op<Mma>(c, a, b);
  __syncthreads();  // every lane has read C before any writes D
  for (int r = 0; r < Mma::C_REGS; ++r) C[Mma::c_row(lane, r) * Mma::N + Mma::c_col(lane, r)] = c[r];
}

__global__ void shared_exchange_kernel(int tag, bool sync, int* out) {
  __shared__ int s[256];
  s[threadIdx.x] = tag * 1000 + static_cast<int>(threadIdx.x);
  if (sync) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

__global__ void divergent_kernel() {
  if (threadIdx.x < 32) __syncthreads();
}

__global__ void deadlock_kernel() {
  double c[2] = {0, 0}, a[1] = {1}, b[1] = {1};
  if (threadIdx.x % 32 < 16) __syncthreads();
  mma_m8n8k4_f64(c, a, b);
}

__global__ void bounds_kernel() {
  __shared__ volatile int s[64];
  s[threadIdx.x] = 1;  // launched with 65 threads
  (void)s;
}

__global__ void empty_kernel() {}

__global__ void async_exchange_kernel(const int* src, bool wait, bool sync, int* out) {
  int* s = static_cast<int*>(dynamic_shared());
  const unsigned t = threadIdx.x;
  cp_async(s + t, src + t, sizeof(int), true);
  cp_async_commit();
  if (wait) cp_async_wait(0);
  if (sync) __syncthreads();
  out[t] = s[(t + 1) % blockDim.x];
  cp_async_wait(0);  // a thread must not exit with copies in flight
}

__global__ void async_fault_kernel(bool misaligned) {
  char* s = static_cast<char*>(dynamic_shared());
  static const double src[2] = {1, 2};
  cp_async(s + (misaligned ? 4 : 0), src, sizeof(double), true);
  cp_async_commit();  // and exits without waiting
}

}  // namespace

void mma(const std::string& kind, const void* a, const void* b, void* c) {
  MPSNTK_EXPECTS(kind == "f64" || kind == "f64_sm90" || kind == "tf32", "kind must be 'f64', 'f64_sm90' or 'tf32'");
  if (kind == "f64")
    cuda::launch("mma_kernel", 1, 32, nullptr, mma_kernel<double, tile::MmaF64>, static_cast<const double*>(a),
                 static_cast<const double*>(b), static_cast<double*>(c));
  else if (kind == "f64_sm90")
    cuda::launch("mma_kernel", 1, 32, nullptr, mma_kernel<double, tile::MmaF64Sm90>, static_cast<const double*>(a),
                 static_cast<const double*>(b), static_cast<double*>(c));
  else
    cuda::launch("mma_kernel", 1, 32, nullptr, mma_kernel<float, tile::MmaTf32>, static_cast<const float*>(a),
                 static_cast<const float*>(b), static_cast<float*>(c));
}

void shared_exchange(int tag, bool sync, int* out) {
  cuda::launch("shared_exchange_kernel", 1, 256, nullptr, shared_exchange_kernel, tag, sync, out);
}

void fault(const std::string& kind) {
  MPSNTK_EXPECTS(kind == "divergent" || kind == "deadlock" || kind == "bounds" || kind == "async_pending" ||
                     kind == "async_misaligned",
                 "kind must be 'divergent', 'deadlock', 'bounds', 'async_pending' or 'async_misaligned'");
  if (kind == "divergent")
    cuda::launch("divergent_kernel", 2, 64, nullptr, divergent_kernel);
  else if (kind == "deadlock")
    cuda::launch("deadlock_kernel", 1, 64, nullptr, deadlock_kernel);
  else if (kind == "bounds")
    cuda::launch("bounds_kernel", 1, 65, nullptr, bounds_kernel);
  else
    cuda::launch("async_fault_kernel", 1, 32, 64, nullptr, async_fault_kernel, kind == "async_misaligned");
}

void empty_launch(dim3 grid, dim3 block) { cuda::launch("empty_kernel", grid, block, nullptr, empty_kernel); }

void async_exchange(const int* src, bool wait, bool sync, int* out) {
  cuda::launch("async_exchange_kernel", 1, 256, 256 * sizeof(int), nullptr, async_exchange_kernel, src, wait, sync,
               out);
}

}  // namespace mpsntk::cuda::sim::selftest
