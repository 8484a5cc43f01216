#pragma once
// Catch2 v2 (Debian 12) and v3 (Debian 13, the GPU machine) behind one include.
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#define LTXMPS_CATCH_V3 1
#else
#include <catch2/catch.hpp>
#define LTXMPS_CATCH_V3 0
#endif
