// Doubled-MPS contractions for Born machines: Z = sum_{x in Omega} Psi(x)^2 with one-hot
// features phi_s(x_j) = sqrt(w_s) delta_{s, x_j}.  Transfer map of site j on a D x D matrix E:
//   left:  E -> sum_s w_s A_s^T E A_s        right:  F -> sum_s w_s A_s F A_s^T
// Open chains carry one such matrix; periodic chains carry h = D_0^2 of them (the channels
// (alpha, alpha') of the doubled prefix/suffix), and Z is their trace.  Cost O(N d D^3) open,
// O(N d D^5) periodic.  Every slot is normalised by a power of two (log kept).

template <class T>
struct DoubledEnvironments {
  index_t h = 1;                                 // channels
  std::vector<std::vector<double>> left, right;  // slot s: h matrices D_s x D_s (row-major)
  std::vector<double> left_log, right_log;
};

/// Core s of site j as a packed operand with rows o < dout and depth i < din: A(i, o) with A
/// read as (din x dout), i.e. A_s going right and A_s^T going left.  The same panels serve as
/// the right operand of E_c A and the left operand of A^T (E_c A).
template <class T>
buffer<double> pack_core_columns(const T* A, index_t Dl, index_t Dr, bool to_right) {
  const index_t din = to_right ? Dl : Dr, dout = to_right ? Dr : Dl;
  buffer<double> p(round_up(dout, Simd<double>::PAD) * din);
  pack_elems<double>(
      dout, din, [&](index_t o, index_t i) { return static_cast<double>(to_right ? A[i * Dr + o] : A[o * Dr + i]); },
      p.data());
  return p;
}

/// out_c = sum_s w_s c^2 op(A_s)^T E_c op(A_s) for the h channels c (D x D matrices, row-major),
/// op = identity (left) or transpose (right): two register-blocked GEMMs per channel and s,
/// channels in parallel.
template <class T>
void doubled_step(const T* core, double c, index_t d, index_t Dl, index_t Dr, const double* w, bool to_right, index_t h,
                  const double* E, double* out) {
  constexpr int L = Simd<double>::L;
  const index_t din = to_right ? Dl : Dr, dout = to_right ? Dr : Dl;
  std::fill(out, out + h * dout * dout, 0.0);
  for (index_t s = 0; s < d; ++s) {
    const buffer<double> ap = pack_core_columns(core + s * Dl * Dr, Dl, Dr, to_right);
    const double ws = w[s] * c * c;
    Region region;
#pragma omp parallel num_threads(region.threads()) if (h > 1 && h * din * din * dout > 65536)
    {
      buffer<double> ep, tp;
      region.run([&] {
        ep.resize(round_up(din, Simd<double>::PAD) * din);
        tp.assign(round_up(dout, Simd<double>::PAD) * din, 0.0);  // padding rows stay 0
      });
#pragma omp for schedule(static)
      for (index_t ch = 0; ch < h; ++ch)
        region.run([&] {
          const double* Ec = E + ch * din * din;
          double* oc = out + ch * dout * dout;
          pack_rows<double>(din, din, [&](index_t i) { return Ec + i * din; }, [](index_t) { return 1.0; }, ep.data());
          // (E_c A)[i][o], stored as the packed operand with rows o and depth i
          gemm_packed<double>(din, dout, din, ep.data(), ap.data(), [&](index_t i, index_t o, double v) {
            tp[panel_offset<double>(o, din) + o % L + i * L] = v;
          });
          gemm_packed<double>(dout, dout, din, ap.data(), tp.data(),
                              [&](index_t o, index_t o2, double v) { oc[o * dout + o2] += ws * v; });
        });
    }
    region.finish();
  }
}

inline void normalise_slot(std::vector<double>& v, double& lg) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  const double f = tile::pow2_normaliser<double>(m, &lg);
  if (f != 1.0)
    for (double& x : v) x *= f;
}

template <class T>
DoubledEnvironments<T> doubled_environments(const ChainView<T>& ch, const double* w, bool want_left, bool want_right) {
  DoubledEnvironments<T> env;
  const index_t N = ch.n_sites, d = ch.phys_dim, D0 = ch.bond[0];
  env.h = ch.boundary == Boundary::open ? 1 : D0 * D0;
  const index_t h = env.h;
  auto identity = [&](std::vector<double>& v) {  // channel (a, a') holds e_a e_a'^T
    v.assign(h * D0 * D0, 0.0);
    if (h == 1)
      v[0] = 1.0;
    else
      for (index_t ch2 = 0; ch2 < h; ++ch2) v[ch2 * D0 * D0 + ch2] = 1.0;
  };
  if (want_left) {
    env.left.resize(N + 1);
    env.left_log.assign(N + 1, 0.0);
    identity(env.left[0]);
    for (index_t j = 0; j < N; ++j) {
      const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
      env.left[j + 1].resize(h * Dr * Dr);
      doubled_step<T>(ch.cores[j], ch.scales[j], d, Dl, Dr, w, true, h, env.left[j].data(), env.left[j + 1].data());
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
      env.right[j].resize(h * Dl * Dl);
      doubled_step<T>(ch.cores[j], ch.scales[j], d, Dl, Dr, w, false, h, env.right[j + 1].data(), env.right[j].data());
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
  // with (a,a') of the suffix (the trace).  Per channel two GEMMs, channels in parallel; each
  // thread sums its own channels and the partial sums are added in thread order.
  constexpr int L = Simd<double>::L;
  for (index_t j = 0; j < N; ++j) {
    const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
    const double rel = std::exp(env.left_log[j] + env.right_log[j + 1] - logz);
    const double c = ch.scales[j];
    const bool parallel = h > 1 && h * Dl * Dr * (Dl + Dr) > 65536;
    for (index_t s = 0; s < d; ++s) {
      const T* A = ch.cores[j] + s * Dl * Dr;
      // A as the right operand of P_c A: rows b, depth k
      buffer<double> ap(round_up(Dr, Simd<double>::PAD) * Dl);
      pack_elems<double>(Dr, Dl, [&](index_t b, index_t k) { return static_cast<double>(A[k * Dr + b]); }, ap.data());
      Region region;
      const int threads = parallel ? region.threads() : 1;
      std::vector<buffer<double>> partial(threads, buffer<double>(Dl * Dr, 0.0));
#pragma omp parallel num_threads(threads) if (threads > 1)
      {
        buffer<double>& acc = thread_slot(partial);
        buffer<double> pp, sp, tp;
        region.run([&] {
          pp.resize(round_up(Dl, Simd<double>::PAD) * Dl), sp.resize(round_up(Dr, Simd<double>::PAD) * Dr);
          tp.assign(round_up(Dl, Simd<double>::PAD) * Dr, 0.0);  // padding rows stay 0
        });
#pragma omp for schedule(static)
        for (index_t cch = 0; cch < h; ++cch)
          region.run([&] {
            const double* P = env.left[j].data() + cch * Dl * Dl;
            const double* S = env.right[j + 1].data() + cch * Dr * Dr;
            pack_rows<double>(Dl, Dl, [&](index_t a) { return P + a * Dl; }, [](index_t) { return 1.0; }, pp.data());
            pack_rows<double>(Dr, Dr, [&](index_t b) { return S + b * Dr; }, [](index_t) { return 1.0; }, sp.data());
            // (P_c A)[a][k] as the packed operand with rows a and depth k, then acc += (P_c A) S_c^T
            gemm_packed<double>(Dl, Dr, Dl, pp.data(), ap.data(), [&](index_t a, index_t k, double v) {
              tp[panel_offset<double>(a, Dr) + a % L + k * L] = v;
            });
            gemm_packed<double>(Dl, Dr, Dr, tp.data(), sp.data(),
                                [&](index_t a, index_t b, double v) { acc[a * Dr + b] += v; });
          });
      }
      region.finish();
      // d log Z / dW = c * dZ/dA / Z; dZ/dA_s = 2 w_s c (P (cA_s) S^T) with A = c W.
      const double f = 2.0 * w[s] * c * c * rel;
      T* g = grads[j] + s * Dl * Dr;
      for (index_t e = 0; e < Dl * Dr; ++e) {
        double v = 0;
        for (const auto& part : partial) v += part[e];
        g[e] = static_cast<T>(f * v);
      }
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
