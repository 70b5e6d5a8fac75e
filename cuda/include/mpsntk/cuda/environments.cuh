// Environment sweeps on the device: the same layout and maths as the CPU engine's
// cpp/src/detail/environments.hpp, every transfer step one tiled GEMM of micro.cuh.
#pragma once

#include <tuple>
#include <vector>

#include "mpsntk/cuda/micro.cuh"

namespace mpsntk::cuda {

/// Operands of a Khatri-Rao x matrix GEMM (rows r, depths k = (s, i), columns (l', o)):
///   A(r, k) = phi_s(x) v[r][i], x = r / per_x (the Khatri-Rao rows; row r of v at r * v_stride),
///   B(k, (l', o)) = c T[l', s, a, b] with (a, b) = (i, o) (to_right) or (o, i),
/// T of shape (., d, Dl, Dr).  An environment step (v: the environments, T: the core) and the
/// Jacobian-vector product (v: the left factors, T: the tangent) are both this GEMM.  A thread's
/// cursor keeps, per slot, where its row of A and its column of B start, and per chunk its depth
/// (s, i): no index arithmetic per element beyond one offset.
template <class T>
struct KhatriRaoOperands {
  const T* phi;
  index_t n_sites, d, site, per_x;
  const T* v;
  index_t din, v_stride;
  const T* core;
  T c;  // environment steps: the mantissa of the site's scale (tile::split_scale)
  index_t Dl, Dr, dout;
  bool to_right;
  index_t M, N;
  struct Cursor {
    const KhatriRaoOperands& op;
    const T* phi_row[kSlots];  // nullptr: row outside the data
    const T* v_row[kSlots];
    const T* core_col[kSlots];       // nullptr: column outside the data
    index_t s = 0, i = 0, b_at = 0;  // depth (s, i) of this thread in the chunk; its B offset
    bool in_depth = false;
    __device__ int begin(int c) {
      const index_t k0 = static_cast<index_t>(c) * kDepth, k = k0 + slot_depth(), K = op.d * op.din;
      const int din = static_cast<int>(op.din);  // 32-bit division: the depths are < d * din
      s = static_cast<int>(k) / din, i = static_cast<int>(k) % din;
      b_at = s * op.Dl * op.Dr + (op.to_right ? i * op.Dr : i);
      in_depth = k < K;
      return K - k0 < kDepth ? static_cast<int>(K - k0) : kDepth;
    }
    __device__ void load(int m, T& a, T& b) const {
      a = (in_depth && phi_row[m]) ? phi_row[m][s] * v_row[m][i] : T(0);
      b = (in_depth && core_col[m]) ? op.c * core_col[m][b_at] : T(0);
    }
  };
  __device__ int chunks() const { return cuda::chunks(d * din); }
  __device__ Cursor cursor(index_t r0, index_t c0) const {
    Cursor cur{*this};
#pragma unroll
    for (int m = 0; m < kSlots; ++m) {
      const index_t r = r0 + slot_row(m), col = c0 + slot_row(m), l = col / dout, o = col % dout;
      cur.phi_row[m] = r < M ? phi + ((r / per_x) * n_sites + site) * d : nullptr;
      cur.v_row[m] = r < M ? v + r * v_stride : nullptr;
      cur.core_col[m] = col < N ? core + l * d * Dl * Dr + (to_right ? o : o * Dr) : nullptr;
    }
    return cur;
  }
};

/// Environment rows (x, alpha) x columns (l, o) -> out[x][l][alpha][o] (fan = 1: out[r][o]).
/// normalise: the rows are whole normalisation groups (one channel, no fan-out, N <= kTile), and
/// the GEMM normalises them itself, with log_out[r] = log_in[r] + log_rest + the factor's
/// exponent; otherwise fan_logs_kernel and normalise_kernel follow the GEMM.  log_rest is the
/// part of the site's scale left out of the core (tile::split_scale).
template <class T>
struct EnvStore {
  T* out;
  index_t h, fan, dout;
  bool normalise;
  const double* log_in;
  double* log_out;
  double log_rest;
  __device__ double row_factor(index_t r, double maxabs) const {
    log_out[r] = log_in[r] + log_rest;
    return tile::pow2_normaliser<T>(maxabs, log_out + r);
  }
  __device__ void operator()(index_t r, index_t col, T v) const {
    const index_t x = r / h, alpha = r % h, l = col / dout, o = col % dout;
    out[((x * fan + l) * h + alpha) * dout + o] = v;
  }
};

template <class T>
__global__ void identity_slot_kernel(T* v, double* lg, index_t n, index_t h) {
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (i < n * h * h) {
    const index_t e = i % (h * h);
    v[i] = (e / h == e % h) ? T(1) : T(0);
  }
  if (i < n) lg[i] = 0.0;
}

template <class T>
__global__ void normalise_kernel(T* v, double* lg, index_t group) {
  __shared__ double red[128];
  T* p = v + static_cast<index_t>(blockIdx.x) * group;
  double m = 0;
  for (index_t i = threadIdx.x; i < group; i += blockDim.x) m = fmax(m, fabs(static_cast<double>(p[i])));
  red[threadIdx.x] = m;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) red[threadIdx.x] = fmax(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  __shared__ double factor;
  if (threadIdx.x == 0) factor = tile::pow2_normaliser<T>(red[0], lg + blockIdx.x);
  __syncthreads();
  if (factor != 1.0)
    for (index_t i = threadIdx.x; i < group; i += blockDim.x) p[i] *= static_cast<T>(factor);
}

__global__ inline void fan_logs_kernel(const double* in, double* out, index_t n, index_t mult_in, index_t fan,
                                       double log_rest) {
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  const index_t mult_out = mult_in * fan;
  if (i < n * mult_out) out[i] = in[(i / mult_out) * mult_in + (i % mult_out) / fan] + log_rest;
}

/// The environments of a batch: slot pointers into device memory, in the layout of the CPU
/// engine's Environments (without its padding).
template <class T>
struct Environments {
  index_t n = 0, h = 1;
  std::vector<T*> left, right;
  std::vector<double*> left_log, right_log;
};

template <class T>
Environments<T> plan_environments(const ChainView<T>& ch, index_t n, bool want_left, bool want_right, Arena& arena) {
  Environments<T> env;
  const index_t N = ch.n_sites, h = ch.channels();
  env.n = n;
  env.h = h;
  if (want_left) {
    env.left.resize(N + 1), env.left_log.resize(N + 1);
    for (index_t s = 0; s <= N; ++s) {
      env.left[s] = arena.take<T>(n * ch.left_mult(s) * h * ch.bond[s]);
      env.left_log[s] = arena.take<double>(n * ch.left_mult(s));
    }
  }
  if (want_right) {
    env.right.resize(N + 1), env.right_log.resize(N + 1);
    for (index_t s = 1; s <= N; ++s) {
      env.right[s] = arena.take<T>(n * ch.right_mult(s) * h * ch.bond[s]);
      env.right_log[s] = arena.take<double>(n * ch.right_mult(s));
    }
  }
  return env;
}

/// One environment step: site j's core applied to the environments vin (mult_in per sample, h
/// channels) towards the right or the left, into vout.
template <class T>
struct TransferStep {
  index_t j;
  bool to_right;
  index_t mult_in;
  const T* vin;
  const double* log_in;
  T* vout;
  double* log_out;
};

template <class T>
using TransferTask = GemmTask<KhatriRaoOperands<T>, EnvStore<T>>;

/// One transfer step through a site as a GEMM task (the CPU engine's transfer_rows).
template <class T>
TransferTask<T> transfer_rows(const ChainView<T>& ch, const FeatureView<T>& phi, index_t n, index_t h,
                              const TransferStep<T>& s) {
  const index_t j = s.j, d = ch.phys_dim, Dl = ch.bond[j], Dr = ch.bond[j + 1];
  const index_t din = s.to_right ? Dl : Dr, dout = s.to_right ? Dr : Dl;
  const index_t fan = (j == ch.output_site) ? ch.n_outputs : 1;
  TransferTask<T> t{};
  t.M = n * s.mult_in * h, t.N = fan * dout;
  KhatriRaoOperands<T>& op = t.op;
  op.phi = phi.data, op.n_sites = phi.n_sites, op.d = d, op.site = j, op.per_x = s.mult_in * h;
  op.v = s.vin, op.din = din, op.v_stride = din;
  double log_rest = 0;
  op.core = ch.cores[j], op.c = static_cast<T>(tile::split_scale(ch.scales[j], &log_rest));
  op.Dl = Dl, op.Dr = Dr, op.dout = dout;
  op.to_right = s.to_right, op.M = t.M, op.N = t.N;
  // fan = 1 keeps rows as they are: h = 1, fan = 1 stores out[r][o].
  t.st = EnvStore<T>{s.vout,   fan == 1 ? 1 : h, fan,     dout, h == 1 && fan == 1 && dout <= kTile,
                     s.log_in, s.log_out,        log_rest};
  return t;
}

/// The log-scales and normalisation of a step whose GEMM did not normalise its rows.
template <class T>
void finish_step(const TransferTask<T>& t, index_t n, index_t h, cudaStream_t stream) {
  if (t.st.normalise) return;
  const index_t mult_in = t.op.per_x / h, fan = t.st.fan;
  launch("fan_logs_kernel", blocks_for(n * mult_in * fan, 256), 256, stream, fan_logs_kernel, t.st.log_in, t.st.log_out,
         n, mult_in, fan, t.st.log_rest);
  launch("normalise_kernel", static_cast<unsigned>(n * mult_in * fan), 128, stream, normalise_kernel<T>, t.st.out,
         t.st.log_out, h * t.st.dout);
}

/// All left and/or right environments: step i of the left sweep and step i of the right sweep
/// (independent of each other) share one GEMM launch.
template <class T>
void compute_environments(const ChainView<T>& ch, const FeatureView<T>& phi, Environments<T>& env,
                          cudaStream_t stream) {
  const index_t N = ch.n_sites, n = env.n, h = env.h;
  const bool left = !env.left.empty(), right = !env.right.empty();
  if (left)
    launch("identity_slot_kernel", blocks_for(n * h * h, 256), 256, stream, identity_slot_kernel<T>, env.left[0],
           env.left_log[0], n, h);
  if (right)
    launch("identity_slot_kernel", blocks_for(n * h * h, 256), 256, stream, identity_slot_kernel<T>, env.right[N],
           env.right_log[N], n, h);
  auto left_step = [&](index_t j) {
    return TransferStep<T>{
        j, true, ch.left_mult(j), env.left[j], env.left_log[j], env.left[j + 1], env.left_log[j + 1]};
  };
  auto right_step = [&](index_t j) {
    return TransferStep<T>{
        j, false, ch.right_mult(j + 1), env.right[j + 1], env.right_log[j + 1], env.right[j], env.right_log[j]};
  };
  auto run = [&](const auto&... steps) {
    const auto tasks = std::make_tuple(transfer_rows(ch, phi, n, h, steps)...);
    std::apply(
        [&](const auto&... t) {
          gemm<T>(stream, t...);
          (finish_step(t, n, h, stream), ...);
        },
        tasks);
  };
  for (index_t i = 0; i < N; ++i) {
    const bool l = left, r = right && i < N - 1;  // the right sweep ends at site 1
    if (l && r)
      run(left_step(i), right_step(N - 1 - i));
    else if (l)
      run(left_step(i));
    else if (r)
      run(right_step(N - 1 - i));
  }
}

}  // namespace mpsntk::cuda
