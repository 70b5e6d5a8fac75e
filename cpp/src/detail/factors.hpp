// Per-site Jacobian factors.  For every site j, sample x and output l,
//   df_l(x)/dW_j[s, a, b] = c_j * exp(log(j, x, l)) * u[s] * a[a] * b[b]   (open chains)
// with u = phi(x_j), a = the left environment, b = the right environment.  Periodic chains use
// a = vec(E_j^T) with E_j = S_j P_j (the open environment of spec section 2) and no b (db = 0).
// Everything downstream (NTK tiles, vjp, jvp, ntk_vp, jacobian) consumes these factors.

template <class T>
struct SiteFactor {
  const T* a = nullptr;
  index_t da = 0, mult_a = 1;
  const double* log_a = nullptr;
  const T* b = nullptr;  // nullptr when db == 0
  index_t db = 0, mult_b = 1;
  const double* log_b = nullptr;
  bool a_panels = false, b_panels = false;  ///< rewritten as packed panels (see make_panels)
};

template <class T>
struct Factors {
  const ChainView<T>* chain = nullptr;
  FeatureView<T> phi;
  index_t n = 0;
  Environments<T> env;
  std::vector<SiteFactor<T>> site;
  std::vector<buffer<T>> open_env;  // periodic chains: E_j^T per row
  std::vector<buffer<double>> open_log;

  index_t n_outputs() const { return chain->n_outputs; }
  const T* u_row(index_t j, index_t x) const { return phi.at(x, j); }
  const T* a_row(index_t j, index_t x, index_t l) const {
    const auto& s = site[j];
    return s.a + (x * s.mult_a + (s.mult_a > 1 ? l : 0)) * s.da;
  }
  const T* b_row(index_t j, index_t x, index_t l) const {
    const auto& s = site[j];
    return s.b ? s.b + (x * s.mult_b + (s.mult_b > 1 ? l : 0)) * s.db : nullptr;
  }
  double log(index_t j, index_t x, index_t l) const {
    const auto& s = site[j];
    double v = s.log_a[x * s.mult_a + (s.mult_a > 1 ? l : 0)];
    if (s.log_b) v += s.log_b[x * s.mult_b + (s.mult_b > 1 ? l : 0)];
    return v;
  }
  /// Per-sample reference log-scale: max over sites and outputs of log(j, x, l).
  std::vector<double> sample_log_scale() const {
    std::vector<double> c(n, -std::numeric_limits<double>::infinity());
    for (index_t x = 0; x < n; ++x)
      for (index_t j = 0; j < chain->n_sites; ++j)
        for (index_t l = 0; l < n_outputs(); ++l) c[x] = std::max(c[x], log(j, x, l));
    return c;
  }
};

template <class T>
Factors<T> compute_factors(const ChainView<T>& ch, const FeatureView<T>& phi) {
  Factors<T> F;
  F.chain = &ch;
  F.phi = phi;
  F.n = phi.n_samples;
  F.env = compute_environments<T>(ch, phi, true, true);
  const index_t N = ch.n_sites;
  F.site.resize(N);
  if (ch.boundary == Boundary::open) {
    for (index_t j = 0; j < N; ++j) {
      auto& s = F.site[j];
      s.a = F.env.left[j];
      s.da = ch.bond[j];
      s.mult_a = ch.left_mult(j);
      s.log_a = F.env.left_log[j].data();
      s.b = F.env.right[j + 1];
      s.db = ch.bond[j + 1];
      s.mult_b = ch.right_mult(j + 1);
      s.log_b = F.env.right_log[j + 1].data();
    }
    return F;
  }
  // Periodic: E_j^T[a][b] = sum_beta P_j[beta][a] S_{j+1}[beta][b]; one (x, l) row per sample
  // and output, with l running over whichever side carries the outputs.
  const index_t h = F.env.h, n = F.n;
  F.open_env.resize(N);
  F.open_log.resize(N);
  for (index_t j = 0; j < N; ++j) {
    const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
    const index_t mp = ch.left_mult(j), ms = ch.right_mult(j + 1), m = std::max(mp, ms);
    auto& E = F.open_env[j];
    auto& lg = F.open_log[j];
    E.assign(n * m * Dl * Dr, T(0));
    lg.assign(n * m, 0.0);
    const T* P = F.env.left[j];
    const T* S = F.env.right[j + 1];
    Region region;
#pragma omp parallel for schedule(static) num_threads(region.threads()) if (n * m * h * Dl * Dr > 65536)
    for (index_t x = 0; x < n; ++x)
      region.run([&] {
        for (index_t l = 0; l < m; ++l) {
          const index_t rp = x * mp + (mp > 1 ? l : 0), rs = x * ms + (ms > 1 ? l : 0);
          T* e = E.data() + (x * m + l) * Dl * Dr;
          for (index_t beta = 0; beta < h; ++beta) {
            const T* p = P + (rp * h + beta) * Dl;
            const T* sv = S + (rs * h + beta) * Dr;
            for (index_t a = 0; a < Dl; ++a) {
              const T pa = p[a];
              for (index_t b = 0; b < Dr; ++b) e[a * Dr + b] += pa * sv[b];
            }
          }
          lg[x * m + l] = F.env.left_log[j][rp] + F.env.right_log[j + 1][rs];
        }
      });
    region.finish();
    auto& s = F.site[j];
    s.a = E.data();
    s.da = Dl * Dr;
    s.mult_a = m;
    s.log_a = lg.data();
  }
  // The prefix/suffix matrices are no longer needed.
  F.env = Environments<T>();
  return F;
}
