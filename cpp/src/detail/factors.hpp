// Per-site Jacobian factors of one batch (layout: mpsntk/factor_layout.hpp).  For every site j,
// sample x and output l,
//   df_l(x)/dW_j[s, a, b] = c_j * exp(log(j, x, l)) * u[s] * a[a] * b[b]   (open chains)
// with u = phi(x_j), a = the left environment, b = the right environment.  Periodic chains use
// a = vec(E_j^T) with E_j = S_j P_j (the open environment of spec section 2) and no b (db = 0).
// Everything downstream (NTK tiles, vjp, jvp, ntk_vp, jacobian) consumes these factors.  Sides
// that do not depend on the output are stored as packed panels (the NTK's operand layout), read
// in place by the NTK and through FactorRow by the other products.

/// Row (x, l) of one side of a site's factors in either layout: element i at p[i * stride].
template <class T>
struct FactorRow {
  const T* p = nullptr;
  index_t stride = 1;
  T operator[](index_t i) const { return p[i * stride]; }
  explicit operator bool() const { return p != nullptr; }
};

template <class T>
FactorRow<T> side_row(const T* base, index_t dim, index_t mult, int lanes, index_t x, index_t l) {
  if (!base) return {};
  if (lanes) return {base + (x / lanes) * dim * lanes + x % lanes, lanes};
  return {base + factor_row(x, mult, l) * dim, 1};
}

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
  FactorRow<T> a_row(index_t j, index_t x, index_t l) const {
    const auto& s = site[j];
    return side_row(s.a, s.da, s.mult_a, s.lanes_a, x, l);
  }
  FactorRow<T> b_row(index_t j, index_t x, index_t l) const {
    const auto& s = site[j];
    return side_row(s.b, s.db, s.mult_b, s.lanes_b, x, l);
  }
  double log(index_t j, index_t x, index_t l) const { return factor_log(site[j], x, l); }
};

/// f (n, C) as mantissa and log-scale from the last left slot: its value (open chains) or the
/// trace of its h x h prefix matrix (periodic).
template <class T>
void trace_last_slot(const ChainView<T>& ch, const Environments<T>& env, T* mantissa, double* log_scale) {
  const index_t N = ch.n_sites, C = ch.n_outputs, h = env.h;
  const index_t m = ch.left_mult(N);  // == C when there is an output site
  const T* v = env.left[N];
  for (index_t x = 0; x < env.n; ++x)
    for (index_t l = 0; l < C; ++l) {
      const index_t r = factor_row(x, m, l);
      T f = 0;
      for (index_t a = 0; a < h; ++a) f += v[(r * h + a) * h + a];  // trace (h = 1: the value)
      mantissa[x * C + l] = f;
      log_scale[x * C + l] = env.left_log[N][r];
    }
}

/// Rewrite, in place, every side that does not depend on the output l as packed panels (each
/// block of L rows, row-major, becomes [k][lane]; the sides are padded to whole panels), so that
/// the NTK reads them without a second copy.
template <class T>
void make_panels(Factors<T>& F) {
  constexpr int L = Simd<T>::L;
  const index_t N = F.chain->n_sites, panels = round_up(F.n, Simd<T>::PAD) / L;
  auto convert = [&](T* v, index_t dim, buffer<T>& tmp) {
    if (dim == 1) return;  // a single column is the same in both layouts
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
        auto& s = F.site[j];
        if (s.mult_a == 1) convert(const_cast<T*>(s.a), s.da, tmp), s.lanes_a = L;
        if (s.b && s.mult_b == 1) convert(const_cast<T*>(s.b), s.db, tmp), s.lanes_b = L;
      });
  }
  region.finish();
}

/// Environments, factors and f of a batch; with panels, the sides independent of the output
/// converted in place into the NTK's panels (make_panels).
template <class T>
Factors<T> compute_factors(const ChainView<T>& ch, const FeatureView<T>& phi, T* mantissa, double* log_scale,
                           bool panels) {
  Factors<T> F;
  F.chain = &ch;
  F.phi = phi;
  F.n = phi.n_samples;
  F.env = compute_environments<T>(ch, phi, true, true);
  trace_last_slot(ch, F.env, mantissa, log_scale);
  const index_t N = ch.n_sites, n = F.n, npad = round_up(n, Simd<T>::PAD);
  F.site.resize(N);
  for (index_t j = 0; j < N; ++j) F.site[j] = site_factor_shape(ch, j);
  if (ch.boundary == Boundary::open) {
    for (index_t j = 0; j < N; ++j) {
      auto& s = F.site[j];
      s.a = F.env.left[j], s.log_a = F.env.left_log[j].data();
      s.b = F.env.right[j + 1], s.log_b = F.env.right_log[j + 1].data();
    }
    if (panels) make_panels(F);
    return F;
  }
  // Periodic: E_j^T[a][b] = sum_beta P_j[beta][a] S_{j+1}[beta][b]; one (x, l) row per sample
  // and output, with l running over whichever side carries the outputs.
  const index_t h = F.env.h;
  F.open_env.resize(N);
  F.open_log.resize(N);
  for (index_t j = 0; j < N; ++j) {
    const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
    const index_t mp = ch.left_mult(j), ms = ch.right_mult(j + 1), m = F.site[j].mult_a;
    auto& E = F.open_env[j];
    auto& lg = F.open_log[j];
    E.assign(npad * m * Dl * Dr, T(0));  // padded to whole panels
    lg.assign(n * m, 0.0);
    const T* P = F.env.left[j];
    const T* S = F.env.right[j + 1];
    Region region;
#pragma omp parallel for schedule(static) num_threads(region.threads()) if (n * m * h * Dl * Dr > 65536)
    for (index_t x = 0; x < n; ++x)
      region.run([&] {
        for (index_t l = 0; l < m; ++l) {
          const index_t rp = factor_row(x, mp, l), rs = factor_row(x, ms, l);
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
    F.site[j].a = E.data();
    F.site[j].log_a = lg.data();
  }
  // The prefix/suffix matrices are no longer needed.
  F.env = Environments<T>();
  if (panels) make_panels(F);
  return F;
}

/// Memory of compute_factors: what the factors keep, and the most allocated at once.
template <class T>
Footprint factors_footprint(const ChainView<T>& ch, index_t n) {
  Footprint env = environments_footprint(ch, n, true, true, true);
  if (ch.boundary == Boundary::open) return env;
  std::size_t open = 0;
  const index_t npad = round_up(n, Simd<T>::PAD);
  for (index_t j = 0; j < ch.n_sites; ++j) {
    const SiteFactor<T> s = site_factor_shape(ch, j);
    open += (npad * s.mult_a * s.da) * sizeof(T) + n * s.mult_a * sizeof(double);
  }
  return Footprint{open, env.held + open + std::max<std::size_t>(env.peak - env.held, 0)};
}
