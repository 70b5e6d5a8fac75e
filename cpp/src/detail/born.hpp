// Doubled-MPS contractions for Born machines: Z = sum_{x in Omega} Psi(x)^2 with one-hot
// features phi_s(x_j) = sqrt(w_s) delta_{s, x_j}.  Transfer map of site j on a D x D matrix E:
//   left:  E -> sum_s w_s A_s^T E A_s        right:  F -> sum_s w_s A_s F A_s^T
// Open chains carry one such matrix; periodic chains one per channel (alpha, alpha') of the
// doubled boundary, and Z is their trace.  Channels evolve independently and the channel
// (alpha', alpha) is the transpose of (alpha, alpha'), so only the D_0 (D_0 + 1) / 2 channels
// alpha <= alpha' are stored and contracted.  Cost O(N d D^3) open, O(N d D^5) periodic.
// Every slot is normalised by a power of two (log kept).
//
// Each step runs as a few large register-blocked GEMMs over stacked channels and folded
// physical indices, with B_s = A_s going right and A_s^T going left (din x dout):
//   T[(c, i), (s, o)] = sum_k E_c[i][k] B_s[k][o]             (c·din x din) (din x d·dout)
//   out_c[o][o2]      = sum_(s,i) w_s B_s[i][o] T[(c,i),(s,o2)]   (dout x d·din) (d·din x c·dout)
// and the gradient of site j, G_s = sum_c P_c W_s S_c^T over all D_0^2 channels, as
//   X[(s, b'), (c, k)] = sum_k' W_s[k'][b'] P_c[k][k'],   G^T[b][(s, k)] = sum_(c,b') S_c[b][b'] X
// Channels are cut into groups (the units of parallel work) of cache-sized chunks; the cut
// depends on the sizes alone, so every result is the same whatever the thread count.

using born_vec = Simd<double>::vec;

/// Where a GEMM's output goes: entry (i, j) to base[row[i] + col[j]], dropped where row[i] or
/// col[j] is negative; a vector of L columns is one store where whole[j / L] (all lanes kept and
/// contiguous).  Offsets are tabulated once per product, so the stores need no index arithmetic.
struct BornOut {
  double* base = nullptr;
  bool add = false;  ///< accumulate instead of overwrite
  std::vector<index_t> row, col;
  std::vector<char> whole;

  /// Tables for an M x N product: row_off(i) and col_off(j) give the two parts of the offset.
  template <class RowOff, class ColOff>
  void map(double* dst, index_t M, index_t N, RowOff row_off, ColOff col_off, bool accumulate = false) {
    constexpr int L = Simd<double>::L;
    base = dst, add = accumulate;
    row.resize(M), col.resize(round_up(N, L));
    for (index_t i = 0; i < M; ++i) row[i] = row_off(i);
    for (index_t j = 0; j < round_up(N, L); ++j) col[j] = j < N ? col_off(j) : -1;
    whole.resize(round_up(N, L) / L);
    for (index_t v = 0; v < round_up(N, L) / L; ++v) {
      bool ok = col[v * L] >= 0;
      for (int l = 1; l < L; ++l) ok = ok && col[v * L + l] == col[v * L] + l;
      whole[v] = ok;
    }
  }

  void put(index_t i, index_t j0, const born_vec& v) const {
    constexpr int L = Simd<double>::L;
    if (row[i] < 0) return;
    double* p = base + row[i];
    if (whole[j0 / L]) {
      double* q = p + col[j0];
      Simd<double>::store(q, add ? Simd<double>::load(q) + v : v);
      return;
    }
    for (int l = 0; l < L; ++l) {
      const index_t c = col[j0 + l];
      if (c >= 0) p[c] = add ? p[c] + v[l] : v[l];
    }
  }
};

/// out(i, j) of (packed a: M x K) (packed b: N x K)^T for i < M, j < N, into `out` (columns
/// past N are never mapped).  With `upper`, micro-tiles wholly below the diagonal (every j < i)
/// are skipped.  Threaded over row blocks when `threaded` and the product is large, handed out
/// one at a time: on a loaded machine a descheduled thread's blocks go to the others.
inline void born_gemm(index_t M, index_t N, index_t K, const double* a, const double* b, bool threaded, bool upper,
                      const BornOut& out) {
  using S = Simd<double>;
  constexpr int L = S::L, MR = S::MR, NV = S::NV, NR = S::NR;
  const index_t mt = round_up(M, MR) / MR, nt = round_up(N, NR) / NR;
  auto row_block = [&](index_t p) {
    for (index_t q = upper ? p * MR / NR : 0; q < nt; ++q) {
      born_vec acc[MR][NV];
      micro_gemm<double>(panel_row<double>(a, p * MR, K), panel_row<double>(b, q * NR, K), K, acc);
      for (int r = 0; r < MR && p * MR + r < M; ++r)
        for (int v = 0; v < NV && q * NR + v * L < N; ++v) out.put(p * MR + r, q * NR + v * L, acc[r][v]);
    }
  };
  if (!threaded || mt < 2 || mt * nt * K <= 32768) {  // no nested (inactive) region: it costs more than small GEMMs
    for (index_t p = 0; p < mt; ++p) row_block(p);
    return;
  }
  Region region;
#pragma omp parallel for schedule(dynamic, 1) num_threads(region.threads())
  for (index_t p = 0; p < mt; ++p) region.run([&] { row_block(p); });
  region.finish();
}

/// Address of (row, depth k) in a packed operand of depth K.
inline double* born_at(double* p, index_t row, index_t k, index_t K) {
  return p + panel_offset<double>(row, K) + row % Simd<double>::L + k * Simd<double>::L;
}

/// Offset of (row, depth k) in a packed operand of depth K.
inline index_t born_offset(index_t row, index_t k, index_t K) {
  return panel_offset<double>(row, K) + row % Simd<double>::L + k * Simd<double>::L;
}

/// Zero rows r0 .. r1 - 1 of a packed operand of depth K (whole panels at once).
inline void born_zero_rows(double* p, index_t r0, index_t r1, index_t K) {
  constexpr int L = Simd<double>::L;
  for (; r0 < r1 && r0 % L; ++r0)
    for (index_t k = 0; k < K; ++k) *born_at(p, r0, k, K) = 0.0;
  const index_t whole = r0 + (r1 - r0) / L * L;
  std::fill(p + panel_offset<double>(r0, K), p + panel_offset<double>(whole, K), 0.0);
  for (r0 = whole; r0 < r1; ++r0)
    for (index_t k = 0; k < K; ++k) *born_at(p, r0, k, K) = 0.0;
}

/// Copy a matrix into rows r0 .. r0 + n_rows - 1 (r0 a multiple of L) and depths k0 .. k0 + nk - 1
/// of a packed operand of depth K: (r0 + r, k0 + k) <- src[r * rs + k * ks]; lanes past n_rows in
/// the last panel are zeroed.  Where a panel's rows are contiguous in src (rs = 1) each depth is
/// one vector copy, else L strided reads feed one vector store.
inline void born_pack(double* dst, index_t K, index_t r0, index_t n_rows, index_t k0, index_t nk, const double* src,
                      index_t rs, index_t ks) {
  using S = Simd<double>;
  constexpr int L = S::L;
  for (index_t p = 0; p < n_rows; p += L) {
    double* d = dst + panel_offset<double>(r0 + p, K) + k0 * L;
    const double* s = src + p * rs;
    if (p + L <= n_rows && rs == 1) {
      for (index_t k = 0; k < nk; ++k) S::store(d + k * L, S::load(s + k * ks));
    } else if (p + L <= n_rows) {
      for (index_t k = 0; k < nk; ++k) {
        born_vec v;
        for (int l = 0; l < L; ++l) v[l] = s[l * rs + k * ks];
        S::store(d + k * L, v);
      }
    } else {
      const int nl = static_cast<int>(n_rows - p);
      for (index_t k = 0; k < nk; ++k) {
        born_vec v = S::splat(0.0);
        for (int l = 0; l < nl; ++l) v[l] = s[l * rs + k * ks];
        S::store(d + k * L, v);
      }
    }
  }
}

/// Channels of the doubled boundary: open chains have one; periodic chains D_0^2 pairs
/// (alpha, alpha'), of which the stored ones are alpha <= alpha' (row-major).  The gradient
/// walks all D_0^2, each stored channel followed by its mirror (the same matrices, transposed),
/// so that both read them while they are in cache.
struct DoubledChannels {
  index_t D0 = 1;
  bool periodic = false;
  std::vector<index_t> first, second;  ///< stored channel u = (first[u], second[u])
  std::vector<index_t> index;          ///< D0 x D0: stored channel of (alpha, alpha') or of its mirror
  std::vector<index_t> walk;           ///< all channels in gradient order: 2 u, or 2 u + 1 for u's mirror

  explicit DoubledChannels(index_t d0, bool pbc) : D0(pbc ? d0 : 1), periodic(pbc) {
    index.assign(D0 * D0, 0);
    for (index_t a = 0; a < D0; ++a)
      for (index_t b = a; b < D0; ++b) {
        const index_t u = static_cast<index_t>(first.size());
        index[a * D0 + b] = index[b * D0 + a] = u;
        first.push_back(a), second.push_back(b);
        walk.push_back(2 * u);
        if (b != a) walk.push_back(2 * u + 1);
      }
  }
  index_t stored() const { return static_cast<index_t>(first.size()); }
  index_t all() const { return D0 * D0; }
};

/// The units of parallel work of a channel loop: `groups` ranges of consecutive channels, each
/// walked in chunks of at most `chunk` channels (about 256 KiB of work space).
struct ChannelPlan {
  index_t n = 1, groups = 1, chunk = 1;
  ChannelPlan(index_t n_channels, index_t doubles_per_channel) : n(n_channels) {
    groups = std::min<index_t>(n, 64);
    const index_t budget = std::max<index_t>(1, (index_t(256) << 10) / 8 / std::max<index_t>(1, doubles_per_channel));
    const index_t per_group = (n + groups - 1) / groups;
    chunk = (per_group + (per_group + budget - 1) / budget - 1) / ((per_group + budget - 1) / budget);
  }
  index_t begin(index_t g) const { return g * n / groups; }
};

/// body(ws, group, threaded) for every group: in parallel over groups (each with its own work
/// space, GEMMs on one thread) when there are enough of them and the work is large, else one
/// group after another with threaded GEMMs.
template <class Work, class Body>
void for_channel_groups(const ChannelPlan& plan, double flops, Body body) {
  Region region;
  if (region.threads() > 1 && plan.groups >= 4 * region.threads() && flops > 4e6) {
#pragma omp parallel num_threads(region.threads())
    {
      Work ws;
#pragma omp for schedule(dynamic, 1)
      for (index_t g = 0; g < plan.groups; ++g) region.run([&] { body(ws, g, false); });
    }
    region.finish();
  } else {
    Work ws;
    for (index_t g = 0; g < plan.groups; ++g) {
      detail::poll_interrupt();  // on the calling thread: long chains of small steps stay interruptible
      body(ws, g, true);
    }
  }
}

/// A site's core s as B_s (din x dout), packed for the transfer map and the gradient.  Rows
/// (s, o) sit at s * dout_p + o with dout_p = round_up(dout, L) (rows o >= dout are zero), so
/// that a vector of L columns of a product never straddles two values of s.
struct DoubledSite {
  index_t d = 0, din = 0, dout = 0, dout_p = 0;
  buffer<double> b;   ///< rows (s, o), depth i: W_s as B_s[i][o] (unscaled)
  buffer<double> bw;  ///< rows o, depth (s, i): w_s c^2 B_s[i][o]
};

template <class T>
DoubledSite doubled_site(const T* core, double c, index_t d, index_t Dl, index_t Dr, const double* w, bool to_right) {
  DoubledSite st;
  st.d = d, st.din = to_right ? Dl : Dr, st.dout = to_right ? Dr : Dl;
  const index_t din = st.din, dout = st.dout, dp = st.dout_p = round_up(dout, Simd<double>::L);
  auto B = [&](index_t s, index_t i, index_t o) {  // B_s[i][o]
    return static_cast<double>(to_right ? core[(s * Dl + i) * Dr + o] : core[(s * Dl + o) * Dr + i]);
  };
  const index_t K2 = d * din;
  st.b.resize(round_up(d * dp, Simd<double>::PAD) * din);
  st.bw.resize(round_up(dout, Simd<double>::PAD) * K2);
  for (index_t s = 0; s < d; ++s) {
    const double ws = w[s] * c * c;
    for (index_t o = 0; o < dp; ++o)
      for (index_t i = 0; i < din; ++i) *born_at(st.b.data(), s * dp + o, i, din) = o < dout ? B(s, i, o) : 0.0;
    for (index_t o = 0; o < dout; ++o)
      for (index_t i = 0; i < din; ++i) *born_at(st.bw.data(), o, s * din + i, K2) = ws * B(s, i, o);
  }
  born_zero_rows(st.b.data(), d * dp, round_up(d * dp, Simd<double>::PAD), din);
  born_zero_rows(st.bw.data(), dout, round_up(dout, Simd<double>::PAD), K2);
  return st;
}

struct DoubledStepWork {
  buffer<double> a, t;
  BornOut to_t, to_out;
};

/// out_u = sum_s w_s c^2 B_s^T E_u B_s for n_ch channels (E: din x din, out: dout x dout, row-major).
inline void doubled_step(const DoubledSite& st, index_t n_ch, const double* E, double* out) {
  constexpr int L = Simd<double>::L;
  const index_t d = st.d, din = st.din, dout = st.dout, dp = st.dout_p, K2 = d * din;
  const bool symmetric = n_ch == 1;  // one channel (alpha, alpha): E and out are symmetric
  const ChannelPlan plan(n_ch, din * din + K2 * dp + dout * dout);
  const double flops = 2.0 * n_ch * d * din * dout * (din + dout);
  for_channel_groups<DoubledStepWork>(plan, flops, [&](DoubledStepWork& ws, index_t g, bool threaded) {
    for (index_t c0 = plan.begin(g), end = plan.begin(g + 1); c0 < end; c0 += plan.chunk) {
      const index_t m = std::min(plan.chunk, end - c0), nt = m * dp;  // T: rows (c, o) at c * dp + o
      ws.a.resize(round_up(plan.chunk * din, Simd<double>::PAD) * din);
      ws.t.resize(round_up(plan.chunk * dp, Simd<double>::PAD) * K2);
      const double* Ec = E + c0 * din * din;  // rows (c, i) are contiguous
      born_pack(ws.a.data(), din, 0, m * din, 0, din, Ec, din, 1);
      born_zero_rows(ws.a.data(), round_up(m * din, L), round_up(m * din, Simd<double>::PAD), din);
      // T[(c, i), (s, o)] = (E_c B_s)[i][o] into the packed operand with rows (c, o), depth (s, i);
      // the zero rows o >= dout of B give T's padding rows.
      ws.to_t.map(
          ws.t.data(), m * din, d * dp, [&](index_t r) { return (r / din) * dp * K2 + (r % din) * L; },
          [&](index_t j) { return born_offset(j % dp, (j / dp) * din, K2); });
      born_gemm(m * din, d * dp, din, ws.a.data(), st.b.data(), threaded, false, ws.to_t);
      born_zero_rows(ws.t.data(), nt, round_up(nt, Simd<double>::PAD), K2);
      // out_c[o][o2] = sum_(s, i) w_s B_s[i][o] T[(c, o2), (s, i)]
      ws.to_out.map(
          out + c0 * dout * dout, dout, nt, [&](index_t o) { return o * dout; },
          [&](index_t j) { return j % dp < dout ? (j / dp) * dout * dout + j % dp : -1; });
      born_gemm(dout, nt, K2, st.bw.data(), ws.t.data(), threaded, symmetric, ws.to_out);
      if (symmetric) {  // the skipped tiles lie below the diagonal
        double* o1 = out + c0 * dout * dout;
        for (index_t o = 1; o < dout; ++o)
          for (index_t o2 = 0; o2 < o; ++o2) o1[o * dout + o2] = o1[o2 * dout + o];
      }
    }
  });
}

struct DoubledGradWork {
  buffer<double> p, x, s;
  BornOut to_x, to_acc;
};

/// G^T[b][(s, k)] = sum over all channels v of (P_v W_s S_v^T)[k][b], P (Dl x Dl) and S (Dr x Dr)
/// the stored channels of the left slot j and the right slot j + 1; `st` packed going right.
inline void doubled_gradient(const DoubledSite& st, const DoubledChannels& chs, const double* P, const double* S,
                             double* gt) {
  constexpr int L = Simd<double>::L;
  const index_t d = st.d, Dl = st.din, Dr = st.dout, Drp = st.dout_p, nv = chs.all(), ld = d * Dl;
  const index_t Dlp = round_up(Dl, L), nx = d * Dlp;  // X: rows (s, k) at s * Dlp + k
  const ChannelPlan plan(nv, Dlp * Dl + nx * Dr + Dr * Dr);
  buffer<double> partial(plan.groups * Dr * ld);
  const double flops = 4.0 * nv * d * Dl * Dl * Dr;
  for_channel_groups<DoubledGradWork>(plan, flops, [&](DoubledGradWork& ws, index_t g, bool threaded) {
    double* acc = partial.data() + g * Dr * ld;
    std::fill(acc, acc + Dr * ld, 0.0);
    for (index_t c0 = plan.begin(g), end = plan.begin(g + 1); c0 < end; c0 += plan.chunk) {
      const index_t m = std::min(plan.chunk, end - c0), Kx = m * Dr;
      ws.p.resize(round_up(plan.chunk * Dlp, Simd<double>::PAD) * Dl);
      ws.x.resize(round_up(nx, Simd<double>::PAD) * plan.chunk * Dr);
      ws.s.resize(round_up(Dr, Simd<double>::PAD) * plan.chunk * Dr);
      double *pp = ws.p.data(), *sp = ws.s.data();
      // P_v: rows (c, k) at c * Dlp + k (zero for k >= Dl), depth k'; S_v: rows b, depth (c, b')
      for (index_t c = 0; c < m; ++c) {
        const index_t u = chs.walk[c0 + c] / 2;
        const bool tr = chs.walk[c0 + c] % 2;
        const double* Pu = P + u * Dl * Dl;
        const double* Su = S + u * Dr * Dr;
        born_pack(pp, Dl, c * Dlp, Dl, 0, Dl, Pu, tr ? 1 : Dl, tr ? Dl : 1);
        born_pack(sp, Kx, 0, Dr, c * Dr, Dr, Su, tr ? 1 : Dr, tr ? Dr : 1);
      }
      born_zero_rows(pp, m * Dlp, round_up(m * Dlp, Simd<double>::PAD), Dl);
      born_zero_rows(sp, round_up(Dr, L), round_up(Dr, Simd<double>::PAD), Kx);
      // X[(s, b'), (c, k)] = (P_c W_s)[k][b'] into the packed operand with rows (s, k), depth
      // (c, b'); P's zero rows give X's padding rows k >= Dl.
      ws.to_x.map(
          ws.x.data(), d * Drp, m * Dlp,
          [&](index_t r) { return r % Drp < Dr ? (r / Drp) * Dlp * Kx + (r % Drp) * L : -1; },
          [&](index_t j) { return born_offset(j % Dlp, (j / Dlp) * Dr, Kx); });
      born_gemm(d * Drp, m * Dlp, Dl, st.b.data(), pp, threaded, false, ws.to_x);
      born_zero_rows(ws.x.data(), nx, round_up(nx, Simd<double>::PAD), Kx);
      // G^T[b][(s, k)] += sum_(c, b') S_c[b][b'] X[(s, k), (c, b')]
      ws.to_acc.map(
          acc, Dr, nx, [&](index_t b) { return b * ld; },
          [&](index_t j) { return j % Dlp < Dl ? (j / Dlp) * Dl + j % Dlp : -1; }, true);
      born_gemm(Dr, nx, Kx, sp, ws.x.data(), threaded, false, ws.to_acc);
    }
  });
  std::fill(gt, gt + Dr * ld, 0.0);
  for (index_t g = 0; g < plan.groups; ++g)  // in group order: the same sum for any thread count
    for (index_t e = 0; e < Dr * ld; ++e) gt[e] += partial[g * Dr * ld + e];
}

inline void normalise_slot(double* v, index_t n, double& lg) {
  constexpr int L = Simd<double>::L;
  double lanes[L] = {};  // one running maximum per lane: a vector max, no serial reduction
  index_t e = 0;
  for (; e + L <= n; e += L)
    for (int l = 0; l < L; ++l) lanes[l] = std::max(lanes[l], std::abs(v[e + l]));
  double m = 0;
  for (int l = 0; l < L; ++l) m = std::max(m, lanes[l]);
  for (; e < n; ++e) m = std::max(m, std::abs(v[e]));
  const double f = tile::pow2_normaliser<double>(m, &lg);
  if (f != 1.0)
    for (index_t e = 0; e < n; ++e) v[e] *= f;
}

/// The first slot of a sweep: stored channel (alpha, alpha') holds e_alpha e_alpha'^T (D0 x D0).
inline void doubled_identity(const DoubledChannels& chs, double* v) {
  const index_t D0 = chs.D0;
  std::fill(v, v + chs.stored() * D0 * D0, 0.0);
  for (index_t u = 0; u < chs.stored(); ++u) v[u * D0 * D0 + chs.first[u] * D0 + chs.second[u]] = 1.0;
}

/// Z up to the slot's scale: the sum over all channels (alpha, alpha') of entry (alpha, alpha')
/// of the last slot (D0 x D0 per channel); a stored channel alpha < alpha' stands for two.
inline double doubled_trace(const double* slot, const DoubledChannels& chs) {
  const index_t D0 = chs.D0;
  double t = 0;
  for (index_t u = 0; u < chs.stored(); ++u)
    t += (chs.first[u] == chs.second[u] ? 1.0 : 2.0) * slot[u * D0 * D0 + chs.first[u] * D0 + chs.second[u]];
  return t;
}

template <class T>
DoubledChannels doubled_channels(const ChainView<T>& ch) {
  return DoubledChannels(ch.bond[0], ch.boundary == Boundary::periodic);
}

/// The right doubled slots 0..N of the stored channels (slot j: D_j x D_j per channel) in one
/// buffer, with their log-scales.
struct DoubledSlots {
  buffer<double> data;
  std::vector<index_t> offset;
  std::vector<double> log_scale;
  double* slot(index_t j) { return data.data() + offset[j]; }
};

template <class T>
DoubledSlots doubled_right_sweep(const ChainView<T>& ch, const double* w, const DoubledChannels& chs) {
  const index_t N = ch.n_sites, d = ch.phys_dim, h = chs.stored();
  DoubledSlots r;
  r.offset.assign(N + 2, 0);
  for (index_t j = 0; j <= N; ++j) r.offset[j + 1] = r.offset[j] + h * ch.bond[j] * ch.bond[j];
  r.data.resize(r.offset[N + 1]);
  r.log_scale.assign(N + 1, 0.0);
  doubled_identity(chs, r.slot(N));
  for (index_t j = N - 1; j >= 0; --j) {
    const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
    const DoubledSite st = doubled_site<T>(ch.cores[j], ch.scales[j], d, Dl, Dr, w, false);
    doubled_step(st, h, r.slot(j + 1), r.slot(j));
    r.log_scale[j] = r.log_scale[j + 1];
    normalise_slot(r.slot(j), h * Dl * Dl, r.log_scale[j]);
  }
  return r;
}

/// log Z, and optionally d log Z / d W_j for every core (grads may be nullptr).  The left sweep
/// keeps one slot; with gradients the right slots are contracted first and each site's
/// gradient pairs the current left slot with the right slot after it.
template <class T>
double log_partition_impl(const ChainView<T>& ch, const double* w, T* const* grads) {
  const bool want_grad = grads != nullptr;
  const DoubledChannels chs = doubled_channels(ch);
  const index_t N = ch.n_sites, d = ch.phys_dim, h = chs.stored();
  DoubledSlots right;
  if (want_grad) right = doubled_right_sweep(ch, w, chs);
  std::vector<buffer<double>> gsum(want_grad ? N : 0);  // G^T per site, (D_{j+1}, d D_j)
  std::vector<double> glog(want_grad ? N : 0);
  index_t largest = 0;
  for (index_t j = 0; j <= N; ++j) largest = std::max(largest, h * ch.bond[j] * ch.bond[j]);
  buffer<double> cur(largest), next(largest);
  doubled_identity(chs, cur.data());
  double lg = 0;
  for (index_t j = 0; j < N; ++j) {
    const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
    const DoubledSite st = doubled_site<T>(ch.cores[j], ch.scales[j], d, Dl, Dr, w, true);
    if (want_grad) {
      gsum[j].resize(Dr * d * Dl);
      doubled_gradient(st, chs, cur.data(), right.slot(j + 1), gsum[j].data());
      glog[j] = lg + right.log_scale[j + 1];
    }
    doubled_step(st, h, cur.data(), next.data());
    normalise_slot(next.data(), h * Dr * Dr, lg);
    std::swap(cur, next);
  }
  const double ztr = doubled_trace(cur.data(), chs);
  MPSNTK_EXPECTS(ztr > 0, "the MPS has Z = 0 (all amplitudes vanish)");
  const double logz = std::log(ztr) + lg;
  if (!want_grad) return logz;
  // d log Z / dW = c * dZ/dA / Z; dZ/dA_s = 2 w_s c (P (c A_s) S^T) with A = c W.
  for (index_t j = 0; j < N; ++j) {
    const index_t Dl = ch.bond[j], Dr = ch.bond[j + 1];
    const double c = ch.scales[j], rel = std::exp(glog[j] - logz);
    for (index_t s = 0; s < d; ++s) {
      const double f = 2.0 * w[s] * c * c * rel;
      T* g = grads[j] + s * Dl * Dr;
      for (index_t k = 0; k < Dl; ++k)
        for (index_t b = 0; b < Dr; ++b) g[k * Dr + b] = static_cast<T>(f * gsum[j][b * d * Dl + s * Dl + k]);
    }
  }
  return logz;
}

/// Right doubled slots and their log-scales (for exact sampling), every channel: slot j holds
/// D_0^2 matrices D_j x D_j, channel (alpha, alpha') at alpha * D_0 + alpha'.
template <class T>
void doubled_right_impl(const ChainView<T>& ch, const double* w, std::vector<std::vector<double>>& slots,
                        std::vector<double>& log_scale) {
  const DoubledChannels chs = doubled_channels(ch);
  DoubledSlots right = doubled_right_sweep(ch, w, chs);
  slots.assign(ch.n_sites + 1, {});
  for (index_t j = 0; j <= ch.n_sites; ++j) {
    const index_t D = ch.bond[j], D2 = D * D;
    slots[j].resize(chs.all() * D2);
    for (index_t a = 0; a < chs.D0; ++a)
      for (index_t a2 = 0; a2 < chs.D0; ++a2) {
        const bool tr = a > a2;  // the mirror of a stored channel
        const double* src = right.slot(j) + chs.index[a * chs.D0 + a2] * D2;
        double* dst = slots[j].data() + (a * chs.D0 + a2) * D2;
        for (index_t r = 0; r < D; ++r)
          for (index_t c = 0; c < D; ++c) dst[r * D + c] = tr ? src[c * D + r] : src[r * D + c];
      }
  }
  log_scale = std::move(right.log_scale);
}
