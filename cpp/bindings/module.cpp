// The _core extension: host C++ engine exposed to the Python layer (python/mpsntk).
#include <pybind11/stl.h>

#include <memory>

#include "convert.hpp"
#include "mpsntk/factor_layout.hpp"
#include "mpsntk/mma_tile.hpp"

namespace py = pybind11;
using namespace mpsntk;
using namespace mpsntk::bind;

namespace {

// The signal handler's exception (KeyboardInterrupt for Ctrl-C), kept from the interruption
// check until the abandoned engine call has unwound back to this thread.
thread_local std::unique_ptr<py::error_already_set> t_signal_error;

/// The engine's interruption check: runs Python's signal handlers (on the calling thread, with
/// the GIL taken back for the moment) and asks the engine to stop when one of them raised.
bool check_signals() {
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() == 0) return false;
  t_signal_error = std::make_unique<py::error_already_set>();  // takes the error indicator
  return true;
}

/// Run an engine call with the GIL released.  A call abandoned on a signal re-raises here the
/// exception of the signal's handler (KeyboardInterrupt for Ctrl-C).
template <class F>
auto without_gil(F&& call) -> decltype(call()) {
  try {
    py::gil_scoped_release nogil;
    return call();
  } catch (const Interrupted&) {
    if (!t_signal_error) {  // (not expected: the engine stops only when the check says so)
      PyErr_SetNone(PyExc_KeyboardInterrupt);
      throw py::error_already_set();
    }
    py::error_already_set error = std::move(*t_signal_error);
    t_signal_error.reset();
    throw error;
  } catch (const OutOfMemory&) {
    throw;  // MemoryError with the size
  } catch (const std::bad_alloc&) {
    PyErr_SetString(PyExc_MemoryError,
                    "mpsntk: out of memory: a small work array of the engine could not be allocated");
    throw py::error_already_set();
  }
}

template <class T>
py::tuple forward_py(const py::list& cores, const carray<double>& scales, const std::string& boundary,
                     index_t output_site, const carray<T>& phi) {
  auto ch = make_chain<T>(cores, scales, boundary, output_site);
  auto fv = make_features<T>(phi, "phi");
  carray<T> mant({fv.n_samples, ch.view.n_outputs});
  carray<double> lg({fv.n_samples, ch.view.n_outputs});
  T* m = mant.mutable_data();
  double* l = lg.mutable_data();
  without_gil([&] { forward<T>(ch.view, fv, m, l); });
  return py::make_tuple(mant, lg);
}

/// A prepared batch and the features it reads (kept alive with it).
template <class T>
struct PyBatch {
  Batch<T> batch;
  carray<T> phi;
};

template <class T>
PyBatch<T> prepare_py(const py::list& cores, const carray<double>& scales, const std::string& boundary,
                      index_t output_site, const carray<T>& phi, bool panels) {
  auto ch = make_chain<T>(cores, scales, boundary, output_site);
  const auto fv = make_features<T>(phi, "phi");
  PyBatch<T> b{{}, phi};
  b.batch = without_gil([&] { return prepare<T>(ch.view, fv, panels); });
  return b;
}

template <class T>
py::tuple batch_forward_py(const PyBatch<T>& b) {
  const index_t n = b.batch.n_samples(), C = b.batch.chain().n_outputs;
  carray<T> mant({n, C});
  carray<double> lg({n, C});
  forward<T>(b.batch, mant.mutable_data(), lg.mutable_data());
  return py::make_tuple(mant, lg);
}

inline py::tuple footprint(const Footprint& f) { return py::make_tuple(f.held, f.peak); }

/// The site rates of a product: one per site.
inline const double* rates(const carray<double>& site_lr, index_t n_sites) {
  MPSNTK_EXPECTS(site_lr.ndim() == 1 && site_lr.shape(0) == n_sites, "site_lr: need one per site");
  return site_lr.data();
}

template <class T>
bool ntk_py(const PyBatch<T>& b1, const PyBatch<T>* b2, const carray<double>& site_lr, carray<T> out,
            carray<double> log1, carray<double> log2, bool full_outputs, bool per_site, bool normalized, index_t tile) {
  const auto& ch = b1.batch.chain();
  const index_t n1 = b1.batch.n_samples(), n2 = b2 ? b2->batch.n_samples() : n1;
  const NtkLayout layout(n1, n2, ch.n_outputs, full_outputs, per_site);
  T* o = writable(out, "out", layout.size(ch.n_sites));
  double* l1 = writable(log1, "log_scale1", n1);
  double* l2 = writable(log2, "log_scale2", n2);
  NtkOptions opt;
  opt.full_outputs = full_outputs;
  opt.per_site = per_site;
  opt.normalized = normalized;
  opt.tile = tile;
  const double* lr = rates(site_lr, ch.n_sites);
  const Batch<T>* other = b2 ? &b2->batch : nullptr;
  return without_gil([&] { return ntk<T>(b1.batch, other, opt, lr, o, l1, l2); });
}

template <class T>
std::vector<T*> core_like_outputs(const ChainView<T>& ch, const py::list& arrays, const std::string& name,
                                  std::vector<carray<T>>& keep) {
  MPSNTK_EXPECTS(static_cast<index_t>(arrays.size()) == ch.n_sites, name + ": need one array per core");
  std::vector<T*> ptr;
  for (index_t j = 0; j < ch.n_sites; ++j) {
    keep.push_back(as_carray<T>(arrays[j], name + "[" + std::to_string(j) + "]"));
    ptr.push_back(writable(keep.back(), name + "[" + std::to_string(j) + "]", ch.core_size(j)));
  }
  return ptr;
}

/// An optional float64 array of @p size entries (None: not given), writable when @p write.
inline double* optional_log(const py::object& obj, const std::string& name, py::ssize_t size, carray<double>& keep,
                            bool write = true) {
  if (obj.is_none()) return nullptr;
  keep = as_carray<double>(obj, name);
  if (!write) {
    MPSNTK_EXPECTS(keep.size() == size, name + ": wrong size");
    return const_cast<double*>(keep.data());
  }
  return writable(keep, name, size);
}

template <class T>
void vjp_py(const PyBatch<T>& b, const carray<T>& cot, const py::list& grads, const py::object& grad_log) {
  const auto& ch = b.batch.chain();
  MPSNTK_EXPECTS(cot.size() == b.batch.n_samples() * ch.n_outputs, "cotangent: expected (n_samples, n_outputs)");
  std::vector<carray<T>> keep;
  auto g = core_like_outputs(ch, grads, "grads", keep);
  carray<double> keep_log;
  double* gl = optional_log(grad_log, "grad_log", ch.n_sites, keep_log);
  without_gil([&] { vjp<T>(b.batch, cot.data(), g.data(), gl); });
}

template <class T>
void jvp_py(const PyBatch<T>& b, const py::list& tangents, carray<T> out, const py::object& tangent_log,
            const py::object& out_log) {
  const auto& ch = b.batch.chain();
  std::vector<carray<T>> keep;
  std::vector<const T*> t;
  MPSNTK_EXPECTS(static_cast<index_t>(tangents.size()) == ch.n_sites, "tangents: need one array per core");
  for (index_t j = 0; j < ch.n_sites; ++j) {
    keep.push_back(as_carray<T>(tangents[j], "tangents[" + std::to_string(j) + "]"));
    MPSNTK_EXPECTS(keep.back().size() == ch.core_size(j), "tangents[" + std::to_string(j) + "]: wrong size");
    t.push_back(keep.back().data());
  }
  T* o = writable(out, "out", b.batch.n_samples() * ch.n_outputs);
  carray<double> keep_tlog, keep_log;
  const double* tl = optional_log(tangent_log, "tangent_log", ch.n_sites, keep_tlog, false);
  double* ol = optional_log(out_log, "out_log", b.batch.n_samples(), keep_log);
  without_gil([&] { jvp<T>(b.batch, t.data(), tl, o, ol); });
}

template <class T>
void ntk_vp_py(const PyBatch<T>& b1, const PyBatch<T>* b2, const carray<double>& site_lr, const carray<T>& v, index_t k,
               carray<T> out, const py::object& out_log) {
  const auto& ch = b1.batch.chain();
  const index_t n1 = b1.batch.n_samples(), n2 = b2 ? b2->batch.n_samples() : n1;
  MPSNTK_EXPECTS(k >= 1 && v.size() == n2 * ch.n_outputs * k, "v: expected (n_samples2, n_outputs, k)");
  T* o = writable(out, "out", n1 * ch.n_outputs * k);
  carray<double> keep_log;
  double* ol = optional_log(out_log, "out_log", n1 * k, keep_log);
  const double* lr = rates(site_lr, ch.n_sites);
  const Batch<T>* other = b2 ? &b2->batch : nullptr;
  without_gil([&] { ntk_vp<T>(b1.batch, other, lr, v.data(), k, o, ol); });
}

template <class T>
void jacobian_py(const PyBatch<T>& b, carray<T> out) {
  const auto& ch = b.batch.chain();
  T* o = writable(out, "out", b.batch.n_samples() * ch.n_outputs * ch.n_params());
  without_gil([&] { jacobian<T>(b.batch, o); });
}

template <class T>
double log_partition_py(const py::list& cores, const carray<double>& scales, const std::string& boundary,
                        const carray<double>& weights, const py::object& grads) {
  auto ch = make_chain<T>(cores, scales, boundary, -1);
  MPSNTK_EXPECTS(weights.ndim() == 1 && weights.shape(0) == ch.view.phys_dim, "weights: need one per state");
  std::vector<carray<T>> keep;
  std::vector<T*> g;
  if (!grads.is_none()) g = core_like_outputs(ch.view, grads.cast<py::list>(), "grads", keep);
  const double* w = weights.data();
  return without_gil([&] { return log_partition<T>(ch.view, w, g.empty() ? nullptr : g.data()); });
}

template <class T>
py::tuple doubled_right_py(const py::list& cores, const carray<double>& scales, const std::string& boundary,
                           const carray<double>& weights) {
  auto ch = make_chain<T>(cores, scales, boundary, -1);
  MPSNTK_EXPECTS(weights.ndim() == 1 && weights.shape(0) == ch.view.phys_dim, "weights: need one per state");
  std::vector<std::vector<double>> slots;
  std::vector<double> logs;
  without_gil([&] { doubled_right_environments<T>(ch.view, weights.data(), slots, logs); });
  const index_t h = ch.view.boundary == Boundary::open ? 1 : ch.view.bond[0] * ch.view.bond[0];
  py::list out;
  for (size_t j = 0; j < slots.size(); ++j) {
    const index_t D = ch.view.bond[j];
    carray<double> a({h, D, D});
    std::copy(slots[j].begin(), slots[j].end(), a.mutable_data());
    out.append(a);
  }
  return py::make_tuple(out, carray<double>(static_cast<py::ssize_t>(logs.size()), logs.data()));
}

template <class T>
py::tuple taylor_terms_py(const py::list& cores, const py::list& step, const carray<double>& scales,
                          const std::string& boundary, index_t output_site, const carray<T>& phi, index_t max_order,
                          bool remainder) {
  auto ch = make_chain<T>(cores, scales, boundary, output_site);
  auto st = make_chain<T>(step, scales, boundary, output_site);
  const auto fv = make_features<T>(phi, "phi");
  MPSNTK_EXPECTS(max_order >= 0 && max_order <= ch.view.n_sites, "max_order must lie in 0..n_sites");
  const index_t rows = max_order + 1 + (remainder ? 1 : 0);
  carray<T> mant({rows, fv.n_samples, ch.view.n_outputs});
  carray<double> lg({rows, fv.n_samples, ch.view.n_outputs});
  T* m = mant.mutable_data();
  double* l = lg.mutable_data();
  without_gil([&] { taylor_terms<T>(ch.view, st.view, fv, max_order, remainder, m, l); });
  return py::make_tuple(mant, lg);
}

template <class T>
py::tuple order_kernels_py(const py::list& cores, const carray<double>& scales, const carray<double>& site_lr,
                           const std::string& boundary, index_t output_site, const carray<T>& phi1,
                           const py::object& phi2, const std::vector<index_t>& orders, carray<T> out) {
  auto ch = make_chain<T>(cores, scales, boundary, output_site);
  const auto f1 = make_features<T>(phi1, "phi1");
  carray<T> p2arr;
  FeatureView<T> f2;
  const bool sym = phi2.is_none();
  if (!sym) {
    p2arr = as_carray<T>(phi2, "phi2");
    f2 = make_features<T>(p2arr, "phi2");
  }
  MPSNTK_EXPECTS(site_lr.ndim() == 1 && site_lr.shape(0) == ch.view.n_sites, "site_lr: need one per site");
  const index_t n2 = sym ? f1.n_samples : f2.n_samples;
  T* o = writable(out, "out", static_cast<index_t>(orders.size()) * f1.n_samples * n2);
  const double* lr = site_lr.data();
  const RangeReport r = without_gil([&] { return order_kernels<T>(ch.view, f1, sym ? nullptr : &f2, lr, orders, o); });
  return py::make_tuple(r.overflow, r.underflow);
}

template <class T>
void register_dtype(py::module_& m) {
  // No array argument of type T here to steer overload resolution: one name per dtype.
  const std::string suffix = sizeof(T) == 8 ? "_float64" : "_float32";
  m.def(("log_partition" + suffix).c_str(), &log_partition_py<T>, py::arg("cores"), py::arg("scales"),
        py::arg("boundary"), py::arg("weights"), py::arg("grads"));
  m.def(("doubled_right_environments" + suffix).c_str(), &doubled_right_py<T>, py::arg("cores"), py::arg("scales"),
        py::arg("boundary"), py::arg("weights"));
  m.def("forward", &forward_py<T>, py::arg("cores"), py::arg("scales"), py::arg("boundary"), py::arg("output_site"),
        py::arg("phi").noconvert());
  const std::string batch = std::string("Batch") + suffix;
  py::class_<PyBatch<T>>(m, batch.c_str(),
                         "A prepared batch: the environments of its samples as per-site factors (engine.hpp)")
      .def_property_readonly("n_samples", [](const PyBatch<T>& b) { return b.batch.n_samples(); })
      .def_property_readonly("nbytes", [](const PyBatch<T>& b) { return b.batch.bytes(); })
      .def("forward", &batch_forward_py<T>);
  m.def("prepare", &prepare_py<T>, py::arg("cores"), py::arg("scales"), py::arg("boundary"), py::arg("output_site"),
        py::arg("phi").noconvert(), py::kw_only(), py::arg("panels") = true);
  m.def("ntk", &ntk_py<T>, py::arg("batch1"), py::arg("batch2").none(true), py::arg("site_lr"),
        py::arg("out").noconvert(), py::arg("log_scale1").noconvert(), py::arg("log_scale2").noconvert(),
        py::arg("full_outputs"), py::arg("per_site"), py::arg("normalized"), py::arg("tile"));
  m.def("vjp", &vjp_py<T>, py::arg("batch"), py::arg("cotangent").noconvert(), py::arg("grads"),
        py::arg("grad_log") = py::none());
  m.def("jvp", &jvp_py<T>, py::arg("batch"), py::arg("tangents"), py::arg("out").noconvert(),
        py::arg("tangent_log") = py::none(), py::arg("out_log") = py::none());
  m.def("ntk_vp", &ntk_vp_py<T>, py::arg("batch1"), py::arg("batch2").none(true), py::arg("site_lr"),
        py::arg("v").noconvert(), py::arg("k"), py::arg("out").noconvert(), py::arg("out_log") = py::none());
  m.def("jacobian", &jacobian_py<T>, py::arg("batch"), py::arg("out").noconvert());
  m.def(("prepare_footprint" + suffix).c_str(),
        [](const py::list& cores, const carray<double>& scales, const std::string& boundary, index_t output_site,
           index_t n) {
          return footprint(prepare_footprint<T>(make_chain<T>(cores, scales, boundary, output_site).view, n));
        },
        py::arg("cores"), py::arg("scales"), py::arg("boundary"), py::arg("output_site"), py::arg("n_samples"));
  m.def(("ntk_footprint" + suffix).c_str(),
        [](const py::list& cores, const carray<double>& scales, const std::string& boundary, index_t output_site,
           index_t n1, index_t n2, bool full_outputs, bool per_site, index_t tile) {
          NtkOptions opt;
          opt.full_outputs = full_outputs, opt.per_site = per_site, opt.tile = tile;
          return footprint(ntk_footprint<T>(make_chain<T>(cores, scales, boundary, output_site).view, n1, n2, opt));
        },
        py::arg("cores"), py::arg("scales"), py::arg("boundary"), py::arg("output_site"), py::arg("n1"), py::arg("n2"),
        py::arg("full_outputs"), py::arg("per_site"), py::arg("tile"));
  m.def(("product_footprint" + suffix).c_str(),
        [](const py::list& cores, const carray<double>& scales, const std::string& boundary, index_t output_site,
           index_t n) {
          return footprint(product_footprint<T>(make_chain<T>(cores, scales, boundary, output_site).view, n));
        },
        py::arg("cores"), py::arg("scales"), py::arg("boundary"), py::arg("output_site"), py::arg("n_samples"));
  m.def("taylor_terms", &taylor_terms_py<T>, py::arg("cores"), py::arg("step"), py::arg("scales"), py::arg("boundary"),
        py::arg("output_site"), py::arg("phi").noconvert(), py::arg("max_order"), py::arg("remainder"));
  m.def("order_kernels", &order_kernels_py<T>, py::arg("cores"), py::arg("scales"), py::arg("site_lr"),
        py::arg("boundary"), py::arg("output_site"), py::arg("phi1").noconvert(), py::arg("phi2"), py::arg("orders"),
        py::arg("out").noconvert());
}

py::dict build_info() {
  py::dict d;
  d["version"] = MPSNTK_VERSION;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  d["isas"] = available_isas();
  // Set by CMakeLists.txt: the flags common to every variant of the engine, and the variants.
  d["compile_flags"] = MPSNTK_COMPILE_FLAGS;
  std::vector<std::string> compiled;
  for (std::string rest = MPSNTK_COMPILED_ISAS;;) {
    const auto comma = rest.find(',');
    compiled.push_back(rest.substr(0, comma));
    if (comma == std::string::npos) break;
    rest.erase(0, comma + 1);
  }
  d["compiled_isas"] = compiled;
  return d;
}

/// Element offset of (row, k) in a staged chunk, for every row and depth.
template <class Layout>
carray<int> stage_map() {
  carray<int> st({tile::kBlockTile, tile::kStageDepth});
  auto S = st.mutable_unchecked<2>();
  for (int r = 0; r < tile::kBlockTile; ++r)
    for (int k = 0; k < tile::kStageDepth; ++k) S(r, k) = Layout::stage(r, k);
  return st;
}

/// The CUDA NTK kernel's thread-to-tile maps (mma_tile.hpp), as index arrays, so that the tests
/// can replay them against the PTX definition of each mma instruction.
template <class Mma>
py::dict mma_map() {
  using W = tile::WarpTile<Mma>;
  constexpr int warps = tile::kBlockThreads / tile::kWarpSize, lanes = tile::kWarpSize;
  carray<int> a({warps, lanes, W::MI, Mma::A_REGS, 2}), b({warps, lanes, W::NI, Mma::B_REGS, 2}),
      acc({warps, lanes, W::ACC, 2});
  auto A = a.mutable_unchecked<5>();
  auto B = b.mutable_unchecked<5>();
  auto C = acc.mutable_unchecked<4>();
  for (int w = 0; w < warps; ++w)
    for (int l = 0; l < lanes; ++l) {
      for (int mi = 0; mi < W::MI; ++mi)
        for (int r = 0; r < Mma::A_REGS; ++r)
          A(w, l, mi, r, 0) = W::a_row(w, l, mi, r), A(w, l, mi, r, 1) = Mma::a_k(l, r);
      for (int ni = 0; ni < W::NI; ++ni)
        for (int r = 0; r < Mma::B_REGS; ++r)
          B(w, l, ni, r, 0) = W::b_col(w, l, ni, r), B(w, l, ni, r, 1) = Mma::b_k(l, r);
      for (int e = 0; e < W::ACC; ++e) C(w, l, e, 0) = W::acc_row(w, l, e), C(w, l, e, 1) = W::acc_col(w, l, e);
    }
  py::dict d;
  d["m"] = Mma::M, d["n"] = Mma::N, d["k"] = Mma::K, d["mi"] = W::MI, d["ni"] = W::NI;
  d["a"] = a, d["b"] = b, d["acc"] = acc;
  d["stage"] = stage_map<W>(), d["element_bytes"] = static_cast<int>(sizeof(typename Mma::Element));
  carray<int> groups({tile::kBlockThreads, 4, 4}), slot({tile::kBlockThreads});
  auto G = groups.mutable_unchecked<3>();
  auto S = slot.mutable_unchecked<1>();
  for (int t = 0; t < tile::kBlockThreads; ++t) {
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) G(t, i, j) = W::group_e(i, j);
    S(t) = W::row_slot(t / tile::kWarpSize, t % tile::kWarpSize);
  }
  d["groups"] = groups, d["slot"] = slot;
  return d;
}

py::dict mma_tile_map(const std::string& kind) {
  if (kind == "f64") return mma_map<tile::MmaF64>();
  if (kind == "f64_sm90") return mma_map<tile::MmaF64Sm90>();
  if (kind == "tf32") return mma_map<tile::MmaTf32>();
  if (kind == "simt") {
    carray<int> acc({tile::kBlockThreads, tile::SimtTile::ACC, 2});
    auto C = acc.mutable_unchecked<3>();
    for (int t = 0; t < tile::kBlockThreads; ++t)
      for (int e = 0; e < tile::SimtTile::ACC; ++e)
        C(t, e, 0) = tile::SimtTile::acc_row(t, e), C(t, e, 1) = tile::SimtTile::acc_col(t, e);
    py::dict d;
    d["acc"] = acc;
    d["stage"] = stage_map<tile::SimtTile>();
    carray<int> groups({tile::kBlockThreads, 4, 4}), slot({tile::kBlockThreads});
    auto G = groups.mutable_unchecked<3>();
    auto S = slot.mutable_unchecked<1>();
    for (int t = 0; t < tile::kBlockThreads; ++t) {
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) G(t, i, j) = tile::SimtTile::group_e(i, j);
      S(t) = tile::SimtTile::row_slot(t);
    }
    d["groups"] = groups, d["slot"] = slot;
    return d;
  }
  throw py::value_error("kind must be 'f64', 'f64_sm90', 'tf32' or 'simt'; got '" + kind + "'");
}

/// The NTK kernel's block -> tile order (tile::grouped_tile) as a (blocks, 2) array of (ib, kb).
carray<index_t> tile_order(index_t t1, index_t t2, bool upper) {
  if (t1 < 1 || t2 < 1 || (upper && t1 != t2))
    throw py::value_error("tile_order: need t1, t2 >= 1 and t1 == t2 when upper");
  const index_t blocks = upper ? t1 * (t1 + 1) / 2 : t1 * t2;
  carray<index_t> out({blocks, index_t(2)});
  auto O = out.mutable_unchecked<2>();
  for (index_t b = 0; b < blocks; ++b) tile::grouped_tile(b, t1, t2, upper, O(b, 0), O(b, 1));
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "mpsntk host engine (C++): environments, structured NTK, vjp/jvp, forward";
  register_dtype<float>(m);
  register_dtype<double>(m);
  m.def("build_info", &build_info);
  m.def("available_isas", &available_isas);
  m.def("current_isa", &current_isa);
  m.def("set_isa", &set_isa, py::arg("name"));
  m.def("isa_request_problem", [] {
    const auto p = isa_request_problem();
    return py::make_tuple(p.first == IsaProblem::none      ? ""
                          : p.first == IsaProblem::unknown ? "unknown"
                                                           : "unsupported",
                          p.second);
  });
  m.def("mma_tile_map", &mma_tile_map, py::arg("kind"));
  m.def("tile_order", &tile_order, py::arg("t1"), py::arg("t2"), py::arg("upper"));
  m.def("get_num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n_threads"));
  m.def("forked_child", &forked_child);
  set_interrupt_check(&check_signals);
}
