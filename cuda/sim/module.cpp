// The _cuda_sim extension: the CUDA engine's kernels on the SIMT simulator (built for the tests
// only, never shipped), with the engine's binding of the _cuda module and the simulator's own
// hooks: schedules, the simulated card's architecture, the streams and launches it saw, and the
// self-tests of its model of the hardware.
#include "../../cpp/bindings/cuda_engine.hpp"
#include "mpsntk/cuda/sim.hpp"

namespace py = pybind11;
namespace mc = mpsntk::cuda;

PYBIND11_MODULE(_cuda_sim, m) {
  m.doc() = "mpsntk CUDA engine on the SIMT simulator (tests only)";
  mpsntk::cuda_bind::register_engine(m, /*host_arrays=*/true);
  m.def(
      "set_schedule",
      [](const std::string& s, std::uint64_t seed) {
        using S = mc::sim::Schedule;
        MPSNTK_EXPECTS(s == "forward" || s == "reverse" || s == "shuffled",
                       "schedule must be 'forward', 'reverse' or 'shuffled'; got '" + s + "'");
        mc::sim::set_schedule(s == "forward" ? S::forward : s == "reverse" ? S::reverse : S::shuffled, seed);
      },
      py::arg("schedule"), py::arg("seed") = 0);
  m.def("set_image_arch", &mc::sim::set_image_arch, py::arg("arch"));
  m.def("streams_used", &mc::sim::streams_used);
  m.def("launches_made", &mc::sim::launches_made);
  namespace st = mc::sim::selftest;
  m.def("selftest_mma", [](const std::string& kind, py::array a, py::array b, py::array c) {
    const bool m8 = kind == "f64";
    const py::ssize_t M = m8 ? 8 : 16, N = 8, K = m8 ? 4 : 8;
    const auto want = kind == "tf32" ? py::dtype::of<float>() : py::dtype::of<double>();
    auto ok = [&](const py::array& x, py::ssize_t r, py::ssize_t cols) {
      return x.dtype().is(want) && x.ndim() == 2 && x.shape(0) == r && x.shape(1) == cols &&
             (x.flags() & py::array::c_style);
    };
    MPSNTK_EXPECTS(ok(a, M, K) && ok(b, K, N) && ok(c, M, N) && c.writeable(),
                   "selftest_mma: A (M, K), B (K, N), writable C (M, N), C-contiguous, of the kind's dtype");
    st::mma(kind, a.data(), b.data(), c.mutable_data());
  });
  m.def("selftest_shared_exchange", [](int tag, bool sync) {
    py::array_t<int> out(256);
    st::shared_exchange(tag, sync, out.mutable_data());
    return out;
  });
  m.def("selftest_async_exchange", [](py::array_t<int, py::array::c_style> src, bool wait, bool sync) {
    MPSNTK_EXPECTS(src.ndim() == 1 && src.shape(0) == 256, "selftest_async_exchange: src of 256 ints");
    py::array_t<int> out(256);
    st::async_exchange(src.data(), wait, sync, out.mutable_data());
    return out;
  });
  m.def("selftest_fault", &st::fault);
  m.def("selftest_launch", [](std::vector<unsigned> g, unsigned threads) {
    MPSNTK_EXPECTS(g.size() == 3, "grid: three dimensions");
    st::empty_launch(dim3(g[0], g[1], g[2]), dim3(threads));
  });
}
