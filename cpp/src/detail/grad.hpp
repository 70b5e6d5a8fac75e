// Forward pass and first-order products with the Jacobian (vjp, jvp, ntk_vp, explicit J),
// all from the per-site factors, so J is never formed unless asked for.

template <class T>
void forward_impl(const ChainView<T>& ch, const FeatureView<T>& phi, T* mantissa, double* log_scale) {
  const Environments<T> env = compute_environments<T>(ch, phi, true, false, /*keep_all=*/false);
  const index_t N = ch.n_sites, C = ch.n_outputs, h = env.h, n = env.n;
  const index_t m = ch.left_mult(N);  // == C when there is an output site
  const T* v = env.left[N];
  for (index_t x = 0; x < n; ++x)
    for (index_t l = 0; l < C; ++l) {
      const index_t r = x * m + (m > 1 ? l : 0);
      T f = 0;
      for (index_t a = 0; a < h; ++a) f += v[(r * h + a) * h + a];  // trace (h = 1: the value)
      mantissa[x * C + l] = f;
      log_scale[x * C + l] = env.left_log[N][r];
    }
}

/// Row blocks used by the rank-k updates of vjp/jvp (rows of one block share loads of G / T).
constexpr index_t kRowBlock = 8;

/// Number of outputs l whose factors must be visited at site j (1 when nothing depends on l).
template <class T>
index_t outputs_at(const Factors<T>& F, index_t j) {
  const auto& s = F.site[j];
  return (s.mult_a > 1 || s.mult_b > 1 || j == F.chain->output_site) ? F.n_outputs() : 1;
}

/// G_j (+)= sum_{x,l} wt(x,l) * u (x) a (x) b, accumulated in the core layout [l?][s][a][b].
/// wt(x, l) already includes the cotangent, c_j and the row's scale.
template <class T, class WeightFn>
void vjp_site(const Factors<T>& F, index_t j, WeightFn wt, T* G) {
  const auto& s = F.site[j];
  const index_t d = F.chain->phys_dim, da = s.da, db = std::max<index_t>(s.db, 1);
  const index_t K = d * da, nl = outputs_at(F, j), n = F.n;
  const bool label = j == F.chain->output_site;
  std::vector<T> coef(kRowBlock * K);
  const T* rows_b[kRowBlock];
  const T one = T(1);
  for (index_t l = 0; l < nl; ++l) {
    T* g = G + (label ? l * K * db : 0);
    for (index_t x0 = 0; x0 < n; x0 += kRowBlock) {
      const index_t nb = std::min(kRowBlock, n - x0);
      for (index_t r = 0; r < nb; ++r) {
        const index_t x = x0 + r;
        const T w = static_cast<T>(wt(x, l));
        const T* u = F.u_row(j, x);
        const T* a = F.a_row(j, x, l);
        for (index_t si = 0; si < d; ++si)
          for (index_t ai = 0; ai < da; ++ai) coef[r * K + si * da + ai] = w * u[si] * a[ai];
        rows_b[r] = s.db ? F.b_row(j, x, l) : &one;
      }
      for (index_t k = 0; k < K; ++k) {
        T* gk = g + k * db;
        for (index_t r = 0; r < nb; ++r) {
          const T cr = coef[r * K + k];
          const T* br = rows_b[r];
#pragma omp simd
          for (index_t b = 0; b < db; ++b) gk[b] += cr * br[b];
        }
      }
    }
  }
}

/// Scaled row weight c_j * exp(log(j, x, l)) (the factors are stored normalised).
template <class T>
inline double row_scale(const Factors<T>& F, index_t j, index_t x, index_t l) {
  return F.chain->scales[j] * std::exp(F.log(j, x, l));
}

/// grads[j] = J_j^T cotangent, cotangent (n, C) row-major.
template <class T>
void vjp_from_factors(const Factors<T>& F, const T* cot, T* const* grads) {
  const index_t N = F.chain->n_sites, C = F.n_outputs();
#pragma omp parallel for schedule(dynamic) if (F.n * F.chain->phys_dim * F.site[N / 2].da > 4096)
  for (index_t j = 0; j < N; ++j) {
    std::fill(grads[j], grads[j] + F.chain->core_size(j), T(0));
    vjp_site<T>(F, j, [&](index_t x, index_t l) { return cot[x * C + l] * row_scale(F, j, x, l); },
                grads[j]);
  }
}

/// out (n, C) = J . tangents.
template <class T>
void jvp_from_factors(const Factors<T>& F, const T* const* tangents, T* out) {
  const ChainView<T>& ch = *F.chain;
  const index_t N = ch.n_sites, C = ch.n_outputs, n = F.n, d = ch.phys_dim;
#pragma omp parallel if (n * d * F.site[N / 2].da > 4096)
  {
    std::vector<T> t;
    std::vector<double> acc;
#pragma omp for schedule(static)
    for (index_t x0 = 0; x0 < n; x0 += kRowBlock) {
      const index_t nb = std::min(kRowBlock, n - x0);
      acc.assign(nb * C, 0.0);
      for (index_t j = 0; j < N; ++j) {
        const auto& s = F.site[j];
        const index_t da = s.da, db = std::max<index_t>(s.db, 1), K = d * da;
        const bool label = j == ch.output_site;
        const index_t nl = outputs_at(F, j);
        for (index_t l = 0; l < nl; ++l) {
          const T* Tj = tangents[j] + (label ? l * K * db : 0);
          t.assign(nb * db, T(0));
          for (index_t si = 0; si < d; ++si)
            for (index_t ai = 0; ai < da; ++ai) {
              const T* trow = Tj + (si * da + ai) * db;
              for (index_t r = 0; r < nb; ++r) {
                const T cr = F.u_row(j, x0 + r)[si] * F.a_row(j, x0 + r, l)[ai];
                T* tr = t.data() + r * db;
#pragma omp simd
                for (index_t b = 0; b < db; ++b) tr[b] += cr * trow[b];
              }
            }
          for (index_t r = 0; r < nb; ++r) {
            const T* bv = F.b_row(j, x0 + r, l);
            T dot = 0;
            for (index_t b = 0; b < db; ++b) dot += t[r * db + b] * (bv ? bv[b] : T(1));
            const double sc = row_scale(F, j, x0 + r, l) * dot;
            acc[r * C + l] += sc;  // nl == C whenever C > 1 (one side always carries l)
          }
        }
      }
      for (index_t r = 0; r < nb; ++r)
        for (index_t l = 0; l < C; ++l) out[(x0 + r) * C + l] = static_cast<T>(acc[r * C + l]);
    }
  }
}

/// out (n, C, k) = Theta(X, X) v without forming Theta: J diag(site_lr) J^T v, column by column.
template <class T>
void ntk_vp_impl(const ChainView<T>& ch, const FeatureView<T>& phi, const double* site_lr,
                 const T* v, index_t k, T* out) {
  const Factors<T> F = compute_factors<T>(ch, phi);
  const index_t N = ch.n_sites, C = ch.n_outputs, n = F.n;
  std::vector<std::vector<T>> g(N);
  std::vector<T*> gp(N);
  for (index_t j = 0; j < N; ++j) g[j].resize(ch.core_size(j)), gp[j] = g[j].data();
  std::vector<T> col(n * C), res(n * C);
  for (index_t c = 0; c < k; ++c) {
    for (index_t i = 0; i < n * C; ++i) col[i] = v[i * k + c];
    vjp_from_factors<T>(F, col.data(), gp.data());
    for (index_t j = 0; j < N; ++j)
      for (auto& e : g[j]) e *= static_cast<T>(site_lr[j]);
    jvp_from_factors<T>(F, gp.data(), res.data());
    for (index_t i = 0; i < n * C; ++i) out[i * k + c] = res[i];
  }
}

/// Dense Jacobian (n, C, P) with parameters ordered site by site in the cores' C order.
template <class T>
void jacobian_impl(const ChainView<T>& ch, const FeatureView<T>& phi, T* out) {
  const Factors<T> F = compute_factors<T>(ch, phi);
  const index_t N = ch.n_sites, C = ch.n_outputs, n = F.n, d = ch.phys_dim;
  std::vector<index_t> offset(N + 1, 0);
  for (index_t j = 0; j < N; ++j) offset[j + 1] = offset[j] + ch.core_size(j);
  const index_t P = offset[N];
  std::fill(out, out + n * C * P, T(0));
#pragma omp parallel for schedule(static) if (n * C * P > 65536)
  for (index_t x = 0; x < n; ++x)
    for (index_t l = 0; l < C; ++l)
      for (index_t j = 0; j < N; ++j) {
        const auto& s = F.site[j];
        const index_t da = s.da, db = std::max<index_t>(s.db, 1);
        const T sc = static_cast<T>(row_scale(F, j, x, l));
        const T* u = F.u_row(j, x);
        const T* a = F.a_row(j, x, l);
        const T* b = F.b_row(j, x, l);
        T* o = out + (x * C + l) * P + offset[j] + (j == ch.output_site ? l * d * da * db : 0);
        for (index_t si = 0; si < d; ++si)
          for (index_t ai = 0; ai < da; ++ai)
            for (index_t bi = 0; bi < db; ++bi)
              o[(si * da + ai) * db + bi] = sc * u[si] * a[ai] * (b ? b[bi] : T(1));
      }
}
