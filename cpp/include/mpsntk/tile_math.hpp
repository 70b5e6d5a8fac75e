/// @file tile_math.hpp
/// @brief Per-element arithmetic shared by the CPU engine and the CUDA kernels
/// (`__host__ __device__` under nvcc), so the CPU test-suite exercises the maths the GPU runs.
#pragma once

#include <cmath>

#include "mpsntk/common.hpp"

namespace mpsntk::tile {

/// @brief Power-of-two rescaling of a group of T values whose largest magnitude is @p maxabs.
/// Returns the factor f = 2^-e (exact, so rescaling loses no bits) with 2^(e-1) <= maxabs < 2^e,
/// and adds e*ln(2) to @p log_scale.  Zero or non-finite groups are left alone (f = 1).  f stays
/// finite in T: a group of subnormal values is scaled by the largest power of two T holds (its
/// largest magnitude then lands below 1/2, and the next normalisation finishes the job).
template <class T>
MPSNTK_HD double pow2_normaliser(double maxabs, double* log_scale) {
  if (!(maxabs > 0.0) || !(maxabs < INFINITY)) return 1.0;
  constexpr int kLargestPower = sizeof(T) == sizeof(float) ? 127 : 1023;  // 2^k is finite in T
  int e = 0;
  frexp(maxabs, &e);
  if (e < -kLargestPower) e = -kLargestPower;
  *log_scale += e * 0.69314718055994530942;
  return ldexp(1.0, -e);
}

/// @brief A site's scale c > 0 split as c = m 2^e, m in [0.5, 1): the environment sweeps fold m
/// into the core (in T) and add e*ln(2) to the log-scales (in double), so that no scale, however
/// far outside the range of T, is lost.  Returns m; *log_rest = e*ln(2).
MPSNTK_HD double split_scale(double c, double* log_rest) {
  int e = 0;
  const double m = frexp(c, &e);
  *log_rest = e * 0.69314718055994530942;
  return m;
}

/// @brief One site's NTK term for a pair of rows, (u.u') * [(a.a') (b.b')], given the product
/// of the environment Grams @p gab.  The u rows carry sqrt(w_j) and the rows' relative scales,
/// so this is the whole term.  Elementwise on scalars and SIMD vectors alike.
template <class V>
MPSNTK_HD V site_term(V gu, V gab) {
  return gu * gab;
}

/// @brief Relative scale of a row at one site: exp(log(j, x, l) - c(x)) in (0, 1], 0 when the
/// sample's reference scale c(x) is undefined (all its environments vanish).
MPSNTK_HD double row_weight(double log_site, double log_ref) {
  return (log_ref > -INFINITY && log_ref < INFINITY) ? exp(log_site - log_ref) : 0.0;
}

/// @brief exp(c_i + c_k) without n1*n2 exponentials when both factors are moderate.
MPSNTK_HD double pair_scale(double c1, double e1, double c2, double e2, bool split) {
  return split ? e1 * e2 : exp(c1 + c2);
}

/// @brief Whether exp(c) of every |c| <= 300 can be multiplied pairwise without overflow.
MPSNTK_HD bool moderate_log(double c) { return c <= 300.0 && c >= -300.0; }

}  // namespace mpsntk::tile
