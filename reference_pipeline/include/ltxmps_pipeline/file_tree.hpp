#pragma once
// Recursive removal and copy of folders without std::filesystem::remove_all / recursive copy.
//
// Note [No std::filesystem::remove_all]
// The CUDA build of LibTorch 2.11 (the pip wheel's libtorch.so) exports its own copy of
// `std::filesystem::remove_all`, which interposes libstdc++'s in every program linked with it and jumps to a
// null pointer: a SIGSEGV on the first call that has something to remove (seen on the H200 machine, 2026-11-25,
// cuda-gdb backtrace: `std::filesystem::remove_all(path const&) () from .../torch/lib/libtorch.so`). These
// helpers walk the tree with POSIX nftw / directory_iterator and remove or copy one entry at a time.

#include <ftw.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

namespace ltxmps::pipeline {

namespace detail {
inline int remove_entry(const char* path, const struct stat*, int, struct FTW*) { return std::remove(path) == 0 ? 0 : errno; }
}  // namespace detail

/// @brief Removes `path` and everything under it (a file, a folder or a symlink, never followed); a missing
///        path is not an error. Returns the error of the first entry that could not be removed.
inline std::error_code remove_tree(const std::filesystem::path& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT ? std::error_code{} : std::error_code(errno, std::generic_category());
  const int rc = ::nftw(path.c_str(), detail::remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  return rc == 0 ? std::error_code{} : std::error_code(rc > 0 ? rc : errno, std::generic_category());
}

/// @brief Copies the folder `from` to `to` (created), files byte for byte, recursively.
inline void copy_tree(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::filesystem::create_directories(to);
  for (const auto& entry : std::filesystem::directory_iterator(from)) {
    const auto target = to / entry.path().filename();
    if (entry.is_directory()) {
      copy_tree(entry.path(), target);
    } else {
      std::ifstream in(entry.path(), std::ios::binary);
      std::ofstream out(target, std::ios::binary | std::ios::trunc);
      out << in.rdbuf();
      if (!in || !out) throw std::filesystem::filesystem_error("copy_tree: cannot copy", entry.path(), target,
                                                                std::make_error_code(std::errc::io_error));
    }
  }
}

}  // namespace ltxmps::pipeline
