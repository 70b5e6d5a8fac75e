// Routes each public entry point to the best instruction set compiled in (or the one chosen
// with set_isa / the MPSNTK_ISA environment variable), validating the chain first.  Each entry
// point marks its thread as the calling thread (detail::CallScope) for interruption checks.
#include <atomic>
#include <cmath>
#include <cstdlib>

#include "mpsntk/engine.hpp"
#include "detail/parallel.hpp"

namespace mpsntk {

#define MPSNTK_DECLARE_ISA(NS)                                                                                       \
  namespace NS {                                                                                                     \
  template <class T>                                                                                                 \
  void forward_impl(const ChainView<T>&, const FeatureView<T>&, T*, double*);                                        \
  template <class T>                                                                                                 \
  bool ntk_impl(const ChainView<T>&, const FeatureView<T>&, const FeatureView<T>*, const NtkOptions&, const double*, \
                T*, double*, double*);                                                                               \
  void vjp_impl(const ChainView<float>&, const FeatureView<float>&, const float*, float* const*, double*);           \
  void vjp_impl(const ChainView<double>&, const FeatureView<double>&, const double*, double* const*, double*);       \
  void jvp_impl(const ChainView<float>&, const FeatureView<float>&, const float* const*, float*, double*);           \
  void jvp_impl(const ChainView<double>&, const FeatureView<double>&, const double* const*, double*, double*);       \
  template <class T>                                                                                                 \
  void ntk_vp_impl(const ChainView<T>&, const FeatureView<T>&, const double*, const T*, index_t, T*, double*);       \
  template <class T>                                                                                                 \
  void jacobian_impl(const ChainView<T>&, const FeatureView<T>&, T*);                                                \
  template <class T>                                                                                                 \
  double log_partition_impl(const ChainView<T>&, const double*, T* const*);                                          \
  template <class T>                                                                                                 \
  void doubled_right_impl(const ChainView<T>&, const double*, std::vector<std::vector<double>>&,                     \
                          std::vector<double>&);                                                                     \
  template <class T>                                                                                                 \
  void taylor_impl(const ChainView<T>&, const ChainView<T>&, const FeatureView<T>&, index_t, bool, T*, double*);     \
  template <class T>                                                                                                 \
  RangeReport order_kernels_impl(const ChainView<T>&, const FeatureView<T>&, const FeatureView<T>*, const double*,   \
                                 const std::vector<index_t>&, T*);                                                   \
  }

MPSNTK_DECLARE_ISA(isa_generic)
#if defined(MPSNTK_X86_DISPATCH)
MPSNTK_DECLARE_ISA(isa_avx2)
MPSNTK_DECLARE_ISA(isa_avx512)
#endif

namespace {

enum class Isa { generic, avx2, avx512 };

std::vector<Isa> compiled_supported() {
  std::vector<Isa> v;
#if defined(MPSNTK_X86_DISPATCH)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma"))
    v.push_back(Isa::avx512);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) v.push_back(Isa::avx2);
#endif
  v.push_back(Isa::generic);
  return v;
}

const char* name_of(Isa i) {
  switch (i) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    default:
      return "generic";
  }
}

Isa initial_isa() {
  const auto v = compiled_supported();
  if (const char* env = std::getenv("MPSNTK_ISA"))
    for (Isa i : v)
      if (std::string(env) == name_of(i)) return i;
  return v.front();
}

std::atomic<Isa>& active() {
  static std::atomic<Isa> isa{initial_isa()};
  return isa;
}

}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (Isa i : compiled_supported()) out.emplace_back(name_of(i));
  return out;
}

std::string current_isa() { return name_of(active().load()); }

void set_isa(const std::string& name) {
  for (Isa i : compiled_supported())
    if (name == name_of(i)) {
      active().store(i);
      return;
    }
  throw std::invalid_argument("mpsntk: instruction set '" + name + "' is not available here");
}

#if defined(MPSNTK_X86_DISPATCH)
#define MPSNTK_ROUTE(CALL)      \
  switch (active().load()) {    \
    case Isa::avx512:           \
      return isa_avx512::CALL;  \
    case Isa::avx2:             \
      return isa_avx2::CALL;    \
    default:                    \
      return isa_generic::CALL; \
  }
#else
#define MPSNTK_ROUTE(CALL) return isa_generic::CALL;
#endif

namespace {
template <class T>
void check_features(const ChainView<T>& ch, const FeatureView<T>& phi, const char* name) {
  ch.validate();
  MPSNTK_EXPECTS(phi.n_samples >= 1, std::string(name) + ": need at least one sample");
  MPSNTK_EXPECTS(phi.n_sites == ch.n_sites, std::string(name) + ": n_sites does not match the MPS");
  MPSNTK_EXPECTS(phi.phys_dim == ch.phys_dim, std::string(name) + ": phys_dim does not match the MPS");
}
}  // namespace

template <class T>
void forward(const ChainView<T>& ch, const FeatureView<T>& phi, T* mantissa, double* log_scale) {
  check_features(ch, phi, "phi");
  detail::CallScope scope;
  MPSNTK_ROUTE(forward_impl<T>(ch, phi, mantissa, log_scale))
}

template <class T>
bool ntk(const ChainView<T>& ch, const FeatureView<T>& phi1, const FeatureView<T>* phi2, const NtkOptions& opt,
         const double* site_lr, T* out, double* log1, double* log2) {
  check_features(ch, phi1, "phi1");
  if (phi2) check_features(ch, *phi2, "phi2");
  MPSNTK_EXPECTS(opt.tile >= 1, "tile must be >= 1");
  detail::CallScope scope;
  MPSNTK_ROUTE(ntk_impl<T>(ch, phi1, phi2, opt, site_lr, out, log1, log2))
}

template <class T>
void vjp(const ChainView<T>& ch, const FeatureView<T>& phi, const T* cot, T* const* grads, double* grad_log) {
  check_features(ch, phi, "phi");
  detail::CallScope scope;
  MPSNTK_ROUTE(vjp_impl(ch, phi, cot, grads, grad_log))
}

template <class T>
void jvp(const ChainView<T>& ch, const FeatureView<T>& phi, const T* const* tangents, T* out, double* out_log) {
  check_features(ch, phi, "phi");
  detail::CallScope scope;
  MPSNTK_ROUTE(jvp_impl(ch, phi, tangents, out, out_log))
}

template <class T>
void ntk_vp(const ChainView<T>& ch, const FeatureView<T>& phi, const double* site_lr, const T* v, index_t k, T* out,
            double* out_log) {
  check_features(ch, phi, "phi");
  MPSNTK_EXPECTS(k >= 1, "v: need at least one column");
  detail::CallScope scope;
  MPSNTK_ROUTE(ntk_vp_impl<T>(ch, phi, site_lr, v, k, out, out_log))
}

template <class T>
void jacobian(const ChainView<T>& ch, const FeatureView<T>& phi, T* out) {
  check_features(ch, phi, "phi");
  detail::CallScope scope;
  MPSNTK_ROUTE(jacobian_impl<T>(ch, phi, out))
}

namespace {
template <class T>
void check_born(const ChainView<T>& ch, const double* w) {
  ch.validate();
  MPSNTK_EXPECTS(ch.output_site < 0, "Born machines need a scalar-output MPS (no output site)");
  for (index_t s = 0; s < ch.phys_dim; ++s)
    MPSNTK_EXPECTS(w[s] >= 0 && std::isfinite(w[s]), "feature weights must be finite and >= 0");
}
}  // namespace

template <class T>
double log_partition(const ChainView<T>& ch, const double* w, T* const* grads) {
  check_born(ch, w);
  detail::CallScope scope;
  MPSNTK_ROUTE(log_partition_impl<T>(ch, w, grads))
}

template <class T>
void doubled_right_environments(const ChainView<T>& ch, const double* w, std::vector<std::vector<double>>& slots,
                                std::vector<double>& log_scale) {
  check_born(ch, w);
  detail::CallScope scope;
  MPSNTK_ROUTE(doubled_right_impl<T>(ch, w, slots, log_scale))
}

namespace {
template <class T>
void check_step(const ChainView<T>& ch, const ChainView<T>& step) {
  step.validate();
  MPSNTK_EXPECTS(step.n_sites == ch.n_sites && step.phys_dim == ch.phys_dim && step.bond == ch.bond &&
                     step.boundary == ch.boundary && step.output_site == ch.output_site &&
                     step.n_outputs == ch.n_outputs,
                 "step: the step must have the structure of the MPS (one array shaped like each core)");
  MPSNTK_EXPECTS(step.scales == ch.scales, "step: the step must have the scales of the MPS");
}
}  // namespace

template <class T>
void taylor_terms(const ChainView<T>& ch, const ChainView<T>& step, const FeatureView<T>& phi, index_t max_order,
                  bool remainder, T* mantissa, double* log_scale) {
  check_features(ch, phi, "phi");
  check_step(ch, step);
  MPSNTK_EXPECTS(max_order >= 0 && max_order <= ch.n_sites, "max_order must lie in 0..n_sites");
  detail::CallScope scope;
  MPSNTK_ROUTE(taylor_impl<T>(ch, step, phi, max_order, remainder, mantissa, log_scale))
}

template <class T>
RangeReport order_kernels(const ChainView<T>& ch, const FeatureView<T>& phi1, const FeatureView<T>* phi2,
                          const double* site_lr, const std::vector<index_t>& orders, T* out) {
  check_features(ch, phi1, "phi1");
  if (phi2) check_features(ch, *phi2, "phi2");
  MPSNTK_EXPECTS(!orders.empty(), "orders: need at least one order");
  for (index_t k : orders) MPSNTK_EXPECTS(k >= 1 && k <= ch.n_sites, "orders must lie in 1..n_sites");
  detail::CallScope scope;
  MPSNTK_ROUTE(order_kernels_impl<T>(ch, phi1, phi2, site_lr, orders, out))
}

#define MPSNTK_PUBLIC(T)                                                                                              \
  template void forward<T>(const ChainView<T>&, const FeatureView<T>&, T*, double*);                                  \
  template bool ntk<T>(const ChainView<T>&, const FeatureView<T>&, const FeatureView<T>*, const NtkOptions&,          \
                       const double*, T*, double*, double*);                                                          \
  template void vjp<T>(const ChainView<T>&, const FeatureView<T>&, const T*, T* const*, double*);                     \
  template void jvp<T>(const ChainView<T>&, const FeatureView<T>&, const T* const*, T*, double*);                     \
  template void ntk_vp<T>(const ChainView<T>&, const FeatureView<T>&, const double*, const T*, index_t, T*, double*); \
  template void jacobian<T>(const ChainView<T>&, const FeatureView<T>&, T*);                                          \
  template double log_partition<T>(const ChainView<T>&, const double*, T* const*);                                    \
  template void doubled_right_environments<T>(const ChainView<T>&, const double*, std::vector<std::vector<double>>&,  \
                                              std::vector<double>&);                                                  \
  template void taylor_terms<T>(const ChainView<T>&, const ChainView<T>&, const FeatureView<T>&, index_t, bool, T*,   \
                                double*);                                                                             \
  template RangeReport order_kernels<T>(const ChainView<T>&, const FeatureView<T>&, const FeatureView<T>*,            \
                                        const double*, const std::vector<index_t>&, T*);
MPSNTK_PUBLIC(float)
MPSNTK_PUBLIC(double)

}  // namespace mpsntk
