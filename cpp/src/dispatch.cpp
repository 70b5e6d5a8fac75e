// Routes each public entry point to the best instruction set compiled in (or the one chosen
// with set_isa / the MPSNTK_ISA environment variable), validating the chain first.  Each entry
// point marks its thread as the calling thread (detail::CallScope) for interruption checks.
#include <atomic>
#include <cmath>
#include <cstdlib>

#include "mpsntk/engine.hpp"
#include "detail/parallel.hpp"

namespace mpsntk {

#define MPSNTK_DECLARE_ISA(NS)                                                                                     \
  namespace NS {                                                                                                   \
  template <class T>                                                                                               \
  void forward_impl(const ChainView<T>&, const FeatureView<T>&, T*, double*);                                      \
  template <class T>                                                                                               \
  Batch<T> prepare_impl(const ChainView<T>&, const FeatureView<T>&, int, bool);                                    \
  template <class T>                                                                                               \
  Footprint prepare_footprint_impl(const ChainView<T>&, index_t);                                                  \
  template <class T>                                                                                               \
  bool ntk_impl(const Batch<T>&, const Batch<T>*, const NtkOptions&, const double*, T*, double*, double*);         \
  template <class T>                                                                                               \
  Footprint ntk_footprint_impl(const ChainView<T>&, index_t, index_t, const NtkOptions&);                          \
  template <class T>                                                                                               \
  void vjp_impl(const Batch<T>&, const T*, T* const*, double*);                                                    \
  template <class T>                                                                                               \
  void jvp_impl(const Batch<T>&, const T* const*, const double*, T*, double*);                                     \
  template <class T>                                                                                               \
  void ntk_vp_impl(const Batch<T>&, const Batch<T>*, const double*, const T*, index_t, T*, double*);               \
  template <class T>                                                                                               \
  Footprint product_footprint_impl(const ChainView<T>&, index_t);                                                  \
  template <class T>                                                                                               \
  void jacobian_impl(const Batch<T>&, T*);                                                                         \
  template <class T>                                                                                               \
  double log_partition_impl(const ChainView<T>&, const double*, T* const*);                                        \
  template <class T>                                                                                               \
  void doubled_right_impl(const ChainView<T>&, const double*, std::vector<std::vector<double>>&,                   \
                          std::vector<double>&);                                                                   \
  template <class T>                                                                                               \
  void taylor_impl(const ChainView<T>&, const ChainView<T>&, const FeatureView<T>&, index_t, bool, T*, double*);   \
  template <class T>                                                                                               \
  RangeReport order_kernels_impl(const ChainView<T>&, const FeatureView<T>&, const FeatureView<T>*, const double*, \
                                 const std::vector<index_t>&, T*);                                                 \
  }

MPSNTK_DECLARE_ISA(isa_generic)
#if defined(MPSNTK_X86_DISPATCH)
MPSNTK_DECLARE_ISA(isa_avx2)
MPSNTK_DECLARE_ISA(isa_avx512)
#endif

namespace {

enum class Isa { generic, avx2, avx512 };

constexpr Isa kCompiled[] = {
#if defined(MPSNTK_X86_DISPATCH)
    Isa::avx512, Isa::avx2,
#endif
    Isa::generic};

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

std::string joined(const std::vector<Isa>& v) {
  std::string s;
  for (Isa i : v) s += (s.empty() ? "" : ", ") + std::string(name_of(i));
  return s;
}

/// The instruction set MPSNTK_ISA asks for, and what is wrong with the request ("" if nothing).
struct IsaRequest {
  Isa isa;
  IsaProblem problem = IsaProblem::none;
  std::string message;
};

IsaRequest initial_isa() {
  const auto v = compiled_supported();
  const char* env = std::getenv("MPSNTK_ISA");
  if (!env || !env[0]) return {v.front(), IsaProblem::none, {}};
  const std::string want(env);
  for (Isa i : v)
    if (want == name_of(i)) return {i, IsaProblem::none, {}};
  for (Isa i : kCompiled)
    if (want == name_of(i))
      return {v.front(), IsaProblem::unsupported,
              "MPSNTK_ISA=" + want + ": this CPU does not support that instruction set; using " + name_of(v.front()) +
                  " (supported here: " + joined(v) + ")"};
  return {v.front(), IsaProblem::unknown,
          "MPSNTK_ISA=" + want + " is not an instruction set of this build; expected one of " +
              joined(std::vector<Isa>(std::begin(kCompiled), std::end(kCompiled)))};
}

const IsaRequest& request() {
  static const IsaRequest r = initial_isa();
  return r;
}

std::atomic<Isa>& active() {
  static std::atomic<Isa> isa{request().isa};
  return isa;
}

}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (Isa i : compiled_supported()) out.emplace_back(name_of(i));
  return out;
}

std::string current_isa() { return name_of(active().load()); }

std::pair<IsaProblem, std::string> isa_request_problem() { return {request().problem, request().message}; }

void set_isa(const std::string& name) {
  for (Isa i : compiled_supported())
    if (name == name_of(i)) {
      active().store(i);
      return;
    }
  throw std::invalid_argument("mpsntk: instruction set '" + name +
                              "' is not available here (available: " + joined(compiled_supported()) + ")");
}

#if defined(MPSNTK_X86_DISPATCH)
#define MPSNTK_ROUTE_TO(ISA, CALL) \
  switch (static_cast<Isa>(ISA)) { \
    case Isa::avx512:              \
      return isa_avx512::CALL;     \
    case Isa::avx2:                \
      return isa_avx2::CALL;       \
    default:                       \
      return isa_generic::CALL;    \
  }
#else
#define MPSNTK_ROUTE_TO(ISA, CALL) return isa_generic::CALL;
#endif
#define MPSNTK_ROUTE(CALL) MPSNTK_ROUTE_TO(active().load(), CALL)

namespace {
/// A batch of a product: prepared, and (with another one) for the same model and layout.
template <class T>
void check_batches(const Batch<T>& b1, const Batch<T>* b2) {
  MPSNTK_EXPECTS(b1.valid() && (!b2 || b2->valid()), "batch: not a prepared batch");
  if (!b2) return;
  check_same_model(b1.chain(), b2->chain());
  MPSNTK_EXPECTS(b1.state().isa == b2->state().isa,
                 "batches: prepared under different instruction sets (set_isa between them)");
}
}  // namespace

template <class T>
void forward(const ChainView<T>& ch, const FeatureView<T>& phi, T* mantissa, double* log_scale) {
  check_features(ch, phi, "phi");
  detail::CallScope scope;
  MPSNTK_ROUTE(forward_impl<T>(ch, phi, mantissa, log_scale))
}

template <class T>
Batch<T> prepare(const ChainView<T>& ch, const FeatureView<T>& phi, bool panels) {
  check_features(ch, phi, "phi");
  detail::CallScope scope;
  const Isa isa = active().load();
  MPSNTK_ROUTE_TO(isa, prepare_impl<T>(ch, phi, static_cast<int>(isa), panels))
}

template <class T>
Footprint prepare_footprint(const ChainView<T>& ch, index_t n) {
  ch.validate();
  MPSNTK_ROUTE(prepare_footprint_impl<T>(ch, n))
}

template <class T>
void forward(const Batch<T>& b, T* mantissa, double* log_scale) {
  check_batches(b, static_cast<const Batch<T>*>(nullptr));
  const auto& st = b.state();
  std::copy(st.mantissa.begin(), st.mantissa.end(), mantissa);
  std::copy(st.log_scale.begin(), st.log_scale.end(), log_scale);
}

template <class T>
bool ntk(const Batch<T>& b1, const Batch<T>* b2, const NtkOptions& opt, const double* site_lr, T* out, double* log1,
         double* log2) {
  check_batches(b1, b2);
  MPSNTK_EXPECTS(b1.state().panels && (!b2 || b2->state().panels),
                 "batches: prepared for the Jacobian products only (panels=false); an NTK needs batches prepared with "
                 "panels=true");
  MPSNTK_EXPECTS(opt.tile >= 1, "tile must be >= 1");
  detail::CallScope scope;
  MPSNTK_ROUTE_TO(b1.state().isa, ntk_impl<T>(b1, b2, opt, site_lr, out, log1, log2))
}

template <class T>
Footprint ntk_footprint(const ChainView<T>& ch, index_t n1, index_t n2, const NtkOptions& opt) {
  ch.validate();
  MPSNTK_ROUTE(ntk_footprint_impl<T>(ch, n1, n2, opt))
}

template <class T>
void vjp(const Batch<T>& b, const T* cot, T* const* grads, double* grad_log) {
  check_batches(b, static_cast<const Batch<T>*>(nullptr));
  detail::CallScope scope;
  MPSNTK_ROUTE_TO(b.state().isa, vjp_impl<T>(b, cot, grads, grad_log))
}

template <class T>
void jvp(const Batch<T>& b, const T* const* tangents, const double* tangent_log, T* out, double* out_log) {
  check_batches(b, static_cast<const Batch<T>*>(nullptr));
  detail::CallScope scope;
  MPSNTK_ROUTE_TO(b.state().isa, jvp_impl<T>(b, tangents, tangent_log, out, out_log))
}

template <class T>
void ntk_vp(const Batch<T>& b1, const Batch<T>* b2, const double* site_lr, const T* v, index_t k, T* out,
            double* out_log) {
  check_batches(b1, b2);
  MPSNTK_EXPECTS(k >= 1, "v: need at least one column");
  detail::CallScope scope;
  MPSNTK_ROUTE_TO(b1.state().isa, ntk_vp_impl<T>(b1, b2, site_lr, v, k, out, out_log))
}

template <class T>
Footprint product_footprint(const ChainView<T>& ch, index_t n) {
  ch.validate();
  MPSNTK_ROUTE(product_footprint_impl<T>(ch, n))
}

template <class T>
void jacobian(const Batch<T>& b, T* out) {
  check_batches(b, static_cast<const Batch<T>*>(nullptr));
  detail::CallScope scope;
  MPSNTK_ROUTE_TO(b.state().isa, jacobian_impl<T>(b, out))
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

#define MPSNTK_PUBLIC(T)                                                                                             \
  template void forward<T>(const ChainView<T>&, const FeatureView<T>&, T*, double*);                                 \
  template Batch<T> prepare<T>(const ChainView<T>&, const FeatureView<T>&, bool);                                    \
  template Footprint prepare_footprint<T>(const ChainView<T>&, index_t);                                             \
  template void forward<T>(const Batch<T>&, T*, double*);                                                            \
  template bool ntk<T>(const Batch<T>&, const Batch<T>*, const NtkOptions&, const double*, T*, double*, double*);    \
  template Footprint ntk_footprint<T>(const ChainView<T>&, index_t, index_t, const NtkOptions&);                     \
  template void vjp<T>(const Batch<T>&, const T*, T* const*, double*);                                               \
  template void jvp<T>(const Batch<T>&, const T* const*, const double*, T*, double*);                                \
  template void ntk_vp<T>(const Batch<T>&, const Batch<T>*, const double*, const T*, index_t, T*, double*);          \
  template Footprint product_footprint<T>(const ChainView<T>&, index_t);                                             \
  template void jacobian<T>(const Batch<T>&, T*);                                                                    \
  template double log_partition<T>(const ChainView<T>&, const double*, T* const*);                                   \
  template void doubled_right_environments<T>(const ChainView<T>&, const double*, std::vector<std::vector<double>>&, \
                                              std::vector<double>&);                                                 \
  template void taylor_terms<T>(const ChainView<T>&, const ChainView<T>&, const FeatureView<T>&, index_t, bool, T*,  \
                                double*);                                                                            \
  template RangeReport order_kernels<T>(const ChainView<T>&, const FeatureView<T>&, const FeatureView<T>*,           \
                                        const double*, const std::vector<index_t>&, T*);
MPSNTK_PUBLIC(float)
MPSNTK_PUBLIC(double)

}  // namespace mpsntk
