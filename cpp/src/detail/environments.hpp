// Left/right environments of a batch of samples, with per-sample log-scale normalisation.
// Part of the per-ISA engine (see engine_impl.hpp).

/// All partial products of an MPS for a batch.  Slot s of `left` holds M_0...M_{s-1}, slot s
/// of `right` holds M_s...M_{N-1} (s = 0..N).  A slot stores, for each row (x, l) with
/// l < mult(s), `h` boundary channels of `dim(s)` values: h = 1 for open chains; for periodic
/// chains h = D_0 and the channels are the rows of the prefix matrix (left) or the columns of
/// the suffix matrix (right).  Each (x, l) group is divided by a power of two, whose natural log
/// is kept in `*_log`, so that chains of any length stay in range.
template <class T>
struct Environments {
  index_t n = 0, h = 1;
  buffer<T> left_store, right_store;  ///< the slots of each side, back to back (one allocation)
  std::vector<T*> left, right;        ///< slot s, pointing into the stores
  std::vector<buffer<double>> left_log, right_log;

  Environments() = default;
  Environments(Environments&&) = default;  // moving the stores keeps the slot pointers valid
  Environments& operator=(Environments&&) = default;
  Environments(const Environments&) = delete;
  Environments& operator=(const Environments&) = delete;
};

/// Size of slot s of one side: rows (x, l, alpha) with l < mult(s) and alpha < h, of bond[s]
/// values each, padded with zero samples to a multiple of the panel padding so that a slot, or
/// its (l, alpha) rows of a sample taken as one row, can be rewritten in place as packed panels
/// (make_panels in factors.hpp).
template <class T>
index_t slot_size(const ChainView<T>& ch, index_t n, index_t s, bool left) {
  const index_t per_x = (left ? ch.left_mult(s) : ch.right_mult(s)) * ch.channels();
  return round_up(n, Simd<T>::PAD) * per_x * ch.bond[s];
}

/// Memory of compute_environments: the slots and log-scales it keeps (held), and at the peak
/// also the packed cores and every thread's scratch rows (an upper bound).
template <class T>
Footprint environments_footprint(const ChainView<T>& ch, index_t n, bool want_left, bool want_right, bool keep_all) {
  const index_t N = ch.n_sites, h = ch.channels();
  std::size_t held = 0, cores = 0;
  for (index_t s = 0; s <= N; ++s) {
    const bool kept = keep_all || s == 0 || s == N;
    if (want_left && kept) held += slot_size(ch, n, s, true) * sizeof(T) + n * ch.left_mult(s) * sizeof(double);
    if (want_right && s >= 1 && (keep_all || s == N))
      held += slot_size(ch, n, s, false) * sizeof(T) + n * ch.right_mult(s) * sizeof(double);
  }
  index_t widest = 1;
  for (index_t s = 0; s <= N; ++s) widest = std::max(widest, ch.bond[s]);
  for (index_t j = 0; j < N; ++j) {
    const index_t fan = j == ch.output_site ? ch.n_outputs : 1;
    const index_t K = ch.phys_dim * widest;
    cores += (want_left + want_right) * round_up(fan * widest, Simd<T>::PAD) * K * sizeof(T);
  }
  const index_t rows = round_up(std::max<index_t>(48, h * ch.n_outputs), Simd<T>::PAD);
  std::size_t scratch = rows * ch.phys_dim * widest * sizeof(T);
  if (!keep_all) scratch += 2 * rows * widest * (sizeof(T) + sizeof(double));
  return Footprint{held, held + cores + static_cast<std::size_t>(num_threads()) * scratch};
}

/// Normalise each group of `group` values by a power of two near its largest magnitude.
template <class T>
void normalise_groups(index_t n_groups, index_t group, T* v, double* log_scale) {
  for (index_t g = 0; g < n_groups; ++g) {
    T* p = v + g * group;
    T m = 0;
    for (index_t i = 0; i < group; ++i) m = std::max(m, std::abs(p[i]));
    const T f = static_cast<T>(tile::pow2_normaliser<T>(m, log_scale + g));
    if (f != T(1))
      for (index_t i = 0; i < group; ++i) p[i] *= f;
  }
}

/// Core j as the packed B operand of a transfer step: column (l, o) at depth (s, i) is
/// m_j * A[l, s, a, b] with (a, b) = (i, o) going right, (o, i) going left, where c_j = m_j
/// exp(log_rest): the rest of the scale joins the step's log-scales (tile::split_scale).
template <class T>
buffer<T> pack_core(const ChainView<T>& ch, index_t j, bool to_right) {
  const index_t d = ch.phys_dim, Dl = ch.bond[j], Dr = ch.bond[j + 1];
  const index_t din = to_right ? Dl : Dr, dout = to_right ? Dr : Dl;
  const index_t ncols = (j == ch.output_site ? ch.n_outputs : 1) * dout, K = d * din;
  const T* core = ch.cores[j];
  double log_rest = 0;
  const T c = static_cast<T>(tile::split_scale(ch.scales[j], &log_rest));
  buffer<T> b(round_up(ncols, Simd<T>::PAD) * K);
  pack_elems<T>(
      ncols, K,
      [&](index_t col, index_t k) {
        const index_t l = col / dout, o = col % dout, s = k / din, i = k % din;
        const index_t a = to_right ? i : o, bb = to_right ? o : i;
        return c * core[((l * d + s) * Dl + a) * Dr + bb];
      },
      b.data());
  return b;
}

/// One transfer step through site j for the samples [x0, x1).  Left (to_right = true): rows
/// (x, l, alpha) of length D_j become rows of length D_{j+1}: v'[b] = sum_{s,a} phi_s v[a]
/// A[s,a,b].  Right: rows of length D_{j+1} become rows of length D_j: v'[a] = sum_{s,b}
/// A[s,a,b] phi_s v[b].  At the output site the rows fan out to n_outputs.  One GEMM of the
/// Khatri-Rao operand (phi (x) v) with the packed core; then each (x, l) group is normalised.
/// vin, out, log_in, log_out point at the block's first row / group of their slots; `scratch`
/// holds the packed Khatri-Rao rows.  The core is packed by pack_core, whose scale leaves
/// log(c_j / m_j) to add to the log-scales.
template <class T>
void transfer_rows(const ChainView<T>& ch, const FeatureView<T>& phi, index_t j, bool to_right, index_t h,
                   index_t mult_in, const T* core_packed, index_t x0, index_t x1, const T* vin, const double* log_in,
                   T* out, double* log_out, buffer<T>& scratch) {
  double log_rest = 0;
  tile::split_scale(ch.scales[j], &log_rest);
  using S = Simd<T>;
  constexpr int L = S::L;
  const index_t d = ch.phys_dim, Dl = ch.bond[j], Dr = ch.bond[j + 1];
  const index_t din = to_right ? Dl : Dr, dout = to_right ? Dr : Dl;
  const index_t fan = (j == ch.output_site) ? ch.n_outputs : 1;
  const index_t mult_out = mult_in * fan, per_x = mult_in * h;
  const index_t K = d * din, ncols = fan * dout, M = (x1 - x0) * per_x;
  const index_t mpad = round_up(M, S::PAD);
  if (static_cast<index_t>(scratch.size()) < mpad * K) scratch.resize(mpad * K);
  T* apack = scratch.data();
  for (index_t r = 0; r < mpad; ++r) {  // row r is phi(x, j) (x) vin[r]
    T* dst = apack + panel_offset<T>(r, K) + (r % L);
    if (r >= M) {
      for (index_t k = 0; k < K; ++k) dst[k * L] = T(0);
      continue;
    }
    const T* ph = phi.at(x0 + r / per_x, j);
    const T* v = vin + r * din;
    for (index_t s = 0; s < d; ++s)
      for (index_t i = 0; i < din; ++i) dst[(s * din + i) * L] = ph[s] * v[i];
  }
  // Output row of input row r, column (l, o): ((x * fan + l) * h + alpha) * dout + o.
  for (index_t p = 0; p < M; p += S::MR)
    for (index_t q = 0; q < ncols; q += S::NR) {
      typename S::vec acc[S::MR][S::NV];
      micro_gemm<T>(panel_row<T>(apack, p, K), panel_row<T>(core_packed, q, K), K, acc);
      for (int rr = 0; rr < S::MR && p + rr < M; ++rr) {
        const index_t r = p + rr, x = r / h, alpha = r % h;
        for (int v = 0; v < S::NV; ++v) {
          const index_t c0 = q + v * L;
          if (fan == 1 && c0 + L <= ncols) {  // the common case: whole vectors, row r
            S::store(out + r * dout + c0, acc[rr][v]);
            continue;
          }
          for (index_t col = c0; col < std::min(c0 + L, ncols); ++col) {
            const index_t l = col / dout, o = col % dout;
            out[((x * fan + l) * h + alpha) * dout + o] = acc[rr][v][col - c0];
          }
        }
      }
    }
  const index_t ng = (x1 - x0) * mult_out;
  for (index_t g = 0; g < ng; ++g) log_out[g] = log_in[g / fan] + log_rest;
  normalise_groups<T>(ng, h * dout, out, log_out);
}

/// Identity boundary slot: for each sample, h channels e_alpha of length h (h = 1: the scalar 1).
template <class T>
void identity_slot(index_t n, index_t h, T* v, double* lg) {
  std::fill(v, v + round_up(n * h, Simd<T>::PAD) * h, T(0));
  for (index_t x = 0; x < n; ++x)
    for (index_t a = 0; a < h; ++a) v[(x * h + a) * h + a] = T(1);
  std::fill(lg, lg + n, 0.0);
}

/// Compute the left slots 0..N (if want_left) and the right slots 1..N (if want_right).
/// Samples are independent, so each thread sweeps whole blocks of samples along the chain: one
/// parallel region, and a block's rows stay in cache from one site to the next.  With keep_all
/// = false only the last left slot is kept (the forward pass): each block alternates between
/// two small buffers on its way.
template <class T>
Environments<T> compute_environments(const ChainView<T>& ch, const FeatureView<T>& phi, bool want_left, bool want_right,
                                     bool keep_all = true) {
  MPSNTK_EXPECTS(keep_all || !want_right, "compute_environments: keep_all = false is for the left sweep alone");
  Environments<T> env;
  const index_t N = ch.n_sites, n = phi.n_samples, h = ch.channels();
  env.n = n;
  env.h = h;
  auto rows_of = [&](bool left, index_t s) { return (left ? ch.left_mult(s) : ch.right_mult(s)) * h; };
  auto layout = [&](bool left, index_t first, buffer<T>& store, std::vector<T*>& slot,
                    std::vector<buffer<double>>& lg) {
    std::vector<index_t> off(N + 1, 0);
    index_t total = 0;
    for (index_t s = first; s <= N; ++s) {
      const bool kept = keep_all || s == first || s == N;
      off[s] = total;
      if (kept) total += slot_size(ch, n, s, left);
    }
    store.resize(total);
    slot.assign(N + 1, nullptr);
    lg.resize(N + 1);
    for (index_t s = first; s <= N; ++s)
      if (keep_all || s == first || s == N) {
        slot[s] = store.data() + off[s];
        lg[s].resize(n * rows_of(left, s) / h);
      }
  };
  std::vector<buffer<T>> left_cores, right_cores;
  if (want_left) {
    layout(true, 0, env.left_store, env.left, env.left_log);
    identity_slot<T>(n, h, env.left[0], env.left_log[0].data());
    left_cores.resize(N);
  }
  if (want_right) {
    layout(false, 1, env.right_store, env.right, env.right_log);
    identity_slot<T>(n, h, env.right[N], env.right_log[N].data());
    right_cores.resize(N);
  }
  {
    Region region;
#pragma omp parallel for schedule(dynamic) num_threads(region.threads()) if (N > 1 && n * ch.bond[N / 2] > 4096)
    for (index_t j = 0; j < N; ++j)
      region.run([&] {
        if (want_left) left_cores[j] = pack_core(ch, j, true);
        if (want_right && j >= 1) right_cores[j] = pack_core(ch, j, false);
      });
    region.finish();
  }

  // Blocks of about 48 rows (a multiple of the micro-tile padding), fewer when that leaves
  // too few blocks for the threads, but never under one micro-tile of rows.
  Region region;
  index_t max_rows_per_x = h * ch.n_outputs, threads = region.threads(), widest = 1;
  for (index_t s = 0; s <= N; ++s) widest = std::max(widest, ch.bond[s]);
  index_t block = std::max<index_t>(1, 48 / max_rows_per_x);
  while (block > 1 && (n + block - 1) / block < 4 * threads && block * max_rows_per_x > Simd<T>::MR) block /= 2;
  const index_t n_blocks = (n + block - 1) / block;
  const double work = double(n) * N * ch.phys_dim * ch.bond[N / 2] * ch.bond[N / 2];
#pragma omp parallel num_threads(region.threads()) if (n_blocks > 1 && work > 1e6)
  {
    buffer<T> scratch;
    // Without keep_all the inner slots of a block alternate between two block-sized buffers.
    buffer<T> inner[2];
    buffer<double> inner_log[2];
    if (!keep_all)
      region.run([&] {
        for (int k = 0; k < 2; ++k) {
          inner[k].resize(block * max_rows_per_x * widest);
          inner_log[k].resize(block * ch.n_outputs);
        }
      });
#pragma omp for schedule(dynamic)
    for (index_t b = 0; b < n_blocks; ++b)
      region.run([&] {
        const index_t x0 = b * block, x1 = std::min(n, x0 + block);
        // Slot s of this block: its first row and first log group.
        auto row = [&](std::vector<T*>& slot, bool left, index_t s, index_t dim) -> T* {
          return slot[s] ? slot[s] + x0 * rows_of(left, s) * dim : inner[s % 2].data();
        };
        auto grp = [&](std::vector<T*>& slot, std::vector<buffer<double>>& lg, bool left, index_t s) -> double* {
          return slot[s] ? lg[s].data() + x0 * rows_of(left, s) / h : inner_log[s % 2].data();
        };
        for (index_t j = 0; want_left && j < N; ++j) {
          region.checkpoint();
          transfer_rows<T>(ch, phi, j, true, h, ch.left_mult(j), left_cores[j].data(), x0, x1,
                           row(env.left, true, j, ch.bond[j]), grp(env.left, env.left_log, true, j),
                           row(env.left, true, j + 1, ch.bond[j + 1]), grp(env.left, env.left_log, true, j + 1),
                           scratch);
        }
        for (index_t j = N - 1; want_right && j >= 1; --j) {
          region.checkpoint();
          transfer_rows<T>(ch, phi, j, false, h, ch.right_mult(j + 1), right_cores[j].data(), x0, x1,
                           row(env.right, false, j + 1, ch.bond[j + 1]), grp(env.right, env.right_log, false, j + 1),
                           row(env.right, false, j, ch.bond[j]), grp(env.right, env.right_log, false, j), scratch);
        }
      });
  }
  region.finish();
  // Zero the padding rows of every kept slot (make_panels reads them as whole panels).
  auto pad = [&](bool left, index_t s, T* v) {
    const index_t rows = n * (left ? ch.left_mult(s) : ch.right_mult(s)) * h;
    std::fill(v + rows * ch.bond[s], v + slot_size(ch, n, s, left), T(0));
  };
  if (keep_all) {
    for (index_t s = 1; want_left && s <= N; ++s) pad(true, s, env.left[s]);
    for (index_t s = 1; want_right && s < N; ++s) pad(false, s, env.right[s]);
  } else if (want_left) {  // only the last slot is kept
    env.left[0] = nullptr;
    buffer<double>().swap(env.left_log[0]);
  }
  return env;
}
