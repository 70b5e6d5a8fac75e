// Fused NTK kernel: one 64 x 64 output tile per block, accumulated over sites in registers:
//   Theta~[i, k] += w_j * (u_i.u_k) * (a_i.a_k) * (b_i.b_k) * rw_i * rw_k
// with the depth chunks of the three Grams of each site streamed through double-buffered shared
// memory (the next chunk's loads in flight during the current product) and multiplied by the
// path the dtype selects (FMAs, FP64 tensor cores, or opt-in TF32; kernels.cuh); the per-site
// n1 x n2 terms never reach global memory.  Symmetric calls launch only tiles on or above the
// diagonal.
#include "mpsntk/cuda/kernels.cuh"

namespace mpsntk::cuda {
namespace {

template <class T>
struct NtkSideDev {
  const SiteFactorDev<T>* sites;
  const T* phi;
  const double* c;  // reference log-scale per sample (may be -inf)
  index_t n;
};

template <class T>
struct NtkLaunch {
  NtkSideDev<T> s1, s2;
  index_t n_sites, d, label_site;
  index_t l1, l2, n_outputs;  // traced: l1 = -1 (sum over l of Theta_ll)
  T* out;
  T* mirror;
  index_t ld_row, ld_col, site_stride;
  index_t tiles1, tiles2;  // tiles along the rows, the columns
  bool upper_only, normalized;
};

/// Shared tables of one (site, output) term: the operands of its three Grams (a, b, u) on each
/// side of the tile (side 0: the tile's rows, side 1: its columns) and the row weights.  The
/// factor rows of consecutive samples are equally spaced, so tile row t of Gram g on side s is
/// rows[g][s] + t * stride[g][s] (no per-row pointers).
template <class T>
struct SiteTables {
  const T* rows[3][2];
  index_t stride[3][2];
  index_t depth[3];  // da, db (0: no b factor), d
  double w[2][kTile];
};

/// Fill side s of the tables for site j and output l (tile rows from sample x0): entry t of the
/// weights, and the operands when t == 0.
template <class T>
__device__ void load_side(const NtkSideDev<T>& side, const SiteFactorDev<T>& f, index_t x0, int t, index_t j, index_t l,
                          index_t n_sites, index_t d, SiteTables<T>& S, int s) {
  const index_t x = x0 + t;
  // sqrt(w_j) on both sides makes site_term the whole weighted term (as in the CPU packing).
  S.w[s][t] = x < side.n ? sqrt(f.weight) * tile::row_weight(FactorRows<T>::log(f, x, l), side.c[x]) : 0.0;
  if (t != 0) return;
  S.rows[0][s] = FactorRows<T>::a(f, x0, l);
  S.stride[0][s] = f.mult_a * f.da;
  S.rows[1][s] = FactorRows<T>::b(f, x0, l);
  S.stride[1][s] = f.mult_b * f.db;
  S.rows[2][s] = side.phi + (x0 * n_sites + j) * d;
  S.stride[2][s] = n_sites * d;
  if (s == 0) S.depth[0] = f.da, S.depth[1] = f.db, S.depth[2] = d;
}

/// The chunk source of one (site, output) term: the chunks of its Grams a, b (none when the
/// factor has no b) and u, one after another.  Per side, a thread keeps the address of its slot
/// 0 in the current chunk and the distance between its slots; a chunk advances it by kDepth, a
/// new Gram reloads it from the tables.
template <class T>
struct TermSource {
  const SiteTables<T>& S;
  int end_a, end_b;  // first chunk of b, of u
  unsigned rows_in;  // bit m: side 0's slot m row is inside the data; bit kSlots + m: side 1's
  const T* at[2];    // slot 0 of the current chunk, each side
  index_t step[2];   // elements from one slot to the next
  int left = 0;      // depths of the current Gram from the current chunk's first on
  __device__ int begin(int c) {
    if (c != 0 && c != end_a && c != end_b) {
      at[0] += kDepth, at[1] += kDepth, left -= kDepth;
    } else {
      const int g = c < end_a ? 0 : c < end_b ? 1 : 2;
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        at[s] = S.rows[g][s] + slot_row(0) * S.stride[g][s] + slot_depth();
        step[s] = kSlotRows * S.stride[g][s];
      }
      left = static_cast<int>(S.depth[g]);
    }
    return left < kDepth ? left : kDepth;
  }
  __device__ void load(int m, T& a, T& b) const {
    const bool in_depth = slot_depth() < left;
    // Read-only for the kernel's lifetime: the non-coherent cache path.
    a = (in_depth && (rows_in >> m & 1u)) ? __ldg(at[0] + m * step[0]) : T(0);
    b = (in_depth && (rows_in >> (kSlots + m) & 1u)) ? __ldg(at[1] + m * step[1]) : T(0);
  }
};

/// Bit m (side 0) and kSlots + m (side 1): this thread's slot m row is one of the valid rows.
__device__ inline unsigned slot_rows_in(index_t valid0, index_t valid1) {
  unsigned bits = 0;
#pragma unroll
  for (int m = 0; m < kSlots; ++m)
    bits |= (slot_row(m) < valid0 ? 1u : 0u) << m | (slot_row(m) < valid1 ? 1u : 0u) << (kSlots + m);
  return bits;
}

/// acc += (u.u') (a.a') (b.b') w w' for the tile entries this thread owns: one (site, output)
/// term.  The depth chunks of the three Grams form one chunk stream, so the loads of each Gram's
/// first chunk overlap the product of the previous Gram.
template <class T, class Path>
__device__ void add_site_term(const SiteTables<T>& S, unsigned rows_in, T (&acc)[kAcc], typename Path::Stage (&As)[2],
                              typename Path::Stage (&Bs)[2]) {
  const int end_a = chunks(S.depth[0]), end_b = end_a + chunks(S.depth[1]), end_u = end_b + chunks(S.depth[2]);
  TermSource<T> src{S, end_a, end_b, rows_in};
  // Each Gram accumulates in sum; at the end of a and of b, prod *= sum.  (prod starts at one
  // rather than taking a copy of sum: with a copy, ptxas keeps two register sets for sum and
  // moves them every chunk.)
  T sum[kAcc], prod[kAcc];
#pragma unroll
  for (int e = 0; e < kAcc; ++e) sum[e] = T(0), prod[e] = T(1);
  auto done = [&](int c) {
    if (c + 1 != end_a && c + 1 != end_b && c + 1 != end_u) return;
    if (c + 1 != end_u) {
#pragma unroll
      for (int e = 0; e < kAcc; ++e) prod[e] *= sum[e], sum[e] = T(0);
    } else {
#pragma unroll
      for (int e = 0; e < kAcc; ++e)
        acc[e] += tile::site_term(sum[e], prod[e]) * static_cast<T>(S.w[0][Path::row(e)] * S.w[1][Path::col(e)]);
    }
  };
  chunk_stream<Path>(end_u, src, done, sum, As, Bs);
}

// Min. one block per SM: lets ptxas use up to 255 registers (for sm_90 it otherwise caps the
// float kernels at 128 to fit two blocks, and spills the accumulators).
template <class T, class Path>
__global__ void __launch_bounds__(kThreads, 1) ntk_kernel(NtkLaunch<T> p) {
  alignas(16) __shared__ typename Path::Stage As[2], Bs[2];
  __shared__ SiteTables<T> tables;

  index_t ib, kb;
  tile::grouped_tile(blockIdx.x, p.tiles1, p.tiles2, p.upper_only, ib, kb);  // mpsntk/mma_tile.hpp
  const index_t i0 = ib * kTile, k0 = kb * kTile;
  const bool traced = p.l1 < 0;
  const bool per_site = p.site_stride != 0;
  T acc[kAcc] = {};
  const unsigned rows_in = slot_rows_in(p.s1.n - i0, p.s2.n - k0);

  auto write = [&](index_t j) {
#pragma unroll
    for (int e = 0; e < kAcc; ++e) {
      const index_t i = i0 + Path::row(e), k = k0 + Path::col(e);
      if (i >= p.s1.n || k >= p.s2.n) continue;
      T v = acc[e];
      if (!p.normalized) {
        const double c1 = p.s1.c[i], c2 = p.s2.c[k];
        const double l1 = (c1 > -INFINITY && c1 < INFINITY) ? c1 : 0.0;
        const double l2 = (c2 > -INFINITY && c2 < INFINITY) ? c2 : 0.0;
        v *= static_cast<T>(tile::pair_scale(l1, 0.0, l2, 0.0, false));
      }
      p.out[j * p.site_stride + i * p.ld_row + k * p.ld_col] = v;
      if (p.mirror && !(p.upper_only && ib == kb)) p.mirror[j * p.site_stride + k * p.ld_row + i * p.ld_col] = v;
      acc[e] = T(0);
    }
  };

  for (index_t j = 0; j < p.n_sites; ++j) {
    if (!traced && p.l1 != p.l2 && j == p.label_site) {
      if (per_site) write(j);
      continue;
    }
    const SiteFactorDev<T> f1 = p.s1.sites[j], f2 = p.s2.sites[j];
    const index_t lcount = traced ? p.n_outputs : 1;
    for (index_t l = 0; l < lcount; ++l) {
      const index_t l1 = traced ? l : p.l1, l2 = traced ? l : p.l2;
      __syncthreads();  // previous readers of the tables are done
      if (threadIdx.x < kTile)
        load_side<T>(p.s1, f1, i0, threadIdx.x, j, l1, p.n_sites, p.d, tables, 0);
      else if (threadIdx.x < 2 * kTile)
        load_side<T>(p.s2, f2, k0, threadIdx.x - kTile, j, l2, p.n_sites, p.d, tables, 1);
      __syncthreads();
      add_site_term<T, Path>(tables, rows_in, acc, As, Bs);
    }
    if (per_site) write(j);
  }
  if (!per_site) write(0);
}

/// c(x) = max over sites and outputs of the factor log-scales (the CPU's sample_log_scale).
template <class T>
__global__ void sample_scale_kernel(const SiteFactorDev<T>* sites, index_t n_sites, index_t n_outputs, index_t n,
                                    double* c, double* log_out) {
  const index_t x = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (x >= n) return;
  double m = -INFINITY;
  for (index_t j = 0; j < n_sites; ++j)
    for (index_t l = 0; l < n_outputs; ++l) m = fmax(m, FactorRows<T>::log(sites[j], x, l));
  c[x] = m;
  log_out[x] = (m > -INFINITY && m < INFINITY) ? m : 0.0;
}

template <class T>
using NtkKernel = void (*)(NtkLaunch<T>);

/// The fused kernel on the dtype's product path (with_path), or on the TF32 tensor cores when a
/// float32 call asks for them (opt.tf32).
template <class T>
NtkKernel<T> ntk_kernel_for(const NtkOptions& opt) {
  if constexpr (std::is_same_v<T, float>)
    if (opt.tf32) return ntk_kernel<float, Tf32Path>;
  NtkKernel<T> kernel = nullptr;
  with_path<T>([&](auto path) { kernel = ntk_kernel<T, decltype(path)>; });
  return kernel;
}

template <class T>
struct NtkPlan {
  DeviceFactors<T> f1, f2;
  double *c1 = nullptr, *c2 = nullptr;
};

template <class T>
NtkPlan<T> plan(const ChainView<T>& ch, index_t n1, index_t n2, Arena& arena) {
  NtkPlan<T> p;
  p.f1 = plan_factors<T>(ch, n1, arena);
  p.c1 = arena.take<double>(n1);
  if (n2 > 0) {
    p.f2 = plan_factors<T>(ch, n2, arena);
    p.c2 = arena.take<double>(n2);
  }
  return p;
}

}  // namespace

template <class T>
std::size_t ntk_workspace_bytes(const ChainView<T>& ch, index_t n1, index_t n2) {
  Arena arena;
  plan<T>(ch, n1, n2, arena);
  return arena.used;
}

template <class T>
void ntk(const ChainView<T>& ch, const FeatureView<T>& phi1, const FeatureView<T>* phi2, const NtkOptions& opt,
         const double* site_lr, T* out, double* log1, double* log2, void* workspace, std::size_t bytes,
         std::uintptr_t stream_handle) {
  const cudaStream_t stream = as_stream(stream_handle);
  const bool sym = phi2 == nullptr;
  const index_t n1 = phi1.n_samples, n2 = sym ? n1 : phi2->n_samples;
  Arena arena{static_cast<char*>(workspace), 0, bytes};
  NtkPlan<T> P = plan<T>(ch, n1, sym ? 0 : n2, arena);
  build_factors<T>(ch, phi1, P.f1, site_lr, stream);
  launch("sample_scale_kernel", blocks_for(n1, 128), 128, stream, sample_scale_kernel<T>, P.f1.sites, ch.n_sites,
         ch.n_outputs, n1, P.c1, log1);
  if (!sym) {
    build_factors<T>(ch, *phi2, P.f2, site_lr, stream);
    launch("sample_scale_kernel", blocks_for(n2, 128), 128, stream, sample_scale_kernel<T>, P.f2.sites, ch.n_sites,
           ch.n_outputs, n2, P.c2, log2);
  } else {
    MPSNTK_CUDA_TRY(cudaMemcpyAsync(log2, log1, n1 * sizeof(double), cudaMemcpyDeviceToDevice, stream));
  }
  const index_t C = ch.n_outputs;
  const bool full = opt.full_outputs && C > 1;
  const index_t cc = full ? C * C : 1;
  NtkLaunch<T> L{};
  L.s1 = {P.f1.sites, phi1.data, P.c1, n1};
  L.s2 = sym ? L.s1 : NtkSideDev<T>{P.f2.sites, phi2->data, P.c2, n2};
  L.n_sites = ch.n_sites;
  L.d = ch.phys_dim;
  L.label_site = ch.output_site;
  L.n_outputs = C;
  L.ld_row = n2 * cc;
  L.ld_col = cc;
  L.site_stride = opt.per_site ? n1 * n2 * cc : 0;
  L.normalized = opt.normalized;
  const index_t t1 = (n1 + kTile - 1) / kTile, t2 = (n2 + kTile - 1) / kTile;
  const NtkKernel<T> kernel = ntk_kernel_for<T>(opt);
  L.tiles1 = t1, L.tiles2 = t2;
  auto run = [&](index_t l1, index_t l2, bool upper, T* mirror, index_t offset) {
    L.l1 = l1;
    L.l2 = l2;
    L.upper_only = upper;
    L.out = out + offset;
    L.mirror = mirror;
    const dim3 grid(static_cast<unsigned>(upper ? t1 * (t1 + 1) / 2 : t1 * t2));
    launch("ntk_kernel", grid, kThreads, stream, kernel, L);
  };
  if (!full) {
    run(-1, -1, sym, sym ? out : nullptr, 0);
  } else {
    for (index_t l1 = 0; l1 < C; ++l1)
      for (index_t l2 = sym ? l1 : 0; l2 < C; ++l2) {
        // Symmetric data: Theta_{l2 l1}(x', x) = Theta_{l1 l2}(x, x'), written by the mirror.
        T* mirror = sym ? out + l2 * C + l1 : nullptr;
        run(l1, l2, sym && l1 == l2, mirror, l1 * C + l2);
      }
  }
}

#define MPSNTK_CUDA_NTK(T)                                                                                   \
  template std::size_t ntk_workspace_bytes<T>(const ChainView<T>&, index_t, index_t);                        \
  template void ntk<T>(const ChainView<T>&, const FeatureView<T>&, const FeatureView<T>*, const NtkOptions&, \
                       const double*, T*, double*, double*, void*, std::size_t, std::uintptr_t);
MPSNTK_CUDA_NTK(float)
MPSNTK_CUDA_NTK(double)

}  // namespace mpsntk::cuda
