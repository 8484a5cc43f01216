#pragma once
// Shared by the robustness suite: a scratch folder per test, snapshots of files and folders (to assert that no
// input or existing output changed), running the `ltxmps` binary as a child process with a timeout (a hang is a
// failure, never a stuck suite), and tiny model folders written from C++ (random weights through each model's
// from_weights(), so their names and shapes are the loaders' own).
#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace robustness {

namespace fs = std::filesystem;

/// A fresh, empty folder under $LTXMPS_TEST_DATA/robustness (or the system temp folder).
fs::path fresh_dir(const std::string& name);

/// The bytes of a file ("" when absent).
std::string read_bytes(const fs::path& file);
void write_bytes(const fs::path& file, const std::string& bytes);

/// Every regular file under `root` (relative path -> bytes), or {"": <kind>} for a non-folder: equal snapshots
/// mean nothing was created, removed or changed.
std::map<std::string, std::string> snapshot(const fs::path& root);

/// Names under `dir` that look like temporaries (".partial", ".tmp-", ".ltxmps-probe").
std::vector<std::string> temporaries_in(const fs::path& dir);

struct Run {
  int code = -1;          ///< exit status, or -signal when killed by a signal
  bool timed_out = false;  ///< killed after the timeout: the command hung
  std::string out, err;
};

struct RunOptions {
  RunOptions(fs::path dir_ = {}, std::map<std::string, std::string> env_ = {}, double timeout = 60)
      : dir(std::move(dir_)), env(std::move(env_)), timeout_s(timeout) {}
  fs::path dir;                              ///< working folder
  std::map<std::string, std::string> env;    ///< set ("" value: unset) in the child
  double timeout_s = 60;
  /// Called repeatedly (every millisecond) while the child runs, with its pid; return true to stop calling.
  std::function<bool(int pid)> while_running;
};

/// Runs `ltxmps args...` (LTXMPS_CLI_PATH) and waits at most `timeout_s`.
Run run_cli(const std::vector<std::string>& args, const RunOptions& options);

// ---- tiny models

/// A diffusers transformer folder (config.json + diffusion_pytorch_model.safetensors) with random weights;
/// `poison` names a weight to fill with NaN.
nlohmann::json tiny_transformer_config();
void write_transformer(const fs::path& dir, const std::string& poison = "");
/// A diffusers VAE folder (the embedded default's config).
nlohmann::json tiny_vae_config();
void write_vae(const fs::path& dir, const std::string& poison = "");
/// A transformers T5 encoder folder (config.json + model.safetensors), vocabulary 400.
nlohmann::json tiny_t5_config();
void write_t5(const fs::path& dir, const std::string& poison = "");
/// The SentencePiece tokenizer folder the fixture trained ($LTXMPS_TEST_DATA/robustness/tokenizer).
fs::path tokenizer_dir();

/// Valid inputs of each forward command.
void write_transformer_inputs(const fs::path& file, float hidden_value = 0.5f);
void write_vae_encode_inputs(const fs::path& file, float value = 0.25f);
void write_vae_decode_inputs(const fs::path& file, float value = 0.25f);
void write_t5_inputs(const fs::path& file);

/// A minimal PNG (8-bit RGB) of `width` x `height` whose IHDR may declare other dimensions (CRC kept valid).
std::string png_bytes(uint32_t width, uint32_t height, uint32_t declared_width = 0, uint32_t declared_height = 0);

/// Creates a FIFO at `path` (nothing ever writes to it).
void make_fifo(const fs::path& path);

}  // namespace robustness
