// The _cuda extension: the CUDA engine (cuda/) exposed to python/mpsntk/_engine.py through the
// binding shared with the simulator's module (cuda_engine.hpp).  Device arrays only.
#include "cuda_engine.hpp"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "mpsntk CUDA engine: prepared batches, fused NTK tiles, vjp/jvp/ntk_vp, forward";
  mpsntk::cuda_bind::register_engine(m, /*host_arrays=*/false);
}
