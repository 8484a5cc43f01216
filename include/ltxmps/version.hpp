#pragma once
/// @file version.hpp
/// @brief The ltxmps version and the LibTorch versions it accepts.

#include <torch/version.h>

// The project's only copy of its version: CMake reads these three lines (Note [One version number] in the
// top-level CMakeLists.txt), so keep each `#define LTXMPS_VERSION_X <number>` on one line.

/// @brief ltxmps major version.
#define LTXMPS_VERSION_MAJOR 0
/// @brief ltxmps minor version.
#define LTXMPS_VERSION_MINOR 1
/// @brief ltxmps patch version.
#define LTXMPS_VERSION_PATCH 0

#define LTXMPS_VERSION_STR_(x) #x
#define LTXMPS_VERSION_STR(x) LTXMPS_VERSION_STR_(x)
/// @brief The version as a string literal, "major.minor.patch".
#define LTXMPS_VERSION_STRING                                                                \
  LTXMPS_VERSION_STR(LTXMPS_VERSION_MAJOR) "." LTXMPS_VERSION_STR(LTXMPS_VERSION_MINOR) "." \
  LTXMPS_VERSION_STR(LTXMPS_VERSION_PATCH)

#if !defined(TORCH_VERSION_MAJOR) || !defined(TORCH_VERSION_MINOR)
#error "ltxmps: <torch/version.h> does not define TORCH_VERSION_MAJOR/MINOR; ltxmps requires LibTorch >= 2.1"
#elif TORCH_VERSION_MAJOR < 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR < 1)
#error "ltxmps requires LibTorch >= 2.1 (scaled_dot_product_attention with scale, torch/mps.h); this LibTorch is older"
#endif

/// @brief True when the LibTorch in use is at least `major.minor`.
#define LTXMPS_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace ltxmps {

/// @brief The ltxmps version as "major.minor.patch".
inline const char* version_string() noexcept { return LTXMPS_VERSION_STRING; }

}  // namespace ltxmps
