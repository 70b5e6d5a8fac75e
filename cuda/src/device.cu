// Device discovery and build facts of the CUDA module.
#include <cuda_runtime.h>

#include "mpsntk/cuda/engine.hpp"

namespace mpsntk::cuda {

namespace {
int query(std::string* reason) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (reason) *reason = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error: "no device" is a normal answer here
    return 0;
  }
  if (n == 0 && reason) *reason = "no CUDA device is visible";
  return n;
}
}  // namespace

int device_count() { return query(nullptr); }

std::string device_unavailable_reason() {
  std::string reason;
  query(&reason);
  return reason;
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
