// NumPy <-> engine views for the _core bindings.  Arrays are taken as they are (C-contiguous,
// exact dtype, no conversion): the Python layer validates and converts explicitly first.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "mpsntk/engine.hpp"

namespace mpsntk::bind {

namespace py = pybind11;

template <class T>
using carray = py::array_t<T, py::array::c_style>;

template <class T>
carray<T> as_carray(const py::handle& obj, const std::string& name) {
  if (!carray<T>::check_(obj))
    throw py::type_error("mpsntk: " + name + " must be a C-contiguous " +
                         std::string(sizeof(T) == 8 ? "float64" : "float32") + " array");
  return py::reinterpret_borrow<carray<T>>(obj);
}

template <class T>
T* writable(carray<T>& a, const std::string& name, py::ssize_t size) {
  if (!a.writeable()) throw py::value_error("mpsntk: " + name + " is read-only");
  if (a.size() != size)
    throw py::value_error("mpsntk: " + name + " has " + std::to_string(a.size()) + " elements, expected " +
                          std::to_string(size));
  return a.mutable_data();
}

/// An MPS view plus the NumPy arrays that keep its memory alive.
template <class T>
struct Chain {
  ChainView<T> view;
  std::vector<carray<T>> keep;
};

template <class T>
Chain<T> make_chain(const py::list& cores, const carray<double>& scales, const std::string& boundary,
                    index_t output_site) {
  Chain<T> c;
  std::vector<const T*> ptrs;
  std::vector<std::vector<index_t>> shapes;
  for (std::size_t j = 0; j < cores.size(); ++j) {
    carray<T> a = as_carray<T>(cores[j], "cores[" + std::to_string(j) + "]");
    ptrs.push_back(a.data());
    shapes.emplace_back(a.shape(), a.shape() + a.ndim());
    c.keep.push_back(std::move(a));
  }
  MPSNTK_EXPECTS(scales.ndim() == 1, "scales: need one per site");
  c.view = mpsntk::make_chain<T>(ptrs, shapes, std::vector<double>(scales.data(), scales.data() + scales.size()),
                                 boundary, output_site);
  return c;
}

template <class T>
FeatureView<T> make_features(const carray<T>& phi, const std::string& name) {
  MPSNTK_EXPECTS(phi.ndim() == 3, name + ": expected shape (n_samples, n_sites, phys_dim)");
  return FeatureView<T>{phi.data(), phi.shape(0), phi.shape(1), phi.shape(2)};
}

}  // namespace mpsntk::bind
