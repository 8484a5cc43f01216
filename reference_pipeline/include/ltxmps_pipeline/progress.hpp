#pragma once
/// @file progress.hpp
/// @brief The progress report of every long stage (text encoding, VAE encode, denoising steps, VAE decode,
///        attention-map layers): one callback type, so that one progress line can show them all.

#include <cstdint>
#include <functional>
#include <string>

namespace ltxmps::pipeline {

/// @brief `done` of `total` units of `stage` are finished ("denoise": steps; "effects": layers; the
///        single-shot stages "text encoder", "vae encode", "vae decode" report 0 of 1 and 1 of 1).
struct Progress {
  std::string stage;   ///< "text encoder", "vae encode", "denoise", "vae decode", "effects"
  int64_t done = 0;    ///< units finished
  int64_t total = 0;   ///< units of the stage
};

/// @brief Receives progress; may be empty. Called on the thread that runs the pipeline.
using ProgressCallback = std::function<void(const Progress&)>;

/// @brief Reports `progress` when the callback is set.
inline void report(const ProgressCallback& callback, const std::string& stage, int64_t done, int64_t total) {
  if (callback) callback(Progress{stage, done, total});
}

}  // namespace ltxmps::pipeline
