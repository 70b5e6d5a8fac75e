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
#include "mpsntk/tile_math.hpp"
#include "detail/buffer.hpp"
#include "detail/parallel.hpp"

namespace mpsntk {
namespace MPSNTK_ISA_NS {

using detail::buffer;
using detail::Region;

#include "detail/micro.hpp"
#include "detail/environments.hpp"
#include "detail/factors.hpp"
#include "detail/ntk.hpp"
#include "detail/grad.hpp"
#include "detail/born.hpp"
#include "detail/taylor.hpp"

#define MPSNTK_INSTANTIATE(T)                                                                                     \
  template void forward_impl<T>(const ChainView<T>&, const FeatureView<T>&, T*, double*);                         \
  template bool ntk_impl<T>(const ChainView<T>&, const FeatureView<T>&, const FeatureView<T>*, const NtkOptions&, \
                            const double*, T*, double*, double*);                                                 \
  void vjp_impl(const ChainView<T>& ch, const FeatureView<T>& phi, const T* cot, T* const* g, double* glog) {     \
    vjp_from_factors<T>(compute_factors<T>(ch, phi), cot, g, glog);                                               \
  }                                                                                                               \
  void jvp_impl(const ChainView<T>& ch, const FeatureView<T>& phi, const T* const* t, T* out, double* olog) {     \
    jvp_from_factors<T>(compute_factors<T>(ch, phi), t, out, nullptr, olog);                                      \
  }                                                                                                               \
  template void ntk_vp_impl<T>(const ChainView<T>&, const FeatureView<T>&, const double*, const T*, index_t, T*,  \
                               double*);                                                                          \
  template void jacobian_impl<T>(const ChainView<T>&, const FeatureView<T>&, T*);                                 \
  template double log_partition_impl<T>(const ChainView<T>&, const double*, T* const*);                           \
  template void doubled_right_impl<T>(const ChainView<T>&, const double*, std::vector<std::vector<double>>&,      \
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
