/// @file engine.hpp
/// @brief Public entry points of the CPU engine.  Every routine takes non-owning views and
/// writes into caller-allocated outputs; none of them forms the Jacobian unless asked to.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mpsntk/chain.hpp"
#include "mpsntk/runtime.hpp"

namespace mpsntk {

/// @brief Options of an NTK evaluation.
struct NtkOptions {
  bool full_outputs = false;  ///< multi-output: (n1, n2, C, C) instead of sum_l Theta_ll
  bool per_site = false;      ///< one kernel per site: leading axis n_sites
  bool normalized = false;    ///< return Theta~ with Theta = exp(c_i + c_k) Theta~
  index_t tile = 128;         ///< output tile edge (rounded up to the micro-tile)
  bool tf32 = false;          ///< CUDA, float32 only: TF32 tensor cores for the Grams (opt-in)
};

/// @brief f(x) as mantissa (n, C) and natural-log scale (n, C): f = mantissa * exp(log_scale).
/// One left sweep, keeping only the last environments (the cheapest way to f alone).
template <class T>
void forward(const ChainView<T>& chain, const FeatureView<T>& phi, T* mantissa, double* log_scale);

namespace detail {
/// What a prepared batch holds; each instruction set's engine derives its own (the factors).
template <class T>
struct BatchState {
  virtual ~BatchState() = default;
  ChainView<T> chain;  ///< structure and scales; its core pointers identify the model, never read
  FeatureView<T> phi;  ///< read by every product (the caller keeps the features alive)
  int isa = 0;         ///< the instruction set whose layout the factors have
  bool panels = true;  ///< sides independent of the output stored as the NTK's packed panels
  std::size_t bytes = 0;
  std::vector<T> mantissa;  ///< f (n, C) = mantissa * exp(log_scale)
  std::vector<double> log_scale;
};
}  // namespace detail

/// @brief A batch of samples prepared once for every product of the engine: the environments of
/// its samples (contracted once, O(n N d D^2)) stored as per-site Jacobian factors, and f.
///
/// A batch is immutable after preparation and may be shared between threads; copies share it.
/// It holds the environments of the cores as they were when it was prepared (later changes of
/// the cores are not seen) and reads its features at every product: the caller keeps them alive
/// and unchanged.  Every product takes batches: ntk tiles between two batches, vjp, jvp, ntk_vp
/// (also across two batches: Theta(X1, X2) v = J1 diag(w) J2^T v) and the Jacobian, none of which
/// recomputes an environment.
template <class T>
class Batch {
 public:
  Batch() = default;
  explicit Batch(std::shared_ptr<const detail::BatchState<T>> state) : state_(std::move(state)) {}
  /// @brief Whether the batch holds prepared factors (a default-constructed one does not).
  bool valid() const { return static_cast<bool>(state_); }
  const ChainView<T>& chain() const { return state_->chain; }
  const FeatureView<T>& features() const { return state_->phi; }
  index_t n_samples() const { return state_->phi.n_samples; }
  /// @brief Bytes of memory the batch holds.
  std::size_t bytes() const { return state_->bytes; }
  const detail::BatchState<T>& state() const { return *state_; }

 private:
  std::shared_ptr<const detail::BatchState<T>> state_;
};

/// @brief Memory of the host engine's routines, in bytes, as they allocate it.
struct Footprint {
  std::size_t held = 0;  ///< what the result keeps (a prepared batch), 0 for products
  std::size_t peak = 0;  ///< the most the call has allocated at once (held included)
};

/// @brief Prepare a batch: its environments and per-site factors, in the layout of the current
/// instruction set (which then serves every product of the batch).
/// @param panels Store the factors that do not depend on the output as the packed panels the NTK
/// tiles read in place (needed by ntk()); false keeps them as rows, which the Jacobian products
/// (vjp, jvp, ntk_vp, jacobian) read contiguously and which skips the conversion.
/// @throws std::invalid_argument if @p phi does not fit the chain.
template <class T>
Batch<T> prepare(const ChainView<T>& chain, const FeatureView<T>& phi, bool panels = true);

/// @brief Memory that prepare() takes for n_samples samples.
template <class T>
Footprint prepare_footprint(const ChainView<T>& chain, index_t n_samples);

/// @brief f of a prepared batch (computed while preparing it), as forward() gives it.
template <class T>
void forward(const Batch<T>& batch, T* mantissa, double* log_scale);

/// @brief Empirical NTK w.r.t. the cores, weighted per site by scales_j^2 * site_lr_j.
/// @param batch2 nullptr for Theta(X1, X1) (symmetric path: each off-diagonal tile once).
/// @param out (n1, n2), (n1, n2, C, C) or with a leading n_sites axis (per_site); every entry is
/// written once, with its final value, tile by tile.
/// @param log1, log2 per-sample log-scales c (always written).
/// @return whether every entry written is finite (false: overflow, use normalized).
/// @throws std::invalid_argument if the batches were prepared for different models.
template <class T>
bool ntk(const Batch<T>& batch1, const Batch<T>* batch2, const NtkOptions& opt, const double* site_lr, T* out,
         double* log1, double* log2);

/// @brief Memory an ntk() call allocates beyond its batches (packed factors, tile buffers).
template <class T>
Footprint ntk_footprint(const ChainView<T>& chain, index_t n1, index_t n2, const NtkOptions& opt);

/// @brief grads[j] (shaped like core j) = J_j^T cotangent; cotangent is (n, C).
/// @param grad_log nullptr, or n_sites log-scales: then grads[j] = exp(-grad_log[j]) J_j^T cot
/// (normalised: in range however long the chain).
template <class T>
void vjp(const Batch<T>& batch, const T* cotangent, T* const* grads, double* grad_log = nullptr);

/// @brief out (n, C) = sum_j J_j tangents[j].
/// @param tangent_log nullptr, or n_sites log-scales: tangent j is exp(tangent_log[j]) tangents[j]
/// (-inf: a zero tangent), the normalised form vjp returns.
/// @param out_log nullptr, or n log-scales: then out[x, :] = exp(-out_log[x]) (J t)[x, :].
template <class T>
void jvp(const Batch<T>& batch, const T* const* tangents, const double* tangent_log, T* out, double* out_log = nullptr);

/// @brief out (n1, C, k) = Theta(X1, X2) v for v (n2, C, k), via J1 diag(w) J2^T v with
/// w_j = scales_j^2 site_lr_j, in the normalised forms of vjp and jvp: O((n1 + n2) n_params k).
/// @param batch2 nullptr: X2 = X1.
/// @param out_log nullptr, or (n1, k) log-scales: then out[x, :, c] = exp(-out_log[x, c]) (Theta v)[x, :, c].
template <class T>
void ntk_vp(const Batch<T>& batch1, const Batch<T>* batch2, const double* site_lr, const T* v, index_t k, T* out,
            double* out_log = nullptr);

/// @brief Memory a vjp, jvp or ntk_vp of n_samples samples allocates beyond its batches.
template <class T>
Footprint product_footprint(const ChainView<T>& chain, index_t n_samples);

/// @brief Dense Jacobian (n, C, P), parameters ordered by site, each core in C order.
template <class T>
void jacobian(const Batch<T>& batch, T* out);

/// @brief Born machine: log Z with Z = sum over all configurations of Psi(x)^2 for one-hot
/// features phi_s = sqrt(weights[s]) e_s, by contracting the doubled MPS.  With grads non-null,
/// also d log Z / d core_j (shaped like the cores).
/// @throws std::invalid_argument if Z = 0 or the chain has an output site.
template <class T>
double log_partition(const ChainView<T>& chain, const double* weights, T* const* grads);

/// @brief Right doubled environments (suffix slots j = 0..N): h matrices D_j x D_j per slot,
/// h = 1 (open) or D_0^2 (periodic), each slot divided by exp(log_scale[j]).
template <class T>
void doubled_right_environments(const ChainView<T>& chain, const double* weights,
                                std::vector<std::vector<double>>& slots, std::vector<double>& log_scale);

/// @brief Exact finite Taylor (RKBS) expansion in a step: f(W + Delta) = sum_k P_k(x; Delta).
///
/// P_k is the sum, over the k-subsets S of sites, of the chain contracted with the step cores on
/// S and the cores elsewhere; the effective step of site j is scales[j] * step core j.  With
/// max_order = n_sites the terms sum to f(W + Delta) exactly.  Polynomial environments meet at one
/// slot: O(n N min(N, K) d D^2) open, times D_0 periodic.
/// @param step the step Delta: a chain of the same structure and scales as @p chain.
/// @param max_order K in 0..n_sites.
/// @param remainder also write sum_{k > K} P_k (exactly, as one more polynomial order).
/// @param mantissa, log_scale (K + 1 [+ 1], n, C): P_k = mantissa * exp(log_scale).
/// @throws std::invalid_argument on inconsistent shapes or a step of another structure.
template <class T>
void taylor_terms(const ChainView<T>& chain, const ChainView<T>& step, const FeatureView<T>& phi, index_t max_order,
                  bool remainder, T* mantissa, double* log_scale);

/// @brief Whether values written in the dtype left its range.
struct RangeReport {
  bool overflow = false;   ///< an entry is not finite
  bool underflow = false;  ///< a non-zero entry rounded to zero
};

/// @brief Order-k kernels K_k(x, y) = sum_{|S|=k} prod_{j in S} lambda_j <d_S f(x), d_S f(y)>,
/// derivatives in the effective cores, lambda_j = scales_j^2 site_lr_j (K_1 is the NTK); traced
/// over the outputs of a label site.  One doubled chain per pair with a polynomial state:
/// O(n1 n2 N (k_max - 1) D^3) open; periodic O(n1 n2 min(N D_0^2, N^2 / 2) (k_max - 1) D^3).
/// @param phi2 nullptr for K(X1, X1) (each pair once).
/// @param orders the k in 1..n_sites to return.
/// @param out (orders.size(), n1, n2).
template <class T>
RangeReport order_kernels(const ChainView<T>& chain, const FeatureView<T>& phi1, const FeatureView<T>* phi2,
                          const double* site_lr, const std::vector<index_t>& orders, T* out);

/// @brief Instruction sets compiled in, best first, and the one in use.
std::vector<std::string> available_isas();
std::string current_isa();
/// @brief Select an instruction set by name ("avx512", "avx2", "generic"); throws if unavailable.
void set_isa(const std::string& name);

/// @brief What is wrong with this process's MPSNTK_ISA request.
enum class IsaProblem {
  none,        ///< no request, or a set this CPU runs
  unknown,     ///< not the name of an instruction set of this build
  unsupported  ///< an instruction set of this build that this CPU lacks: the best one is used
};
/// @brief The MPSNTK_ISA problem of this process and a message that says it (empty for none).
std::pair<IsaProblem, std::string> isa_request_problem();

}  // namespace mpsntk
