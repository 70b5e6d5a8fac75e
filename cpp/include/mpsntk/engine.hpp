/// @file engine.hpp
/// @brief Public entry points of the CPU engine.  Every routine takes non-owning views and
/// writes into caller-allocated outputs; none of them forms the Jacobian unless asked to.
#pragma once

#include <string>
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
template <class T>
void forward(const ChainView<T>& chain, const FeatureView<T>& phi, T* mantissa, double* log_scale);

/// @brief Empirical NTK w.r.t. the cores, weighted per site by scales_j^2 * site_lr_j.
/// @param phi2 nullptr for Theta(X1, X1) (symmetric path: each off-diagonal tile once).
/// @param out (n1, n2), (n1, n2, C, C) or with a leading n_sites axis (per_site).
/// @param log1, log2 per-sample log-scales c (always written).
/// @return whether every entry written is finite (false: overflow, use normalized).
/// @throws std::invalid_argument on inconsistent shapes.
template <class T>
bool ntk(const ChainView<T>& chain, const FeatureView<T>& phi1, const FeatureView<T>* phi2, const NtkOptions& opt,
         const double* site_lr, T* out, double* log1, double* log2);

/// @brief grads[j] (shaped like core j) = J_j^T cotangent; cotangent is (n, C).
/// @param grad_log nullptr, or n_sites log-scales: then grads[j] = exp(-grad_log[j]) J_j^T cot
/// (normalised: in range however long the chain).
template <class T>
void vjp(const ChainView<T>& chain, const FeatureView<T>& phi, const T* cotangent, T* const* grads,
         double* grad_log = nullptr);

/// @brief out (n, C) = sum_j J_j tangents[j].
/// @param out_log nullptr, or n log-scales: then out[x, :] = exp(-out_log[x]) (J t)[x, :].
template <class T>
void jvp(const ChainView<T>& chain, const FeatureView<T>& phi, const T* const* tangents, T* out,
         double* out_log = nullptr);

/// @brief out (n, C, k) = Theta(X, X) v for v (n, C, k), via J diag(site_lr) J^T v.
/// @param out_log nullptr, or (n, k) log-scales: then out[x, :, c] = exp(-out_log[x, c]) (Theta v)[x, :, c].
template <class T>
void ntk_vp(const ChainView<T>& chain, const FeatureView<T>& phi, const double* site_lr, const T* v, index_t k, T* out,
            double* out_log = nullptr);

/// @brief Dense Jacobian (n, C, P), parameters ordered by site, each core in C order.
template <class T>
void jacobian(const ChainView<T>& chain, const FeatureView<T>& phi, T* out);

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

}  // namespace mpsntk
