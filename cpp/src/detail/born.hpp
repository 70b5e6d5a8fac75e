// Doubled-MPS contractions for Born machines: Z = sum_{x in Omega} Psi(x)^2 with one-hot
// features phi_s(x_j) = sqrt(w_s) delta_{s, x_j}.  Transfer map of site j on a D x D matrix E:
//   left:  E -> sum_s w_s A_s^T E A_s        right:  F -> sum_s w_s A_s F A_s^T
// Open chains carry one such matrix; periodic chains carry h = D_0^2 of them (the channels
// (alpha, alpha') of the doubled prefix/suffix), and Z is their trace.  Cost O(N d D^3) open,
// O(N d D^5) periodic.  Every slot is normalised by a power of two (log kept).

template <class T>
struct DoubledEnvironments {
  index_t h = 1;                              // channels
  std::vector<std::vector<double>> left, right;  // slot s: h matrices D_s x D_s (row-major)
  std::vector<double> left_log, right_log;
};

/// out = sum_s w_s op(A_s)^T E op(A_s) for one channel, op = identity (left) or transpose (right).
template <class T>
void doubled_step(const T* core, double c, index_t d, index_t Dl, index_t Dr, const double* w,
                  bool to_right, const double* E, double* out, std::vector<double>& tmp) {
  const index_t din = to_right ? Dl : Dr, dout = to_right ? Dr : Dl;
  std::fill(out, out + dout * dout, 0.0);
  tmp.assign(din * dout, 0.0);
  const double c2 = c * c;
  for (index_t s = 0; s < d; ++s) {
    const T* A = core + s * Dl * Dr;
    auto a = [&](index_t i, index_t o) -> double {  // A as (din x dout)
      return to_right ? A[i * Dr + o] : A[o * Dr + i];
    };
    // tmp = E * A  (din x dout), then out += w c^2 A^T tmp
    std::fill(tmp.begin(), tmp.end(), 0.0);
    for (index_t i = 0; i < din; ++i)
      for (index_t k = 0; k < din; ++k) {
        const double e = E[i * din + k];
        if (e == 0.0) continue;
        for (index_t o = 0; o < dout; ++o) tmp[i * dout + o] += e * a(k, o);
      }
    const double ws = w[s] * c2;
    for (index_t i = 0; i < din; ++i)
      for (index_t o = 0; o < dout; ++o) {
        const double ai = ws * a(i, o);
        if (ai == 0.0) continue;
        for (index_t o2 = 0; o2 < dout; ++o2) out[o * dout + o2] += ai * tmp[i * dout + o2];
      }
  }
}

inline void normalise_slot(std::vector<double>& v, double& lg) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  if (!(m > 0) || !std::isfinite(m)) return;
  int e = 0;
  std::frexp(m, &e);
  const double f = std::ldexp(1.0, -e);
  for (double& x : v) x *= f;
  lg += e * 0.69314718055994530942;
}

template <class T>
DoubledEnvironments<T> doubled_environments(const ChainView<T>& ch, const double* w, bool want_left,
                                            bool want_right) {
  DoubledEnvironments<T> env;
  const index_t N = ch.n_sites, d = ch.phys_dim, D0 = ch.bond[0];
  env.h = ch.boundary == Boundary::open ? 1 : D0 * D0;
  const index_t h = env.h;
  auto identity = [&](std::vector<double>& v) {  // channel (a, a') holds e_a e_a'^T
    v.assign(h * D0 * D0, 0.0);
    if (h == 1) v[0] = 1.0;
    else
      for (index_t ch2 = 0; ch2 < h; ++ch2) v[ch2 * D0 * D0 + ch2] = 1.0;
  };
  if (want_left) {
    env.left.resize(N + 1);
    env.left_log.assign(N + 1, 0.0);
    identity(env.left[0]);
    for (index_t j = 0; j < N; ++j) {
      const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
      env.left[j + 1].assign(h * Dr * Dr, 0.0);
#pragma omp parallel if (h * Dl * Dr * Dr > 65536)
      {
        std::vector<double> tmp;
#pragma omp for schedule(static)
        for (index_t c = 0; c < h; ++c)
          doubled_step<T>(ch.cores[j], ch.scales[j], d, Dl, Dr, w, true, env.left[j].data() + c * Dl * Dl,
                          env.left[j + 1].data() + c * Dr * Dr, tmp);
      }
      env.left_log[j + 1] = env.left_log[j];
      normalise_slot(env.left[j + 1], env.left_log[j + 1]);
    }
  }
  if (want_right) {
    env.right.resize(N + 1);
    env.right_log.assign(N + 1, 0.0);
    identity(env.right[N]);
    for (index_t j = N - 1; j >= 0; --j) {
      const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
      env.right[j].assign(h * Dl * Dl, 0.0);
#pragma omp parallel if (h * Dl * Dr * Dr > 65536)
      {
        std::vector<double> tmp;
#pragma omp for schedule(static)
        for (index_t c = 0; c < h; ++c)
          doubled_step<T>(ch.cores[j], ch.scales[j], d, Dl, Dr, w, false, env.right[j + 1].data() + c * Dr * Dr,
                          env.right[j].data() + c * Dl * Dl, tmp);
      }
      env.right_log[j] = env.right_log[j + 1];
      normalise_slot(env.right[j], env.right_log[j]);
    }
  }
  return env;
}

/// Trace of the final doubled slot (Z = trace * exp(log)).
inline double doubled_trace(const std::vector<double>& slot, index_t h, index_t D0) {
  if (h == 1) return slot[0];
  double t = 0;
  for (index_t c = 0; c < h; ++c) t += slot[c * D0 * D0 + c];  // channel (a,a') at entry (a,a')
  return t;
}

/// log Z, and optionally d log Z / d W_j for every core (grads may be nullptr).
template <class T>
double log_partition_impl(const ChainView<T>& ch, const double* w, T* const* grads) {
  const bool want_grad = grads != nullptr;
  const auto env = doubled_environments<T>(ch, w, true, want_grad);
  const index_t N = ch.n_sites, d = ch.phys_dim, D0 = ch.bond[0], h = env.h;
  const double ztr = doubled_trace(env.left[N], h, D0);
  MPSNTK_EXPECTS(ztr > 0, "the MPS has Z = 0 (all amplitudes vanish)");
  const double logz = std::log(ztr) + env.left_log[N];
  if (!want_grad) return logz;
  // dZ/dA_j[s] = 2 w_s sum_channels P_c A_s S_c^T; periodic channels pair (a,a') of the prefix
  // with (a,a') of the suffix (the trace).
#pragma omp parallel for schedule(dynamic) if (h * ch.bond[1] * ch.bond[1] * ch.bond[1] * N > 65536)
  for (index_t j = 0; j < N; ++j) {
    const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
    const double rel = std::exp(env.left_log[j] + env.right_log[j + 1] - logz);
    const double c = ch.scales[j];
    std::vector<double> tmp(Dl * Dr);
    for (index_t s = 0; s < d; ++s) {
      const T* A = ch.cores[j] + s * Dl * Dr;
      T* g = grads[j] + s * Dl * Dr;
      std::vector<double> acc(Dl * Dr, 0.0);
      for (index_t cch = 0; cch < h; ++cch) {
        const double* P = env.left[j].data() + cch * Dl * Dl;
        const double* S = env.right[j + 1].data() + cch * Dr * Dr;
        std::fill(tmp.begin(), tmp.end(), 0.0);  // tmp = P A  (Dl x Dr)
        for (index_t a = 0; a < Dl; ++a)
          for (index_t k = 0; k < Dl; ++k) {
            const double p = P[a * Dl + k];
            if (p == 0.0) continue;
            for (index_t b = 0; b < Dr; ++b) tmp[a * Dr + b] += p * A[k * Dr + b];
          }
        for (index_t a = 0; a < Dl; ++a)  // acc += tmp S^T
          for (index_t b = 0; b < Dr; ++b) {
            double v = 0;
            for (index_t k = 0; k < Dr; ++k) v += tmp[a * Dr + k] * S[b * Dr + k];
            acc[a * Dr + b] += v;
          }
      }
      // d log Z / dW = c * dZ/dA / Z; dZ/dA_s = 2 w_s c (P (cA_s) S^T) with A = c W.
      const double f = 2.0 * w[s] * c * c * rel;
      for (index_t e = 0; e < Dl * Dr; ++e) g[e] = static_cast<T>(f * acc[e]);
    }
  }
  return logz;
}

/// Right doubled slots and their log-scales (for exact sampling).
template <class T>
void doubled_right_impl(const ChainView<T>& ch, const double* w, std::vector<std::vector<double>>& slots,
                        std::vector<double>& log_scale) {
  auto env = doubled_environments<T>(ch, w, false, true);
  slots = std::move(env.right);
  log_scale = std::move(env.right_log);
}
