/// @file common.hpp
/// @brief Shared definitions of the mpsntk C++ core: index type, error checks, host/device macro.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define MPSNTK_HD __host__ __device__ inline
#else
#define MPSNTK_HD inline
#endif

namespace mpsntk {

using index_t = std::int64_t;

/// @brief Throw std::invalid_argument (ValueError in Python) with @p msg unless @p cond holds.
#define MPSNTK_EXPECTS(cond, msg)                                              \
  do {                                                                         \
    if (!(cond)) throw std::invalid_argument(std::string("mpsntk: ") + (msg)); \
  } while (0)

/// @brief Library version string (kept in sync with pyproject.toml by the build).
#ifndef MPSNTK_VERSION
#define MPSNTK_VERSION "0.0.0"
#endif

}  // namespace mpsntk
