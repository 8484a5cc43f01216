# A stand-in for LibTorch 2.0's package, to check that ltxmps refuses it at configure time.
set(Torch_FOUND TRUE)
set(TORCH_INSTALL_PREFIX "${CMAKE_CURRENT_LIST_DIR}")
add_library(torch INTERFACE IMPORTED)
