#pragma once
/// @file memory_estimate.hpp
/// @brief The memory a generation, removal or effects-mask request needs (weights, latents, activations), the
///        memory the plan's device has, and the refusal of a request that cannot fit, before any model loads.

#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <ltxmps/diagnostics.hpp>
#include <ltxmps/plan.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief What one request runs, in the units of the CLI (pixels, frames, tokens).
struct MemoryRequest {
  int64_t batch = 1;         ///< videos generated (or processed) together
  int64_t frames = 121;      ///< pixel frames of the video
  int64_t height = 512;      ///< pixels
  int64_t width = 768;       ///< pixels
  int64_t text_tokens = 128; ///< tokens per prompt (max_sequence_length)
  bool guidance = true;      ///< classifier-free guidance: the text encoder and the transformer see 2·batch rows
  bool encode_text = true;   ///< false when prompt embeddings come from a cache (no text encoder loaded)
  /// The text encoder is dropped after encoding (generation); removal keeps it loaded for later passes.
  bool release_text_encoder = true;
  /// Pixel frames the VAE encodes (0: none; 1: an image-to-video condition; `frames` for removal).
  int64_t encode_frames = 0;
  bool denoise = true;  ///< the denoising loop runs (false for the effects-mask command alone)
  bool decode = true;   ///< the VAE decodes the latents (false for the effects-mask command alone)
  /// Query rows per chunk of the effects pass (EffectsMaskOptions::query_chunk); empty: no effects pass.
  std::optional<int64_t> effects_query_chunk;

  /// @brief Throws ltxmps::Error naming the field when a size is not positive.
  void validate() const;
};

/// @brief One stage of the run: what it holds on the plan's device.
struct MemoryPhase {
  std::string name;          ///< "text encoder", "transformer loop", "vae decode", ...
  int64_t weights_bytes = 0; ///< weights resident on the device during the phase
  int64_t activation_bytes = 0;  ///< latents, activations, inputs and outputs of the phase
  /// @brief weights_bytes + activation_bytes.
  int64_t total_bytes() const { return weights_bytes + activation_bytes; }
};

/// @brief The estimate for one request (Note [Request memory estimate]).
struct MemoryEstimate {
  int64_t weights_bytes = 0;  ///< every component's weights in the plan's dtypes
  int64_t peak_bytes = 0;     ///< the largest phase total, on the plan's device
  std::string peak_phase;     ///< the name of that phase
  std::vector<MemoryPhase> phases;  ///< every phase that runs, in order
  /// Host memory that must hold the weights while they wait (CPU offload, streamed blocks); 0 when the device is
  /// the host.
  int64_t host_bytes = 0;
  /// What the user can change when the request does not fit ("lower --num-frames, ..., use --vae-tiling").
  std::string advice;
  /// @brief "about 12.3 GiB at peak (transformer loop: weights 3.9 GiB + activations 8.4 GiB); ..." one line.
  std::string describe() const;
};

/// @brief Memory a device or the host can give the request.
struct MemoryLimit {
  int64_t bytes = 0;  ///< available bytes
  std::string what;   ///< "cuda:0 (free device memory)", "the host (MemAvailable)"
};

/// @brief Estimates the memory of `request` on `plan` for a model with these configs, without loading it.
///        `text_encoder` is the T5 config (empty: no text encoder, as with a prompt cache). Every size is
///        overflow-checked: a request whose byte count does not fit int64 throws ltxmps::Error naming the size.
MemoryEstimate estimate_request_memory(const TransformerConfig& transformer, const VaeConfig& vae,
                                       const std::optional<T5Config>& text_encoder, const ltxmps::ExecutionPlan& plan,
                                       const MemoryRequest& request);

/// @brief The memory the request can use on `plan.device`: CUDA's free device memory (plus this process's cached
///        blocks), the host's available memory for the CPU and MPS (unified memory); empty for a device that
///        reports nothing (XPU).
std::optional<MemoryLimit> available_memory(const ltxmps::ExecutionPlan& plan);
/// @brief The host's available memory (Linux: MemAvailable of /proc/meminfo; macOS: free, inactive and purgeable
///        pages; elsewhere sysconf's available pages).
MemoryLimit available_host_memory();

/// @brief Throws ltxmps::Error "<request> needs about X GiB (peak in <phase>: weights A + activations B) but
///        <what> has Y GiB available; <advice>" when the peak exceeds `limit.bytes`. No margin is added: the
///        estimate carries its own (Note [Request memory estimate]).
void check_request_fits(const MemoryEstimate& estimate, const MemoryLimit& limit,
                        const std::string& request_description);
/// @brief Checks the peak against available_memory(plan) and, under CPU offload or with streamed blocks,
///        `host_bytes` against the host.
void check_request_fits(const MemoryEstimate& estimate, const ltxmps::ExecutionPlan& plan,
                        const std::string& request_description);

/// @brief A warning when the peak is above `fraction` of `limit` (but fits): the run may still fail on
///        fragmentation or on what other processes take meanwhile.
std::optional<ltxmps::Diagnostic> memory_warning(const MemoryEstimate& estimate, const MemoryLimit& limit,
                                                 double fraction = 0.8);

/// @brief The T5 config of a diffusers folder (`text_encoder/config.json`) without loading weights; empty when
///        the folder has no text encoder.
std::optional<T5Config> read_text_encoder_config(const std::filesystem::path& model_root);

/// @brief "12.3 GiB" (two significant decimals under 10 GiB, "512 MiB" under 1 GiB).
std::string format_bytes(int64_t bytes);

}  // namespace ltxmps::pipeline
