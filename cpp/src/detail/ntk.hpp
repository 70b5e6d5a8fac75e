// Fused, tiled NTK accumulation:
//   Theta~[i, k] += w_j * (u_i . u_k) * (a_i . a_k) * (b_i . b_k)     for every site j,
// one output tile at a time, with the three Gram products of a micro-tile computed in registers
// and multiplied straight into the tile; the per-site n1 x n2 terms never exist in memory.

/// The factors of one batch for one output l as packed panels, site by site.  The u rows are
/// packed here; a and b point at the factors where they are panels already (sides independent of
/// the output), and are packed here otherwise.  l = -1 packs the trace over the outputs in one
/// pass: sum_l Theta_ll sums site terms (u.u')(a.a')(b.b') in which at most one of a, b depends
/// on l, so that side's C rows of a sample, each rescaled by exp(log(x, l) - max_l log(x, l)),
/// are packed as one row of C * dim values: their Gram is the sum over l.  (The label site's
/// factors do not depend on l: its trace is C times its term, which its weight carries.)
template <class T>
struct PackedSide {
  index_t n = 0, d = 0;
  std::vector<index_t> da, db;
  std::vector<const T*> u, a, b;  ///< b[j] == nullptr when db == 0
  buffer<T> own;
};

/// The layout of a PackedSide: dims and, for what it packs itself, offsets into `own` (-1: read
/// in place); returns the size of `own`.
template <class T>
index_t plan_side(const ChainView<T>& ch, index_t n, bool traced, PackedSide<T>& P, std::vector<index_t>& off_u,
                  std::vector<index_t>& off_a, std::vector<index_t>& off_b) {
  const index_t N = ch.n_sites, npad = round_up(n, Simd<T>::PAD), C = ch.n_outputs;
  P.n = n;
  P.d = ch.phys_dim;
  P.da.resize(N), P.db.resize(N), P.u.resize(N), P.a.resize(N), P.b.resize(N);
  off_u.assign(N, -1), off_a.assign(N, -1), off_b.assign(N, -1);
  index_t total = 0;
  for (index_t j = 0; j < N; ++j) {
    const SiteFactor<T> s = site_factor_shape(ch, j);  // multiplicities: panels are exactly mult 1
    P.da[j] = s.da * (traced && s.mult_a > 1 ? C : 1);
    P.db[j] = s.db * (traced && s.mult_b > 1 ? C : 1);
    off_u[j] = total, total += npad * P.d;
    if (s.mult_a > 1) off_a[j] = total, total += npad * P.da[j];
    if (s.db && s.mult_b > 1) off_b[j] = total, total += npad * P.db[j];
  }
  return total;
}

/// Pack the factors of output l (-1: traced); the u rows carry the relative scale
/// exp(log(j, x, l) + log sqrt(w_j) - c(x)) (traced: the largest over l), so that the product of
/// the three Grams is the site's whole term relative to exp(c_i + c_k).
template <class T>
PackedSide<T> pack_side(const Factors<T>& F, index_t l, const std::vector<double>& c,
                        const std::vector<double>& half_log_weight) {
  PackedSide<T> P;
  std::vector<index_t> off_u, off_a, off_b;
  const bool traced = l < 0;
  const index_t N = F.chain->n_sites, C = F.n_outputs();
  P.own.resize(plan_side(*F.chain, F.n, traced, P, off_u, off_a, off_b));
  T* base = P.own.data();
  for (index_t j = 0; j < N; ++j) {
    const auto& s = F.site[j];
    P.u[j] = base + off_u[j];
    P.a[j] = off_a[j] < 0 ? s.a : base + off_a[j];
    P.b[j] = !s.db ? nullptr : off_b[j] < 0 ? s.b : base + off_b[j];
  }
  // log of the row (x, l) of site j that enters the weights: traced, the largest over l
  auto row_log = [&](index_t j, index_t x) {
    if (!traced) return F.log(j, x, l);
    double m = -std::numeric_limits<double>::infinity();
    for (index_t k = 0; k < C; ++k) m = std::max(m, F.log(j, x, k));
    return m;
  };
  // One side of site j, rows of sample x (folded over the outputs when traced).
  auto pack = [&](index_t j, bool side_a, T* dst) {
    const auto& s = F.site[j];
    const index_t dim = side_a ? s.da : s.db;
    if (!traced) {
      pack_rows<T>(
          F.n, dim, [&](index_t x) { return side_a ? F.a_row(j, x, l) : F.b_row(j, x, l); },
          [](index_t) { return 1.0; }, dst);
      return;
    }
    pack_folded<T>(
        F.n, C, dim, [&](index_t x, index_t k) { return side_a ? F.a_row(j, x, k) : F.b_row(j, x, k); },
        [&](index_t x, index_t k) { return std::exp(F.log(j, x, k) - row_log(j, x)); }, dst);
  };
  Region region;
#pragma omp parallel for schedule(dynamic) num_threads(region.threads()) if (static_cast<index_t>(P.own.size()) > 65536)
  for (index_t j = 0; j < N; ++j)
    region.run([&] {
      pack_rows<T>(
          F.n, P.d, [&](index_t x) { return FactorRow<T>{F.u_row(j, x), 1}; },
          [&](index_t x) { return tile::row_weight(row_log(j, x) + half_log_weight[j], c[x]); }, base + off_u[j]);
      if (off_a[j] >= 0) pack(j, true, base + off_a[j]);
      if (off_b[j] >= 0) pack(j, false, base + off_b[j]);
    });
  region.finish();
  return P;
}

/// Where a block of the kernel goes: entry (i, k) of site j at out + i*ld_row + k*ld_col +
/// j*site_stride (site_stride = 0 sums the sites).  With `mirror`, (k, i) of mirror also gets
/// it; with upper_only (side 1 == side 2) only tiles on or above the diagonal are computed and
/// the mirror fills the rest.
template <class T>
struct NtkTarget {
  T* out = nullptr;
  index_t ld_row = 0, ld_col = 1, site_stride = 0;
  T* mirror = nullptr;
  bool upper_only = false;
  std::atomic<bool>* finite = nullptr;  ///< cleared when a written entry is not finite
  const double* log1 = nullptr;         ///< with log1/log2: write exp(c_i + c_k) Theta~ (else Theta~)
  const double* log2 = nullptr;
  const double* exp1 = nullptr;  ///< exp(c_i), exp(c_k), used when `split` (all c moderate)
  const double* exp2 = nullptr;
  bool split = false;
};

template <class T>
void ntk_tiles(const PackedSide<T>& s1, const PackedSide<T>& s2, const std::vector<char>& use_site,
               const NtkTarget<T>& tgt, index_t tile) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int MR = S::MR, NV = S::NV, NR = S::NR, L = S::L;
  const index_t N = static_cast<index_t>(use_site.size());
  // A tile never needs to exceed the data; per-thread tile buffers are allocated here, outside
  // the parallel region, so that a failed allocation surfaces as an exception (MemoryError).
  const index_t tb = round_up(std::min(std::max<index_t>(tile, 1), std::max(s1.n, s2.n)), S::PAD);
  const index_t t1 = (s1.n + tb - 1) / tb, t2 = (s2.n + tb - 1) / tb;
  buffer<std::pair<index_t, index_t>> tiles;
  for (index_t ib = 0; ib < t1; ++ib)
    for (index_t kb = tgt.upper_only ? ib : 0; kb < t2; ++kb) tiles.emplace_back(ib, kb);
  const bool per_site = tgt.site_stride != 0;

  Region region;
  const int n_threads = tiles.size() > 1 ? region.threads() : 1;
  std::vector<buffer<T>> buffers(n_threads);
  for (auto& b : buffers) b.resize(tb * tb);
#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
  {
    buffer<T>& buf = thread_slot(buffers);
    // Each tile is written to `out` whole (per site with per_site) from the thread's buffer, so
    // an interrupted call leaves every entry either untouched or final: with `out` NaN-filled
    // first (the Python layer does), the tiles that still hold NaN are exactly those to redo.
#pragma omp for schedule(dynamic)
    for (index_t t = 0; t < static_cast<index_t>(tiles.size()); ++t)
      region.run([&] {
        const index_t i0 = tiles[t].first * tb, k0 = tiles[t].second * tb;
        const index_t mi = std::min(tb, s1.n - i0), mk = std::min(tb, s2.n - k0);
        const index_t pi = round_up(mi, S::PAD), pk = round_up(mk, S::PAD);
        // A diagonal tile of a symmetric call computes its upper micro-tiles only and reads its
        // lower half from them when it is written.
        const bool diag = tgt.upper_only && i0 == k0;
        const bool mirror_tile = tgt.mirror && !diag;
        std::fill(buf.begin(), buf.end(), T(0));
        bool all_finite = true;
        auto flush = [&](index_t j) {
          T* o = tgt.out + j * tgt.site_stride;
          T* m = tgt.mirror ? tgt.mirror + j * tgt.site_stride : nullptr;
          for (index_t i = 0; i < mi; ++i)
            for (index_t k = 0; k < mk; ++k) {
              T v = (diag && k < i) ? buf[k * tb + i] : buf[i * tb + k];
              if (tgt.log1) {
                const index_t a = i0 + i, b = k0 + k;
                // in double: the scale alone can leave the range of float where the entry does not
                v = static_cast<T>(static_cast<double>(v) *
                                   tile::pair_scale(tgt.log1[a], tgt.exp1[a], tgt.log2[b], tgt.exp2[b], tgt.split));
              }
              T& dst = o[(i0 + i) * tgt.ld_row + (k0 + k) * tgt.ld_col];
              dst = v;
              all_finite = all_finite && std::isfinite(dst);
              if (mirror_tile) {
                T& md = m[(k0 + k) * tgt.ld_row + (i0 + i) * tgt.ld_col];
                md = v;
              }
            }
          std::fill(buf.begin(), buf.end(), T(0));
          if (!all_finite) tgt.finite->store(false, std::memory_order_relaxed);
        };
        for (index_t j = 0; j < N; ++j) {
          region.checkpoint();
          if (!use_site[j]) {  // its (zero) entries still have to be written
            if (per_site) flush(j);
            continue;
          }
          const index_t d = s1.d, da = s1.da[j], db = s1.db[j];
          const T *u1 = s1.u[j], *a1 = s1.a[j], *b1 = s1.b[j];
          const T *u2 = s2.u[j], *a2 = s2.a[j], *b2 = s2.b[j];
          for (index_t p = 0; p < pi; p += MR) {
            for (index_t q = 0; q < pk; q += NR) {
              if (diag && q + NR <= p) continue;  // strictly below the diagonal
              vec g[MR][NV], h[MR][NV];
              micro_gemm<T>(panel_row<T>(a1, i0 + p, da), panel_row<T>(a2, k0 + q, da), da, g);
              if (db) {
                micro_gemm<T>(panel_row<T>(b1, i0 + p, db), panel_row<T>(b2, k0 + q, db), db, h);
                for (int r = 0; r < MR; ++r)
                  for (int v = 0; v < NV; ++v) g[r][v] *= h[r][v];
              }
              micro_gemm<T>(panel_row<T>(u1, i0 + p, d), panel_row<T>(u2, k0 + q, d), d, h);
              for (int r = 0; r < MR; ++r) {
                T* row = buf.data() + (p + r) * tb + q;
                for (int v = 0; v < NV; ++v)
                  S::store(row + v * L, S::load(row + v * L) + tile::site_term(h[r][v], g[r][v]));
              }
            }
          }
          if (per_site) flush(j);
        }
        if (!per_site) flush(0);
      });
  }
  region.finish();
}

/// The NTK of one or two prepared batches (contract of mpsntk::ntk in engine.hpp).
template <class T>
bool ntk_factors(const Factors<T>& F1, const Factors<T>* F2p, const NtkOptions& opt, const double* site_lr, T* out,
                 double* log1, double* log2) {
  const ChainView<T>& ch = *F1.chain;
  const index_t N = ch.n_sites, C = ch.n_outputs;
  const bool sym = F2p == nullptr;
  const Factors<T>& F2 = sym ? F1 : *F2p;
  const index_t n1 = F1.n, n2 = F2.n;
  const NtkLayout layout(n1, n2, C, opt.full_outputs, opt.per_site);
  // traced outputs fold the label site's C equal terms into its weight
  const std::vector<double> weight = ntk_half_log_weights(ch, site_lr, !layout.full);
  auto log_scale = [&](const Factors<T>& F) {
    std::vector<double> c(F.n);
    for (index_t x = 0; x < F.n; ++x) c[x] = sample_log_scale(F.site.data(), N, C, x, weight.data());
    return c;
  };
  const std::vector<double> c1 = log_scale(F1);
  const std::vector<double> c2 = sym ? c1 : log_scale(F2);

  for (index_t x = 0; x < n1; ++x) log1[x] = std::isfinite(c1[x]) ? c1[x] : 0.0;
  for (index_t x = 0; x < n2; ++x) log2[x] = std::isfinite(c2[x]) ? c2[x] : 0.0;
  // Theta = exp(c_i + c_k) Theta~, applied as each tile is written.  While every c is moderate,
  // exp(c_i) * exp(c_k) is exact enough and avoids n1 * n2 exponentials.
  bool split = true;
  for (index_t i = 0; i < n1; ++i) split = split && tile::moderate_log(log1[i]);
  for (index_t k = 0; k < n2; ++k) split = split && tile::moderate_log(log2[k]);
  buffer<double> e1(n1), e2(n2);
  for (index_t i = 0; i < n1; ++i) e1[i] = std::exp(log1[i]);
  for (index_t k = 0; k < n2; ++k) e2[k] = std::exp(log2[k]);
  NtkTarget<T> tgt;
  std::atomic<bool> finite{true};
  tgt.finite = &finite;
  if (!opt.normalized) {
    tgt.log1 = log1, tgt.log2 = log2, tgt.exp1 = e1.data(), tgt.exp2 = e2.data();
    tgt.split = split;
  }
  tgt.ld_row = layout.ld_row;
  tgt.ld_col = layout.ld_col;
  tgt.site_stride = layout.site_stride;
  std::vector<char> all(N, 1), no_label(N, 1);
  if (ch.output_site >= 0) no_label[ch.output_site] = 0;

  // The packed sides of batch 2 for every output are kept across the passes (full outputs).
  std::vector<PackedSide<T>> side2(layout.full && !sym ? C : 0);
  for (index_t l2 = 0; l2 < static_cast<index_t>(side2.size()); ++l2) side2[l2] = pack_side<T>(F2, l2, c2, weight);
  PackedSide<T> p1;
  index_t packed_l1 = -2;
  for_each_output_block(layout, sym, [&](const OutputBlock& blk) {
    if (blk.l1 != packed_l1) p1 = pack_side<T>(F1, blk.l1, c1, weight), packed_l1 = blk.l1;
    PackedSide<T> p2own;
    const PackedSide<T>* p2 = &p1;
    if (!sym && layout.full)
      p2 = &side2[blk.l2];
    else if (!sym)
      p2own = pack_side<T>(F2, -1, c2, weight), p2 = &p2own;
    else if (blk.l2 != blk.l1)
      p2own = pack_side<T>(F1, blk.l2, c1, weight), p2 = &p2own;
    tgt.out = out + blk.offset;
    tgt.mirror = blk.mirror_offset >= 0 ? out + blk.mirror_offset : nullptr;
    tgt.upper_only = blk.upper_only;
    ntk_tiles<T>(p1, *p2, blk.label_term ? all : no_label, tgt, opt.tile);
  });
  return finite.load();
}

/// Memory of ntk_factors beyond its batches: packed sides (u rows and the sides that depend on
/// the output), the kept sides of batch 2 (full outputs), scales, and a tile buffer per thread.
template <class T>
Footprint ntk_footprint_of(const ChainView<T>& ch, index_t n1, index_t n2, const NtkOptions& opt) {
  const bool sym = n2 == 0;
  const index_t m2 = sym ? n1 : n2, C = ch.n_outputs;
  const bool full = opt.full_outputs && C > 1;
  auto side = [&](index_t n, bool traced) {
    PackedSide<T> P;
    std::vector<index_t> u, a, b;
    return static_cast<std::size_t>(plan_side(ch, n, traced, P, u, a, b)) * sizeof(T);
  };
  std::size_t packed = side(n1, !full) + (sym && !full ? 0 : side(m2, !full));
  if (full && !sym) packed += (C - 1) * side(m2, false);
  const index_t tb = round_up(std::min(std::max<index_t>(opt.tile, 1), std::max(n1, m2)), Simd<T>::PAD);
  const index_t tiles = ((n1 + tb - 1) / tb) * ((m2 + tb - 1) / tb);
  const std::size_t scales = 4 * (n1 + m2) * sizeof(double) + 2 * tiles * sizeof(index_t);
  const std::size_t buffers = static_cast<std::size_t>(num_threads()) * tb * tb * sizeof(T);
  return Footprint{0, packed + scales + buffers};
}
