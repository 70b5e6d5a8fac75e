// Error checking for CUDA calls and kernel launches (device code only; see engine.hpp).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "mpsntk/cuda/engine.hpp"

namespace mpsntk::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + call + ": " +
                  cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

}  // namespace mpsntk::cuda

/// Run a CUDA runtime call and throw mpsntk::cuda::CudaError on failure.
#define MPSNTK_CUDA_TRY(call)                                                           \
  do {                                                                                  \
    const cudaError_t mpsntk_err_ = (call);                                             \
    if (mpsntk_err_ != cudaSuccess) ::mpsntk::cuda::throw_cuda(mpsntk_err_, #call, __FILE__, __LINE__); \
  } while (0)

/// Check the launch that just happened (configuration errors surface here).
#define MPSNTK_CUDA_CHECK_LAUNCH(name) MPSNTK_CUDA_TRY(cudaGetLastError())
