// The test runner's main() for Catch2 v2; with v3, Catch2::Catch2WithMain provides it.
#include "catch_compat.hpp"
#if !LTXMPS_CATCH_V3
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
int main(int argc, char* argv[]) { return Catch::Session().run(argc, argv); }
#endif
