#pragma once
/// @file error.hpp
/// @brief The exception type of ltxmps and the check macro that raises it.

#include "ltxmps/version.hpp"

#include <c10/util/StringUtil.h>

#include <stdexcept>
#include <string>

namespace ltxmps {

/// @brief Thrown when a request cannot be met or an input is invalid.
///
/// Unlike `c10::Error`, `what()` carries only the message (no C++ stack trace), so a command-line
/// tool can show it to a user as it is. The message names the option, file or tensor at fault and
/// what was expected.
class Error : public std::runtime_error {
 public:
  /// @brief Creates an error with the full, user-facing message.
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace ltxmps

/// @brief Throws ltxmps::Error with the message built from the remaining arguments when `cond` is false.
///
/// The message arguments are streamed with `c10::str`, exactly like `TORCH_CHECK`, and are only
/// evaluated when the check fails.
#define LTXMPS_CHECK(cond, ...)                            \
  do {                                                     \
    if (!(cond)) {                                         \
      throw ::ltxmps::Error(::c10::str(__VA_ARGS__));      \
    }                                                      \
  } while (false)
