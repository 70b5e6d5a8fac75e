/// @file factor_layout.hpp
/// @brief The per-site Jacobian factors as both engines lay them out, and the planning of an NTK
/// evaluation around them (site weights, output blocks, result layout).  `__host__ __device__`
/// clean: the CPU engine (cpp/src/detail) and the CUDA engine (cuda/) include it alike, so that
/// one operation is defined once.
///
/// For every site j, sample x and output l the Jacobian of an MPS factorises as
///   df_l(x)/dW_j[s, a, b] = c_j * exp(log(j, x, l)) * phi_s(x_j) * a[a] * b[b]    (open chains)
/// with a the left environment (slot j) and b the right one (slot j + 1), each stored divided by
/// a power of two whose natural log is kept per row.  Periodic chains use a = vec(E_j^T), the
/// open environment E_j = S_{j+1} P_j of the theory (section 2), and no b.  A side's rows are
/// indexed (x, l) when the side depends on the output (its multiplicity is n_outputs), x alone
/// otherwise.
#pragma once

#include <cmath>
#include <vector>

#include "mpsntk/chain.hpp"

namespace mpsntk {

/// @brief One site's factors: rows of `da` (and `db`) values, `mult_*` rows per sample.
/// `lanes_*` > 0 (host only): the side is stored as packed panels of that many samples
/// ([panel][k][lane]); 0: one row after another.
template <class T>
struct SiteFactor {
  const T* a = nullptr;
  index_t da = 0, mult_a = 1;
  const double* log_a = nullptr;
  const T* b = nullptr;  ///< nullptr when db == 0 (periodic chains)
  index_t db = 0, mult_b = 1;
  const double* log_b = nullptr;
  int lanes_a = 0, lanes_b = 0;
};

/// @brief Row of sample x, output l in a side of multiplicity mult.
MPSNTK_HD index_t factor_row(index_t x, index_t mult, index_t l) { return x * mult + (mult > 1 ? l : 0); }

/// @brief Natural log of the scale of row (x, l) of site factor s (both sides).
template <class T>
MPSNTK_HD double factor_log(const SiteFactor<T>& s, index_t x, index_t l) {
  double v = s.log_a[factor_row(x, s.mult_a, l)];
  if (s.log_b) v += s.log_b[factor_row(x, s.mult_b, l)];
  return v;
}

/// @brief Start of row (x, l) of the a side (row layout).
template <class T>
MPSNTK_HD const T* factor_a_row(const SiteFactor<T>& s, index_t x, index_t l) {
  return s.a + factor_row(x, s.mult_a, l) * s.da;
}

/// @brief Start of row (x, l) of the b side (row layout); nullptr when the site has none.
template <class T>
MPSNTK_HD const T* factor_b_row(const SiteFactor<T>& s, index_t x, index_t l) {
  return s.b ? s.b + factor_row(x, s.mult_b, l) * s.db : nullptr;
}

/// @brief Number of outputs whose factors (or core) differ at site j: 1 when nothing depends on l.
template <class T>
MPSNTK_HD index_t outputs_at(const SiteFactor<T>& s, index_t j, index_t output_site, index_t n_outputs) {
  return (s.mult_a > 1 || s.mult_b > 1 || j == output_site) ? n_outputs : 1;
}

/// @brief The per-site log constants of the Jacobian products: log c_j, plus log site_lr_j when
/// @p site_lr is given (ntk_vp; -inf for a site not trained).
template <class T>
std::vector<double> site_log_constants(const ChainView<T>& ch, const double* site_lr) {
  std::vector<double> v(ch.n_sites);
  for (index_t j = 0; j < ch.n_sites; ++j) v[j] = std::log(ch.scales[j]) + (site_lr ? std::log(site_lr[j]) : 0.0);
  return v;
}

/// @brief The vjp's normaliser of site j, less log c_j: the largest log|cot(x, l)| + log(j, x, l)
/// over the samples and the outputs the site's factors differ in, cot of shape (n, C, k) at
/// column @p col; visits the pairs i = begin, begin + step, ... of the n * outputs (a thread of a
/// block on the device, all of them on the host).  -inf when every coefficient is zero.
template <class T>
MPSNTK_HD double vjp_site_log(const SiteFactor<T>& s, index_t j, index_t output_site, const T* cot, index_t n,
                              index_t C, index_t k, index_t col, index_t begin, index_t step) {
  const index_t nl = outputs_at(s, j, output_site, C);
  double m = -INFINITY;
  for (index_t i = begin; i < n * nl; i += step) {
    const index_t x = i / nl, l = i % nl;
    m = fmax(m, log(fabs(static_cast<double>(cot[(x * C + l) * k + col]))) + factor_log(s, x, l));
  }
  return m;
}

/// @brief The jvp's reference log-scale of sample x: the largest log(j, x, l) + site_log[j]
/// (+ tangent_log[j] when given) over the sites and the outputs their factors differ in; 0 when
/// every tangent is zero.  The site terms of x are summed relative to it.
template <class T>
MPSNTK_HD double jvp_sample_log(const SiteFactor<T>* sites, index_t n_sites, index_t output_site, index_t C,
                                const double* site_log, const double* tangent_log, index_t x) {
  double m = -INFINITY;
  for (index_t j = 0; j < n_sites; ++j) {
    const double c = site_log[j] + (tangent_log ? tangent_log[j] : 0.0);
    if (c == -INFINITY) continue;
    for (index_t l = 0; l < outputs_at(sites[j], j, output_site, C); ++l) m = fmax(m, factor_log(sites[j], x, l) + c);
  }
  return m > -INFINITY && m < INFINITY ? m : 0.0;
}

/// @brief The shape of site j's factors (pointers unset): open chains take left slot j and right
/// slot j + 1; periodic chains the open environment, D_j D_{j+1} values, with the multiplicity of
/// whichever side carries the outputs.
template <class T>
SiteFactor<T> site_factor_shape(const ChainView<T>& ch, index_t j) {
  SiteFactor<T> s;
  if (ch.boundary == Boundary::open) {
    s.da = ch.bond[j], s.mult_a = ch.left_mult(j);
    s.db = ch.bond[j + 1], s.mult_b = ch.right_mult(j + 1);
  } else {
    s.da = ch.bond[j] * ch.bond[j + 1];
    s.mult_a = ch.left_mult(j) > ch.right_mult(j + 1) ? ch.left_mult(j) : ch.right_mult(j + 1);
  }
  return s;
}

/// @brief Per-sample reference log-scale of an NTK: the largest weighted row scale
/// log(j, x, l) + half_log_weight[j] over sites and outputs (-inf when every row vanishes).
/// Relative to it, the packed row weights exp(... - c(x)) lie in [0, 1], however far the factors
/// or the site weights are from the range of T.
template <class T>
MPSNTK_HD double sample_log_scale(const SiteFactor<T>* sites, index_t n_sites, index_t n_outputs, index_t x,
                                  const double* half_log_weight) {
  double m = -INFINITY;
  for (index_t j = 0; j < n_sites; ++j)
    for (index_t l = 0; l < n_outputs; ++l) m = fmax(m, factor_log(sites[j], x, l) + half_log_weight[j]);
  return m;
}

/// @brief log sqrt(w_j) of the NTK's site weights w_j = c_j^2 site_lr_j, in double (where no
/// weight leaves the range).  With @p label_folded (an engine that traces the outputs by folding
/// them into the factors), the label site gets C times its weight: its C traced terms are equal.
template <class T>
std::vector<double> ntk_half_log_weights(const ChainView<T>& ch, const double* site_lr, bool label_folded) {
  std::vector<double> w(ch.n_sites);
  for (index_t j = 0; j < ch.n_sites; ++j) {
    const double traced = label_folded && j == ch.output_site ? std::log(double(ch.n_outputs)) : 0.0;
    w[j] = 0.5 * (2 * std::log(ch.scales[j]) + std::log(site_lr[j]) + traced);
  }
  return w;
}

/// @brief Where an NTK's entries go: entry (i, k) of output block (l1, l2) and site j at
/// out + j * site_stride + i * ld_row + k * ld_col + l1 * C + l2 (full outputs), site_stride = 0
/// summing the sites.
struct NtkLayout {
  bool full = false;  ///< the (n1, n2, C, C) block of every output pair
  index_t n_outputs = 1, n1 = 0, ld_row = 0, ld_col = 1, site_stride = 0;

  NtkLayout(index_t rows, index_t cols, index_t C, bool full_outputs, bool per_site)
      : full(full_outputs && C > 1), n_outputs(C), n1(rows) {
    const index_t cc = full ? C * C : 1;
    ld_row = cols * cc;
    ld_col = cc;
    site_stride = per_site ? rows * cols * cc : 0;
  }
  /// @brief Elements of the whole result.
  index_t size(index_t n_sites) const { return (site_stride ? n_sites : 1) * n1 * ld_row; }
};

/// @brief One pass of an NTK evaluation over output pair (l1, l2) (l1 = l2 = -1: the trace over
/// the outputs in one pass).  `offset` is its first entry relative to the result; with a mirror
/// (symmetric data), Theta_{l2 l1}(x', x) = Theta_{l1 l2}(x, x') is also written at
/// `mirror_offset`; `upper_only`: only tiles on or above the diagonal are computed (the mirror
/// fills the rest); `label_term`: the label site contributes (not to cross outputs l1 != l2).
struct OutputBlock {
  index_t l1 = -1, l2 = -1, offset = 0, mirror_offset = -1;
  bool upper_only = false, label_term = true;
};

/// @brief Calls f(OutputBlock) for every pass of an NTK: one traced pass, or the output pairs of
/// full outputs (for symmetric data, the pairs l2 >= l1 only, the others by their mirrors).
template <class F>
void for_each_output_block(const NtkLayout& layout, bool symmetric, F&& f) {
  if (!layout.full) {
    OutputBlock b;
    b.mirror_offset = symmetric ? 0 : -1;
    b.upper_only = symmetric;
    f(b);
    return;
  }
  const index_t C = layout.n_outputs;
  for (index_t l1 = 0; l1 < C; ++l1)
    for (index_t l2 = symmetric ? l1 : 0; l2 < C; ++l2) {
      OutputBlock b;
      b.l1 = l1, b.l2 = l2, b.offset = l1 * C + l2;
      b.mirror_offset = symmetric ? l2 * C + l1 : -1;
      b.upper_only = symmetric && l1 == l2;
      b.label_term = l1 == l2;
      f(b);
    }
}

}  // namespace mpsntk
