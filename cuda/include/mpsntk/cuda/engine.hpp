/// @file engine.hpp
/// @brief Host-callable entry points of the CUDA engine (plain C++: no CUDA or pybind11 types).
///
/// Every routine works on device pointers described by the same ChainView / FeatureView as the
/// CPU engine, runs on the given stream (a cudaStream_t passed as an integer), and uses a
/// caller-allocated device workspace whose size the matching *_workspace_bytes() returns, so
/// that the caller's memory pool (CuPy) owns every byte.  Nothing here synchronises the stream.
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

template <class T>
std::size_t forward_workspace_bytes(const ChainView<T>& chain, index_t n_samples);
template <class T>
void forward(const ChainView<T>& chain, const FeatureView<T>& phi, T* mantissa, double* log_scale, void* workspace,
             std::size_t workspace_bytes, std::uintptr_t stream);

/// @brief Workspace of ntk(): environments of both batches (n2 = 0: symmetric call).
template <class T>
std::size_t ntk_workspace_bytes(const ChainView<T>& chain, index_t n1, index_t n2);
/// @brief Same contract as mpsntk::ntk (engine.hpp); out, log1, log2 are device pointers and
/// site_lr a host array.
template <class T>
void ntk(const ChainView<T>& chain, const FeatureView<T>& phi1, const FeatureView<T>* phi2, const NtkOptions& opt,
         const double* site_lr, T* out, double* log1, double* log2, void* workspace, std::size_t workspace_bytes,
         std::uintptr_t stream);

/// @brief Workspace of vjp / jvp / ntk_vp for n_samples samples.
template <class T>
std::size_t grad_workspace_bytes(const ChainView<T>& chain, index_t n_samples);
/// @brief Same contract as mpsntk::vjp (engine.hpp), grad_log a device pointer or nullptr.
template <class T>
void vjp(const ChainView<T>& chain, const FeatureView<T>& phi, const T* cotangent, T* const* grads, double* grad_log,
         void* workspace, std::size_t workspace_bytes, std::uintptr_t stream);
/// @brief Same contract as mpsntk::jvp (engine.hpp), out_log a device pointer or nullptr.
template <class T>
void jvp(const ChainView<T>& chain, const FeatureView<T>& phi, const T* const* tangents, T* out, double* out_log,
         void* workspace, std::size_t workspace_bytes, std::uintptr_t stream);
/// @brief out (n, C, k) = Theta v, as mpsntk::ntk_vp (out_log: a device pointer or nullptr); its
/// gradient-shaped scratch (n_params values) is part of the workspace (grad_workspace_bytes).
template <class T>
void ntk_vp(const ChainView<T>& chain, const FeatureView<T>& phi, const double* site_lr, const T* v, index_t k, T* out,
            double* out_log, void* workspace, std::size_t workspace_bytes, std::uintptr_t stream);

}  // namespace mpsntk::cuda
