// Fused NTK kernel: one 64 x 64 output tile per block, accumulated over sites in registers:
//   Theta~[i, k] += (u_i.u_k) * (a_i.a_k) * (b_i.b_k),
// the feature rows u carrying sqrt(w_j) and the rows' relative scales (as in the CPU packing),
// with the depth chunks of the Grams of every (site, output) term streamed through a ring of
// shared-memory stages filled by cp.async (the copies of the next three chunks in flight during
// a product, across term boundaries) and multiplied by the path the dtype selects (FMAs, FP64
// tensor cores, or opt-in TF32; micro.cuh); the per-site n1 x n2 terms never reach global
// memory.  Symmetric calls launch only tiles on or above the diagonal.  The factors come from
// prepared batches (factors.cuh); the planning of the passes is the CPU engine's
// (mpsntk/factor_layout.hpp).
#include "mpsntk/cuda/factors.cuh"

namespace mpsntk::cuda {
namespace {

template <class T>
struct NtkSideDev {
  const SiteFactor<T>* sites;
  const double* c;  // reference log-scale per sample (may be -inf)
  const T* u;       // weighted features (site, output, sample, d): phi_j(x) e^(log_j(x, l) + log sqrt(w_j) - c(x))
  index_t n;
};

template <class T>
struct NtkLaunch {
  NtkSideDev<T> s1, s2;
  index_t n_sites, d, label_site;
  index_t l1, l2, n_outputs;  // traced: l1 = -1 (sum over l of Theta_ll)
  int n_chunks;               // depth chunks of all (site, output) terms of a tile
  T* out;
  T* mirror;
  index_t ld_row, ld_col, site_stride;
  index_t tiles1, tiles2;  // tiles along the rows, the columns
  bool upper_only, normalized;
};

/// One stage of the kernel's pipeline: a depth chunk of the tile's rows (A) and columns (B).
template <class Path>
struct alignas(16) NtkStage {
  typename Path::Stage A, B;
};
/// Stages in flight: the copies of chunk c + 3 are issued before the product of chunk c, so
/// three chunks' products cover their latency (one block per SM: occupancy cannot).
constexpr int kNtkStages = 4;
template <class Path>
using NtkStages = NtkStage<Path>[kNtkStages];

/// What follows the product of a chunk, packed with the site (one int per chunk in flight).
enum ChunkFlags : int { kUpperHalf = 1, kGramEnd = 2, kTermEnd = 4, kSiteEnd = 8, kSiteShift = 4 };

/// Walks the (site j, output l) terms of a tile, each the Grams a, b (absent when the factor has
/// no b) and u, chunk by chunk, and issues every chunk's copies into a stage: the tile's rows
/// (side 0) and columns (side 1), zeros past the data.  Per side a thread keeps the address of
/// its slot 0 in the chunk and the distance between its slots (the factor rows of consecutive
/// samples are equally spaced).
template <class T>
struct TermWalk {
  const NtkLaunch<T>& p;
  index_t x0[2];     // first sample of the tile's rows, columns
  unsigned rows_in;  // bit m: side 0's slot m row is inside the data; bit kSlots + m: side 1's
  index_t j = 0, l = 0;
  int g = -1;    // current Gram: 0 a, 1 b, 2 u (-1: before the first term)
  int left = 0;  // depths of the current Gram from the next chunk on
  const T* at[2] = {};
  index_t step[2] = {};

  __device__ bool traced() const { return p.l1 < 0; }
  /// Cross outputs (l1 != l2) have no term at the label site.
  __device__ bool has_terms(index_t site) const { return traced() || p.l1 == p.l2 || site != p.label_site; }
  __device__ index_t output(int s) const { return traced() ? l : s == 0 ? p.l1 : p.l2; }
  __device__ const NtkSideDev<T>& side(int s) const { return s == 0 ? p.s1 : p.s2; }

  __device__ __forceinline__ void next_gram() {
    if (g == 0 && side(0).sites[j].db > 0) {
      g = 1;
    } else if (g == 0 || g == 1) {
      g = 2;
    } else {  // the next term
      if (g == 2 && ++l == (traced() ? p.n_outputs : 1)) l = 0, ++j;
      while (!has_terms(j)) ++j;
      g = 0;
    }
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const SiteFactor<T>& f = side(s).sites[j];
      const T* rows;
      index_t stride;
      if (g == 0) {
        rows = factor_a_row(f, x0[s], output(s)), stride = f.mult_a * f.da, left = static_cast<int>(f.da);
      } else if (g == 1) {
        rows = factor_b_row(f, x0[s], output(s)), stride = f.mult_b * f.db, left = static_cast<int>(f.db);
      } else {
        rows = side(s).u + ((j * p.n_outputs + output(s)) * side(s).n + x0[s]) * p.d, stride = p.d,
        left = static_cast<int>(p.d);
      }
      at[s] = rows + slot_row(0) * stride + slot_depth();
      step[s] = kSlotRows * stride;
    }
  }

  /// Issue the next chunk's copies into st; returns its ChunkFlags.
  template <class Path>
  __device__ __forceinline__ int issue(NtkStage<Path>& st) {
    if (left <= 0) next_gram();
    const bool in_depth = slot_depth() < left;
#pragma unroll
    for (int m = 0; m < kSlots; ++m) {
      const int to = Path::Layout::stage(slot_row(m), slot_depth());
      const bool a = in_depth && (rows_in >> m & 1u), b = in_depth && (rows_in >> (kSlots + m) & 1u);
      // A copy that is not made (zero-filled) does not read its source address.
      cp_async(&st.A[to], at[0] + m * step[0], a);
      cp_async(&st.B[to], at[1] + m * step[1], b);
    }
    int flags = left > kDepth / 2 ? kUpperHalf : 0;
    if (left > kDepth) {
      at[0] += kDepth, at[1] += kDepth, left -= kDepth;
      return flags;
    }
    left = 0;
    flags |= kGramEnd;
    if (g != 2) return flags;
    const bool site_end = !traced() || l + 1 == p.n_outputs;
    return flags | kTermEnd | (site_end ? kSiteEnd : 0) | static_cast<int>(j) << kSiteShift;
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

/// One 64 x 64 output tile: Theta~ += (a.a') (b.b') (u.u') over every (site, output) term.  All
/// terms' chunks form one stream through kNtkStages shared-memory stages filled by cp.async, one
/// barrier per chunk and none between terms; each Gram accumulates in sum, and at the end of a
/// and of b, prod *= sum (prod starts at one rather than taking a copy of sum: with a copy,
/// ptxas keeps two register sets and moves them every chunk).
// Min. one block per SM: lets ptxas use up to 255 registers (for sm_90 it otherwise caps the
// float kernels at 128 to fit two blocks, and spills the accumulators).
template <class T, class Path>
__global__ void __launch_bounds__(kThreads, 1) ntk_kernel(NtkLaunch<T> p) {
  NtkStages<Path>& stages = dynamic_shared_as<NtkStages<Path>>();
  index_t ib, kb;
  tile::grouped_tile(blockIdx.x, p.tiles1, p.tiles2, p.upper_only, ib, kb);  // mpsntk/mma_tile.hpp
  const index_t i0 = ib * kTile, k0 = kb * kTile;
  const bool per_site = p.site_stride != 0;
  T acc[kAcc] = {}, sum[kAcc], prod[kAcc];
#pragma unroll
  for (int e = 0; e < kAcc; ++e) sum[e] = T(0), prod[e] = T(1);

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
        // in double: the scale alone can leave the range of float where the entry does not
        v = static_cast<T>(static_cast<double>(v) * tile::pair_scale(l1, 0.0, l2, 0.0, false));
      }
      p.out[j * p.site_stride + i * p.ld_row + k * p.ld_col] = v;
      if (p.mirror && !(p.upper_only && ib == kb)) p.mirror[j * p.site_stride + k * p.ld_row + i * p.ld_col] = v;
      acc[e] = T(0);
    }
  };

  TermWalk<T> walk{p, {i0, k0}, slot_rows_in(p.s1.n - i0, p.s2.n - k0)};
  if (per_site && p.label_site >= 0 && !walk.has_terms(p.label_site)) write(p.label_site);  // its terms are zero
  // Iterations c < 0 only issue the first chunks; iteration c >= 0 issues chunk c + 3 and
  // multiplies chunk c (one call site of walk.issue: it inlines without a stack frame).
  int flags[kNtkStages] = {};  // of chunks c .. c + kNtkStages - 1
  for (int c = 1 - kNtkStages; c < p.n_chunks; ++c) {
    if (c >= 0) {
      cp_async_wait<kNtkStages - 2>();  // this thread's copies of chunk c have landed
      __syncthreads();                  // everyone's have, and everyone is done with chunk c - 1
    }
    const int ahead = c + kNtkStages - 1;
    flags[kNtkStages - 1] = ahead < p.n_chunks ? walk.issue(stages[ahead % kNtkStages]) : 0;
    cp_async_commit();
    if (c >= 0) {
      const NtkStage<Path>& st = stages[c % kNtkStages];
      Path::template product<0, kDepth / 2>(st.A, st.B, sum);
      if (flags[0] & kUpperHalf) Path::template product<kDepth / 2, kDepth>(st.A, st.B, sum);
      if (flags[0] & kGramEnd) {
        if (!(flags[0] & kTermEnd)) {
#pragma unroll
          for (int e = 0; e < kAcc; ++e) prod[e] *= sum[e], sum[e] = T(0);
        } else {
#pragma unroll
          for (int e = 0; e < kAcc; ++e) {
            acc[e] += tile::site_term(sum[e], prod[e]);
            sum[e] = T(0), prod[e] = T(1);
          }
          if (per_site && (flags[0] & kSiteEnd)) write(flags[0] >> kSiteShift);
        }
      }
    }
#pragma unroll
    for (int s = 0; s + 1 < kNtkStages; ++s) flags[s] = flags[s + 1];
  }
  cp_async_wait<0>();  // (only empty groups are left)
  if (!per_site) write(0);
}

/// c(x) = max over sites and outputs of the weighted rows' log-scales, log_j(x, l) + log sqrt(w_j)
/// (sample_log_scale, as the CPU engine), and the weighted feature rows u[(j, l, x)] = phi_j(x) s
/// with s = exp(log_j(x, l) + log sqrt(w_j) - c(x)) in [0, 1] rounded to T, as the CPU packs them
/// (sqrt(w_j) on both sides makes the product of the Grams the whole weighted term, and a row of
/// features far from its sample's scale meets its weight before any Gram: neither the Gram nor
/// the weights, however extreme, leave the range of T).
template <class T>
__global__ void sample_log_scale_kernel(const SiteFactor<T>* sites, const double* half_log_weight, const T* phi,
                                        index_t n_sites, index_t n_outputs, index_t d, index_t n, double* c,
                                        double* log_out, T* u) {
  const index_t x = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x;
  if (x >= n) return;
  const double m = sample_log_scale(sites, n_sites, n_outputs, x, half_log_weight);
  c[x] = m;
  log_out[x] = (m > -INFINITY && m < INFINITY) ? m : 0.0;
  for (index_t j = 0; j < n_sites; ++j)
    for (index_t l = 0; l < n_outputs; ++l) {
      const T s = static_cast<T>(tile::row_weight(factor_log(sites[j], x, l) + half_log_weight[j], m));
      T* row = u + ((j * n_outputs + l) * n + x) * d;
      for (index_t k = 0; k < d; ++k) row[k] = s * phi[(x * n_sites + j) * d + k];
    }
}

template <class T>
struct NtkKernel {
  void (*kernel)(NtkLaunch<T>);
  std::size_t shared_bytes;  // its pipeline stages
};

/// The fused kernel on the dtype's product path (with_path), or on the TF32 tensor cores when a
/// float32 call asks for them (opt.tf32).
template <class T>
NtkKernel<T> ntk_kernel_for(const NtkOptions& opt) {
  if constexpr (std::is_same_v<T, float>)
    if (opt.tf32) return {ntk_kernel<float, Tf32Path>, sizeof(NtkStages<Tf32Path>)};
  NtkKernel<T> k{};
  with_path<T>([&](auto path) {
    using Path = decltype(path);
    k = {ntk_kernel<T, Path>, sizeof(NtkStages<Path>)};
  });
  return k;
}

/// The per-call workspace of an NTK: each side's reference log-scales and weighted feature rows,
/// and the site weights.
template <class T>
struct NtkPlan {
  double *c1 = nullptr, *c2 = nullptr;  // reference log-scales
  T *u1 = nullptr, *u2 = nullptr;       // weighted feature rows
  double* weight = nullptr;             // log sqrt(w_j) per site
};

template <class T>
NtkPlan<T> plan(const ChainView<T>& ch, index_t n1, index_t n2, Arena& arena) {
  NtkPlan<T> p;
  p.c1 = arena.take<double>(n1);
  p.u1 = arena.take<T>(ch.n_sites * ch.n_outputs * n1 * ch.phys_dim);
  if (n2 > 0) {
    p.c2 = arena.take<double>(n2);
    p.u2 = arena.take<T>(ch.n_sites * ch.n_outputs * n2 * ch.phys_dim);
  }
  p.weight = arena.take<double>(ch.n_sites);
  return p;
}

}  // namespace

std::string float64_path() {
  std::string name;
  with_path<double>([&](auto path) {
    using Path = decltype(path);
    if constexpr (std::is_same_v<Path, DmmaSm90Path>)
      name = "m16n8k8";
    else if constexpr (std::is_same_v<Path, DmmaPath>)
      name = "m8n8k4";
    else
      name = "fma";
  });
  return name;
}

template <class T>
std::size_t ntk_workspace_bytes(const ChainView<T>& ch, index_t n1, index_t n2) {
  ch.validate();
  Arena arena;
  plan<T>(ch, n1, n2, arena);
  return arena.used;
}

template <class T>
void ntk(const Batch<T>& b1, const Batch<T>* b2, const NtkOptions& opt, const double* site_lr, T* out, double* log1,
         double* log2, Workspace workspace, std::uintptr_t stream_handle) {
  check_batches(b1, b2);
  const ChainView<T>& ch = b1.chain;
  MPSNTK_EXPECTS(!opt.tf32 || (std::is_same_v<T, float>), "precision='tf32' needs float32");
  const cudaStream_t stream = as_stream(stream_handle);
  const bool sym = b2 == nullptr;
  const index_t n1 = b1.phi.n_samples, n2 = sym ? n1 : b2->phi.n_samples, C = ch.n_outputs;
  Arena arena{static_cast<char*>(workspace.data), 0, workspace.bytes};
  const NtkPlan<T> P = plan<T>(ch, n1, sym ? 0 : n2, arena);
  const Factors<T> F1 = factors_of(b1), F2 = sym ? Factors<T>{} : factors_of(*b2);
  // the outputs are traced pass by pass over l here: no site weight carries C
  const std::vector<double> weight = ntk_half_log_weights(ch, site_lr, false);
  MPSNTK_CUDA_TRY(
      cudaMemcpyAsync(P.weight, weight.data(), ch.n_sites * sizeof(double), cudaMemcpyHostToDevice, stream));
  auto scales = [&](const Batch<T>& b, const Factors<T>& F, double* c, double* log, T* u) {
    launch("sample_log_scale_kernel", blocks_for(b.phi.n_samples, 128), 128, stream, sample_log_scale_kernel<T>,
           F.sites, P.weight, b.phi.data, ch.n_sites, C, ch.phys_dim, b.phi.n_samples, c, log, u);
  };
  scales(b1, F1, P.c1, log1, P.u1);
  if (!sym)
    scales(*b2, F2, P.c2, log2, P.u2);
  else
    MPSNTK_CUDA_TRY(cudaMemcpyAsync(log2, log1, n1 * sizeof(double), cudaMemcpyDeviceToDevice, stream));
  const NtkLayout layout(n1, n2, C, opt.full_outputs, opt.per_site);
  NtkLaunch<T> L{};
  L.s1 = {F1.sites, P.c1, P.u1, n1};
  L.s2 = sym ? L.s1 : NtkSideDev<T>{F2.sites, P.c2, P.u2, n2};
  L.n_sites = ch.n_sites;
  L.d = ch.phys_dim;
  L.label_site = ch.output_site;
  L.n_outputs = C;
  L.ld_row = layout.ld_row;
  L.ld_col = layout.ld_col;
  L.site_stride = layout.site_stride;
  L.normalized = opt.normalized;
  const index_t t1 = (n1 + kTile - 1) / kTile, t2 = (n2 + kTile - 1) / kTile;
  const NtkKernel<T> kernel = ntk_kernel_for<T>(opt);
  L.tiles1 = t1, L.tiles2 = t2;
  // Depth chunks of one tile's terms: those of every site's Grams, once per output when traced
  // (l1 < 0), and none at the label site for cross outputs.
  auto n_chunks = [&](const OutputBlock& blk) {
    auto chunks_of = [](index_t depth) { return (depth + kDepth - 1) / kDepth; };
    index_t total = 0;
    for (index_t j = 0; j < ch.n_sites; ++j) {
      if (!blk.label_term && j == ch.output_site) continue;
      const SiteFactor<T>& f = F1.host_sites[j];
      total += (blk.l1 < 0 ? C : 1) * (chunks_of(f.da) + chunks_of(f.db) + chunks_of(ch.phys_dim));
    }
    return total;
  };
  for_each_output_block(layout, sym, [&](const OutputBlock& blk) {
    L.l1 = blk.l1;
    L.l2 = blk.l2;
    const index_t chunks = n_chunks(blk);
    MPSNTK_EXPECTS(chunks <= INT_MAX, "too many sites and outputs for one NTK launch");
    L.n_chunks = static_cast<int>(chunks);
    L.upper_only = blk.upper_only;
    L.out = out + blk.offset;
    L.mirror = blk.mirror_offset >= 0 ? out + blk.mirror_offset : nullptr;
    const dim3 grid(static_cast<unsigned>(blk.upper_only ? t1 * (t1 + 1) / 2 : t1 * t2));
    launch("ntk_kernel", grid, kThreads, kernel.shared_bytes, stream, kernel.kernel, L);
  });
}

#define MPSNTK_CUDA_NTK(T)                                                                                       \
  template std::size_t ntk_workspace_bytes<T>(const ChainView<T>&, index_t, index_t);                            \
  template void ntk<T>(const Batch<T>&, const Batch<T>*, const NtkOptions&, const double*, T*, double*, double*, \
                       Workspace, std::uintptr_t);
MPSNTK_CUDA_NTK(float)
MPSNTK_CUDA_NTK(double)

}  // namespace mpsntk::cuda
