// The whole numerical engine, instantiated once per instruction set.  A translation unit
// defines MPSNTK_ISA_NS, MPSNTK_VBYTES (vector bytes), MPSNTK_MR (micro-tile rows) and MPSNTK_NV (vectors per
// micro-tile row), then includes this file; dispatch.cpp routes each public call to the best compiled set.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "mpsntk/engine.hpp"
#include "mpsntk/factor_layout.hpp"
#include "mpsntk/tile_math.hpp"
#include "detail/buffer.hpp"
#include "detail/parallel.hpp"

namespace mpsntk {
namespace MPSNTK_ISA_NS {

using detail::buffer;
using detail::Region;
using detail::thread_slot;

#include "detail/micro.hpp"
#include "detail/environments.hpp"
#include "detail/factors.hpp"
#include "detail/ntk.hpp"
#include "detail/grad.hpp"
#include "detail/born.hpp"
#include "detail/taylor.hpp"

/// A batch prepared by this instruction set: its factors, in this set's panel layout.
template <class T>
struct BatchImpl final : detail::BatchState<T> {
  Factors<T> F;
};

template <class T>
const Factors<T>& factors_of(const Batch<T>& b) {
  return static_cast<const BatchImpl<T>&>(b.state()).F;
}

template <class T>
Batch<T> prepare_impl(const ChainView<T>& ch, const FeatureView<T>& phi, int isa, bool panels) {
  auto b = std::make_shared<BatchImpl<T>>();
  b->chain = ch;  // the factors point at the batch's own copy
  b->phi = phi;
  b->isa = isa;
  b->panels = panels;
  b->mantissa.resize(phi.n_samples * ch.n_outputs);
  b->log_scale.resize(phi.n_samples * ch.n_outputs);
  b->F = compute_factors<T>(b->chain, phi, b->mantissa.data(), b->log_scale.data(), panels);
  b->bytes = factors_footprint(ch, phi.n_samples).held + b->mantissa.size() * (sizeof(T) + sizeof(double));
  return Batch<T>(std::move(b));
}

template <class T>
Footprint prepare_footprint_impl(const ChainView<T>& ch, index_t n) {
  Footprint f = factors_footprint(ch, n);
  const std::size_t values = n * ch.n_outputs * (sizeof(T) + sizeof(double));
  return Footprint{f.held + values, f.peak + values};
}

template <class T>
bool ntk_impl(const Batch<T>& b1, const Batch<T>* b2, const NtkOptions& opt, const double* site_lr, T* out,
              double* log1, double* log2) {
  return ntk_factors<T>(factors_of(b1), b2 ? &factors_of(*b2) : nullptr, opt, site_lr, out, log1, log2);
}

template <class T>
Footprint ntk_footprint_impl(const ChainView<T>& ch, index_t n1, index_t n2, const NtkOptions& opt) {
  return ntk_footprint_of<T>(ch, n1, n2, opt);
}

template <class T>
void vjp_impl(const Batch<T>& b, const T* cot, T* const* grads, double* grad_log) {
  vjp_from_factors<T>(factors_of(b), cot, grads, grad_log);
}

template <class T>
void jvp_impl(const Batch<T>& b, const T* const* tangents, const double* tangent_log, T* out, double* out_log) {
  jvp_from_factors<T>(factors_of(b), tangents, out, tangent_log, out_log);
}

template <class T>
void ntk_vp_impl(const Batch<T>& b1, const Batch<T>* b2, const double* site_lr, const T* v, index_t k, T* out,
                 double* out_log) {
  ntk_vp_factors<T>(factors_of(b1), b2 ? &factors_of(*b2) : nullptr, site_lr, v, k, out, out_log);
}

template <class T>
Footprint product_footprint_impl(const ChainView<T>& ch, index_t n) {
  return product_footprint_of<T>(ch, n);
}

template <class T>
void jacobian_impl(const Batch<T>& b, T* out) {
  jacobian_factors<T>(factors_of(b), out);
}

#define MPSNTK_INSTANTIATE(T)                                                                                          \
  template void forward_impl<T>(const ChainView<T>&, const FeatureView<T>&, T*, double*);                              \
  template Batch<T> prepare_impl<T>(const ChainView<T>&, const FeatureView<T>&, int, bool);                            \
  template Footprint prepare_footprint_impl<T>(const ChainView<T>&, index_t);                                          \
  template bool ntk_impl<T>(const Batch<T>&, const Batch<T>*, const NtkOptions&, const double*, T*, double*, double*); \
  template Footprint ntk_footprint_impl<T>(const ChainView<T>&, index_t, index_t, const NtkOptions&);                  \
  template void vjp_impl<T>(const Batch<T>&, const T*, T* const*, double*);                                            \
  template void jvp_impl<T>(const Batch<T>&, const T* const*, const double*, T*, double*);                             \
  template void ntk_vp_impl<T>(const Batch<T>&, const Batch<T>*, const double*, const T*, index_t, T*, double*);       \
  template Footprint product_footprint_impl<T>(const ChainView<T>&, index_t);                                          \
  template void jacobian_impl<T>(const Batch<T>&, T*);                                                                 \
  template double log_partition_impl<T>(const ChainView<T>&, const double*, T* const*);                                \
  template void doubled_right_impl<T>(const ChainView<T>&, const double*, std::vector<std::vector<double>>&,           \
                                      std::vector<double>&);

MPSNTK_INSTANTIATE(float)
MPSNTK_INSTANTIATE(double)
#undef MPSNTK_INSTANTIATE

#define MPSNTK_INSTANTIATE_TAYLOR(T)                                                                               \
  template void taylor_impl<T>(const ChainView<T>&, const ChainView<T>&, const FeatureView<T>&, index_t, bool, T*, \
                               double*);                                                                           \
  template RangeReport order_kernels_impl<T>(const ChainView<T>&, const FeatureView<T>&, const FeatureView<T>*,    \
                                             const double*, const std::vector<index_t>&, T*);

MPSNTK_INSTANTIATE_TAYLOR(float)
MPSNTK_INSTANTIATE_TAYLOR(double)
#undef MPSNTK_INSTANTIATE_TAYLOR

}  // namespace MPSNTK_ISA_NS
}  // namespace mpsntk
