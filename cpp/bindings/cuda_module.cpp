// The _cuda extension: the CUDA engine exposed to python/mpsntk/_device.py.  Device arrays
// arrive as raw pointers and shapes taken from __cuda_array_interface__ by the Python layer,
// which also validates them and allocates every output and workspace with CuPy.
// Built a second time as _cuda_sim (MPSNTK_CUDA_SIM): the same kernels on the SIMT simulator
// of cuda/sim, where "device" pointers are host pointers (NumPy arrays).
#include <type_traits>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "mpsntk/cuda/engine.hpp"
#ifdef MPSNTK_CUDA_SIM
#include "mpsntk/cuda/sim.hpp"
#define MPSNTK_CUDA_MODULE _cuda_sim
#else
#define MPSNTK_CUDA_MODULE _cuda
#endif

namespace py = pybind11;
using namespace mpsntk;
namespace mc = mpsntk::cuda;

namespace {

py::object& cuda_error_class() {
  static py::object cls = py::reinterpret_borrow<py::object>(PyExc_RuntimeError);
  return cls;
}

template <class T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

/// A chain whose cores live on the device: pointers and shapes from the Python layer.
template <class T>
ChainView<T> device_chain(const std::vector<std::uintptr_t>& core_ptrs, const std::vector<std::vector<index_t>>& shapes,
                          const py::array_t<double, py::array::c_style>& scales, const std::string& boundary,
                          index_t output_site) {
  ChainView<T> v;
  v.n_sites = static_cast<index_t>(core_ptrs.size());
  MPSNTK_EXPECTS(v.n_sites >= 1 && shapes.size() == core_ptrs.size(), "cores: need one shape per core");
  MPSNTK_EXPECTS(boundary == "open" || boundary == "periodic", "boundary must be 'open' or 'periodic'");
  v.boundary = boundary == "open" ? Boundary::open : Boundary::periodic;
  v.output_site = output_site;
  MPSNTK_EXPECTS(scales.ndim() == 1 && scales.shape(0) == v.n_sites, "scales: need one per site");
  for (index_t j = 0; j < v.n_sites; ++j) {
    const auto& s = shapes[j];
    const bool label = j == output_site;
    MPSNTK_EXPECTS(s.size() == (label ? 4u : 3u), "cores[" + std::to_string(j) + "]: wrong rank");
    const size_t o = label ? 1 : 0;
    if (label) v.n_outputs = s[0];
    if (j == 0) v.phys_dim = s[o], v.bond.push_back(s[o + 1]);
    MPSNTK_EXPECTS(s[o] == v.phys_dim && s[o + 1] == v.bond.back(), "cores[" + std::to_string(j) + "]: shape");
    v.bond.push_back(s[o + 2]);
    v.cores.push_back(ptr<const T>(core_ptrs[j]));
    v.scales.push_back(scales.at(j));
  }
  v.validate();
  return v;
}

template <class T>
FeatureView<T> device_features(std::uintptr_t p, const std::vector<index_t>& shape) {
  MPSNTK_EXPECTS(shape.size() == 3, "phi: expected shape (n_samples, n_sites, phys_dim)");
  return FeatureView<T>{ptr<const T>(p), shape[0], shape[1], shape[2]};
}

using Shapes = std::vector<std::vector<index_t>>;
using Ptrs = std::vector<std::uintptr_t>;
using Scales = py::array_t<double, py::array::c_style>;

template <class T>
void register_dtype(py::module_& m, const std::string& sfx) {
  m.def(("forward_workspace_bytes" + sfx).c_str(),
        [](const Ptrs& c, const Shapes& s, const Scales& sc, const std::string& bc, index_t os, index_t n) {
          return mc::forward_workspace_bytes<T>(device_chain<T>(c, s, sc, bc, os), n);
        });
  m.def(("forward" + sfx).c_str(),
        [](const Ptrs& c, const Shapes& s, const Scales& sc, const std::string& bc, index_t os, std::uintptr_t phi,
           const std::vector<index_t>& pshape, std::uintptr_t mant, std::uintptr_t lg, std::uintptr_t ws,
           std::size_t wsb, std::uintptr_t stream) {
          const auto ch = device_chain<T>(c, s, sc, bc, os);
          const auto f = device_features<T>(phi, pshape);
          py::gil_scoped_release nogil;
          mc::forward<T>(ch, f, ptr<T>(mant), ptr<double>(lg), ptr<void>(ws), wsb, stream);
        });
  m.def(("ntk_workspace_bytes" + sfx).c_str(),
        [](const Ptrs& c, const Shapes& s, const Scales& sc, const std::string& bc, index_t os, index_t n1,
           index_t n2) { return mc::ntk_workspace_bytes<T>(device_chain<T>(c, s, sc, bc, os), n1, n2); });
  m.def(("ntk" + sfx).c_str(),
        [](const Ptrs& c, const Shapes& s, const Scales& sc, const Scales& lr, const std::string& bc, index_t os,
           std::uintptr_t phi1, const std::vector<index_t>& s1, std::uintptr_t phi2, const std::vector<index_t>& s2,
           std::uintptr_t out, std::uintptr_t log1, std::uintptr_t log2, bool full, bool per_site, bool normalized,
           bool tf32, std::uintptr_t ws, std::size_t wsb, std::uintptr_t stream) {
          const auto ch = device_chain<T>(c, s, sc, bc, os);
          MPSNTK_EXPECTS(lr.ndim() == 1 && lr.shape(0) == ch.n_sites, "site_lr: need one per site");
          MPSNTK_EXPECTS(!tf32 || (std::is_same_v<T, float>), "precision='tf32' needs float32");
          const auto f1 = device_features<T>(phi1, s1);
          FeatureView<T> f2;
          if (phi2) f2 = device_features<T>(phi2, s2);
          NtkOptions opt;
          opt.full_outputs = full;
          opt.per_site = per_site;
          opt.normalized = normalized;
          opt.tf32 = tf32;
          const double* rates = lr.data();
          py::gil_scoped_release nogil;
          mc::ntk<T>(ch, f1, phi2 ? &f2 : nullptr, opt, rates, ptr<T>(out), ptr<double>(log1), ptr<double>(log2),
                     ptr<void>(ws), wsb, stream);
        });
  m.def(("grad_workspace_bytes" + sfx).c_str(),
        [](const Ptrs& c, const Shapes& s, const Scales& sc, const std::string& bc, index_t os, index_t n) {
          return mc::grad_workspace_bytes<T>(device_chain<T>(c, s, sc, bc, os), n);
        });
  m.def(("vjp" + sfx).c_str(),
        [](const Ptrs& c, const Shapes& s, const Scales& sc, const std::string& bc, index_t os, std::uintptr_t phi,
           const std::vector<index_t>& pshape, std::uintptr_t cot, const Ptrs& grads, std::uintptr_t grad_log,
           std::uintptr_t ws, std::size_t wsb, std::uintptr_t stream) {
          const auto ch = device_chain<T>(c, s, sc, bc, os);
          const auto f = device_features<T>(phi, pshape);
          MPSNTK_EXPECTS(static_cast<index_t>(grads.size()) == ch.n_sites, "grads: need one array per core");
          std::vector<T*> g;
          for (auto p : grads) g.push_back(ptr<T>(p));
          py::gil_scoped_release nogil;
          mc::vjp<T>(ch, f, ptr<const T>(cot), g.data(), ptr<double>(grad_log), ptr<void>(ws), wsb, stream);
        });
  m.def(("jvp" + sfx).c_str(),
        [](const Ptrs& c, const Shapes& s, const Scales& sc, const std::string& bc, index_t os, std::uintptr_t phi,
           const std::vector<index_t>& pshape, const Ptrs& tangents, std::uintptr_t out, std::uintptr_t out_log,
           std::uintptr_t ws, std::size_t wsb, std::uintptr_t stream) {
          const auto ch = device_chain<T>(c, s, sc, bc, os);
          const auto f = device_features<T>(phi, pshape);
          MPSNTK_EXPECTS(static_cast<index_t>(tangents.size()) == ch.n_sites, "tangents: need one array per core");
          std::vector<const T*> t;
          for (auto p : tangents) t.push_back(ptr<const T>(p));
          py::gil_scoped_release nogil;
          mc::jvp<T>(ch, f, t.data(), ptr<T>(out), ptr<double>(out_log), ptr<void>(ws), wsb, stream);
        });
  m.def(("ntk_vp" + sfx).c_str(),
        [](const Ptrs& c, const Shapes& s, const Scales& sc, const Scales& lr, const std::string& bc, index_t os,
           std::uintptr_t phi, const std::vector<index_t>& pshape, std::uintptr_t v, index_t k, std::uintptr_t out,
           std::uintptr_t out_log, std::uintptr_t ws, std::size_t wsb, std::uintptr_t stream) {
          const auto ch = device_chain<T>(c, s, sc, bc, os);
          MPSNTK_EXPECTS(lr.ndim() == 1 && lr.shape(0) == ch.n_sites, "site_lr: need one per site");
          const auto f = device_features<T>(phi, pshape);
          const double* rates = lr.data();
          py::gil_scoped_release nogil;
          mc::ntk_vp<T>(ch, f, rates, ptr<const T>(v), k, ptr<T>(out), ptr<double>(out_log), ptr<void>(ws), wsb,
                        stream);
        });
}

}  // namespace

PYBIND11_MODULE(MPSNTK_CUDA_MODULE, m) {
  m.doc() = "mpsntk CUDA engine: environments, fused NTK tiles, vjp/jvp/ntk_vp, forward";
#ifdef MPSNTK_CUDA_SIM
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
#endif
  register_dtype<float>(m, "_float32");
  register_dtype<double>(m, "_float64");
  m.def("device_count", &mc::device_count);
  m.def("device_unavailable_reason", &mc::device_unavailable_reason);
  m.def("float64_path", &mc::float64_path);
  m.def("build_info", []() {
    py::dict d;
    d["runtime"] = mc::runtime_version();
    d["architectures"] = mc::architectures();
    return d;
  });
  m.def("_set_error_class", [](py::object cls) { cuda_error_class() = std::move(cls); });
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const mc::CudaError& e) {
      PyErr_SetString(cuda_error_class().ptr(), e.what());
    }
  });
}
