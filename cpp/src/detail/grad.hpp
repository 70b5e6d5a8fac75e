// Forward pass and first-order products with the Jacobian (vjp, jvp, ntk_vp, explicit J),
// all from the per-site factors, so J is never formed unless asked for.

template <class T>
void forward_impl(const ChainView<T>& ch, const FeatureView<T>& phi, T* mantissa, double* log_scale) {
  const Environments<T> env = compute_environments<T>(ch, phi, true, false, /*keep_all=*/false);
  trace_last_slot(ch, env, mantissa, log_scale);
}

/// Number of outputs l whose factors must be visited at site j (1 when nothing depends on l).
template <class T>
index_t outputs_at(const Factors<T>& F, index_t j) {
  return mpsntk::outputs_at(F.site[j], j, F.chain->output_site, F.n_outputs());
}

/// Khatri-Rao rows coef(x) * u (x) a (K = d * da values) of the samples x0 .. x0 + m - 1 at site
/// j, output l, written into a packed operand: one row per sample (depth K) when
/// samples_as_rows, else one row per k (depth m).  Padding rows are zeroed.
template <class T, class Coef>
void pack_khatri_rao(const Factors<T>& F, index_t j, index_t l, index_t x0, index_t m, Coef coef, bool samples_as_rows,
                     T* dst) {
  constexpr int L = Simd<T>::L;
  const index_t d = F.chain->phys_dim, da = F.site[j].da, K = d * da;
  const index_t rows = samples_as_rows ? m : K, depth = samples_as_rows ? K : m;
  for (index_t r = rows; r < round_up(rows, Simd<T>::PAD); ++r) {
    T* o = dst + panel_offset<T>(r, depth) + r % L;
    for (index_t k = 0; k < depth; ++k) o[k * L] = T(0);
  }
  for (index_t x = 0; x < m; ++x) {
    const T* u = F.u_row(j, x0 + x);
    const auto a = F.a_row(j, x0 + x, l);
    const T c = static_cast<T>(coef(x));
    for (index_t s = 0; s < d; ++s) {
      const T cs = c * u[s];
      for (index_t i = 0; i < da; ++i) {
        const index_t k = s * da + i;
        if (samples_as_rows)
          dst[panel_offset<T>(x, K) + x % L + k * L] = cs * a[i];
        else
          dst[panel_offset<T>(k, m) + k % L + x * L] = cs * a[i];
      }
    }
  }
}

/// G_j (+)= sum_{x,l} wt(x,l) * u (x) a (x) b, accumulated in the core layout [l?][s][a][b].
/// wt(x, l) already includes the cotangent, c_j and the row's scale.  One GEMM per output:
/// (K = d * da rows of coefficients) x (db rows of b), both packed over blocks of samples.
template <class T, class WeightFn>
void vjp_site(const Factors<T>& F, index_t j, WeightFn wt, T* G) {
  const auto& s = F.site[j];
  const index_t d = F.chain->phys_dim, da = s.da, db = std::max<index_t>(s.db, 1);
  const index_t K = d * da, nl = outputs_at(F, j), n = F.n;
  const bool label = j == F.chain->output_site;
  const index_t chunk = std::min<index_t>(n, 512);  // samples per packed depth block
  buffer<T> pa(round_up(K, Simd<T>::PAD) * chunk), pb(round_up(db, Simd<T>::PAD) * chunk);
  for (index_t l = 0; l < nl; ++l) {
    T* g = G + (label ? l * K * db : 0);
    for (index_t x0 = 0; x0 < n; x0 += chunk) {
      const index_t m = std::min(chunk, n - x0);
      pack_khatri_rao<T>(F, j, l, x0, m, [&](index_t x) { return wt(x0 + x, l); }, false, pa.data());
      pack_elems<T>(db, m, [&](index_t b, index_t x) { return s.db ? F.b_row(j, x0 + x, l)[b] : T(1); }, pb.data());
      gemm_packed<T>(K, db, m, pa.data(), pb.data(), [&](index_t r, index_t c, T v) { g[r * db + c] += v; });
    }
  }
}

/// Scaled row weight c_j * exp(log(j, x, l)) (the factors are stored normalised).
template <class T>
inline double row_scale(const Factors<T>& F, index_t j, index_t x, index_t l) {
  return F.chain->scales[j] * std::exp(F.log(j, x, l));
}

/// grads[j] = J_j^T cotangent, cotangent (n, C) row-major.  The coefficients of a site,
/// cot(x, l) c_j exp(log(j, x, l)), are taken relative to the largest, exp(g_j) (in double), so
/// that none leaves the range of T however long the chain.  With grad_log the gradients stay in
/// that form, grads[j] = exp(-g_j) J_j^T cot and grad_log[j] = g_j (0 for a zero gradient);
/// without, exp(g_j) is multiplied back in double (an entry may then over- or underflow T).
template <class T>
void vjp_from_factors(const Factors<T>& F, const T* cot, T* const* grads, double* grad_log = nullptr) {
  const index_t N = F.chain->n_sites, C = F.n_outputs(), n = F.n;
  const std::vector<double> log_c = site_log_constants(*F.chain, nullptr);
  Region region;
#pragma omp parallel for schedule(dynamic) \
    num_threads(region.threads()) if (n * F.chain->phys_dim * F.site[N / 2].da > 4096)
  for (index_t j = 0; j < N; ++j)
    region.run([&] {
      double g = vjp_site_log(F.site[j], j, F.chain->output_site, cot, n, C, 1, 0, 0, 1);
      g = std::isfinite(g) ? g + log_c[j] : 0.0;  // all-zero cotangent: a zero gradient
      T* G = grads[j];
      const index_t size = F.chain->core_size(j);
      std::fill(G, G + size, T(0));
      vjp_site<T>(
          F, j, [&](index_t x, index_t l) { return cot[x * C + l] * std::exp(F.log(j, x, l) + log_c[j] - g); }, G);
      if (grad_log) {
        grad_log[j] = g;
      } else if (g != 0.0) {
        const double scale = std::exp(g);
        for (index_t e = 0; e < size; ++e) G[e] = static_cast<T>(scale * static_cast<double>(G[e]));
      }
    });
  region.finish();
}

/// out (n, C) = J . tangents.  Per site and output, (u (x) a) of a block of samples times the
/// tangent core (K x db) is one packed GEMM; each product row is then dotted with b.  Tangent j
/// is exp(tangent_log[j]) tangents[j] when tangent_log is given (-inf: a zero tangent).  The
/// site terms of sample x are summed (in double) relative to the largest scale among them,
/// exp(o_x): with out_log the result stays in that form, out[x, l] = exp(-o_x) (J . t)(x, l)
/// and out_log[x] = o_x (0 for a zero row); without, exp(o_x) is multiplied back in double.
template <class T>
void jvp_from_factors(const Factors<T>& F, const T* const* tangents, T* out, const double* tangent_log = nullptr,
                      double* out_log = nullptr) {
  const ChainView<T>& ch = *F.chain;
  const index_t N = ch.n_sites, C = ch.n_outputs, n = F.n, d = ch.phys_dim;
  // log of each site's factor c_j exp(tangent_log[j]) beyond the rows' own log-scales
  std::vector<double> log_site = site_log_constants(ch, nullptr);
  if (tangent_log)
    for (index_t j = 0; j < N; ++j) log_site[j] += tangent_log[j];
  auto skipped = [&](index_t j) { return log_site[j] == -std::numeric_limits<double>::infinity(); };
  // Tangent cores as packed B operands: db rows of depth K, per site and visited output.
  std::vector<std::vector<buffer<T>>> packed(N);
  Region pack_region;
#pragma omp parallel for schedule(dynamic) \
    num_threads(pack_region.threads()) if (N > 1 && n * d * F.site[N / 2].da > 4096)
  for (index_t j = 0; j < N; ++j)
    pack_region.run([&] {
      if (skipped(j)) return;
      const auto& s = F.site[j];
      const index_t da = s.da, db = std::max<index_t>(s.db, 1), K = d * da, nl = outputs_at(F, j);
      const bool label = j == ch.output_site;
      packed[j].resize(nl);
      for (index_t l = 0; l < nl; ++l) {
        const T* Tj = tangents[j] + (label ? l * K * db : 0);
        packed[j][l].resize(round_up(db, Simd<T>::PAD) * K);
        pack_elems<T>(db, K, [&](index_t b, index_t k) { return Tj[k * db + b]; }, packed[j][l].data());
      }
    });
  pack_region.finish();
  const index_t chunk = 64;  // samples per block (rows of the packed A operand)
  Region region;
#pragma omp parallel num_threads(region.threads()) if (n > chunk && n * d * F.site[N / 2].da > 4096)
  {
    buffer<T> pa;
    buffer<double> acc, ref;
    buffer<T> dot;
#pragma omp for schedule(dynamic)
    for (index_t x0 = 0; x0 < n; x0 += chunk)
      region.run([&] {
        const index_t m = std::min(chunk, n - x0);
        acc.assign(m * C, 0.0);
        ref.resize(m);
        for (index_t r = 0; r < m; ++r)
          ref[r] = jvp_sample_log(F.site.data(), N, ch.output_site, C, log_site.data(), nullptr, x0 + r);
        for (index_t j = 0; j < N; ++j) {
          region.checkpoint();
          if (skipped(j)) continue;
          const auto& s = F.site[j];
          const index_t da = s.da, db = std::max<index_t>(s.db, 1), K = d * da;
          pa.resize(round_up(m, Simd<T>::PAD) * K);
          for (index_t l = 0; l < outputs_at(F, j); ++l) {
            pack_khatri_rao<T>(F, j, l, x0, m, [](index_t) { return 1.0; }, true, pa.data());
            dot.assign(m, T(0));
            gemm_packed<T>(m, db, K, pa.data(), packed[j][l].data(),
                           [&](index_t r, index_t c, T v) { dot[r] += v * (s.db ? F.b_row(j, x0 + r, l)[c] : T(1)); });
            // nl == C whenever C > 1 (one side always carries l)
            for (index_t r = 0; r < m; ++r)
              acc[r * C + l] += std::exp(F.log(j, x0 + r, l) + log_site[j] - ref[r]) * dot[r];
          }
        }
        for (index_t r = 0; r < m; ++r) {
          const double scale = out_log ? 1.0 : std::exp(ref[r]);
          if (out_log) out_log[x0 + r] = ref[r];
          for (index_t l = 0; l < C; ++l) out[(x0 + r) * C + l] = static_cast<T>(scale * acc[r * C + l]);
        }
      });
  }
  region.finish();
}

/// out (n1, C, k) = Theta(X1, X2) v for v (n2, C, k) without forming Theta: J1 diag(site_lr)
/// J2^T v, column by column, in the normalised forms of vjp and jvp (site_lr joins the tangents'
/// log-scales).  F2 = nullptr: X2 = X1.  With out_log (n1, k): out[x, :, c] = exp(-out_log[x * k
/// + c]) (Theta v)[x, :, c].
template <class T>
void ntk_vp_factors(const Factors<T>& F1, const Factors<T>* F2p, const double* site_lr, const T* v, index_t k, T* out,
                    double* out_log) {
  const Factors<T>& F2 = F2p ? *F2p : F1;
  const ChainView<T>& ch = *F1.chain;
  const index_t N = ch.n_sites, C = ch.n_outputs, n1 = F1.n, n2 = F2.n;
  std::vector<buffer<T>> g(N);
  std::vector<T*> gp(N);
  for (index_t j = 0; j < N; ++j) g[j].resize(ch.core_size(j)), gp[j] = g[j].data();
  buffer<T> col(n2 * C), res(n1 * C);
  buffer<double> res_log(n1);
  std::vector<double> g_log(N);
  for (index_t c = 0; c < k; ++c) {
    for (index_t i = 0; i < n2 * C; ++i) col[i] = v[i * k + c];
    vjp_from_factors<T>(F2, col.data(), gp.data(), g_log.data());
    for (index_t j = 0; j < N; ++j) g_log[j] += std::log(site_lr[j]);  // -inf: a site not trained
    jvp_from_factors<T>(F1, gp.data(), res.data(), g_log.data(), res_log.data());
    for (index_t x = 0; x < n1; ++x) {
      const double scale = out_log ? 1.0 : std::exp(res_log[x]);
      if (out_log) out_log[x * k + c] = res_log[x];
      for (index_t l = 0; l < C; ++l) {
        const index_t i = x * C + l;
        out[i * k + c] = out_log ? res[i] : static_cast<T>(scale * static_cast<double>(res[i]));
      }
    }
  }
}

/// Memory of a vjp, jvp or ntk_vp of n samples beyond the batches (upper bound): packed
/// tangents and gradient scratch (twice the parameters), the columns of ntk_vp, and every
/// thread's packed operands.
template <class T>
Footprint product_footprint_of(const ChainView<T>& ch, index_t n) {
  index_t widest = 1;
  for (index_t s = 0; s <= ch.n_sites; ++s) widest = std::max(widest, ch.bond[s]);
  const index_t dmax = ch.boundary == Boundary::open ? widest : widest * widest;
  const index_t K = round_up(ch.phys_dim * dmax, Simd<T>::PAD), C = ch.n_outputs;
  const std::size_t params = 2 * round_up(ch.n_params(), Simd<T>::PAD) * sizeof(T);
  const std::size_t columns = 2 * n * C * (sizeof(T) + sizeof(double)) + n * sizeof(double);
  const std::size_t chunk = std::min<index_t>(n, 512);
  const std::size_t thread = (K + round_up(dmax, Simd<T>::PAD)) * chunk * sizeof(T) + 3 * 64 * sizeof(double);
  return Footprint{0, params + columns + static_cast<std::size_t>(num_threads()) * thread};
}

/// Dense Jacobian (n, C, P) with parameters ordered site by site in the cores' C order.
template <class T>
void jacobian_factors(const Factors<T>& F, T* out) {
  const ChainView<T>& ch = *F.chain;
  const index_t N = ch.n_sites, C = ch.n_outputs, n = F.n, d = ch.phys_dim;
  std::vector<index_t> offset(N + 1, 0);
  for (index_t j = 0; j < N; ++j) offset[j + 1] = offset[j] + ch.core_size(j);
  const index_t P = offset[N];
  std::fill(out, out + n * C * P, T(0));
  Region region;
#pragma omp parallel for schedule(static) num_threads(region.threads()) if (n * C * P > 65536)
  for (index_t x = 0; x < n; ++x)
    region.run([&] {
      for (index_t l = 0; l < C; ++l)
        for (index_t j = 0; j < N; ++j) {
          const auto& s = F.site[j];
          const index_t da = s.da, db = std::max<index_t>(s.db, 1);
          const T sc = static_cast<T>(row_scale(F, j, x, l));
          const T* u = F.u_row(j, x);
          const auto a = F.a_row(j, x, l);
          const auto b = F.b_row(j, x, l);
          T* o = out + (x * C + l) * P + offset[j] + (j == ch.output_site ? l * d * da * db : 0);
          for (index_t si = 0; si < d; ++si)
            for (index_t ai = 0; ai < da; ++ai)
              for (index_t bi = 0; bi < db; ++bi) o[(si * da + ai) * db + bi] = sc * u[si] * a[ai] * (b ? b[bi] : T(1));
        }
    });
  region.finish();
}
