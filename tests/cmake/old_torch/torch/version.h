// Stand-in for LibTorch 2.0's <torch/version.h>: ltxmps/version.hpp must refuse it.
#pragma once
#define TORCH_VERSION_MAJOR 2
#define TORCH_VERSION_MINOR 0
#define TORCH_VERSION_PATCH 1
#define TORCH_VERSION "2.0.1"
