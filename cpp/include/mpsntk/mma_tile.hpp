/// @file mma_tile.hpp
/// @brief Which entries of the CUDA NTK kernel's 64 x 64 output tile each thread owns, for the
/// SIMT path and for the tensor-core (mma.sync) paths, and which tile each block computes.
/// `__host__ __device__`: the kernel uses these maps for every load and store, and the CPU
/// test-suite replays them against an emulation of the PTX mma semantics
/// (mpsntk._core.mma_tile_map) and checks the tile order (mpsntk._core.tile_order).
#pragma once

#include "mpsntk/common.hpp"

namespace mpsntk::tile {

constexpr int kBlockTile = 64;      ///< output tile edge of one thread block
constexpr int kBlockThreads = 256;  ///< threads per block (8 warps)
constexpr int kWarpSize = 32;
constexpr int kStageDepth = 16;  ///< depth of the chunk of both row blocks staged in shared memory

/// Fragments of mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 (FP64 tensor cores, sm_80+),
/// as the PTX ISA defines them, with g = lane / 4 and t = lane % 4: A (8 x 4, row-major) holds
/// A[g][t], B (4 x 8, column-major) holds B[t][g], C/D (8 x 8) hold C[g][2t + r], r = 0, 1.
struct MmaF64 {
  using Element = double;
  static constexpr int M = 8, N = 8, K = 4, A_REGS = 1, B_REGS = 1, C_REGS = 2;
  MPSNTK_HD static int a_row(int lane, int) { return lane >> 2; }
  MPSNTK_HD static int a_k(int lane, int) { return lane & 3; }
  MPSNTK_HD static int b_k(int lane, int) { return lane & 3; }
  MPSNTK_HD static int b_col(int lane, int) { return lane >> 2; }
  MPSNTK_HD static int c_row(int lane, int) { return lane >> 2; }
  MPSNTK_HD static int c_col(int lane, int r) { return 2 * (lane & 3) + r; }
};

/// Fragments of mma.sync.aligned.m16n8k8.row.col with TF32 operands (FP32 registers, FP32
/// accumulators; sm_80+) or with f64 operands and accumulators (sm_90+, Hopper's FP64 shapes),
/// which the PTX ISA lays out alike: A (16 x 8) holds A[g + 8 (r & 1)][t + 4 (r >> 1)], r < 4;
/// B (8 x 8) holds B[t + 4r][g], r < 2; C/D (16 x 8) hold C[g + 8 (r >> 1)][2t + (r & 1)], r < 4.
template <class E>
struct MmaM16n8k8 {
  using Element = E;
  static constexpr int M = 16, N = 8, K = 8, A_REGS = 4, B_REGS = 2, C_REGS = 4;
  MPSNTK_HD static int a_row(int lane, int r) { return (lane >> 2) + 8 * (r & 1); }
  MPSNTK_HD static int a_k(int lane, int r) { return (lane & 3) + 4 * (r >> 1); }
  MPSNTK_HD static int b_k(int lane, int r) { return (lane & 3) + 4 * r; }
  MPSNTK_HD static int b_col(int lane, int) { return lane >> 2; }
  MPSNTK_HD static int c_row(int lane, int r) { return (lane >> 2) + 8 * (r >> 1); }
  MPSNTK_HD static int c_col(int lane, int r) { return 2 * (lane & 3) + (r & 1); }
};
using MmaTf32 = MmaM16n8k8<float>;      ///< m16n8k8.f32.tf32.tf32.f32
using MmaF64Sm90 = MmaM16n8k8<double>;  ///< m16n8k8.f64.f64.f64.f64

/// Tensor-core tiling of the block tile: the 8 warps form a 2 x 4 grid of 32 x 16 warp tiles,
/// each covered by MI x NI mma blocks.  Every thread owns ACC = 16 accumulators, as on the
/// SIMT path, so the kernel's epilogue is the same for all paths.
///
/// Staged chunks are row-major (element (row, k) at stage(row, k)) with rows padded by 16
/// bytes: a fragment load (rows g, depths t) then touches every bank equally, and so does the
/// staging store (16 consecutive depths of two rows): both take the fewest wavefronts.
template <class Mma>
struct WarpTile {
  static constexpr int ROWS = 32, COLS = 16;
  static constexpr int MI = ROWS / Mma::M, NI = COLS / Mma::N;
  static constexpr int ACC = MI * NI * Mma::C_REGS;
  static_assert(ACC == 16, "every path owns 16 accumulators per thread");
  static constexpr int STAGE_LD = kStageDepth + 16 / static_cast<int>(sizeof(typename Mma::Element));
  static constexpr int STAGE_SIZE = kBlockTile * STAGE_LD;
  MPSNTK_HD static int stage(int row, int k) { return row * STAGE_LD + k; }
  MPSNTK_HD static int row0(int warp) { return (warp >> 2) * ROWS; }
  MPSNTK_HD static int col0(int warp) { return (warp & 3) * COLS; }
  /// Tile row of A register r of mma block mi; its depth is Mma::a_k(lane, r).
  MPSNTK_HD static int a_row(int warp, int lane, int mi, int r) {
    return row0(warp) + mi * Mma::M + Mma::a_row(lane, r);
  }
  /// Tile column of B register r of mma block ni; its depth is Mma::b_k(lane, r).
  MPSNTK_HD static int b_col(int warp, int lane, int ni, int r) {
    return col0(warp) + ni * Mma::N + Mma::b_col(lane, r);
  }
  /// Tile row / column of accumulator e = (mi * NI + ni) * C_REGS + r.
  MPSNTK_HD static int acc_row(int warp, int lane, int e) {
    return row0(warp) + (e / Mma::C_REGS / NI) * Mma::M + Mma::c_row(lane, e % Mma::C_REGS);
  }
  MPSNTK_HD static int acc_col(int warp, int lane, int e) {
    return col0(warp) + (e / Mma::C_REGS % NI) * Mma::N + Mma::c_col(lane, e % Mma::C_REGS);
  }
  /// Row groups (for row reductions): accumulators group_e(i, j), j < 4, share a tile row, that of
  /// mma row block i / CH and fragment row half i % CH (a C fragment holds 2 adjacent columns of
  /// CH rows per thread); the 16 threads that share a row differ in row_slot (their warp's column
  /// group, their lane % 4).
  static constexpr int CH = Mma::C_REGS / 2;
  static_assert(MI * CH == 4 && NI * 2 == 4, "4 rows of 4 accumulators per thread");
  MPSNTK_HD static int group_e(int i, int j) { return ((i / CH) * NI + j / 2) * Mma::C_REGS + (i % CH) * 2 + j % 2; }
  MPSNTK_HD static int row_slot(int warp, int lane) { return (warp & 3) * 4 + lane % 4; }
};

/// SIMT tiling: thread (ty, tx) = (thread / 16, thread % 16) owns the row pairs 2 ty + {0, 1}
/// and 32 + 2 ty + {0, 1}, and the column pairs 2 tx + {0, 1} and 32 + 2 tx + {0, 1};
/// accumulator e = 4 i + j is row pair i / 2, row i % 2 and column pair j / 2, column j % 2.
/// Staged chunks are depth-major with rows of 66 (even: a pair is one aligned 8-byte (float) or
/// 16-byte (double) load): per depth the product reads 2 + 2 pairs, where single elements took
/// 4 + 4 loads, with no bank conflict, and the staging store (16 depths of two rows per warp)
/// takes the fewest wavefronts.
struct SimtTile {
  static constexpr int ACC = 16;
  static constexpr int LD = kBlockTile + 2;
  static constexpr int STAGE_SIZE = kStageDepth * LD;
  MPSNTK_HD static int stage(int row, int k) { return k * LD + row; }
  /// First row (column) of pair p of thread coordinate t (ty or tx).
  MPSNTK_HD static int pair(int t, int p) { return 2 * t + 32 * p; }
  MPSNTK_HD static int acc_row(int thread, int e) { return pair(thread / 16, e / 8) + (e / 4) % 2; }
  MPSNTK_HD static int acc_col(int thread, int e) { return pair(thread % 16, (e % 4) / 2) + e % 2; }
  /// Row groups (as WarpTile's): accumulators 4 i .. 4 i + 3 share a row; the 16 threads that
  /// share a row differ in thread % 16.
  MPSNTK_HD static int group_e(int i, int j) { return 4 * i + j; }
  MPSNTK_HD static int row_slot(int thread) { return thread % 16; }
};

/// Rows of output tiles per scheduling group of the NTK kernel (see grouped_tile).
constexpr index_t kGroupRows = 8;

/// Output tile (ib, kb) of block idx of the NTK kernel, over all t1 x t2 tiles or, when upper,
/// the tiles with kb >= ib (t1 == t2): tile rows in groups of kGroupRows, column by column within
/// a group.  The blocks resident at a time then cover a few tile rows and a few columns instead
/// of one row and every column, so each wave needs the factor rows of far fewer samples, and a
/// site's rows are read from DRAM by fewer waves.
MPSNTK_HD void grouped_tile(index_t idx, index_t t1, index_t t2, bool upper, index_t& ib, index_t& kb) {
  index_t r0 = 0, g = 0;
  for (;; r0 += kGroupRows) {  // the group of idx
    g = t1 - r0 < kGroupRows ? t1 - r0 : kGroupRows;
    const index_t count = g * (t2 - (upper ? r0 : 0)) - (upper ? g * (g - 1) / 2 : 0);
    if (idx < count) break;
    idx -= count;
  }
  if (!upper) {
    kb = idx / g, ib = r0 + idx % g;
    return;
  }
  // Upper: column r0 + c holds min(g, c + 1) tiles; the first g columns form the triangle.
  if (idx < g * (g + 1) / 2) {
    index_t c = 0;
    while ((c + 1) * (c + 2) / 2 <= idx) ++c;
    kb = r0 + c, ib = r0 + idx - c * (c + 1) / 2;
  } else {
    idx -= g * (g + 1) / 2;
    kb = r0 + g + idx / g, ib = r0 + idx % g;
  }
}

}  // namespace mpsntk::tile
