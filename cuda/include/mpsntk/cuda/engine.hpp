/// @file engine.hpp
/// @brief Host-callable entry points of the CUDA engine (plain C++: no CUDA or pybind11 types).
///
/// The interface of the CPU engine (mpsntk/engine.hpp) on the device: batches prepared once, and
/// every product from prepared batches.  Every routine works on device pointers described by the
/// same ChainView / FeatureView as the CPU engine, checks them as the CPU engine does, runs on the
/// given stream (a cudaStream_t passed as an integer), and uses caller-allocated device memory
/// whose size the matching *_bytes() returns, so that the caller's memory pool (CuPy) owns every
/// byte.  Nothing here synchronises the stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "mpsntk/engine.hpp"

namespace mpsntk::cuda {

/// @brief A failed CUDA call: "file:line: call: cudaErrorName (description)".
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// @brief Number of usable devices; 0 when there is no device or no (sufficient) driver.
int device_count();
/// @brief Why device_count() is 0 ("" otherwise).
std::string device_unavailable_reason();
/// @brief Architecture of the code the current device runs for this module, as major * 10 +
/// minor: the PTX target of the image the driver loaded (90 for the sm_90 image; 80 when an sm_90
/// card JIT-compiles compute_80 PTX).  Cached per device.
int image_arch();
/// @brief The product path of the float64 kernels on the current device: "m16n8k8" or "m8n8k4"
/// (FP64 tensor cores), or "fma" (MPSNTK_CUDA_SIMT=1).
std::string float64_path();
/// @brief CUDA runtime version the module was built with, e.g. "13.0".
std::string runtime_version();
/// @brief Architectures compiled into the module, e.g. {"sm_80", "sm_90", "compute_90"}.
std::vector<std::string> architectures();

/// @brief A block of device memory the caller owns (allocated by its memory pool, e.g. CuPy's).
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

/// @brief A batch prepared on the device: the environments and per-site factors of its samples,
/// held in caller-owned device memory (the layout is a function of the chain and the number of
/// samples, so the engine finds every piece again from the chain and the memory).  The device
/// counterpart of mpsntk::Batch: immutable once prepared, for any number of products; the
/// features stay where they are and must not change.
template <class T>
struct Batch {
  ChainView<T> chain;  ///< structure and scales; the core pointers identify the model
  FeatureView<T> phi;  ///< device pointer
  Workspace memory;    ///< what prepare() filled (prepare_bytes() of it)
};

/// @brief Bytes of device memory a batch of n_samples samples holds.
template <class T>
std::size_t prepare_bytes(const ChainView<T>& chain, index_t n_samples);
/// @brief Prepare a batch in @p memory (prepare_bytes() of it or more); returns the batch.
/// @throws std::invalid_argument if @p phi does not fit the chain or the memory is too small.
template <class T>
Batch<T> prepare(const ChainView<T>& chain, const FeatureView<T>& phi, Workspace memory, std::uintptr_t stream);

/// @brief Workspace of forward(chain, phi, ...): one left sweep, nothing else kept.
template <class T>
std::size_t forward_workspace_bytes(const ChainView<T>& chain, index_t n_samples);
/// @brief f as mantissa and log-scale (n, C), device pointers (as mpsntk::forward).
template <class T>
void forward(const ChainView<T>& chain, const FeatureView<T>& phi, T* mantissa, double* log_scale, Workspace workspace,
             std::uintptr_t stream);
/// @brief f of a prepared batch (from its last left environments; no workspace).
template <class T>
void forward(const Batch<T>& batch, T* mantissa, double* log_scale, std::uintptr_t stream);

/// @brief Workspace of ntk() beyond its batches (n2 = 0: symmetric call).
template <class T>
std::size_t ntk_workspace_bytes(const ChainView<T>& chain, index_t n1, index_t n2);
/// @brief Same contract as mpsntk::ntk (engine.hpp); out, log1, log2 are device pointers and
/// site_lr a host array.
/// @throws std::invalid_argument if the batches were prepared for different models.
template <class T>
void ntk(const Batch<T>& batch1, const Batch<T>* batch2, const NtkOptions& opt, const double* site_lr, T* out,
         double* log1, double* log2, Workspace workspace, std::uintptr_t stream);

/// @brief Workspace of vjp / jvp / ntk_vp beyond their batches, for batches of n1 and n2
/// samples (n2 = 0: one batch).
template <class T>
std::size_t product_workspace_bytes(const ChainView<T>& chain, index_t n1, index_t n2);
/// @brief Same contract as mpsntk::vjp (engine.hpp), grad_log a device pointer or nullptr.
template <class T>
void vjp(const Batch<T>& batch, const T* cotangent, T* const* grads, double* grad_log, Workspace workspace,
         std::uintptr_t stream);
/// @brief Same contract as mpsntk::jvp (engine.hpp); tangent_log and out_log device pointers or
/// nullptr.
template <class T>
void jvp(const Batch<T>& batch, const T* const* tangents, const double* tangent_log, T* out, double* out_log,
         Workspace workspace, std::uintptr_t stream);
/// @brief out (n1, C, k) = Theta(X1, X2) v for v (n2, C, k), as mpsntk::ntk_vp (out_log: a device
/// pointer or nullptr); its gradient-shaped scratch is part of the workspace.
template <class T>
void ntk_vp(const Batch<T>& batch1, const Batch<T>* batch2, const double* site_lr, const T* v, index_t k, T* out,
            double* out_log, Workspace workspace, std::uintptr_t stream);

}  // namespace mpsntk::cuda
