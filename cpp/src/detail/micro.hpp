// Register-blocked micro-kernels and panel packing, compiled once per instruction set.
// Included by engine_*.cpp inside namespace mpsntk::MPSNTK_ISA_NS with MPSNTK_VBYTES and
// MPSNTK_MR defined. Every operand lives in "panels": groups of L = VBYTES/sizeof(T) rows,
// stored [k][lane], so one vector load reads one k-slice of L rows.

template <class T>
struct Simd {
  typedef T vec __attribute__((vector_size(MPSNTK_VBYTES)));
  static constexpr int L = MPSNTK_VBYTES / sizeof(T);  ///< lanes (panel width)
  static constexpr int NV = MPSNTK_NV;                 ///< vectors per micro-tile row
  static constexpr int NR = NV * L;                    ///< micro-tile columns
  static constexpr int MR = MPSNTK_MR;                 ///< micro-tile rows
  static constexpr int PAD = (MR > NR ? MR : NR);      ///< row padding (multiple of MR, NR, L)
  static_assert(PAD % MR == 0 && PAD % NR == 0, "tile shapes must nest");

  static inline vec load(const T* p) {
    vec v;
    std::memcpy(&v, p, sizeof(vec));
    return v;
  }
  static inline void store(T* p, const vec& v) { std::memcpy(p, &v, sizeof(vec)); }
  static inline vec splat(T a) { return vec{} + a; }  // scalar operands broadcast
};

inline index_t round_up(index_t n, index_t m) { return (n + m - 1) / m * m; }

/// Offset of panel p in a packed operand of depth K.
template <class T>
inline index_t panel_offset(index_t row, index_t K) {
  return (row / Simd<T>::L) * K * Simd<T>::L;
}

/// Address of row `row` (at k = 0) of a packed operand: micro-tiles start on a multiple of MR
/// (A side) or NR (B side), so a micro-tile never straddles a panel boundary mid-way.
template <class T>
inline const T* panel_row(const T* base, index_t row, index_t K) {
  return base + panel_offset<T>(row, K) + row % Simd<T>::L;
}

/// acc[r][v] = sum_k a[row r][k] * b[col v*L+lane][k] for an MR x NR micro-tile.
/// a, b come from panel_row() for the tile's first row / column; both have depth K.  Rows of
/// one micro-tile are either inside one panel (MR <= L) or whole panels (MR a multiple of L).
template <class T>
__attribute__((always_inline)) inline void micro_gemm(const T* __restrict a, const T* __restrict b, index_t K,
                                                      typename Simd<T>::vec (&acc)[Simd<T>::MR][Simd<T>::NV]) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int L = S::L, MR = S::MR, NV = S::NV;
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = S::splat(T(0));
  const T* ap[MR];
  for (int r = 0; r < MR; ++r) ap[r] = a + (r / L) * K * L + (r % L);
  static_assert(MR % L == 0 || L % MR == 0, "micro-tile rows must nest with panels");
  const T* bp[NV];
  for (int v = 0; v < NV; ++v) bp[v] = b + v * K * L;
  for (index_t k = 0; k < K; ++k) {
    vec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = S::load(bp[v] + k * L);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const T av = ap[r][k * L];  // broadcast straight from memory
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
}

/// Pack n_rows rows of length dim into panels: dst[panel][k][lane] = scale(r) * row(r)[k].
/// Rows from n_rows up to round_up(n_rows, PAD) are zero.  row(r) returns a pointer to the
/// row's values (src[k]: a pointer, or a FactorRow); scale(r) a multiplier (row log-scale or
/// cotangent).
template <class T, class RowFn, class ScaleFn>
void pack_rows(index_t n_rows, index_t dim, RowFn row, ScaleFn scale, T* dst) {
  constexpr int L = Simd<T>::L;
  const index_t npad = round_up(n_rows, Simd<T>::PAD);
  for (index_t r = 0; r < npad; ++r) {
    T* d = dst + panel_offset<T>(r, dim) + (r % L);
    if (r < n_rows) {
      const auto src = row(r);
      const T s = static_cast<T>(scale(r));
      for (index_t k = 0; k < dim; ++k) d[k * L] = s * src[k];
    } else {
      for (index_t k = 0; k < dim; ++k) d[k * L] = T(0);
    }
  }
}

/// Pack n_rows rows of C * dim values into panels: row r is the C rows row(r, l) (each dim
/// values, src[k]) one after the other, each times scale(r, l).  Padding rows are zero.
template <class T, class RowFn, class ScaleFn>
void pack_folded(index_t n_rows, index_t C, index_t dim, RowFn row, ScaleFn scale, T* dst) {
  constexpr int L = Simd<T>::L;
  const index_t npad = round_up(n_rows, Simd<T>::PAD), width = C * dim;
  for (index_t r = 0; r < npad; ++r) {
    T* d = dst + panel_offset<T>(r, width) + (r % L);
    if (r >= n_rows) {
      for (index_t k = 0; k < width; ++k) d[k * L] = T(0);
      continue;
    }
    for (index_t l = 0; l < C; ++l) {
      const auto src = row(r, l);
      const T s = static_cast<T>(scale(r, l));
      for (index_t k = 0; k < dim; ++k) d[(l * dim + k) * L] = s * src[k];
    }
  }
}

/// Pack an operand given element-wise: dst[panel(r)][k][lane(r)] = elem(r, k) for r < n_rows.
template <class T, class ElemFn>
void pack_elems(index_t n_rows, index_t dim, ElemFn elem, T* dst) {
  constexpr int L = Simd<T>::L;
  const index_t npad = round_up(n_rows, Simd<T>::PAD);
  for (index_t r = 0; r < npad; ++r) {
    T* d = dst + panel_offset<T>(r, dim) + (r % L);
    for (index_t k = 0; k < dim; ++k) d[k * L] = r < n_rows ? static_cast<T>(elem(r, k)) : T(0);
  }
}

/// out(r, c) for r < M, c < N of (packed A: M x K) * (packed B: N x K)^T; `store(r, c, value)`
/// receives each finished entry.  Rows are split into blocks across OpenMP threads (inside
/// another region, where Region gives one thread, the calling thread does them all).
template <class T, class Store>
void gemm_packed(index_t M, index_t N, index_t K, const T* a, const T* b, Store store) {
  using S = Simd<T>;
  const index_t mt = round_up(M, S::MR) / S::MR;
  const index_t nt = round_up(N, S::NR) / S::NR;
  Region region;
#pragma omp parallel for schedule(static) num_threads(region.threads()) if (mt * nt * K > 32768)
  for (index_t p = 0; p < mt; ++p)
    region.run([&] {
      for (index_t q = 0; q < nt; ++q) {
        typename S::vec acc[S::MR][S::NV];
        micro_gemm<T>(panel_row<T>(a, p * S::MR, K), panel_row<T>(b, q * S::NR, K), K, acc);
        for (int r = 0; r < S::MR; ++r) {
          const index_t i = p * S::MR + r;
          if (i >= M) break;
          for (int v = 0; v < S::NV; ++v)
            for (int l = 0; l < S::L; ++l) {
              const index_t c = q * S::NR + v * S::L + l;
              if (c < N) store(i, c, acc[r][v][l]);
            }
        }
      }
    });
  region.finish();
}
