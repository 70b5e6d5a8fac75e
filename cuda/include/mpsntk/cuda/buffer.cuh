// The engine's device memory: typed pieces of one caller-provided buffer (the CPU engine's
// counterpart is cpp/src/detail/buffer.hpp), streams and grid sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "mpsntk/cuda/check.cuh"

namespace mpsntk::cuda {

// Workspace: carve typed, 256-byte aligned pieces out of one caller-provided buffer.  Run once
// with base == nullptr to measure, then with the real buffer.
struct Arena {
  char* base = nullptr;
  std::size_t used = 0, capacity = 0;
  template <class U>
  U* take(std::size_t count) {
    used = (used + 255) / 256 * 256;
    U* p = base ? reinterpret_cast<U*>(base + used) : nullptr;
    used += count * sizeof(U);
    if (base && used > capacity) throw std::invalid_argument("mpsntk: CUDA workspace too small");
    return p;
  }
};

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

inline unsigned blocks_for(index_t n, int threads) {
  return static_cast<unsigned>(std::max<index_t>(1, (n + threads - 1) / threads));
}

}  // namespace mpsntk::cuda
