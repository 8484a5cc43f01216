// libFuzzer entry point for the safetensors reader (built with -DLTXMPS_FUZZ=ON and clang):
//   ./ltxmps_fuzz_safetensors -max_len=4096 corpus/
// The reader maps files, so each input is written to a per-process temporary file first. Any
// outcome other than success or ltxmps::Error aborts, which libFuzzer reports as a crash.
#include "ltxmps/error.hpp"
#include "ltxmps_pipeline/safetensors.hpp"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>

#include <unistd.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::filesystem::path file =
      std::filesystem::temp_directory_path() / ("ltxmps_fuzz_" + std::to_string(::getpid()) + ".safetensors");
  {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const auto st = ltxmps::pipeline::SafetensorsFile::open(file);
    for (const auto& t : st.tensors()) {
      st.load(t.name);
      st.load(t.name, at::TensorOptions().dtype(at::kFloat));
    }
  } catch (const ltxmps::Error&) {
    // Rejected input: the expected outcome for most fuzz inputs.
  } catch (...) {
    std::abort();
  }
  return 0;
}
