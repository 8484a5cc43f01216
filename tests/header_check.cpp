// Compiled as C++17 and as C++20 with -Wall -Wextra -Wpedantic -Werror: the public headers must stay
// warning-free in both (LibTorch 2.14 requires C++20).
#include <ltxmps/ltxmps.hpp>

int ltxmps_header_check() { return static_cast<int>(ltxmps::resolve(ltxmps::LoaderSettings{}, ltxmps::Capabilities::cpu_only()).diagnostics.size()); }
