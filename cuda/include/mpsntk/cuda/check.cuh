// The CUDA runtime as the engine's sources see it (the real one under nvcc, the SIMT simulator
// of sim.hpp under a host compiler with MPSNTK_CUDA_SIM), error checking, and kernel launches.
#pragma once

#ifdef MPSNTK_CUDA_SIM
#include "mpsntk/cuda/sim.hpp"
#else
#include <cuda_runtime.h>
#endif

#include <string>

#include "mpsntk/cuda/engine.hpp"

namespace mpsntk::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + call + ": " + cudaGetErrorName(err) + " (" +
                  cudaGetErrorString(err) + ")");
}

}  // namespace mpsntk::cuda

/// Run a CUDA runtime call and throw mpsntk::cuda::CudaError on failure.
#define MPSNTK_CUDA_TRY(call)                                                                           \
  do {                                                                                                  \
    const cudaError_t mpsntk_err_ = (call);                                                             \
    if (mpsntk_err_ != cudaSuccess) ::mpsntk::cuda::throw_cuda(mpsntk_err_, #call, __FILE__, __LINE__); \
  } while (0)

namespace mpsntk::cuda {

/// A kernel's name and the place it is launched from: a string literal converts to it, and the
/// file and line are those of the launch() call (so errors name the call site).
struct LaunchSite {
  const char* kernel;
  const char* file;
  int line;
  LaunchSite(const char* name, const char* f = __builtin_FILE(), int l = __builtin_LINE())
      : kernel(name), file(f), line(l) {}
};

/// kernel<<<grid, block, shared_bytes, stream>>>(args...), then check the launch (configuration
/// errors surface here).  More than 48 KB of dynamic shared memory is opted into first.  On the
/// simulator the kernel runs to completion before this returns.
template <class... Params, class... Args>
void launch(LaunchSite at, dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream,
            void (*kernel)(Params...), const Args&... args) {
#ifdef MPSNTK_CUDA_SIM
  sim::launch(at.kernel, std::string(at.file) + ":" + std::to_string(at.line), grid, block, shared_bytes, stream,
              [&] { kernel(static_cast<Params>(args)...); });
#else
  if (shared_bytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes));
    if (err != cudaSuccess) throw_cuda(err, at.kernel, at.file, at.line);
  }
  // (in a header clang-format does not know the launch syntax)
  // clang-format off
  kernel<<<grid, block, shared_bytes, stream>>>(static_cast<Params>(args)...);
  // clang-format on
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda(err, at.kernel, at.file, at.line);
#endif
}

/// The same without dynamic shared memory.
template <class... Params, class... Args>
void launch(LaunchSite at, dim3 grid, dim3 block, cudaStream_t stream, void (*kernel)(Params...), const Args&... args) {
  launch(at, grid, block, std::size_t{0}, stream, kernel, args...);
}

}  // namespace mpsntk::cuda
