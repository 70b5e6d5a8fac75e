// Per-site Jacobian factors of a batch on the device: the layout of mpsntk/factor_layout.hpp,
// shared with the CPU engine's cpp/src/detail/factors.hpp.  A prepared batch is a block of device
// memory whose layout (plan_factors) is a function of the chain and the number of samples, so its
// pointers and descriptors are derived again from that block for every product.
#pragma once

#include <cmath>
#include <vector>

#include "mpsntk/cuda/environments.cuh"
#include "mpsntk/factor_layout.hpp"

namespace mpsntk::cuda {

/// E_j^T[a][b] = sum_beta P_j[beta][a] S_{j+1}[beta][b] for every (x, l) row (periodic chains).
template <class T>
__global__ void open_env_kernel(const T* P, const double* logP, index_t mp, const T* S, const double* logS, index_t ms,
                                index_t h, index_t Dl, index_t Dr, index_t n, T* E, double* logE) {
  const index_t m = mp > ms ? mp : ms;
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (i >= n * m * Dl * Dr) return;
  const index_t row = i / (Dl * Dr), e = i % (Dl * Dr), a = e / Dr, b = e % Dr;
  const index_t x = row / m, l = row % m;
  const index_t rp = factor_row(x, mp, l), rs = factor_row(x, ms, l);
  T v = 0;
  for (index_t beta = 0; beta < h; ++beta) v += P[(rp * h + beta) * Dl + a] * S[(rs * h + beta) * Dr + b];
  E[i] = v;
  if (e == 0) logE[row] = logP[rp] + logS[rs];
}

/// Environments and factors of one batch, laid out in device memory.
template <class T>
struct Factors {
  Environments<T> env;
  std::vector<SiteFactor<T>> host_sites;  // the descriptors, on the host
  SiteFactor<T>* sites = nullptr;         // and their device copy
  std::vector<T*> open_env;
  std::vector<double*> open_log;
};

/// The layout of a batch's factors in the arena, with their descriptors (pointers into it).
template <class T>
Factors<T> plan_factors(const ChainView<T>& ch, index_t n, Arena& arena) {
  Factors<T> F;
  F.env = plan_environments<T>(ch, n, true, true, arena);
  const index_t N = ch.n_sites;
  F.host_sites.resize(N);
  for (index_t j = 0; j < N; ++j) {
    SiteFactor<T>& s = F.host_sites[j];
    s = site_factor_shape(ch, j);
    if (ch.boundary == Boundary::open) {
      s.a = F.env.left[j], s.log_a = F.env.left_log[j];
      s.b = F.env.right[j + 1], s.log_b = F.env.right_log[j + 1];
    } else {
      F.open_env.push_back(arena.take<T>(n * s.mult_a * s.da));
      F.open_log.push_back(arena.take<double>(n * s.mult_a));
      s.a = F.open_env[j], s.log_a = F.open_log[j];
    }
  }
  F.sites = arena.take<SiteFactor<T>>(N);
  return F;
}

/// Sweep the environments of phi into F (planned by plan_factors), build the periodic chains'
/// open environments, and copy the descriptors to the device.
template <class T>
void compute_factors(const ChainView<T>& ch, const FeatureView<T>& phi, Factors<T>& F, cudaStream_t stream) {
  compute_environments<T>(ch, phi, F.env, stream);
  const index_t N = ch.n_sites, n = F.env.n, h = F.env.h;
  for (index_t j = 0; j < N && ch.boundary == Boundary::periodic; ++j) {
    const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
    const index_t mp = ch.left_mult(j), ms = ch.right_mult(j + 1);
    launch("open_env_kernel", blocks_for(n * std::max(mp, ms) * Dl * Dr, 256), 256, stream, open_env_kernel<T>,
           F.env.left[j], F.env.left_log[j], mp, F.env.right[j + 1], F.env.right_log[j + 1], ms, h, Dl, Dr, n,
           F.open_env[j], F.open_log[j]);
  }
  // From pageable memory the copy is staged before cudaMemcpyAsync returns, so host_sites may
  // change afterwards; the kernels that read F.sites follow on the same stream.
  MPSNTK_CUDA_TRY(
      cudaMemcpyAsync(F.sites, F.host_sites.data(), N * sizeof(SiteFactor<T>), cudaMemcpyHostToDevice, stream));
}

/// The factors of a prepared batch, found again in its memory.
template <class T>
Factors<T> factors_of(const Batch<T>& b) {
  Arena arena{static_cast<char*>(b.memory.data), 0, b.memory.bytes};
  return plan_factors<T>(b.chain, b.phi.n_samples, arena);
}

/// The batches of a product: prepared (with another one: for the same model).
template <class T>
void check_batches(const Batch<T>& b1, const Batch<T>* b2) {
  MPSNTK_EXPECTS(b1.memory.data && (!b2 || b2->memory.data), "batch: not a prepared batch");
  if (b2) check_same_model(b1.chain, b2->chain);
}

}  // namespace mpsntk::cuda
