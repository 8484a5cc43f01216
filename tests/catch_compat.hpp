#pragma once
// Catch2 v2 (Debian 12) and v3 (Debian 13, the GPU machine) behind one include.
// Use ltxmps_test::Contains(text) for substring matchers: v3 renamed Contains to ContainsSubstring.
#include <string>
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#define LTXMPS_CATCH_V3 1
namespace ltxmps_test {
inline auto Contains(const std::string& text) { return Catch::Matchers::ContainsSubstring(text); }
}  // namespace ltxmps_test
#else
#include <catch2/catch.hpp>
#define LTXMPS_CATCH_V3 0
namespace ltxmps_test {
inline auto Contains(const std::string& text) { return Catch::Matchers::Contains(text); }
}  // namespace ltxmps_test
#endif
