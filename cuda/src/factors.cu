// Prepared batches on the device: their environments and factors (the CPU engine's
// compute_factors, cpp/src/detail/factors.hpp), in caller-owned memory.
#include "mpsntk/cuda/factors.cuh"

namespace mpsntk::cuda {

template <class T>
std::size_t prepare_bytes(const ChainView<T>& ch, index_t n) {
  ch.validate();
  Arena arena;
  plan_factors<T>(ch, n, arena);
  return arena.used;
}

template <class T>
Batch<T> prepare(const ChainView<T>& ch, const FeatureView<T>& phi, Workspace memory, std::uintptr_t stream) {
  check_features(ch, phi, "phi");
  MPSNTK_EXPECTS(memory.data && memory.bytes >= prepare_bytes(ch, phi.n_samples),
                 "memory: too small for the batch (prepare_bytes)");
  Batch<T> b{ch, phi, memory};
  Factors<T> F = factors_of(b);
  compute_factors<T>(ch, phi, F, as_stream(stream));
  return b;
}

#define MPSNTK_CUDA_FACTORS(T)                                         \
  template std::size_t prepare_bytes<T>(const ChainView<T>&, index_t); \
  template Batch<T> prepare<T>(const ChainView<T>&, const FeatureView<T>&, Workspace, std::uintptr_t);
MPSNTK_CUDA_FACTORS(float)
MPSNTK_CUDA_FACTORS(double)

}  // namespace mpsntk::cuda
