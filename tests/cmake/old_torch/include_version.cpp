#include <ltxmps/version.hpp>
int main() { return 0; }
