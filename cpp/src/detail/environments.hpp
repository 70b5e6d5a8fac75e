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
  std::vector<T*> left, right;         ///< slot s, pointing into the stores
  std::vector<std::vector<double>> left_log, right_log;

  Environments() = default;
  Environments(Environments&&) = default;  // moving the stores keeps the slot pointers valid
  Environments& operator=(Environments&&) = default;
  Environments(const Environments&) = delete;
  Environments& operator=(const Environments&) = delete;
};

/// Size of slot s of one side: rows (x, l, alpha) with l < mult(s) and alpha < h, of bond[s]
/// values each, padded with zero rows to a multiple of the panel padding so that a slot can be
/// rewritten in place as packed panels (make_panels in ntk.hpp).
template <class T>
index_t slot_size(const ChainView<T>& ch, index_t n, index_t s, bool left) {
  const index_t rows = n * (left ? ch.left_mult(s) : ch.right_mult(s)) * ch.channels();
  return round_up(rows, Simd<T>::PAD) * ch.bond[s];
}

/// Normalise each group of `group` values by a power of two near its largest magnitude.
template <class T>
void normalise_groups(index_t n_groups, index_t group, T* v, double* log_scale) {
#pragma omp parallel for schedule(static) if (n_groups * group > 65536)
  for (index_t g = 0; g < n_groups; ++g) {
    T* p = v + g * group;
    T m = 0;
    for (index_t i = 0; i < group; ++i) m = std::max(m, std::abs(p[i]));
    const T f = static_cast<T>(tile::pow2_normaliser(m, log_scale + g));
    if (f != T(1))
      for (index_t i = 0; i < group; ++i) p[i] *= f;
  }
}

/// One transfer step through site j.  Left (to_right = true): rows (x, l, a) of length D_j
/// become rows of length D_{j+1}: v'[b] = sum_{s,a} phi_s v[a] A[s,a,b].  Right: rows of length
/// D_{j+1} become rows of length D_j: v'[a] = sum_{s,b} A[s,a,b] phi_s v[b].  At the output site
/// the rows fan out to n_outputs.  Implemented as one GEMM of the Khatri-Rao operand
/// (phi (x) v) with the reshaped core.
template <class T>
void transfer_step(const ChainView<T>& ch, const FeatureView<T>& phi, index_t j, bool to_right,
                   index_t n, index_t h, index_t mult_in, const T* vin, const double* log_in,
                   T* out, std::vector<double>& log_out) {
  const index_t d = ch.phys_dim, Dl = ch.bond[j], Dr = ch.bond[j + 1];
  const index_t din = to_right ? Dl : Dr, dout = to_right ? Dr : Dl;
  const index_t fan = (j == ch.output_site) ? ch.n_outputs : 1;
  const index_t mult_out = mult_in * fan;
  const index_t K = d * din, ncols = fan * dout, M = n * mult_in * h;
  const T* core = ch.cores[j];
  const T c = static_cast<T>(ch.scales[j]);

  // B operand: column (l, o) at depth (s, i) is c * A[l, s, a, b] with (a, b) = (i, o) or (o, i).
  buffer<T> bpack(round_up(ncols, Simd<T>::PAD) * K);
  pack_elems<T>(
      ncols, K,
      [&](index_t col, index_t k) {
        const index_t l = col / dout, o = col % dout, s = k / din, i = k % din;
        const index_t a = to_right ? i : o, b = to_right ? o : i;
        return c * core[((l * d + s) * Dl + a) * Dr + b];
      },
      bpack.data());
  // A operand: row r = ((x * mult_in + l) * h + alpha) is phi(x, j) (x) vin[r].
  constexpr int L = Simd<T>::L;
  buffer<T> apack(round_up(M, Simd<T>::PAD) * K);
  const index_t per_x = mult_in * h, mpad = round_up(M, Simd<T>::PAD);
#pragma omp parallel for schedule(static) if (M * K > 65536)
  for (index_t r = 0; r < mpad; ++r) {
    T* dst = apack.data() + panel_offset<T>(r, K) + (r % L);
    if (r >= M) {
      for (index_t k = 0; k < K; ++k) dst[k * L] = T(0);
      continue;
    }
    const T* ph = phi.at(r / per_x, j);
    const T* v = vin + r * din;
    for (index_t s = 0; s < d; ++s)
      for (index_t i = 0; i < din; ++i) dst[(s * din + i) * L] = ph[s] * v[i];
  }

  // out holds M' = n * mult_out * h rows of dout values (every entry is stored by the GEMM
  // below) and zero rows up to round_up(M', PAD).
  const index_t rows_out = n * mult_out * h;
  std::fill(out + rows_out * dout, out + round_up(rows_out, Simd<T>::PAD) * dout, T(0));
  if (fan == 1) {
    gemm_packed<T>(M, ncols, K, apack.data(), bpack.data(),
                   [&](index_t r, index_t col, T v) { out[r * dout + col] = v; });
  } else {  // mult_in == 1: row (x, alpha), column (l, o) -> out[x][l][alpha][o]
    gemm_packed<T>(M, ncols, K, apack.data(), bpack.data(), [&](index_t r, index_t col, T v) {
      const index_t x = r / h, alpha = r % h, l = col / dout, o = col % dout;
      out[((x * fan + l) * h + alpha) * dout + o] = v;
    });
  }
  log_out.resize(n * mult_out);
  for (index_t x = 0; x < n; ++x)
    for (index_t l = 0; l < mult_out; ++l) log_out[x * mult_out + l] = log_in[x * mult_in + l / fan];
  normalise_groups<T>(n * mult_out, h * dout, out, log_out.data());
}

/// Identity boundary slot: for each sample, h channels e_alpha of length h (h = 1: the scalar 1).
template <class T>
void identity_slot(index_t n, index_t h, T* v, std::vector<double>& lg) {
  std::fill(v, v + round_up(n * h, Simd<T>::PAD) * h, T(0));
  for (index_t x = 0; x < n; ++x)
    for (index_t a = 0; a < h; ++a) v[(x * h + a) * h + a] = T(1);
  lg.assign(n, 0.0);
}

/// Compute the left slots 0..N (if want_left) and the right slots 1..N (if want_right).  With
/// keep_all = false only the last left slot is kept (the forward pass): the sweep alternates
/// between two slot-sized buffers.
template <class T>
Environments<T> compute_environments(const ChainView<T>& ch, const FeatureView<T>& phi,
                                     bool want_left, bool want_right, bool keep_all = true) {
  Environments<T> env;
  const index_t N = ch.n_sites;
  env.n = phi.n_samples;
  env.h = ch.channels();
  // Slot offsets in a store; without keep_all, slots alternate between two halves.
  auto layout = [&](bool left, index_t first, std::vector<index_t>& off) {
    off.assign(N + 1, 0);
    index_t total = 0, largest = 0;
    for (index_t s = first; s <= N; ++s) largest = std::max(largest, slot_size(ch, env.n, s, left));
    for (index_t s = first; s <= N; ++s) {
      off[s] = keep_all ? total : (s % 2) * largest;
      total += slot_size(ch, env.n, s, left);
    }
    return keep_all ? total : 2 * largest;
  };
  std::vector<index_t> off;
  if (want_left) {
    env.left_store.resize(layout(true, 0, off));
    env.left.assign(N + 1, nullptr);
    env.left_log.resize(N + 1);
    for (index_t s = 0; s <= N; ++s) env.left[s] = env.left_store.data() + off[s];
    identity_slot<T>(env.n, env.h, env.left[0], env.left_log[0]);
    for (index_t j = 0; j < N; ++j) {
      transfer_step<T>(ch, phi, j, true, env.n, env.h, ch.left_mult(j), env.left[j],
                       env.left_log[j].data(), env.left[j + 1], env.left_log[j + 1]);
      if (!keep_all) {
        env.left[j] = nullptr;  // overwritten two steps on
        std::vector<double>().swap(env.left_log[j]);
      }
    }
  }
  if (want_right) {
    env.right_store.resize(layout(false, 1, off));
    env.right.assign(N + 1, nullptr);
    env.right_log.resize(N + 1);
    for (index_t s = 1; s <= N; ++s) env.right[s] = env.right_store.data() + off[s];
    identity_slot<T>(env.n, env.h, env.right[N], env.right_log[N]);
    for (index_t j = N - 1; j >= 1; --j)
      transfer_step<T>(ch, phi, j, false, env.n, env.h, ch.right_mult(j + 1), env.right[j + 1],
                       env.right_log[j + 1].data(), env.right[j], env.right_log[j]);
  }
  return env;
}
