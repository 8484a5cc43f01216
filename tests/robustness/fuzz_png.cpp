// libFuzzer entry point for the PNG reader (built where the compiler is clang):
//   ./ltxmps_fuzz_png -max_len=4096 corpus/
// The reader opens files, so each input is written to a per-process temporary file first. Any outcome other
// than success or ltxmps::Error aborts, which libFuzzer reports as a crash.
#include "ltxmps/error.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <unistd.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::filesystem::path file =
      std::filesystem::temp_directory_path() / ("ltxmps_fuzz_" + std::to_string(::getpid()) + ".png");
  {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    ltxmps::pipeline::read_png(file);
  } catch (const ltxmps::Error&) {
    // Rejected input: the expected outcome for most fuzz inputs.
  } catch (...) {
    std::abort();
  }
  return 0;
}
