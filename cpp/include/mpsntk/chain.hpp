/// @file chain.hpp
/// @brief Non-owning views of an MPS (the chain of cores) and of a batch of local features, their
/// construction from the shapes of the cores, and the checks every entry point of both engines
/// (host and CUDA) makes before it reads a byte.
#pragma once

#include <string>
#include <vector>

#include "mpsntk/common.hpp"

namespace mpsntk {

enum class Boundary { open, periodic };

/// @brief A matrix product state as seen by the engine (non-owning).
///
/// Core j is C-contiguous with shape (phys_dim, bond[j], bond[j+1]); the output core
/// (index output_site, if >= 0) has shape (n_outputs, phys_dim, bond[c], bond[c+1]).
/// The effective tensor is scales[j] * core[j]; the trainable parameters are the core entries.
template <class T>
struct ChainView {
  index_t n_sites = 0;
  index_t phys_dim = 0;
  index_t n_outputs = 1;
  index_t output_site = -1;  ///< -1: scalar output
  Boundary boundary = Boundary::open;
  std::vector<index_t> bond;    ///< n_sites + 1 bond dimensions D_0..D_N
  std::vector<const T*> cores;  ///< n_sites pointers
  std::vector<double> scales;   ///< c_j, A_j = c_j W_j

  /// @brief Number of outputs attached to left environments after site j / right ones before.
  index_t left_mult(index_t slot) const { return output_site >= 0 && slot > output_site ? n_outputs : 1; }
  index_t right_mult(index_t slot) const { return output_site >= 0 && slot <= output_site ? n_outputs : 1; }
  /// @brief Number of boundary channels: 1 for open chains, D_0 for periodic ones (trace).
  index_t channels() const { return boundary == Boundary::open ? 1 : bond[0]; }
  index_t core_size(index_t j) const { return (j == output_site ? n_outputs : 1) * phys_dim * bond[j] * bond[j + 1]; }
  /// @brief Number of trainable parameters (entries of all cores).
  index_t n_params() const {
    index_t p = 0;
    for (index_t j = 0; j < n_sites; ++j) p += core_size(j);
    return p;
  }

  /// @brief Structural checks shared by every entry point.
  void validate() const {
    MPSNTK_EXPECTS(n_sites >= 1, "cores: need at least one site");
    MPSNTK_EXPECTS(static_cast<index_t>(cores.size()) == n_sites, "cores: wrong number of cores");
    MPSNTK_EXPECTS(static_cast<index_t>(bond.size()) == n_sites + 1, "bond dimensions: wrong length");
    MPSNTK_EXPECTS(static_cast<index_t>(scales.size()) == n_sites, "scales: wrong length");
    MPSNTK_EXPECTS(phys_dim >= 1, "phys_dim must be >= 1");
    MPSNTK_EXPECTS(n_outputs >= 1, "n_outputs must be >= 1");
    MPSNTK_EXPECTS(output_site >= -1 && output_site < n_sites, "output_site out of range");
    for (index_t j = 0; j <= n_sites; ++j) MPSNTK_EXPECTS(bond[j] >= 1, "bond dimensions must be >= 1");
    if (boundary == Boundary::open)
      MPSNTK_EXPECTS(bond[0] == 1 && bond[n_sites] == 1, "open boundary needs D_0 = D_N = 1");
    else
      MPSNTK_EXPECTS(bond[0] == bond[n_sites] && n_sites >= 2, "periodic boundary needs D_0 = D_N and n_sites >= 2");
  }

  /// @brief Whether @p other is a chain of the same structure and scales (e.g. a step, or the
  /// model another batch was prepared for).
  bool same_structure(const ChainView& other) const {
    return n_sites == other.n_sites && phys_dim == other.phys_dim && n_outputs == other.n_outputs &&
           output_site == other.output_site && boundary == other.boundary && bond == other.bond &&
           scales == other.scales;
  }
};

/// @brief Local features phi, C-contiguous (n_samples, n_sites, phys_dim).
template <class T>
struct FeatureView {
  const T* data = nullptr;
  index_t n_samples = 0;
  index_t n_sites = 0;
  index_t phys_dim = 0;
  const T* at(index_t x, index_t j) const { return data + (x * n_sites + j) * phys_dim; }
};

/// @brief A chain from its cores' shapes: (phys_dim, D_j, D_{j+1}), or (n_outputs, phys_dim, D_j,
/// D_{j+1}) at @p output_site (-1: none).  Both bindings build their chains here, from NumPy
/// arrays or from device arrays.
/// @throws std::invalid_argument naming the core whose shape does not fit the chain.
template <class T>
ChainView<T> make_chain(const std::vector<const T*>& cores, const std::vector<std::vector<index_t>>& shapes,
                        const std::vector<double>& scales, const std::string& boundary, index_t output_site) {
  ChainView<T> v;
  v.n_sites = static_cast<index_t>(cores.size());
  MPSNTK_EXPECTS(v.n_sites >= 1, "cores: need at least one core");
  MPSNTK_EXPECTS(shapes.size() == cores.size(), "cores: need one shape per core");
  MPSNTK_EXPECTS(boundary == "open" || boundary == "periodic", "boundary must be 'open' or 'periodic'");
  MPSNTK_EXPECTS(static_cast<index_t>(scales.size()) == v.n_sites, "scales: need one per site");
  MPSNTK_EXPECTS(output_site >= -1 && output_site < v.n_sites, "output_site out of range");
  v.boundary = boundary == "open" ? Boundary::open : Boundary::periodic;
  v.output_site = output_site;
  for (index_t j = 0; j < v.n_sites; ++j) {
    const std::string name = "cores[" + std::to_string(j) + "]";
    const auto& s = shapes[j];
    const bool label = j == output_site;
    MPSNTK_EXPECTS(s.size() == (label ? 4u : 3u),
                   name + (label ? ": expected shape (n_outputs, phys_dim, D_left, D_right)"
                                 : ": expected shape (phys_dim, D_left, D_right)"));
    const std::size_t o = label ? 1 : 0;
    if (label) v.n_outputs = s[0];
    if (j == 0) v.phys_dim = s[o], v.bond.push_back(s[o + 1]);
    MPSNTK_EXPECTS(s[o] == v.phys_dim, name + ": phys_dim differs from cores[0]");
    MPSNTK_EXPECTS(s[o + 1] == v.bond.back(), name + ": left bond does not match the previous core");
    v.bond.push_back(s[o + 2]);
  }
  v.cores = cores;
  v.scales = scales;
  v.validate();
  return v;
}

/// @brief The chain's checks, then those of features for it: at least one sample, the chain's
/// site count and phys_dim.  Every routine of both engines starts here.
/// @throws std::invalid_argument naming @p name.
template <class T>
void check_features(const ChainView<T>& ch, const FeatureView<T>& phi, const std::string& name) {
  ch.validate();
  MPSNTK_EXPECTS(phi.n_samples >= 1, name + ": need at least one sample");
  MPSNTK_EXPECTS(phi.n_sites == ch.n_sites, name + ": n_sites = " + std::to_string(phi.n_sites) +
                                                " does not match the MPS (" + std::to_string(ch.n_sites) + " sites)");
  MPSNTK_EXPECTS(phi.phys_dim == ch.phys_dim, name + ": phys_dim = " + std::to_string(phi.phys_dim) +
                                                  " does not match the MPS (" + std::to_string(ch.phys_dim) + ")");
}

/// @brief The batches of one product must be prepared for the same model: the same structure,
/// scales and cores.
/// @throws std::invalid_argument otherwise.
template <class T>
void check_same_model(const ChainView<T>& a, const ChainView<T>& b) {
  MPSNTK_EXPECTS(a.same_structure(b) && a.cores == b.cores,
                 "batches: prepared for different models (every batch of a product must be prepared for the "
                 "same MPS)");
}

}  // namespace mpsntk
