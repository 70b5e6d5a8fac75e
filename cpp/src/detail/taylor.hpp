// The exact finite Taylor (RKBS) expansion of an MPS in a step, and its order-k kernels
// (theory section 5.3).  Part of the per-ISA engine (see engine_impl.hpp).
//
// Taylor terms.  f is multilinear in the cores, so with M_j + eps V_j in place of M_j
// (V_j = sum_s phi_s c_j Delta_j[s]), f(W + eps Delta) = sum_k eps^k P_k exactly.  Polynomial
// environments hold one row block per order: L^(k) <- L^(k) M_j + L^(k-1) V_j going right,
// R^(k) <- M_j R^(k) + V_j R^(k-1) going left, each product one transfer_rows step with the core
// or the step core.  The left sweep stops at a split slot s where the right sweep ends, and
// P_k = sum_{a+b=k} <L^(a)_s, R^(b)_s>: slot s holds min(s, K) + 1 left and min(N - s, K) + 1
// right orders, so meeting in the middle halves the O(N^2) order-site work of one sweep.  An
// optional remainder row carries every order above K at once, through the stepped cores.
//
// Order kernels.  K_k(x, y) = sum_{|S|=k} prod_{j in S} lambda_j <d_S f(x), d_S f(y)> with the
// derivatives taken in the effective cores A_j.  On the doubled chain a site outside S maps the
// pair state X (D_j x D_j) to M_j(x)^T X M_j(y), and a site in S to lambda_j k_j(x, y) Tr(X) I, so
// with one state per order, X^(m) <- M^T X^(m) M' + lambda_j k_j Tr(X^(m-1)) I.  The order-0
// state is rank one (Tr X^(0)_j = Z_j = L_j(x) L_j(y)^T from the environments) and the last
// site of S closes against the right environments (W_j = R_{j+1}(x) R_{j+1}(y)^T), so only the
// orders 1..k_max-1 are propagated: O(n1 n2 N (k_max - 1) D^3) for open chains.  Periodic chains
// carry the boundary: either D_0^2 channels (alpha, alpha'), or one channel per first site of S
// whose wrap-around segment closes as <Z_first, W_last> (O(N^2 (k_max - 1) D^3 / 2)); the cheaper
// of the two is used.

/// exp(l - m) for log-scales that are whole multiples of ln 2 (every log-scale here is a sum of
/// pow2_normaliser steps): the nearest power of two, so that values combined across scales are
/// rescaled exactly, whatever rounding the sums of logs carry.  0 for l = -inf.
inline double pow2_ratio(double l, double m) {
  if (!(l > -std::numeric_limits<double>::infinity())) return 0.0;
  const double e = std::nearbyint((l - m) / 0.69314718055994530942);
  return e < -2200 ? 0.0 : e > 2200 ? std::numeric_limits<double>::infinity() : std::ldexp(1.0, static_cast<int>(e));
}

/// Log-scaled accumulator: value = m * exp(lg).
struct LogSum {
  double m = 0.0, lg = 0.0;
  void add(double v, double l) {
    if (v == 0.0) return;
    if (m == 0.0) {
      m = v, lg = l;
    } else if (l > lg) {
      m = m * pow2_ratio(lg, l) + v, lg = l;
    } else {
      m += v * pow2_ratio(l, lg);
    }
  }
};

/// a += b for groups of `group` values that each carry a log-scale (la, lb), then renormalised.
/// An all-zero group has no scale: its log is ignored.  This is where the two contributions to
/// one polynomial order (through the core and through the step) meet.
template <class T>
void add_scaled_groups(index_t n_groups, index_t group, T* a, double* la, const T* b, const double* lb) {
  for (index_t g = 0; g < n_groups; ++g) {
    T* pa = a + g * group;
    const T* pb = b + g * group;
    T ma = 0, mb = 0;
    for (index_t i = 0; i < group; ++i) ma = std::max(ma, std::abs(pa[i])), mb = std::max(mb, std::abs(pb[i]));
    if (mb == T(0)) continue;
    if (ma == T(0)) {
      std::copy(pb, pb + group, pa);
      la[g] = lb[g];
      continue;
    }
    const double m = std::max(la[g], lb[g]);
    const T fa = static_cast<T>(pow2_ratio(la[g], m)), fb = static_cast<T>(pow2_ratio(lb[g], m));
    for (index_t i = 0; i < group; ++i) pa[i] = fa * pa[i] + fb * pb[i];
    la[g] = m;
  }
  normalise_groups<T>(n_groups, group, a, la);
}

/// The orders of one polynomial slot for a block of samples: order k holds rows (x, l, alpha) at
/// v + k * stride and the log-scales of its (x, l) groups at lg + k * lstride.
template <class T>
struct PolySlot {
  buffer<T> v;
  std::vector<double> lg;
  index_t stride = 0, lstride = 0;
  PolySlot(index_t orders, index_t stride_, index_t lstride_)
      : v(orders * stride_, T(0)), lg(orders * lstride_, 0.0), stride(stride_), lstride(lstride_) {}
  T* rows(index_t k) { return v.data() + k * stride; }
  double* logs(index_t k) { return lg.data() + k * lstride; }
};

/// Mantissas and log-scales (max_order + 1 [+ 1], n, C) of the Taylor terms (contract of
/// mpsntk::taylor_terms in engine.hpp).  With `remainder`, slot row K + 1 carries the sum of
/// all orders above K: R <- R (M_j + V_j) + L^(K) V_j, exact and without cancellation.
template <class T>
void taylor_impl(const ChainView<T>& ch, const ChainView<T>& step, const FeatureView<T>& phi, index_t K, bool remainder,
                 T* mantissa, double* log_scale) {
  const index_t N = ch.n_sites, n = phi.n_samples, h = ch.channels(), C = ch.n_outputs, d = ch.phys_dim;
  const index_t R = K + 1;  // row of the remainder
  // A slot `len` sites from its boundary holds the orders 0..min(len, K), and the remainder
  // once len > K.  Transfers through a site from such a slot: the core on every order, the
  // step on orders below K (and on K into the remainder), the stepped core on the remainder.
  auto top_of = [&](index_t len) { return std::min(len, K); };
  auto tail_of = [&](index_t len) { return remainder && len > K; };
  auto transfers = [&](index_t len) {
    const index_t top = top_of(len);
    return double(top + 1 + std::min(top + 1, K) + (remainder && top == K) + tail_of(len));
  };

  // Split slot: the least work of both sweeps (rows x depth x columns of their GEMMs) plus the
  // final contraction.
  index_t split = 0;
  {
    std::vector<double> left(N + 1, 0.0), right(N + 1, 0.0);
    for (index_t j = 0; j < N; ++j) {
      const double gemm = double(h) * d * ch.bond[j] * ch.bond[j + 1] * (j == ch.output_site ? C : 1);
      left[j + 1] = left[j] + transfers(j) * ch.left_mult(j) * gemm;
      right[j] = transfers(N - j - 1) * ch.right_mult(j + 1) * gemm;
    }
    for (index_t j = N - 1; j >= 0; --j) right[j] += right[j + 1];
    double best = std::numeric_limits<double>::infinity();
    for (index_t s = 0; s <= N; ++s) {
      const double rows_l = top_of(s) + 1 + tail_of(s), rows_r = top_of(N - s) + 1 + tail_of(N - s);
      const double cost = left[s] + right[s] + rows_l * rows_r * C * h * ch.bond[s];
      if (cost < best) best = cost, split = s;
    }
  }

  // The stepped chain W + Delta carries the remainder.
  std::vector<buffer<T>> stepped(remainder ? N : 0);
  ChainView<T> sum = ch;
  for (index_t j = 0; j < static_cast<index_t>(stepped.size()); ++j) {
    const index_t size = ch.core_size(j);
    stepped[j].resize(size);
    for (index_t e = 0; e < size; ++e) stepped[j][e] = ch.cores[j][e] + step.cores[j][e];
    sum.cores[j] = stepped[j].data();
  }
  std::vector<buffer<T>> core_p(N), step_p(N), sum_p(N);
  {
    Region region;
#pragma omp parallel for schedule(dynamic) num_threads(region.threads()) if (N > 1 && n * ch.bond[N / 2] > 4096)
    for (index_t j = 0; j < N; ++j)
      region.run([&] {
        const bool to_right = j < split;
        core_p[j] = pack_core(ch, j, to_right);
        step_p[j] = pack_core(step, j, to_right);
        if (remainder) sum_p[j] = pack_core(sum, j, to_right);
      });
    region.finish();
  }

  // Blocks of samples: about 48 rows per order (as the environments), fewer when that leaves
  // too few blocks for the threads.
  Region region;
  index_t threads = region.threads(), widest = 1;
  for (index_t s = 0; s <= N; ++s) widest = std::max(widest, ch.bond[s]);
  const index_t rows_per_x = C * h;
  index_t block = std::max<index_t>(1, 48 / rows_per_x);
  while (block > 1 && (n + block - 1) / block < 4 * threads && block * rows_per_x > Simd<T>::MR) block /= 2;
  const index_t n_blocks = (n + block - 1) / block;
  const index_t stride = round_up(block * rows_per_x, Simd<T>::PAD) * widest, lstride = block * C;
  const index_t n_threads = std::min<index_t>(threads, n_blocks);

  // Per-thread work space, allocated here so that a failed allocation is an exception: the
  // slots a sweep moves between, the left slot kept at the split, one order of step products.
  struct Work {
    PolySlot<T> cur, next, left, delta;
    buffer<T> scratch;
    std::vector<LogSum> acc;
  };
  std::vector<Work> work;
  work.reserve(n_threads);
  for (index_t t = 0; t < n_threads; ++t)
    work.push_back(Work{PolySlot<T>(K + 2, stride, lstride), PolySlot<T>(K + 2, stride, lstride),
                        PolySlot<T>(K + 2, stride, lstride), PolySlot<T>(1, stride, lstride),
                        buffer<T>(round_up(block * rows_per_x, Simd<T>::PAD) * d * widest),
                        std::vector<LogSum>(K + 2)});
  const double work_estimate = double(n) * N * (std::min(N, K) + 2) * d * ch.bond[N / 2] * ch.bond[N / 2];
#pragma omp parallel num_threads(n_threads) if (n_threads > 1 && work_estimate > 1e6)
  {
    Work& w = thread_slot(work);
#pragma omp for schedule(dynamic)
    for (index_t b = 0; b < n_blocks; ++b)
      region.run([&] {
        const index_t x0 = b * block, x1 = std::min(n, x0 + block), nb = x1 - x0;
        // One sweep from slot `first` (the boundary) to slot `last`, ending in `cur`.
        auto sweep = [&](bool to_right, index_t first, index_t last) {
          identity_slot<T>(nb, h, w.cur.rows(0), w.cur.logs(0));
          for (index_t s = first, len = 0; s != last; s += to_right ? 1 : -1, ++len) {
            const index_t j = to_right ? s : s - 1;
            const index_t mult_in = to_right ? ch.left_mult(j) : ch.right_mult(j + 1);
            const index_t fan = j == ch.output_site ? C : 1;
            const index_t groups = nb * mult_in * fan, group = h * ch.bond[to_right ? j + 1 : j];
            const index_t top = top_of(len), new_top = top_of(len + 1);
            // into order k of the next slot: (k of this one) through the core, (k - 1) through the
            // step; the two meet with their own scales.
            auto step_into = [&](const ChainView<T>& chain, const std::vector<buffer<T>>& packed, index_t from,
                                 index_t to, bool add) {
              transfer_rows<T>(chain, phi, j, to_right, h, mult_in, packed[j].data(), x0, x1, w.cur.rows(from),
                               w.cur.logs(from), add ? w.delta.rows(0) : w.next.rows(to),
                               add ? w.delta.logs(0) : w.next.logs(to), w.scratch);
              if (add)
                add_scaled_groups<T>(groups, group, w.next.rows(to), w.next.logs(to), w.delta.rows(0), w.delta.logs(0));
            };
            for (index_t k = 0; k <= new_top; ++k) {
              if (k <= top) step_into(ch, core_p, k, k, false);
              if (k >= 1) step_into(step, step_p, k - 1, k, k <= top);
            }
            if (tail_of(len)) step_into(sum, sum_p, R, R, false);
            if (remainder && top == K) step_into(step, step_p, K, R, tail_of(len));
            std::swap(w.cur, w.next);
          }
        };
        sweep(true, 0, split);
        std::swap(w.cur, w.left);
        sweep(false, N, split);
        PolySlot<T>& Lt = w.left;
        PolySlot<T>& Rt = w.cur;
        // P_k = sum_{a + b = k} <L^(a), R^(b)> at the split slot; pairs above K (or with a
        // remainder row) add to the remainder.
        const index_t mL = ch.left_mult(split), mR = ch.right_mult(split), len = h * ch.bond[split];
        const index_t top_l = top_of(split), top_r = top_of(N - split);
        const bool tail_l = tail_of(split), tail_r = tail_of(N - split);
        const index_t rows = K + 1 + remainder;
        for (index_t x = 0; x < nb; ++x)
          for (index_t l = 0; l < C; ++l) {
            const index_t rl = x * mL + (mL > 1 ? l : 0), rr = x * mR + (mR > 1 ? l : 0);
            std::fill(w.acc.begin(), w.acc.end(), LogSum());
            for (index_t a = 0; a <= R; ++a) {
              if ((a > top_l && a < R) || (a == R && !tail_l)) continue;
              for (index_t c = 0; c <= R; ++c) {
                if ((c > top_r && c < R) || (c == R && !tail_r)) continue;
                const index_t k = (a == R || c == R || a + c > K) ? R : a + c;
                if (k == R && !remainder) continue;
                const T* pl = Lt.rows(a) + rl * len;
                const T* pr = Rt.rows(c) + rr * len;
                double dot = 0;
                for (index_t i = 0; i < len; ++i) dot += double(pl[i]) * double(pr[i]);
                w.acc[k].add(dot, Lt.logs(a)[rl] + Rt.logs(c)[rr]);
              }
            }
            for (index_t k = 0; k < rows; ++k) {
              const index_t o = (k * n + x0 + x) * C + l;
              mantissa[o] = static_cast<T>(w.acc[k].m);
              log_scale[o] = w.acc[k].m != 0 ? w.acc[k].lg : 0.0;
            }
          }
      });
  }
  region.finish();
}

// ------------------------------------------------------------------------------ order kernels

/// out(r, c) of (packed A: M x K) (packed B: N x K)^T, one thread (the caller runs pairs in
/// parallel); `store(r, c, value)` receives each finished entry.
template <class T, class Store>
void gemm_serial(index_t M, index_t N, index_t K, const T* a, const T* b, Store store) {
  using S = Simd<T>;
  for (index_t p = 0; p < M; p += S::MR)
    for (index_t q = 0; q < N; q += S::NR) {
      typename S::vec acc[S::MR][S::NV];
      micro_gemm<T>(panel_row<T>(a, p, K), panel_row<T>(b, q, K), K, acc);
      for (int r = 0; r < S::MR && p + r < M; ++r)
        for (int v = 0; v < S::NV; ++v)
          for (int l = 0; l < S::L; ++l) {
            const index_t c = q + v * S::L + l;
            if (c < N) store(p + r, c, acc[r][v][l]);
          }
    }
}

/// A scalar chain (label core sliced at one output) with the environments of both sample sets.
template <class T>
struct OrderChain {
  ChainView<T> chain;
  Environments<T> env1, env2;  // env2 empty when the kernel is symmetric
};

/// Per-thread work space of the pair kernel.
template <class T>
struct PairWork {
  buffer<T> m1, m2, a1, b1, a2, b2, state, next;
  std::vector<double> lx, lnext, trace, z, zl, w, wl, lk;
};

/// Adds K_k(x, y) for k = 1..kmax of one scalar chain into acc[k].
/// channels_by_first_site: periodic chains with one channel per first site of S (else the
/// D_0^2 boundary channels (alpha, alpha'); open chains have one).
template <class T>
void pair_order_kernels(const OrderChain<T>& oc, const FeatureView<T>& phi1, const FeatureView<T>& phi2, index_t x,
                        index_t y, const std::vector<double>& lambda, index_t kmax, bool channels_by_first_site,
                        PairWork<T>& w, std::vector<LogSum>& acc) {
  using S = Simd<T>;
  constexpr int L = S::L;
  const ChainView<T>& ch = oc.chain;
  const Environments<T>& e1 = oc.env1;
  const Environments<T>& e2 = oc.env2.left.empty() ? oc.env1 : oc.env2;
  const index_t N = ch.n_sites, d = ch.phys_dim, h = ch.channels(), hh = h * h;
  // lambda_j k_j(x, y); Z_j = L_j(x) L_j(y)^T and W_j = R_{j+1}(x) R_{j+1}(y)^T (h x h) with logs.
  for (index_t j = 0; j < N; ++j) {
    const T* p1 = phi1.at(x, j);
    const T* p2 = phi2.at(y, j);
    double k = 0;
    for (index_t s = 0; s < d; ++s) k += double(p1[s]) * double(p2[s]);
    w.lk[j] = lambda[j] * k;
    auto gram = [&](const T* u, const T* v, index_t len, double* out) {
      for (index_t a = 0; a < h; ++a)
        for (index_t b = 0; b < h; ++b) {
          double s = 0;
          for (index_t i = 0; i < len; ++i) s += double(u[a * len + i]) * double(v[b * len + i]);
          out[a * h + b] = s;
        }
    };
    const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
    gram(e1.left[j] + x * h * Dl, e2.left[j] + y * h * Dl, Dl, w.z.data() + j * hh);
    w.zl[j] = e1.left_log[j][x] + e2.left_log[j][y];
    gram(e1.right[j + 1] + x * h * Dr, e2.right[j + 1] + y * h * Dr, Dr, w.w.data() + j * hh);
    w.wl[j] = e1.right_log[j + 1][x] + e2.right_log[j + 1][y];
  }
  auto zw = [&](index_t a, index_t b) {  // <Z_a, W_b>
    double s = 0;
    for (index_t c = 0; c < hh; ++c) s += w.z[a * hh + c] * w.w[b * hh + c];
    return s;
  };
  for (index_t j = 0; j < N; ++j) acc[1].add(w.lk[j] * zw(j, j), w.zl[j] + w.wl[j]);
  if (kmax < 2) return;

  // States X^(m), m = 1..kmax-1, of each channel c: state c * nm + m - 1, D_j x D_j row-major
  // at bond j, with one log-scale each (-inf: the state is zero).
  const index_t nm = kmax - 1, nch = channels_by_first_site ? N : hh;
  const double none = -std::numeric_limits<double>::infinity();
  index_t active = channels_by_first_site ? 0 : nch;
  if (!channels_by_first_site) {
    std::fill(w.state.begin(), w.state.begin() + nch * nm * ch.bond[0] * ch.bond[0], T(0));
    std::fill(w.lx.begin(), w.lx.begin() + nch * nm, none);
  }
  for (index_t j = 0; j < N; ++j) {
    const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1], nst = active * nm;
    // Traces at bond j, and the closings: the last site of S is j.
    for (index_t b = 0; b < nst; ++b) {
      const T* X = w.state.data() + b * Dl * Dl;
      double t = 0;
      for (index_t i = 0; i < Dl; ++i) t += X[i * Dl + i];
      w.trace[b] = w.lx[b] == none ? 0.0 : t;
    }
    for (index_t c = 0; c < active; ++c) {
      const double wc = channels_by_first_site ? zw(c, j) : w.w[j * hh + c];
      const double lw = channels_by_first_site ? w.zl[c] + w.wl[j] : w.wl[j];
      for (index_t m = 1; m <= nm; ++m) {
        const index_t b = c * nm + m - 1;
        acc[m + 1].add(w.lk[j] * w.trace[b] * wc, w.lx[b] + lw);
      }
    }
    if (j == N - 1) break;
    // X <- M_j(x)^T X M_j(y) for every state: two GEMMs over all states at once.
    const T cj = static_cast<T>(ch.scales[j]);
    auto site_matrix = [&](const T* ph, T* M) {
      std::fill(M, M + Dl * Dr, T(0));
      for (index_t s = 0; s < d; ++s) {
        const T f = cj * ph[s];
        const T* A = ch.cores[j] + s * Dl * Dr;
        for (index_t e = 0; e < Dl * Dr; ++e) M[e] += f * A[e];
      }
    };
    if (nst > 0) {
      site_matrix(phi1.at(x, j), w.m1.data());
      site_matrix(phi2.at(y, j), w.m2.data());
      const T* M1 = w.m1.data();
      const T* M2 = w.m2.data();
      pack_elems<T>(Dr, Dl, [&](index_t o, index_t a) { return M1[a * Dr + o]; }, w.a1.data());
      pack_elems<T>(Dr, Dl, [&](index_t o, index_t c) { return M2[c * Dr + o]; }, w.b2.data());
      const T* X = w.state.data();
      pack_elems<T>(
          nst * Dl, Dl, [&](index_t r, index_t a) { return X[(r / Dl) * Dl * Dl + a * Dl + r % Dl]; }, w.b1.data());
      // Z_b[o][c] = sum_a M1[a][o] X_b[a][c], stored as rows (b, o) of depth c for the second GEMM
      T* A2 = w.a2.data();
      gemm_serial<T>(Dr, nst * Dl, Dl, w.a1.data(), w.b1.data(), [&](index_t o, index_t col, T v) {
        const index_t r = (col / Dl) * Dr + o;
        A2[panel_offset<T>(r, Dl) + r % L + (col % Dl) * L] = v;
      });
      T* Xn = w.next.data();
      gemm_serial<T>(nst * Dr, Dr, Dl, A2, w.b2.data(), [&](index_t r, index_t o2, T v) { Xn[r * Dr + o2] = v; });
    }
    // Sources lambda_j k_j Tr(X^(m-1)) I (order 1: Z_j, or the new channel of first site j).
    const index_t n_active = channels_by_first_site ? j + 1 : nch;
    for (index_t c = 0; c < n_active; ++c)
      for (index_t m = 1; m <= nm; ++m) {
        const index_t b = c * nm + m - 1;
        const bool fresh = c >= active;  // a channel that starts here: no state yet
        double src = 0, ls = none;
        if (m == 1) {
          if (!channels_by_first_site) src = w.lk[j] * w.z[j * hh + c], ls = w.zl[j];
          if (fresh) src = w.lk[j], ls = 0.0;
        } else if (!fresh && w.trace[b - 1] != 0) {
          src = w.lk[j] * w.trace[b - 1], ls = w.lx[b - 1];
        }
        if (src == 0) ls = none;
        T* X = w.next.data() + b * Dr * Dr;
        const double lx = fresh ? none : w.lx[b];
        if (fresh) std::fill(X, X + Dr * Dr, T(0));
        const double top = std::max(lx, ls);
        if (top == none) {
          w.lnext[b] = none;
          if (!fresh) std::fill(X, X + Dr * Dr, T(0));
          continue;
        }
        const T fx = static_cast<T>(pow2_ratio(lx, top));
        if (fx != T(1))
          for (index_t e = 0; e < Dr * Dr; ++e) X[e] *= fx;
        const T fs = static_cast<T>(src * pow2_ratio(ls, top));
        for (index_t i = 0; i < Dr; ++i) X[i * Dr + i] += fs;
        double lg = top;
        T mx = 0;
        for (index_t e = 0; e < Dr * Dr; ++e) mx = std::max(mx, std::abs(X[e]));
        const T f = static_cast<T>(tile::pow2_normaliser<T>(mx, &lg));
        if (f != T(1))
          for (index_t e = 0; e < Dr * Dr; ++e) X[e] *= f;
        w.lnext[b] = mx == T(0) ? none : lg;
      }
    active = n_active;
    std::swap(w.state, w.next);
    std::swap(w.lx, w.lnext);
  }
}

/// The order-k kernels (contract of mpsntk::order_kernels in engine.hpp).
template <class T>
RangeReport order_kernels_impl(const ChainView<T>& ch, const FeatureView<T>& phi1, const FeatureView<T>* phi2,
                               const double* site_lr, const std::vector<index_t>& orders, T* out) {
  const index_t N = ch.n_sites, C = ch.n_outputs, h = ch.channels();
  const bool sym = phi2 == nullptr;
  const FeatureView<T>& p2 = sym ? phi1 : *phi2;
  const index_t n1 = phi1.n_samples, n2 = p2.n_samples;
  index_t kmax = 0;
  for (index_t k : orders) kmax = std::max(kmax, k);
  std::vector<double> lambda(N);
  for (index_t j = 0; j < N; ++j) lambda[j] = ch.scales[j] * ch.scales[j] * site_lr[j];
  // Traced outputs: one scalar chain per output l (the label core sliced at l), summed.
  std::vector<OrderChain<T>> chains(C);
  for (index_t l = 0; l < C; ++l) {
    OrderChain<T>& oc = chains[l];
    oc.chain = ch;
    if (ch.output_site >= 0) {
      const index_t c = ch.output_site;
      oc.chain.cores[c] = ch.cores[c] + l * ch.phys_dim * ch.bond[c] * ch.bond[c + 1];
      oc.chain.output_site = -1;
      oc.chain.n_outputs = 1;
    }
  }
  for (index_t l = 0; l < C; ++l) {
    chains[l].env1 = compute_environments<T>(chains[l].chain, phi1, true, true);
    if (!sym) chains[l].env2 = compute_environments<T>(chains[l].chain, p2, true, true);
  }
  // Periodic boundary: D_0^2 channels cost N (k_max - 1) h^2 D^3 per pair, one channel per first
  // site about N^2 (k_max - 1) D^3 / 2.
  const bool by_first = h > 1 && double(N) / 2 < double(h) * h;
  const index_t nch = by_first ? N : h * h, nm = std::max<index_t>(kmax - 1, 1);
  index_t widest = 1;
  for (index_t s = 0; s <= N; ++s) widest = std::max(widest, ch.bond[s]);
  Region region;
  const int threads = region.threads();
  const index_t PAD = Simd<T>::PAD, states = nch * nm;
  std::vector<PairWork<T>> work(threads);
  for (auto& w : work) {
    w.m1.assign(widest * widest, T(0)), w.m2.assign(widest * widest, T(0));
    w.a1.assign(round_up(widest, PAD) * widest, T(0)), w.b2.assign(round_up(widest, PAD) * widest, T(0));
    w.b1.assign(round_up(states * widest, PAD) * widest, T(0));
    w.a2.assign(round_up(states * widest, PAD) * widest, T(0));
    w.state.assign(states * widest * widest, T(0)), w.next.assign(states * widest * widest, T(0));
    w.lx.assign(states, 0.0), w.lnext.assign(states, 0.0), w.trace.assign(states, 0.0);
    w.z.assign(N * h * h, 0.0), w.w.assign(N * h * h, 0.0), w.zl.assign(N, 0.0), w.wl.assign(N, 0.0);
    w.lk.assign(N, 0.0);
  }
  std::vector<std::vector<LogSum>> accs(work.size(), std::vector<LogSum>(kmax + 1));
  std::atomic<bool> overflow{false}, underflow{false};
  // Threads only for work that outweighs waking them: pairs x sites x (Grams + transfers).
  const double pairs = sym ? 0.5 * n1 * (n1 + 1) : double(n1) * n2;
  const double work_estimate = pairs * C * N * (h * h * widest + 4.0 * (kmax - 1) * nch * widest * widest * widest);
#pragma omp parallel num_threads(threads) if (pairs > 1 && work_estimate > 1e6)
  {
    PairWork<T>& w = thread_slot(work);
    std::vector<LogSum>& acc = accs[&w - work.data()];
#pragma omp for schedule(dynamic, 1)
    for (index_t i = 0; i < n1; ++i)
      region.run([&] {
        for (index_t k = sym ? i : 0; k < n2; ++k) {
          region.checkpoint();
          std::fill(acc.begin(), acc.end(), LogSum());
          for (const auto& oc : chains) pair_order_kernels<T>(oc, phi1, p2, i, k, lambda, kmax, by_first, w, acc);
          for (index_t o = 0; o < static_cast<index_t>(orders.size()); ++o) {
            const LogSum& a = acc[orders[o]];
            const double v = a.m * std::exp(a.lg);
            const T t = static_cast<T>(v);
            if (!std::isfinite(t)) overflow.store(true, std::memory_order_relaxed);
            if (t == T(0) && a.m != 0.0) underflow.store(true, std::memory_order_relaxed);
            out[(o * n1 + i) * n2 + k] = t;
            if (sym) out[(o * n1 + k) * n2 + i] = t;
          }
        }
      });
  }
  region.finish();
  return RangeReport{overflow.load(), underflow.load()};
}
