// The GEMM machinery of the device engine (the CPU engine's counterpart is
// cpp/src/detail/micro.hpp): 64 x 64 output tiles of 256 threads, the product paths (FMAs, FP64
// tensor cores, opt-in TF32) that multiply a staged depth chunk into each thread's accumulators,
// the chunk stream that stages operands through shared memory, row reductions, and one tiled
// GEMM whose operands come from per-thread cursors (the Khatri-Rao x core product of the
// environment sweeps and the Jacobian-vector product), single or batched.
// The element arithmetic comes from mpsntk/tile_math.hpp, shared with the CPU engine.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "mpsntk/cuda/buffer.cuh"
#include "mpsntk/mma_tile.hpp"
#include "mpsntk/tile_math.hpp"

namespace mpsntk::cuda {

// 64 x 64 tiles, 256 threads, K staged through shared memory 16 at a time (the A and B rows of
// the tile, in the path's layout).  A "path" says how a staged chunk is multiplied into each
// thread's 16 accumulators and which tile entries they are (mpsntk/mma_tile.hpp): plain FMAs
// (SIMT), FP64 tensor cores (DMMA), or TF32 tensor cores with FP32 accumulation (opt-in only).
constexpr int kTile = tile::kBlockTile, kDepth = tile::kStageDepth, kThreads = tile::kBlockThreads;
constexpr int kAcc = 16;
static_assert(kTile == 64 && kThreads == 256, "the tile maps assume 64 x 64 tiles of 256 threads");

/// Two adjacent staged elements, read as one aligned load (8 bytes of float, 16 of double).
template <class T>
struct alignas(2 * sizeof(T)) Pair {
  T v[2];
};

/// SIMT: each thread owns two row pairs and two column pairs of the tile (tile::SimtTile).
template <class T>
struct SimtPath {
  using Layout = tile::SimtTile;
  using Stage = T[Layout::STAGE_SIZE];
  static __device__ __forceinline__ int row(int e) { return Layout::acc_row(threadIdx.x, e); }
  static __device__ __forceinline__ int col(int e) { return Layout::acc_col(threadIdx.x, e); }
  static __device__ __forceinline__ int group_e(int i, int j) { return Layout::group_e(i, j); }
  static __device__ __forceinline__ int row_slot() { return Layout::row_slot(threadIdx.x); }
  static __device__ __forceinline__ Pair<T> pair_at(const Stage& s, int at) {
    return *reinterpret_cast<const Pair<T>*>(&s[at]);  // at is even and the stage 16-byte aligned
  }
  /// acc += the product of depths [K0, K1) of the staged chunk.
  template <int K0, int K1>
  static __device__ __forceinline__ void product(const Stage& As, const Stage& Bs, T (&acc)[kAcc]) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int kk = K0; kk < K1; ++kk) {
      Pair<T> a[2], b[2];
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        a[p] = pair_at(As, Layout::stage(Layout::pair(ty, p), kk));
        b[p] = pair_at(Bs, Layout::stage(Layout::pair(tx, p), kk));
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[4 * i + j] += a[i / 2].v[i % 2] * b[j / 2].v[j % 2];
    }
  }
};

/// D += A B on the tensor cores, fragments as in mma_tile.hpp.
#ifdef MPSNTK_CUDA_SIM
__device__ inline void mma(double* c, const double (&a)[1], const double (&b)[1]) { sim::mma_m8n8k4_f64(c, a, b); }
__device__ inline void mma(double* c, const double (&a)[4], const double (&b)[2]) { sim::mma_m16n8k8_f64(c, a, b); }
__device__ inline void mma(float* c, const float (&a)[4], const float (&b)[2]) { sim::mma_m16n8k8_tf32(c, a, b); }
#else
__device__ __forceinline__ void mma(double* c, const double (&a)[1], const double (&b)[1]) {
  asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0,%1}, {%2}, {%3}, {%0,%1};\n"
               : "+d"(c[0]), "+d"(c[1])
               : "d"(a[0]), "d"(b[0]));
}
__device__ __forceinline__ void mma(double* c, const double (&a)[4], const double (&b)[2]) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f64.f64.f64.f64 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+d"(c[0]), "+d"(c[1]), "+d"(c[2]), "+d"(c[3])
      : "d"(a[0]), "d"(a[1]), "d"(a[2]), "d"(a[3]), "d"(b[0]), "d"(b[1]));
#else
  __trap();  // an sm_90 instruction: the host launches this path only on sm_90 and newer
#endif
}
__device__ __forceinline__ void mma(float* c, const float (&a)[4], const float (&b)[2]) {
  unsigned ra[4], rb[2];
#pragma unroll
  for (int r = 0; r < 4; ++r) asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(ra[r]) : "f"(a[r]));
#pragma unroll
  for (int r = 0; r < 2; ++r) asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(rb[r]) : "f"(b[r]));
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]));
}
#endif

/// Asynchronous global -> shared copies (sm_80+): cp_async copies one element, or stores a zero
/// when !valid (src is then not read); cp_async_commit closes this thread's group of copies;
/// cp_async_wait<N> waits until all but its N most recent groups have landed.  Other threads see
/// the copies only after a barrier that follows the wait.
template <class T>
__device__ __forceinline__ void cp_async(T* dst, const T* src, bool valid) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "cp.async.ca copies 4, 8 or 16 bytes");
#ifdef MPSNTK_CUDA_SIM
  sim::cp_async(dst, src, sizeof(T), valid);
#else
  const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(to), "l"(src), "n"(static_cast<int>(sizeof(T))),
               "r"(valid ? static_cast<int>(sizeof(T)) : 0)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef MPSNTK_CUDA_SIM
  sim::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef MPSNTK_CUDA_SIM
  sim::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

/// The block's dynamic shared memory (the launch's shared_bytes), 16-byte aligned.
template <class T>
__device__ __forceinline__ T& dynamic_shared_as() {
#ifdef MPSNTK_CUDA_SIM
  return *static_cast<T*>(sim::dynamic_shared());
#else
  extern __shared__ __align__(16) unsigned char mpsntk_dynamic_shared[];
  return *reinterpret_cast<T*>(mpsntk_dynamic_shared);
#endif
}

/// Tensor cores: warp w owns a 32 x 16 warp tile of MI x NI mma blocks (tile::WarpTile).
template <class T, class Mma>
struct MmaPath {
  using W = tile::WarpTile<Mma>;
  using Layout = W;
  using Stage = T[W::STAGE_SIZE];
  static __device__ __forceinline__ int warp() { return threadIdx.x / tile::kWarpSize; }
  static __device__ __forceinline__ int lane() { return threadIdx.x % tile::kWarpSize; }
  static __device__ __forceinline__ int row(int e) { return W::acc_row(warp(), lane(), e); }
  static __device__ __forceinline__ int col(int e) { return W::acc_col(warp(), lane(), e); }
  static __device__ __forceinline__ int group_e(int i, int j) { return W::group_e(i, j); }
  static __device__ __forceinline__ int row_slot() { return W::row_slot(warp(), lane()); }
  /// acc += the product of depths [K0, K1) of the staged chunk (whole mma depth steps).
  template <int K0, int K1>
  static __device__ __forceinline__ void product(const Stage& As, const Stage& Bs, T (&acc)[kAcc]) {
    static_assert(K0 % Mma::K == 0 && K1 % Mma::K == 0, "whole mma depth steps");
    const int w = warp(), l = lane();
#pragma unroll
    for (int k0 = K0; k0 < K1; k0 += Mma::K) {
      T b[W::NI][Mma::B_REGS];  // all B fragments of this depth step, then one A row block at a time
#pragma unroll
      for (int ni = 0; ni < W::NI; ++ni)
#pragma unroll
        for (int r = 0; r < Mma::B_REGS; ++r) b[ni][r] = Bs[W::stage(W::b_col(w, l, ni, r), k0 + Mma::b_k(l, r))];
#pragma unroll
      for (int mi = 0; mi < W::MI; ++mi) {
        T a[Mma::A_REGS];
#pragma unroll
        for (int r = 0; r < Mma::A_REGS; ++r) a[r] = As[W::stage(W::a_row(w, l, mi, r), k0 + Mma::a_k(l, r))];
#pragma unroll
        for (int ni = 0; ni < W::NI; ++ni) mma(acc + (mi * W::NI + ni) * Mma::C_REGS, a, b[ni]);
      }
    }
  }
};
using DmmaPath = MmaPath<double, tile::MmaF64>;          // sm_80+
using DmmaSm90Path = MmaPath<double, tile::MmaF64Sm90>;  // sm_90+
using Tf32Path = MmaPath<float, tile::MmaTf32>;

/// Calls f(Path{}) with the full-precision product path for T.  float64: FP64 tensor cores
/// (DMMA, IEEE double arithmetic) with Hopper's m16n8k8 shape where the code that runs is sm_90
/// code (image_arch(): an sm_90 card that JIT-compiles compute_80 PTX has no m16n8k8 f64), the
/// m8n8k4 shape otherwise; diagnostic switches (and what the GPU tests compare):
/// MPSNTK_CUDA_DMMA=m8n8k4 or m16n8k8 forces a shape, MPSNTK_CUDA_SIMT=1 plain FMAs.  float32:
/// FP32 FMAs (TF32 is an explicit opt-in of the NTK alone).
template <class T, class F>
void with_path(F&& f) {
  if constexpr (std::is_same_v<T, double>) {
    const char* simt = std::getenv("MPSNTK_CUDA_SIMT");
    if (simt && simt[0] && std::string(simt) != "0") return f(SimtPath<double>{});
    const bool sm90_code = image_arch() >= 90;
    const char* env = std::getenv("MPSNTK_CUDA_DMMA");
    const std::string shape = env && env[0] ? env : (sm90_code ? "m16n8k8" : "m8n8k4");
    MPSNTK_EXPECTS(shape == "m8n8k4" || shape == "m16n8k8",
                   "MPSNTK_CUDA_DMMA must be 'm8n8k4' or 'm16n8k8'; got '" + shape + "'");
    MPSNTK_EXPECTS(shape == "m8n8k4" || sm90_code,
                   "MPSNTK_CUDA_DMMA=m16n8k8 needs sm_90 code: an sm_90 or newer GPU and a build whose "
                   "architectures include 90 (this device runs compute_" +
                       std::to_string(image_arch()) + " code)");
    if (shape == "m16n8k8") return f(DmmaSm90Path{});
    return f(DmmaPath{});
  } else {
    return f(SimtPath<T>{});
  }
}

// ------------------------------------------------------------------------------------------
/// Element slot m (0 <= m < kSlots) of a staged chunk, for this thread: tile row slot_row(m) at
/// depth slot_depth() of the chunk.  A thread's slots share one depth and are kSlotRows rows
/// apart, so a source can step from slot to slot with one address increment.
constexpr int kSlots = kTile * kDepth / kThreads, kSlotRows = kThreads / kDepth;
static_assert(kSlots % 2 == 0 && kSlots * kThreads == kTile * kDepth, "whole chunks per thread, in halves");
__device__ __forceinline__ int slot_row(int m) { return static_cast<int>(threadIdx.x) / kDepth + m * kSlotRows; }
__device__ __forceinline__ int slot_depth() { return static_cast<int>(threadIdx.x) % kDepth; }

/// Multiplies a stream of depth chunks into this thread's accumulators through two shared-memory
/// buffers: the global loads of chunk c + 1 are in flight during the product of chunk c, one
/// barrier per chunk.  They are issued in two halves, each stored after half of the product, so
/// that only half of them occupy registers at a time.  The source gives the operands:
/// src.begin(c) moves it to chunk c (called once per chunk, in order) and returns how many of
/// the chunk's kDepth depths are valid (the upper half of the product is skipped when it holds
/// only zeros); src.load(m, a, b) then gives slot m of the chunk's tile rows (a) and tile columns
/// (b), zero past the valid depths.  done(c) follows chunk c's product (at the same point in
/// every thread, so it may read shared memory written before the stream).
template <class Path, class T, class Source, class Done>
__device__ void chunk_stream(int n_chunks, Source& src, Done done, T (&acc)[kAcc], typename Path::Stage (&As)[2],
                             typename Path::Stage (&Bs)[2]) {
  constexpr int kHalf = kSlots / 2;
  T va[kHalf], vb[kHalf];
  auto fetch = [&](int half) {
#pragma unroll
    for (int i = 0; i < kHalf; ++i) src.load(half * kHalf + i, va[i], vb[i]);
  };
  auto store = [&](int buf, int half) {
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const int at = Path::Layout::stage(slot_row(half * kHalf + i), slot_depth());
      As[buf][at] = va[i];
      Bs[buf][at] = vb[i];
    }
  };
  int depth = src.begin(0);
  fetch(0);
  store(0, 0);
  fetch(1);
  store(0, 1);
  __syncthreads();
  for (int c = 0; c < n_chunks; ++c) {
    const int buf = c % 2, next = 1 - buf;
    const bool more = c + 1 < n_chunks;
    const int depth_next = more ? src.begin(c + 1) : 0;
    if (more) fetch(0);
    Path::template product<0, kDepth / 2>(As[buf], Bs[buf], acc);
    if (more) store(next, 0), fetch(1);
    if (depth > kDepth / 2) Path::template product<kDepth / 2, kDepth>(As[buf], Bs[buf], acc);
    if (more) store(next, 1);
    __syncthreads();
    done(c);
    depth = depth_next;
  }
}

__device__ inline int chunks(index_t K) { return static_cast<int>((K + kDepth - 1) / kDepth); }

/// Row reductions of the output tile: for each tile row t, the combination op (max, sum, ...) of
/// f(e) over the accumulators e of the row in this block, in a fixed order (bit-reproducible),
/// handed to done(t, value) by thread t (t < kTile).  A thread's row groups (Path::group_e) hold
/// 4 accumulators of one row each; the 16 threads sharing a row differ in Path::row_slot().
template <class Path, class F, class Op, class Done>
__device__ void reduce_rows(F f, Op op, Done done) {
  static_assert(kAcc == 16 && kThreads == 16 * 16, "4 rows of 4 accumulators per thread, 16 threads per row");
  __shared__ double part[kTile][16];  // per row, each thread's value over its 4 columns
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    double m = f(Path::group_e(i, 0));
#pragma unroll
    for (int j = 1; j < 4; ++j) m = op(m, f(Path::group_e(i, j)));
    part[Path::row(Path::group_e(i, 0))][Path::row_slot()] = m;
  }
  __syncthreads();
  const int t = threadIdx.x;
  if (t < kTile) {
    double m = part[t][0];
    for (int k = 1; k < 16; ++k) m = op(m, part[t][k]);
    done(t, m);
  }
}

/// What a GEMM store does with whole rows before (or instead of) storing entries:
///   normalises_rows: has row_factor(r, maxabs); when st.normalise, each row is scaled by the
///     power of two of its largest magnitude (tile::pow2_normaliser, as normalise_kernel; rows
///     must be whole normalisation groups, N <= kTile) and the factor's exponent recorded;
///   reduces_rows: has term(r, c, v) and put(r, c0, sum): the row sums of term over the block's
///     columns (from c0) are put, and no entry is stored.
template <class Store, class = void>
struct normalises_rows : std::false_type {};
template <class Store>
struct normalises_rows<Store, std::void_t<decltype(&Store::row_factor)>> : std::true_type {};
template <class Store, class = void>
struct reduces_rows : std::false_type {};
template <class Store>
struct reduces_rows<Store, std::void_t<decltype(&Store::term)>> : std::true_type {};

/// One GEMM: C(r, c) = sum_k A(r, k) B(k, c) for r < M, c < N, with A, B from the operands and
/// each result handed to store(r, c, value).  An operands type gives the depth in chunks
/// (op.chunks()) and, per block, the cursor that feeds chunk_stream with the block's rows from r0
/// and columns from c0 (op.cursor(r0, c0)).  The store takes the entries, or whole rows
/// (normalises_rows, reduces_rows).
template <class Operands, class Store>
struct GemmTask {
  index_t M, N;
  Operands op;
  Store st;
};

/// The 64 x 64 output tile (blockIdx.x, blockIdx.y) of one task, on product path P.  Rows go along x, whose
/// grid limit (2^31 - 1) holds any batch; y (65535 tiles) holds the columns.
template <class T, class P, class Operands, class Store>
__device__ void gemm_tile(const GemmTask<Operands, Store>& t, typename P::Stage (&As)[2], typename P::Stage (&Bs)[2]) {
  const index_t r0 = static_cast<index_t>(blockIdx.x) * kTile, c0 = static_cast<index_t>(blockIdx.y) * kTile;
  if (r0 >= t.M || c0 >= t.N) return;  // the grid covers the largest task of the launch
  T acc[kAcc] = {};
  auto cursor = t.op.cursor(r0, c0);
  chunk_stream<P>(t.op.chunks(), cursor, [](int) {}, acc, As, Bs);
  if constexpr (reduces_rows<Store>::value) {
    reduce_rows<P>(
        [&](int e) {
          const index_t r = r0 + P::row(e), c = c0 + P::col(e);
          return r < t.M && c < t.N ? t.st.term(r, c, acc[e]) : 0.0;
        },
        [](double x, double y) { return x + y; },
        [&](int row, double sum) {
          if (r0 + row < t.M) t.st.put(r0 + row, c0, sum);
        });
  } else {
    if constexpr (normalises_rows<Store>::value) {
      if (t.st.normalise) {
        __shared__ double factor[kTile];
        // |entries| past N are zero: the operands are zero there
        reduce_rows<P>(
            [&](int e) { return fabs(static_cast<double>(acc[e])); }, [](double x, double y) { return fmax(x, y); },
            [&](int row, double maxabs) { factor[row] = r0 + row < t.M ? t.st.row_factor(r0 + row, maxabs) : 1.0; });
        __syncthreads();
#pragma unroll
        for (int e = 0; e < kAcc; ++e) acc[e] *= static_cast<T>(factor[P::row(e)]);
      }
    }
#pragma unroll
    for (int e = 0; e < kAcc; ++e) {
      const index_t r = r0 + P::row(e), c = c0 + P::col(e);
      if (r < t.M && c < t.N) t.st(r, c, acc[e]);
    }
  }
}

/// Independent GEMMs in one launch, task blockIdx.z: the left and right environment sweeps step
/// together (half the launches, and twice the blocks when one step is a fraction of a wave).
template <class T, class P, class... Tasks>
__global__ void __launch_bounds__(kThreads) gemm_kernel(Tasks... tasks) {
  alignas(16) __shared__ typename P::Stage As[2], Bs[2];
  unsigned z = 0;
  ((blockIdx.z == z++ ? gemm_tile<T, P>(tasks, As, Bs) : void()), ...);
}

template <class T, class... Tasks>
void gemm(cudaStream_t stream, const Tasks&... tasks) {
  const index_t M = std::max({tasks.M...}), N = std::max({tasks.N...});
  if (M == 0 || N == 0) return;
  const dim3 grid(blocks_for(M, kTile), blocks_for(N, kTile), static_cast<unsigned>(sizeof...(Tasks)));
  with_path<T>([&](auto path) {
    launch("gemm_kernel", grid, kThreads, stream, gemm_kernel<T, decltype(path), Tasks...>, tasks...);
  });
}

/// Many GEMMs of one kind in one launch, task blockIdx.z read from device memory (the vjp or
/// the jvp of every site at once): the block's task is copied to shared memory, where its cursor
/// reads it.
template <class T, class P, class Task>
__global__ void __launch_bounds__(kThreads) gemm_batch_kernel(const Task* tasks) {
  alignas(16) __shared__ typename P::Stage As[2], Bs[2];
  __shared__ Task task;
  if (threadIdx.x == 0) task = tasks[blockIdx.z];
  __syncthreads();
  gemm_tile<T, P>(task, As, Bs);
}

/// Tasks per launch of gemm_batch_kernel: the grid's z limit.
constexpr std::size_t kMaxBatch = 65535;

/// Launches the tasks (copied to device_tasks, room for all of them) as one batch (several past
/// kMaxBatch tasks).
template <class T, class Task>
void gemm_batch(cudaStream_t stream, const std::vector<Task>& tasks, Task* device_tasks) {
  index_t M = 0, N = 0;
  for (const Task& t : tasks) M = std::max(M, t.M), N = std::max(N, t.N);
  if (tasks.empty() || M == 0 || N == 0) return;
  // From pageable memory the copy is staged before cudaMemcpyAsync returns (tasks may go).
  MPSNTK_CUDA_TRY(
      cudaMemcpyAsync(device_tasks, tasks.data(), tasks.size() * sizeof(Task), cudaMemcpyHostToDevice, stream));
  with_path<T>([&](auto path) {
    for (std::size_t first = 0; first < tasks.size(); first += kMaxBatch) {
      const dim3 grid(blocks_for(M, kTile), blocks_for(N, kTile),
                      static_cast<unsigned>(std::min(kMaxBatch, tasks.size() - first)));
      launch("gemm_batch_kernel", grid, kThreads, stream, gemm_batch_kernel<T, decltype(path), Task>,
             device_tasks + first);
    }
  });
}

}  // namespace mpsntk::cuda
