// The CUDA engine's Python binding, shared by the _cuda module (cuda_module.cpp) and the
// simulator's _cuda_sim (cuda/sim/module.cpp): every entry point of mpsntk/cuda/engine.hpp with
// named, keyword-only arguments and typed objects -- a Chain, a prepared Batch, and arrays read
// through __cuda_array_interface__ whose dtype, shape and writability are checked here, in C++,
// before any pointer reaches the engine.  The Python layer (mpsntk/_engine.py) allocates every
// output, batch and workspace with CuPy, so CuPy's memory pool owns them.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "mpsntk/cuda/engine.hpp"
#include "mpsntk/factor_layout.hpp"

namespace mpsntk::cuda_bind {

namespace py = pybind11;
namespace mc = mpsntk::cuda;

/// Device arrays as the engine sees them: __cuda_array_interface__, or on the simulator (whose
/// "device" memory is host memory) also NumPy's __array_interface__.
struct Arrays {
  bool host_arrays = false;

  struct View {
    std::uintptr_t ptr = 0;
    std::vector<index_t> shape;
    index_t size = 1;
  };

  /// The array @p obj (named @p name in errors) of element type @p typestr (e.g. "<f8"), C-contiguous,
  /// writable when @p write.
  View view(const py::handle& obj, const std::string& name, const std::string& typestr, bool write) const {
    py::object iface;
    if (py::hasattr(obj, "__cuda_array_interface__"))
      iface = obj.attr("__cuda_array_interface__");
    else if (host_arrays && py::hasattr(obj, "__array_interface__"))
      iface = obj.attr("__array_interface__");
    else
      throw py::type_error("mpsntk: " + name + " must be a CUDA array (with __cuda_array_interface__); got " +
                           std::string(py::str(py::type::of(obj).attr("__name__"))));
    const py::dict d = iface;
    View v;
    for (auto s : py::tuple(d["shape"])) v.shape.push_back(s.cast<index_t>()), v.size *= v.shape.back();
    const std::string ts = d["typestr"].cast<std::string>();
    if (ts != typestr) throw py::type_error("mpsntk: " + name + " must have typestr " + typestr + "; got " + ts);
    const py::tuple data = d["data"];
    v.ptr = data[0].cast<std::uintptr_t>();
    if (write && data[1].cast<bool>()) throw py::value_error("mpsntk: " + name + " is read-only");
    if (d.contains("strides") && !d["strides"].is_none()) {
      index_t expect = std::stoi(typestr.substr(2));
      const py::tuple strides = d["strides"];
      for (int i = static_cast<int>(v.shape.size()) - 1; i >= 0; --i) {
        if (v.shape[i] > 1 && strides[i].cast<index_t>() != expect)
          throw py::value_error("mpsntk: " + name + " must be C-contiguous");
        expect *= v.shape[i];
      }
    }
    return v;
  }

  template <class T>
  static std::string typestr() {
    return sizeof(T) == 8 ? "<f8" : "<f4";
  }

  /// A T array of exactly @p shape.
  template <class T>
  T* exact(const py::handle& obj, const std::string& name, const std::vector<index_t>& shape, bool write) const {
    const View v = view(obj, name, typestr<T>(), write);
    if (v.shape != shape) {
      std::string want, got;
      for (index_t s : shape) want += (want.empty() ? "" : ", ") + std::to_string(s);
      for (index_t s : v.shape) got += (got.empty() ? "" : ", ") + std::to_string(s);
      throw py::value_error("mpsntk: " + name + " must have shape (" + want + "); got (" + got + ")");
    }
    return reinterpret_cast<T*>(v.ptr);
  }

  /// An optional float64 array of @p shape (None: nullptr).
  double* optional_log(const py::object& obj, const std::string& name, const std::vector<index_t>& shape,
                       bool write) const {
    return obj.is_none() ? nullptr : exact<double>(obj, name, shape, write);
  }

  /// Device memory: a 1-D uint8 array.
  mc::Workspace memory(const py::handle& obj, const std::string& name) const {
    const View v = view(obj, name, "|u1", true);
    MPSNTK_EXPECTS(v.shape.size() == 1, name + ": expected a 1-D uint8 array");
    return mc::Workspace{reinterpret_cast<void*>(v.ptr), static_cast<std::size_t>(v.size)};
  }
};

/// A chain whose cores live on the device, and the arrays that hold them.
template <class T>
struct Chain {
  ChainView<T> view;
  py::list cores;
};

/// A prepared batch and the objects whose memory it uses (features, the batch's memory).
template <class T>
struct Batch {
  mc::Batch<T> batch;
  py::object phi, memory;
  std::size_t nbytes = 0;
};

template <class T>
Chain<T> make_chain(const Arrays& arrays, const py::list& cores, const py::array_t<double, py::array::c_style>& scales,
                    const std::string& boundary, index_t output_site) {
  std::vector<const T*> ptrs;
  std::vector<std::vector<index_t>> shapes;
  for (std::size_t j = 0; j < cores.size(); ++j) {
    const auto v = arrays.view(cores[j], "cores[" + std::to_string(j) + "]", Arrays::typestr<T>(), false);
    ptrs.push_back(reinterpret_cast<const T*>(v.ptr));
    shapes.push_back(v.shape);
  }
  MPSNTK_EXPECTS(scales.ndim() == 1, "scales: need one per site");
  return Chain<T>{mpsntk::make_chain<T>(ptrs, shapes, std::vector<double>(scales.data(), scales.data() + scales.size()),
                                        boundary, output_site),
                  cores};
}

template <class T>
FeatureView<T> features(const Arrays& arrays, const py::handle& phi, const std::string& name) {
  const auto v = arrays.view(phi, name, Arrays::typestr<T>(), false);
  MPSNTK_EXPECTS(v.shape.size() == 3, name + ": expected shape (n_samples, n_sites, phys_dim)");
  return FeatureView<T>{reinterpret_cast<const T*>(v.ptr), v.shape[0], v.shape[1], v.shape[2]};
}

/// Workspace of at least @p need bytes.
inline mc::Workspace workspace(const Arrays& arrays, const py::handle& obj, std::size_t need) {
  const mc::Workspace w = arrays.memory(obj, "workspace");
  MPSNTK_EXPECTS(w.bytes >= need,
                 "workspace: " + std::to_string(w.bytes) + " bytes, the call needs " + std::to_string(need));
  return w;
}

/// Host site rates, one per site.
inline const double* site_rates(const py::array_t<double, py::array::c_style>& lr, index_t n_sites) {
  MPSNTK_EXPECTS(lr.ndim() == 1 && lr.shape(0) == n_sites, "site_lr: need one per site");
  return lr.data();
}

/// Arrays shaped like the cores (grads, tangents).
template <class T>
std::vector<T*> core_like(const Arrays& arrays, const ChainView<T>& ch, const py::list& list, const std::string& name,
                          bool write) {
  MPSNTK_EXPECTS(static_cast<index_t>(list.size()) == ch.n_sites, name + ": need one array per core");
  std::vector<T*> out;
  for (index_t j = 0; j < ch.n_sites; ++j) {
    const std::string nj = name + "[" + std::to_string(j) + "]";
    const auto v = arrays.view(list[j], nj, Arrays::typestr<T>(), write);
    MPSNTK_EXPECTS(v.size == ch.core_size(j), nj + ": expected " + std::to_string(ch.core_size(j)) +
                                                  " elements (the shape of cores[" + std::to_string(j) + "])");
    out.push_back(reinterpret_cast<T*>(v.ptr));
  }
  return out;
}

using Rates = py::array_t<double, py::array::c_style>;

template <class T>
void register_dtype(py::module_& m, const Arrays arrays, const std::string& sfx) {
  using C = Chain<T>;
  using B = Batch<T>;
  // module_local: _cuda and _cuda_sim bind the same C++ types, each its own Python class
  py::class_<C>(m, ("Chain" + sfx).c_str(), "An MPS whose cores are device arrays (checked like the host's)",
                py::module_local())
      .def(py::init(
               [arrays](const py::list& cores, const Rates& scales, const std::string& boundary, index_t output_site) {
                 return make_chain<T>(arrays, cores, scales, boundary, output_site);
               }),
           py::kw_only(), py::arg("cores"), py::arg("scales"), py::arg("boundary"), py::arg("output_site"))
      .def_property_readonly("n_sites", [](const C& c) { return c.view.n_sites; });
  py::class_<B>(m, ("Batch" + sfx).c_str(), "A batch prepared on the device (mpsntk/cuda/engine.hpp)",
                py::module_local())
      .def_property_readonly("n_samples", [](const B& b) { return b.batch.phi.n_samples; })
      .def_property_readonly("nbytes", [](const B& b) { return b.nbytes; })
      .def(
          "forward",
          [arrays](const B& b, const py::object& mantissa, const py::object& log_scale, std::uintptr_t stream) {
            const std::vector<index_t> shape{b.batch.phi.n_samples, b.batch.chain.n_outputs};
            T* mant = arrays.exact<T>(mantissa, "mantissa", shape, true);
            double* lg = arrays.exact<double>(log_scale, "log_scale", shape, true);
            py::gil_scoped_release nogil;
            mc::forward<T>(b.batch, mant, lg, stream);
          },
          py::kw_only(), py::arg("mantissa"), py::arg("log_scale"), py::arg("stream"));

  m.def(
      "prepare_bytes", [](const C& c, index_t n) { return mc::prepare_bytes<T>(c.view, n); }, py::arg("chain"),
      py::kw_only(), py::arg("n_samples"));
  m.def(
      "prepare",
      [arrays](const C& c, const py::object& phi, const py::object& memory, std::uintptr_t stream) {
        const FeatureView<T> f = features<T>(arrays, phi, "phi");
        B b{{}, phi, memory, 0};
        const mc::Workspace w = arrays.memory(memory, "memory");
        b.nbytes = w.bytes;
        py::gil_scoped_release nogil;
        b.batch = mc::prepare<T>(c.view, f, w, stream);
        return b;
      },
      py::arg("chain"), py::kw_only(), py::arg("phi"), py::arg("memory"), py::arg("stream"));
  m.def(
      "forward_workspace_bytes", [](const C& c, index_t n) { return mc::forward_workspace_bytes<T>(c.view, n); },
      py::arg("chain"), py::kw_only(), py::arg("n_samples"));
  m.def(
      "forward",
      [arrays](const C& c, const py::object& phi, const py::object& mantissa, const py::object& log_scale,
               const py::object& ws, std::uintptr_t stream) {
        const FeatureView<T> f = features<T>(arrays, phi, "phi");
        check_features(c.view, f, "phi");
        const std::vector<index_t> shape{f.n_samples, c.view.n_outputs};
        T* mant = arrays.exact<T>(mantissa, "mantissa", shape, true);
        double* lg = arrays.exact<double>(log_scale, "log_scale", shape, true);
        const mc::Workspace w = workspace(arrays, ws, mc::forward_workspace_bytes<T>(c.view, f.n_samples));
        py::gil_scoped_release nogil;
        mc::forward<T>(c.view, f, mant, lg, w, stream);
      },
      py::arg("chain"), py::kw_only(), py::arg("phi"), py::arg("mantissa"), py::arg("log_scale"), py::arg("workspace"),
      py::arg("stream"));
  m.def(
      "ntk_workspace_bytes",
      [](const C& c, index_t n1, index_t n2) { return mc::ntk_workspace_bytes<T>(c.view, n1, n2); }, py::arg("chain"),
      py::kw_only(), py::arg("n1"), py::arg("n2"));
  m.def(
      "ntk",
      [arrays](const B& b1, const B* b2, const Rates& site_lr, const py::object& out, const py::object& log1,
               const py::object& log2, bool full, bool per_site, bool normalized, bool tf32, const py::object& ws,
               std::uintptr_t stream) {
        const ChainView<T>& ch = b1.batch.chain;
        if (b2) check_same_model(ch, b2->batch.chain);
        const index_t n1 = b1.batch.phi.n_samples, n2 = b2 ? b2->batch.phi.n_samples : n1;
        const NtkLayout layout(n1, n2, ch.n_outputs, full, per_site);
        const auto o = arrays.view(out, "out", Arrays::typestr<T>(), true);
        MPSNTK_EXPECTS(o.size == layout.size(ch.n_sites),
                       "out: expected " + std::to_string(layout.size(ch.n_sites)) + " elements for this NTK");
        double* l1 = arrays.exact<double>(log1, "log_scale1", {n1}, true);
        double* l2 = arrays.exact<double>(log2, "log_scale2", {n2}, true);
        NtkOptions opt;
        opt.full_outputs = full, opt.per_site = per_site, opt.normalized = normalized, opt.tf32 = tf32;
        const double* lr = site_rates(site_lr, ch.n_sites);
        const mc::Workspace w = workspace(arrays, ws, mc::ntk_workspace_bytes<T>(ch, n1, b2 ? n2 : 0));
        const mc::Batch<T>* other = b2 ? &b2->batch : nullptr;
        py::gil_scoped_release nogil;
        mc::ntk<T>(b1.batch, other, opt, lr, reinterpret_cast<T*>(o.ptr), l1, l2, w, stream);
      },
      py::arg("batch1"), py::arg("batch2").none(true), py::kw_only(), py::arg("site_lr"), py::arg("out"),
      py::arg("log_scale1"), py::arg("log_scale2"), py::arg("full_outputs"), py::arg("per_site"), py::arg("normalized"),
      py::arg("tf32"), py::arg("workspace"), py::arg("stream"));
  m.def(
      "product_workspace_bytes",
      [](const C& c, index_t n1, index_t n2) { return mc::product_workspace_bytes<T>(c.view, n1, n2); },
      py::arg("chain"), py::kw_only(), py::arg("n1"), py::arg("n2") = 0);
  m.def(
      "vjp",
      [arrays](const B& b, const py::object& cot, const py::list& grads, const py::object& grad_log,
               const py::object& ws, std::uintptr_t stream) {
        const ChainView<T>& ch = b.batch.chain;
        const index_t n = b.batch.phi.n_samples;
        const T* c = arrays.exact<T>(cot, "cotangent", {n, ch.n_outputs}, false);
        std::vector<T*> g = core_like<T>(arrays, ch, grads, "grads", true);
        double* gl = arrays.optional_log(grad_log, "grad_log", {ch.n_sites}, true);
        const mc::Workspace w = workspace(arrays, ws, mc::product_workspace_bytes<T>(ch, n, 0));
        py::gil_scoped_release nogil;
        mc::vjp<T>(b.batch, c, g.data(), gl, w, stream);
      },
      py::arg("batch"), py::kw_only(), py::arg("cotangent"), py::arg("grads"), py::arg("grad_log") = py::none(),
      py::arg("workspace"), py::arg("stream"));
  m.def(
      "jvp",
      [arrays](const B& b, const py::list& tangents, const py::object& out, const py::object& tangent_log,
               const py::object& out_log, const py::object& ws, std::uintptr_t stream) {
        const ChainView<T>& ch = b.batch.chain;
        const index_t n = b.batch.phi.n_samples;
        const std::vector<T*> t = core_like<T>(arrays, ch, tangents, "tangents", false);
        std::vector<const T*> tc(t.begin(), t.end());
        T* o = arrays.exact<T>(out, "out", {n, ch.n_outputs}, true);
        const double* tl = arrays.optional_log(tangent_log, "tangent_log", {ch.n_sites}, false);
        double* ol = arrays.optional_log(out_log, "out_log", {n}, true);
        const mc::Workspace w = workspace(arrays, ws, mc::product_workspace_bytes<T>(ch, n, 0));
        py::gil_scoped_release nogil;
        mc::jvp<T>(b.batch, tc.data(), tl, o, ol, w, stream);
      },
      py::arg("batch"), py::kw_only(), py::arg("tangents"), py::arg("out"), py::arg("tangent_log") = py::none(),
      py::arg("out_log") = py::none(), py::arg("workspace"), py::arg("stream"));
  m.def(
      "ntk_vp",
      [arrays](const B& b1, const B* b2, const Rates& site_lr, const py::object& v, const py::object& out,
               const py::object& out_log, const py::object& ws, std::uintptr_t stream) {
        const ChainView<T>& ch = b1.batch.chain;
        if (b2) check_same_model(ch, b2->batch.chain);
        const index_t n1 = b1.batch.phi.n_samples, n2 = b2 ? b2->batch.phi.n_samples : n1;
        const auto vv = arrays.view(v, "v", Arrays::typestr<T>(), false);
        MPSNTK_EXPECTS(vv.shape.size() == 3 && vv.shape[0] == n2 && vv.shape[1] == ch.n_outputs && vv.shape[2] >= 1,
                       "v: expected shape (n_samples2, n_outputs, k)");
        const index_t k = vv.shape[2];
        T* o = arrays.exact<T>(out, "out", {n1, ch.n_outputs, k}, true);
        double* ol = arrays.optional_log(out_log, "out_log", {n1, k}, true);
        const double* lr = site_rates(site_lr, ch.n_sites);
        const mc::Workspace w = workspace(arrays, ws, mc::product_workspace_bytes<T>(ch, n1, b2 ? n2 : 0));
        const mc::Batch<T>* other = b2 ? &b2->batch : nullptr;
        py::gil_scoped_release nogil;
        mc::ntk_vp<T>(b1.batch, other, lr, reinterpret_cast<const T*>(vv.ptr), k, o, ol, w, stream);
      },
      py::arg("batch1"), py::arg("batch2").none(true), py::kw_only(), py::arg("site_lr"), py::arg("v"), py::arg("out"),
      py::arg("out_log") = py::none(), py::arg("workspace"), py::arg("stream"));
}

inline py::object& error_class() {
  static py::object cls = py::reinterpret_borrow<py::object>(PyExc_RuntimeError);
  return cls;
}

/// The engine's entry points and facts of the build; @p host_arrays: the simulator's "device"
/// arrays may be NumPy arrays.
inline void register_engine(py::module_& m, bool host_arrays) {
  const Arrays arrays{host_arrays};
  register_dtype<float>(m, arrays, "_float32");
  register_dtype<double>(m, arrays, "_float64");
  m.def("device_count", &mc::device_count);
  m.def("device_unavailable_reason", &mc::device_unavailable_reason);
  m.def("float64_path", &mc::float64_path);
  m.def("build_info", []() {
    py::dict d;
    d["runtime"] = mc::runtime_version();
    d["architectures"] = mc::architectures();
    return d;
  });
  m.def("_set_error_class", [](py::object cls) { error_class() = std::move(cls); });
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const mc::CudaError& e) {
      PyErr_SetString(error_class().ptr(), e.what());
    }
  });
}

}  // namespace mpsntk::cuda_bind
