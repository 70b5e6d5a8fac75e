// Forward pass and Jacobian products on the device: the same factors as the CPU engine
// (cpp/src/detail/grad.hpp), from prepared batches, with every contraction a tiled GEMM of
// gemm_kernel.
#include "mpsntk/cuda/factors.cuh"

namespace mpsntk::cuda {
namespace {

/// f from the last left slot (the CPU engine's trace_last_slot).
template <class T>
__global__ void trace_kernel(const T* v, const double* lg, index_t n, index_t C, index_t m, index_t h, T* mant,
                             double* log_out) {
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (i >= n * C) return;
  const index_t x = i / C, l = i % C, r = factor_row(x, m, l);
  T f = 0;
  for (index_t a = 0; a < h; ++a) f += v[(r * h + a) * h + a];
  mant[i] = f;
  log_out[i] = lg[r];
}

/// Block-wide maximum of 128 threads' values (every thread gets it).
__device__ inline double block_max(double v) {
  __shared__ double red[128];
  red[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) red[threadIdx.x] = fmax(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  const double m = red[0];
  __syncthreads();
  return m;
}

/// The vjp's normaliser of site j = blockIdx.x (mpsntk/factor_layout.hpp: vjp_site_log, as on
/// the host), plus log c_j; 0 for a zero gradient.  The site's coefficients are then
/// cot c_j exp(log - g_j), all in [-1, 1].
template <class T>
__global__ void vjp_log_kernel(const SiteFactor<T>* sites, const double* log_c, const T* cot, index_t n, index_t C,
                               index_t k, index_t col, index_t output_site, double* g) {
  const index_t j = blockIdx.x;
  const double m = block_max(vjp_site_log(sites[j], j, output_site, cot, n, C, k, col, threadIdx.x, blockDim.x));
  if (threadIdx.x == 0) g[j] = isfinite(m) ? m + log_c[j] : 0.0;
}

/// The jvp's reference log-scale of every sample (mpsntk/factor_layout.hpp: jvp_sample_log).
template <class T>
__global__ void jvp_ref_kernel(const SiteFactor<T>* sites, index_t n_sites, const double* site_log,
                               const double* tangent_log, index_t n, index_t C, index_t output_site, double* ref) {
  const index_t x = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (x < n) ref[x] = jvp_sample_log(sites, n_sites, output_site, C, site_log, tangent_log, x);
}

/// Operands of the vjp GEMM of site j, over the depth k = (l, x), outputs l0 .. l0 + nl - 1 and
/// samples x (the gradient of a site sums over the outputs its factors differ in):
///   A((s, a), (l, x)) = wt(x, l) u_s(x) a_a(x, l), wt(x, l) = cot(x, l, col) exp(log(x, l) + log c_j
///   - g_j) with the site's normaliser g_j (vjp_log_kernel),
///   B((l, x), b) = b_b(x, l) (1 without a right factor).
/// The cursor fixes each slot's (s, a) once and, per chunk, this thread's (l, x): its weight (one
/// exponential) and where its rows start.
template <class T>
struct VjpOperands {
  const T* phi;
  index_t n_sites, d, j;
  SiteFactor<T> f;
  index_t l0, nl, C, k, col;  // outputs in the depth; cotangent (n, C, k), column col
  const T* cot;
  index_t n, M, N;
  double log_c;     // log c_j
  const double* g;  // the normalisers of every site (device)
  struct Cursor {
    const VjpOperands& op;
    int s[kSlots], a[kSlots];  // s < 0: row outside the data
    index_t col[kSlots];       // >= N: column outside the data
    index_t x = 0, l = 0;      // this thread's depth: sample x of output l
    T wt = 0;
    const T *u = nullptr, *av = nullptr, *bv = nullptr;
    bool in_depth = false;
    __device__ int begin(int c) {
      x += c == 0 ? slot_depth() : kDepth;  // chunks come in order
      if (c == 0) l = op.l0;
      while (x >= op.n) x -= op.n, ++l;
      in_depth = l < op.l0 + op.nl;
      if (in_depth) {
        const double w = op.cot[(x * op.C + l) * op.k + op.col] * exp(factor_log(op.f, x, l) + op.log_c - op.g[op.j]);
        wt = static_cast<T>(w);
        u = op.phi + (x * op.n_sites + op.j) * op.d;
        av = factor_a_row(op.f, x, l);
        bv = factor_b_row(op.f, x, l);
      }
      const index_t left = op.nl * op.n - static_cast<index_t>(c) * kDepth;
      return left < kDepth ? static_cast<int>(left) : kDepth;
    }
    __device__ void load(int m, T& A, T& B) const {
      A = (in_depth && s[m] >= 0) ? wt * u[s[m]] * av[a[m]] : T(0);
      B = (in_depth && col[m] < op.N) ? (bv ? bv[col[m]] : T(1)) : T(0);
    }
  };
  __device__ int chunks() const { return cuda::chunks(nl * n); }
  __device__ Cursor cursor(index_t r0, index_t c0) const {
    Cursor cur{*this};
    const int da = static_cast<int>(f.da);
#pragma unroll
    for (int m = 0; m < kSlots; ++m) {
      const index_t r = r0 + slot_row(m);
      cur.s[m] = r < M ? static_cast<int>(r) / da : -1;
      cur.a[m] = r < M ? static_cast<int>(r) % da : 0;
      cur.col[m] = c0 + slot_row(m);
    }
    return cur;
  }
};

template <class T>
struct GradStore {  // G[m * ld + c] = v, times exp(*log) (in double) when log is given
  T* g;
  index_t ld;
  const double* log;
  __device__ void operator()(index_t m, index_t c, T v) const {
    g[m * ld + c] = log ? static_cast<T>(exp(*log) * static_cast<double>(v)) : v;
  }
};

template <class T>
using VjpTask = GemmTask<VjpOperands<T>, GradStore<T>>;

/// Epilogue of the jvp GEMM t(x, b) = sum_(s, a) u_s(x) a_a(x, l) T[s, a, b] of site j and
/// output l: partial(x) = exp(log(x, l) + site_log (+ tangent_log[j]) - ref[x]) sum_b t(x, b)
/// b_b(x, l) over the block's columns (b_b = 1 without a right factor), at
/// partial[(c0 / kTile) * n + x]: the site's term relative to the sample's reference scale.
template <class T>
struct JvpDotStore {
  SiteFactor<T> f;
  index_t l, n;
  double* partial;
  index_t j;
  double site_log;            // log c_j (+ log site_lr_j for ntk_vp)
  const double* tangent_log;  // device, nullable
  const double* ref;          // device, per sample
  __device__ double term(index_t x, index_t b, T v) const {
    const T* bv = factor_b_row(f, x, l);
    return static_cast<double>(v) * (bv ? static_cast<double>(bv[b]) : 1.0);
  }
  __device__ void put(index_t x, index_t c0, double sum) const {
    const double e = factor_log(f, x, l) + site_log + (tangent_log ? tangent_log[j] : 0.0) - ref[x];
    partial[(c0 / kTile) * n + x] = e == -INFINITY ? 0.0 : exp(e) * sum;
  }
};

template <class T>
using JvpTask = GemmTask<KhatriRaoOperands<T>, JvpDotStore<T>>;

/// out(x, l, col) = the sum of the partial dots of the tasks of output l (tasks l * n_sites ..
/// (l + 1) * n_sites - 1, each with ceil(N / kTile) column blocks), in a fixed order; times
/// exp(ref[x]) (in double), or, with out_log, as it is, with out_log[x * k + col] = ref[x].
template <class T>
__global__ void jvp_sum_kernel(const JvpTask<T>* tasks, index_t n_sites, index_t n, index_t C, index_t k, index_t col,
                               const double* ref, T* out, double* out_log) {
  const index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (i >= n * C) return;
  const index_t x = i / C, l = i % C;
  double sum = 0;
  for (index_t q = l * n_sites; q < (l + 1) * n_sites; ++q) {
    const JvpDotStore<T>& st = tasks[q].st;
    for (index_t cb = 0; cb * kTile < tasks[q].N; ++cb) sum += st.partial[cb * n + x];
  }
  out[(x * C + l) * k + col] = static_cast<T>(out_log ? sum : exp(ref[x]) * sum);
  if (out_log && l == 0) out_log[x * k + col] = ref[x];
}

/// The per-call workspace of the Jacobian products: ntk_vp's gradient-shaped scratch, the GEMM
/// tasks of one column, the jvp's partial dots, and the per-site and per-sample log-scales.
template <class T>
struct GradPlan {
  std::vector<T*> grads;            // ntk_vp: gradient-shaped scratch
  VjpTask<T>* vjp_tasks = nullptr;  // the vjp GEMMs of one column, one launch
  JvpTask<T>* jvp_tasks = nullptr;  // the jvp GEMMs of one column, one launch
  double* partial = nullptr;        // their partial dots: (sites x outputs, column blocks, n1)
  double* log_c = nullptr;          // log c_j per site (device)
  double* log_lr = nullptr;         // ntk_vp: log c_j + log site_lr_j per site (device)
  double* g = nullptr;              // the vjp's normalisers per site
  double* ref = nullptr;            // the jvp's reference log-scales per sample
  std::vector<double> host_log_c, host_log_lr;
};

/// The workspace of a product whose jvp side has n1 samples (the vjp side needs none per sample).
template <class T>
GradPlan<T> plan_grad(const ChainView<T>& ch, index_t n1, Arena& arena) {
  GradPlan<T> p;
  index_t dmax = 1;
  for (index_t j = 0; j <= ch.n_sites; ++j) dmax = std::max(dmax, ch.bond[j]);
  for (index_t j = 0; j < ch.n_sites; ++j) p.grads.push_back(arena.take<T>(ch.core_size(j)));
  p.vjp_tasks = arena.take<VjpTask<T>>(ch.n_sites + ch.n_outputs);
  p.jvp_tasks = arena.take<JvpTask<T>>(ch.n_sites * ch.n_outputs);
  p.partial = arena.take<double>(ch.n_sites * ch.n_outputs * ((dmax + kTile - 1) / kTile) * n1);
  p.log_c = arena.take<double>(ch.n_sites);
  p.log_lr = arena.take<double>(ch.n_sites);
  p.g = arena.take<double>(ch.n_sites);
  p.ref = arena.take<double>(n1);
  return p;
}

/// The per-site log constants (site_log_constants: log c_j, and with site_lr also log
/// site_lr_j), copied to the workspace.
template <class T>
void upload_site_logs(const ChainView<T>& ch, const double* site_lr, GradPlan<T>& P, cudaStream_t stream) {
  const index_t N = ch.n_sites;
  P.host_log_c = site_log_constants(ch, nullptr);
  P.host_log_lr = site_log_constants(ch, site_lr);
  MPSNTK_CUDA_TRY(cudaMemcpyAsync(P.log_c, P.host_log_c.data(), N * sizeof(double), cudaMemcpyHostToDevice, stream));
  MPSNTK_CUDA_TRY(cudaMemcpyAsync(P.log_lr, P.host_log_lr.data(), N * sizeof(double), cudaMemcpyHostToDevice, stream));
}

/// The gradient of every core for cotangent column col, in two launches: the sites' normalisers
/// g (vjp_log_kernel), then one GEMM per site (per output at the output site, whose gradient has
/// an output axis), all sites side by side.  normalized: grads[j] = exp(-g_j) J_j^T cot;
/// otherwise exp(g_j) is multiplied back.
template <class T>
void vjp_column(const ChainView<T>& ch, const FeatureView<T>& phi, const Factors<T>& F, const GradPlan<T>& P,
                const T* cot, index_t k, index_t col, T* const* grads, double* g, bool normalized,
                cudaStream_t stream) {
  launch("vjp_log_kernel", static_cast<unsigned>(ch.n_sites), 128, stream, vjp_log_kernel<T>, F.sites, P.log_c, cot,
         phi.n_samples, ch.n_outputs, k, col, ch.output_site, g);
  std::vector<VjpTask<T>> tasks;
  for (index_t j = 0; j < ch.n_sites; ++j) {
    const SiteFactor<T>& f = F.host_sites[j];
    const index_t db = std::max<index_t>(f.db, 1), M = ch.phys_dim * f.da,
                  nl = outputs_at(f, j, ch.output_site, ch.n_outputs);
    const bool label = j == ch.output_site;
    for (index_t l = 0; l < (label ? nl : 1); ++l) {
      const VjpOperands<T> op{phi.data,
                              ch.n_sites,
                              ch.phys_dim,
                              j,
                              f,
                              label ? l : 0,
                              label ? 1 : nl,
                              ch.n_outputs,
                              k,
                              col,
                              cot,
                              phi.n_samples,
                              M,
                              db,
                              P.host_log_c[j],
                              g};
      tasks.push_back(VjpTask<T>{M, db, op, GradStore<T>{grads[j] + l * M * db, db, normalized ? nullptr : g + j}});
    }
  }
  gemm_batch<T>(stream, tasks, P.vjp_tasks);
}

/// Column col of the jvp, in three launches: the samples' reference log-scales, the GEMMs of
/// every site and output side by side, each ending in its partial dots with the right factor,
/// then their sums.  Every site has one output (single-output chains) or all of them (an
/// environment or the core carries the output index), so the tasks are ordered output by
/// output.  Tangent j is exp(site_log[j] - log c_j + tangent_log[j]) tangents[j]
/// (tangent_log nullable); out_log: the normalised form (jvp_sum_kernel).
template <class T>
void jvp_column(const ChainView<T>& ch, const FeatureView<T>& phi, const Factors<T>& F, const T* const* tangents,
                const GradPlan<T>& P, const double* site_log, const std::vector<double>& host_site_log,
                const double* tangent_log, T* out, double* out_log, index_t k, index_t col, cudaStream_t stream) {
  const index_t n = phi.n_samples, C = ch.n_outputs;
  launch("jvp_ref_kernel", blocks_for(n, 128), 128, stream, jvp_ref_kernel<T>, F.sites, ch.n_sites, site_log,
         tangent_log, n, C, ch.output_site, P.ref);
  std::vector<JvpTask<T>> tasks(ch.n_sites * C);
  index_t offset = 0;
  for (index_t l = 0; l < C; ++l)
    for (index_t j = 0; j < ch.n_sites; ++j) {
      const SiteFactor<T>& f = F.host_sites[j];
      const index_t db = std::max<index_t>(f.db, 1), K = ch.phys_dim * f.da;
      MPSNTK_EXPECTS(outputs_at(f, j, ch.output_site, ch.n_outputs) == C,
                     "mpsntk: jvp expects every site to carry the outputs");
      const bool label = j == ch.output_site;
      // t(x, b) = sum_(s, a) u_s(x) a_a(x, l) T[s, a, b]: the tangent as a core (1, d, da, db)
      JvpTask<T>& t = tasks[l * ch.n_sites + j];
      t.M = n, t.N = db;
      KhatriRaoOperands<T>& op = t.op;
      op.phi = phi.data, op.n_sites = ch.n_sites, op.d = ch.phys_dim, op.site = j, op.per_x = 1;
      op.v = f.a + (f.mult_a > 1 ? l : 0) * f.da, op.din = f.da, op.v_stride = f.mult_a * f.da;
      op.core = tangents[j] + (label ? l * K * db : 0), op.c = T(1), op.Dl = f.da, op.Dr = db, op.dout = db;
      op.to_right = true, op.M = n, op.N = db;
      t.st = JvpDotStore<T>{f, l, n, P.partial + offset, j, host_site_log[j], tangent_log, P.ref};
      offset += (db + kTile - 1) / kTile * n;
    }
  gemm_batch<T>(stream, tasks, P.jvp_tasks);
  launch("jvp_sum_kernel", blocks_for(n * C, 256), 256, stream, jvp_sum_kernel<T>, P.jvp_tasks, ch.n_sites, n, C, k,
         col, P.ref, out, out_log);
}

}  // namespace

template <class T>
std::size_t forward_workspace_bytes(const ChainView<T>& ch, index_t n) {
  ch.validate();
  Arena arena;
  plan_environments<T>(ch, n, true, false, arena);
  return arena.used;
}

template <class T>
void forward(const ChainView<T>& ch, const FeatureView<T>& phi, T* mant, double* log_scale, Workspace ws,
             std::uintptr_t stream_handle) {
  check_features(ch, phi, "phi");
  const cudaStream_t stream = as_stream(stream_handle);
  Arena arena{static_cast<char*>(ws.data), 0, ws.bytes};
  auto env = plan_environments<T>(ch, phi.n_samples, true, false, arena);
  compute_environments<T>(ch, phi, env, stream);
  const index_t N = ch.n_sites, n = phi.n_samples, C = ch.n_outputs;
  launch("trace_kernel", blocks_for(n * C, 256), 256, stream, trace_kernel<T>, env.left[N], env.left_log[N], n, C,
         ch.left_mult(N), env.h, mant, log_scale);
}

template <class T>
void forward(const Batch<T>& b, T* mant, double* log_scale, std::uintptr_t stream_handle) {
  check_batches(b, static_cast<const Batch<T>*>(nullptr));
  const ChainView<T>& ch = b.chain;
  const Factors<T> F = factors_of(b);
  const index_t N = ch.n_sites, n = b.phi.n_samples, C = ch.n_outputs;
  launch("trace_kernel", blocks_for(n * C, 256), 256, as_stream(stream_handle), trace_kernel<T>, F.env.left[N],
         F.env.left_log[N], n, C, ch.left_mult(N), F.env.h, mant, log_scale);
}

template <class T>
std::size_t product_workspace_bytes(const ChainView<T>& ch, index_t n1, index_t n2) {
  ch.validate();
  Arena arena;
  plan_grad<T>(ch, n1, arena);
  return arena.used;
}

namespace {
/// The prologue of every product: the batches' checks, then the workspace's plan with the
/// per-site log constants uploaded (with site_lr: ntk_vp's rates too).
template <class T>
GradPlan<T> begin_product(const Batch<T>& b1, const Batch<T>* b2, const double* site_lr, Workspace ws,
                          cudaStream_t stream) {
  check_batches(b1, b2);
  Arena arena{static_cast<char*>(ws.data), 0, ws.bytes};
  GradPlan<T> P = plan_grad<T>(b1.chain, b1.phi.n_samples, arena);
  upload_site_logs<T>(b1.chain, site_lr, P, stream);
  return P;
}
}  // namespace

template <class T>
void vjp(const Batch<T>& b, const T* cot, T* const* grads, double* grad_log, Workspace ws,
         std::uintptr_t stream_handle) {
  const cudaStream_t stream = as_stream(stream_handle);
  GradPlan<T> P = begin_product<T>(b, nullptr, nullptr, ws, stream);
  vjp_column<T>(b.chain, b.phi, factors_of(b), P, cot, 1, 0, grads, grad_log ? grad_log : P.g, grad_log != nullptr,
                stream);
}

template <class T>
void jvp(const Batch<T>& b, const T* const* tangents, const double* tangent_log, T* out, double* out_log, Workspace ws,
         std::uintptr_t stream_handle) {
  const cudaStream_t stream = as_stream(stream_handle);
  GradPlan<T> P = begin_product<T>(b, nullptr, nullptr, ws, stream);
  jvp_column<T>(b.chain, b.phi, factors_of(b), tangents, P, P.log_c, P.host_log_c, tangent_log, out, out_log, 1, 0,
                stream);
}

template <class T>
void ntk_vp(const Batch<T>& b1, const Batch<T>* b2, const double* site_lr, const T* v, index_t k, T* out,
            double* out_log, Workspace ws, std::uintptr_t stream_handle) {
  MPSNTK_EXPECTS(k >= 1, "v: need at least one column");
  const cudaStream_t stream = as_stream(stream_handle);
  GradPlan<T> P = begin_product<T>(b1, b2, site_lr, ws, stream);
  const Batch<T>& right = b2 ? *b2 : b1;
  const Factors<T> F1 = factors_of(b1), F2 = b2 ? factors_of(*b2) : Factors<T>{};
  // J1 diag(site_lr) J2^T v in the normalised forms: the vjp's normalisers g and the rates join
  // the tangents' log-scales (as ntk_vp_factors in grad.hpp).
  for (index_t col = 0; col < k; ++col) {
    vjp_column<T>(right.chain, right.phi, b2 ? F2 : F1, P, v, k, col, P.grads.data(), P.g, true, stream);
    jvp_column<T>(b1.chain, b1.phi, F1, P.grads.data(), P, P.log_lr, P.host_log_lr, P.g, out, out_log, k, col, stream);
  }
}

#define MPSNTK_CUDA_GRAD(T)                                                                                           \
  template std::size_t forward_workspace_bytes<T>(const ChainView<T>&, index_t);                                      \
  template void forward<T>(const ChainView<T>&, const FeatureView<T>&, T*, double*, Workspace, std::uintptr_t);       \
  template void forward<T>(const Batch<T>&, T*, double*, std::uintptr_t);                                             \
  template std::size_t product_workspace_bytes<T>(const ChainView<T>&, index_t, index_t);                             \
  template void vjp<T>(const Batch<T>&, const T*, T* const*, double*, Workspace, std::uintptr_t);                     \
  template void jvp<T>(const Batch<T>&, const T* const*, const double*, T*, double*, Workspace, std::uintptr_t);      \
  template void ntk_vp<T>(const Batch<T>&, const Batch<T>*, const double*, const T*, index_t, T*, double*, Workspace, \
                          std::uintptr_t);
MPSNTK_CUDA_GRAD(float)
MPSNTK_CUDA_GRAD(double)

}  // namespace mpsntk::cuda
