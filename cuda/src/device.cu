// Device discovery and build facts of the CUDA module.
#include <cuda_runtime.h>

#include <map>
#include <mutex>

#include "mpsntk/cuda/check.cuh"
#include "mpsntk/cuda/engine.hpp"

namespace mpsntk::cuda {

namespace {
/// The kernels need sm_80 or newer (cp.async, FP64 and TF32 mma.sync).
constexpr int kMinMajor = 8;

/// Usable devices (compute capability 8.0 or newer); with reason, why there are none.
int query(std::string* reason) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (reason) *reason = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error: "no device" is a normal answer here
    return 0;
  }
  if (n == 0 && reason) *reason = "no CUDA device is visible";
  int usable = 0;
  std::string older;
  for (int dev = 0; dev < n; ++dev) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    if (prop.major >= kMinMajor) {
      ++usable;
    } else {
      older += (older.empty() ? "" : ", ") + std::string(prop.name) + " (compute capability " +
               std::to_string(prop.major) + "." + std::to_string(prop.minor) + ")";
    }
  }
  if (n > 0 && usable == 0 && reason) *reason = "the CUDA kernels need compute capability 8.0 or newer; found " + older;
  return usable;
}

__global__ void arch_probe_kernel() {}
}  // namespace

int device_count() { return query(nullptr); }

std::string device_unavailable_reason() {
  std::string reason;
  query(&reason);
  return reason;
}

int image_arch() {
  int dev = 0;
  MPSNTK_CUDA_TRY(cudaGetDevice(&dev));
  static std::mutex mutex;
  static std::map<int, int> arch;  // per device: the image is chosen per device
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = arch.find(dev);
  if (it == arch.end()) {
    // Every kernel of the module is compiled for the same architectures, so the probe's image
    // is the one the driver loads for all of them.
    cudaFuncAttributes attr{};
    MPSNTK_CUDA_TRY(cudaFuncGetAttributes(&attr, arch_probe_kernel));
    it = arch.emplace(dev, attr.ptxVersion).first;
  }
  return it->second;
}

std::string runtime_version() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
}

std::vector<std::string> architectures() {
  std::vector<std::string> out;
  std::string s = MPSNTK_CUDA_ARCHITECTURES;  // e.g. "80-real,90" (set by CMake)
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const std::size_t end = s.find(',', pos);
    const std::string a = s.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    if (!a.empty()) {
      const std::string num = a.substr(0, a.find('-'));
      const bool real = a.find("-real") != std::string::npos, virt = a.find("-virtual") != std::string::npos;
      if (!virt) out.push_back("sm_" + num);
      if (!real) out.push_back("compute_" + num);
    }
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  return out;
}

}  // namespace mpsntk::cuda
