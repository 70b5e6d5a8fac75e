// Fused, tiled NTK accumulation:
//   Theta~[i, k] += w_j * (u_i . u_k) * (a_i . a_k) * (b_i . b_k)     for every site j,
// one output tile at a time, with the three Gram products of a micro-tile computed in registers
// and multiplied straight into the tile; the per-site n1 x n2 terms never exist in memory.

/// Multi-output traces in one pass.  sum_l Theta_ll sums, over l, site terms (u.u')(a.a')(b.b')
/// in which at most one of a, b depends on l, and its (x, l) rows are contiguous per sample.
/// Each (x, l) row is rescaled in place by exp(log(x, l) - max_l log(x, l)) and a sample's C
/// rows are read as one row of C * dim values: their Gram is the sum over l.  The label site's
/// factors do not depend on l; its trace is C times its term (the caller scales its weight).
template <class T>
void fold_outputs(Factors<T>& F) {
  const index_t C = F.n_outputs(), n = F.n, N = F.chain->n_sites;
  if (C == 1) return;
  auto fold = [&](T* v, double* lg, index_t dim) {
    for (index_t x = 0; x < n; ++x) {  // increasing x: lg[x] is written after it is read
      double m = -std::numeric_limits<double>::infinity();
      for (index_t l = 0; l < C; ++l) m = std::max(m, lg[x * C + l]);
      for (index_t l = 0; l < C; ++l) {
        const T f = static_cast<T>(std::exp(lg[x * C + l] - m));
        T* row = v + (x * C + l) * dim;
        for (index_t k = 0; k < dim; ++k) row[k] *= f;
      }
      lg[x] = m;
    }
  };
  const bool open = F.chain->boundary == Boundary::open;
  Region region;
#pragma omp parallel for schedule(dynamic) num_threads(region.threads()) if (n * N > 4096)
  for (index_t j = 0; j < N; ++j)
    region.run([&] {
      auto& s = F.site[j];
      if (s.mult_a > 1) {  // open: left slot j; periodic: the open environment E_j
        fold(open ? F.env.left[j] : F.open_env[j].data(), open ? F.env.left_log[j].data() : F.open_log[j].data(), s.da);
        s.mult_a = 1, s.da *= C;
      }
      if (s.mult_b > 1) {  // open chains only: right slot j + 1
        fold(F.env.right[j + 1], F.env.right_log[j + 1].data(), s.db);
        s.mult_b = 1, s.db *= C;
      }
    });
  region.finish();
}

/// Rewrite, in place, the environment slots of an open chain that do not depend on the output
/// l as packed panels (each block of L rows, row-major, becomes [k][lane]; slots are padded to
/// whole panels), so that the NTK reads them without a second copy of every environment.
/// Afterwards a_row/b_row of those sites are no longer valid: only pack_side reads them.
template <class T>
void make_panels(Factors<T>& F) {
  if (F.chain->boundary != Boundary::open) return;
  constexpr int L = Simd<T>::L;
  const index_t N = F.chain->n_sites, panels = round_up(F.n, Simd<T>::PAD) / L;
  auto convert = [&](T* v, index_t dim, buffer<T>& tmp) {
    tmp.resize(L * dim);
    for (index_t p = 0; p < panels; ++p) {
      T* blk = v + p * L * dim;
      std::copy(blk, blk + L * dim, tmp.begin());
      for (index_t r = 0; r < L; ++r)
        for (index_t k = 0; k < dim; ++k) blk[k * L + r] = tmp[r * dim + k];
    }
  };
  Region region;
#pragma omp parallel num_threads(region.threads()) if (F.n * N > 4096)
  {
    buffer<T> tmp;
#pragma omp for schedule(dynamic)
    for (index_t j = 0; j < N; ++j)
      region.run([&] {
        auto& s = F.site[j];  // open chains: s.a is left slot j, s.b right slot j + 1
        if (s.mult_a == 1 && s.da > 1) convert(F.env.left[j], s.da, tmp);
        if (s.mult_b == 1 && s.db > 1) convert(F.env.right[j + 1], s.db, tmp);
        s.a_panels = s.mult_a == 1;  // a single column is the same in both layouts
        s.b_panels = s.mult_b == 1;
      });
  }
  region.finish();
}

/// The factors of one batch for one output l as packed panels, site by site.  The u rows are
/// packed here; a and b point at the environments where make_panels converted them, and are
/// packed here otherwise (rows that depend on l, periodic chains).
template <class T>
struct PackedSide {
  index_t n = 0, d = 0;
  std::vector<index_t> da, db;
  std::vector<const T*> u, a, b;  ///< b[j] == nullptr when db == 0
  buffer<T> own;
};

/// Per-sample reference log-scale of the NTK: the largest log-scale of a site's weighted row,
/// log(j, x, l) + log sqrt(w_j), over sites and outputs (-inf when every row vanishes).  The
/// packed row weights exp(log(j, x, l) + log sqrt(w_j) - c(x)) then lie in [0, 1], however far
/// the factors or the site weights are from the range of T.
template <class T>
std::vector<double> ntk_log_scale(const Factors<T>& F, const std::vector<double>& half_log_weight) {
  std::vector<double> c(F.n, -std::numeric_limits<double>::infinity());
  for (index_t x = 0; x < F.n; ++x)
    for (index_t j = 0; j < F.chain->n_sites; ++j)
      for (index_t l = 0; l < F.n_outputs(); ++l) c[x] = std::max(c[x], F.log(j, x, l) + half_log_weight[j]);
  return c;
}

/// Pack the factors of output l; u rows carry the relative scale exp(log(j,x,l) + log sqrt(w_j)
/// - c(x)), so that the product of the three Grams is the site's whole term relative to
/// exp(c_i + c_k).
template <class T>
PackedSide<T> pack_side(const Factors<T>& F, index_t l, const std::vector<double>& c,
                        const std::vector<double>& half_log_weight) {
  PackedSide<T> P;
  const index_t N = F.chain->n_sites, npad = round_up(F.n, Simd<T>::PAD);
  P.n = F.n;
  P.d = F.chain->phys_dim;
  P.da.resize(N), P.db.resize(N), P.u.resize(N), P.a.resize(N), P.b.resize(N);
  std::vector<index_t> off_u(N), off_a(N, -1), off_b(N, -1);
  index_t total = 0;
  for (index_t j = 0; j < N; ++j) {
    const auto& s = F.site[j];
    P.da[j] = s.da;
    P.db[j] = s.db;
    off_u[j] = total, total += npad * P.d;
    if (!s.a_panels) off_a[j] = total, total += npad * s.da;
    if (s.db && !s.b_panels) off_b[j] = total, total += npad * s.db;
  }
  P.own.resize(total);
  T* base = P.own.data();
  for (index_t j = 0; j < N; ++j) {
    const auto& s = F.site[j];
    P.u[j] = base + off_u[j];
    P.a[j] = s.a_panels ? s.a : base + off_a[j];
    P.b[j] = !s.db ? nullptr : s.b_panels ? s.b : base + off_b[j];
  }
  Region region;
#pragma omp parallel for schedule(dynamic) num_threads(region.threads()) if (total > 65536)
  for (index_t j = 0; j < N; ++j)
    region.run([&] {
      pack_rows<T>(
          F.n, P.d, [&](index_t x) { return F.u_row(j, x); },
          [&](index_t x) { return tile::row_weight(F.log(j, x, l) + half_log_weight[j], c[x]); }, base + off_u[j]);
      if (off_a[j] >= 0)
        pack_rows<T>(
            F.n, P.da[j], [&](index_t x) { return F.a_row(j, x, l); }, [](index_t) { return 1.0; }, base + off_a[j]);
      if (off_b[j] >= 0)
        pack_rows<T>(
            F.n, P.db[j], [&](index_t x) { return F.b_row(j, x, l); }, [](index_t) { return 1.0; }, base + off_b[j]);
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
#ifdef _OPENMP
    buffer<T>& buf = buffers[omp_get_thread_num()];
#else
    buffer<T>& buf = buffers[0];
#endif
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

/// The NTK of one or two batches (contract of mpsntk::ntk in engine.hpp).
template <class T>
bool ntk_impl(const ChainView<T>& ch, const FeatureView<T>& phi1, const FeatureView<T>* phi2, const NtkOptions& opt,
              const double* site_lr, T* out, double* log1, double* log2) {
  const index_t N = ch.n_sites, C = ch.n_outputs;
  const bool sym = phi2 == nullptr;
  const bool full = opt.full_outputs && C > 1;
  Factors<T> F1 = compute_factors<T>(ch, phi1);
  Factors<T> F2storage;
  if (!sym) F2storage = compute_factors<T>(ch, *phi2);
  if (!full) {  // traced outputs: one pass over the sites
    fold_outputs(F1);
    if (!sym) fold_outputs(F2storage);
  }
  make_panels(F1);
  if (!sym) make_panels(F2storage);
  Factors<T>& F2 = sym ? F1 : F2storage;
  const index_t n1 = F1.n, n2 = F2.n;
  // log sqrt(w_j) of the site weights w_j = c_j^2 site_lr_j (times C at the label site when the
  // outputs are traced: C equal terms), in double, where no weight leaves the range
  std::vector<double> weight(N);
  for (index_t j = 0; j < N; ++j) {
    const double traced = !full && j == ch.output_site ? std::log(double(C)) : 0.0;
    weight[j] = 0.5 * (2 * std::log(ch.scales[j]) + std::log(site_lr[j]) + traced);
  }
  const std::vector<double> c1 = ntk_log_scale(F1, weight);
  const std::vector<double> c2 = sym ? c1 : ntk_log_scale(F2, weight);

  const index_t cc = full ? C * C : 1;
  const index_t block = n1 * n2 * cc;
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
  tgt.ld_row = n2 * cc;
  tgt.ld_col = cc;
  tgt.site_stride = opt.per_site ? block : 0;
  std::vector<char> all(N, 1), no_label(N, 1);
  if (ch.output_site >= 0) no_label[ch.output_site] = 0;

  if (!full) {  // sum over outputs l of Theta_ll, folded into the factors
    PackedSide<T> p1 = pack_side<T>(F1, 0, c1, weight);
    PackedSide<T> p2storage;
    if (!sym) p2storage = pack_side<T>(F2, 0, c2, weight);
    tgt.out = out;
    tgt.mirror = sym ? out : nullptr;
    tgt.upper_only = sym;
    ntk_tiles<T>(p1, sym ? p1 : p2storage, all, tgt, opt.tile);
  } else {
    std::vector<PackedSide<T>> p2all;
    for (index_t l2 = 0; l2 < C && !sym; ++l2) p2all.push_back(pack_side<T>(F2, l2, c2, weight));
    for (index_t l1 = 0; l1 < C; ++l1) {
      PackedSide<T> p1 = pack_side<T>(F1, l1, c1, weight);
      for (index_t l2 = sym ? l1 : 0; l2 < C; ++l2) {
        PackedSide<T> p2sym;
        if (sym && l2 != l1) p2sym = pack_side<T>(F1, l2, c1, weight);
        const PackedSide<T>& p2 = sym ? (l2 == l1 ? p1 : p2sym) : p2all[l2];
        tgt.out = out + l1 * C + l2;
        // Symmetric data: Theta_{l2 l1}(x', x) = Theta_{l1 l2}(x, x').
        tgt.mirror = sym ? out + l2 * C + l1 : nullptr;
        tgt.upper_only = sym && l1 == l2;
        ntk_tiles<T>(p1, p2, l1 == l2 ? all : no_label, tgt, opt.tile);
      }
    }
  }
  return finite.load();
}
