/// @file chain.hpp
/// @brief Non-owning views of an MPS (the chain of cores) and of a batch of local features.
#pragma once

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

}  // namespace mpsntk
