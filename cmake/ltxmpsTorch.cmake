# Finds LibTorch, enforces the version floor and tells whether it was built with CUDA.
# Shared by the project and by the installed ltxmpsConfig.cmake.
macro(ltxmps_find_torch)
  if(NOT DEFINED LTXMPS_MIN_TORCH_VERSION)
    set(LTXMPS_MIN_TORCH_VERSION 2.1)
  endif()
  if(NOT Torch_FOUND)
    find_package(Torch QUIET)
    if(NOT Torch_FOUND)
      message(FATAL_ERROR
        "ltxmps: LibTorch was not found. Point CMAKE_PREFIX_PATH at it, e.g. "
        "-DCMAKE_PREFIX_PATH=\"$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')\"")
    endif()
  endif()
  if(Torch_VERSION VERSION_LESS LTXMPS_MIN_TORCH_VERSION)
    message(FATAL_ERROR
      "ltxmps requires LibTorch >= ${LTXMPS_MIN_TORCH_VERSION}, but the LibTorch found at "
      "${TORCH_INSTALL_PREFIX} is version ${Torch_VERSION}")
  endif()
  if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES)
    set(LTXMPS_TORCH_HAS_CUDA ON)
  else()
    set(LTXMPS_TORCH_HAS_CUDA OFF)
  endif()
endmacro()
