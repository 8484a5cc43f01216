#pragma once
/// @file embedded_default.hpp
/// @brief The embedded default model of `ltxmps generate`: a small LTX-Video built in memory with deterministic
///        random weights, so the whole pipeline runs with no files (make_embedded_default_model() is declared in
///        model.hpp). Its videos are noise-like: the weights are random.
///
/// Sizes (the tiny pipeline configs of diffusers' LTX pipeline tests, `tests/pipelines/ltx/test_ltx.py` in the
/// diffusers repository, with the released models' compression):
/// - transformer: in/out 8 channels, 4 heads × 8, cross-attention 32, 2 layers, caption 32, patch 1×1;
/// - VAE: "090"-style (LTXVideoDownBlock3D), 8 latent channels, blocks of 16 channels, patch 4 and three
///   spatio-temporal scalings: 32× spatial and 8× temporal compression like LTX-Video 0.9.x, so the same size rules
///   hold (H, W multiples of 32, 8k+1 frames); a 64×64×9 video is a 2×2×2 latent;
/// - text encoder: T5 (d_model 32, 4 heads × 8, d_ff 64, 2 layers, relu) over a byte vocabulary (see below);
/// - scheduler: FlowMatchSchedulerConfig defaults.
/// Weights come from one CPU generator with a fixed seed: every weight matrix is normal with the variance of
/// PyTorch's default `nn.Linear`/`nn.Conv3d` initialisation (1 / (3 · fan_in)), biases are zero, norm weights one,
/// `scale_shift_table`s normal / sqrt(dim) (diffusers' init), embeddings standard normal, the VAE latent statistics
/// mean 0 / std 1. The model is the same on every run and every device (weights are drawn on the CPU, then moved).
///
/// Tokenizer stand-in: there is no SentencePiece model, so prompts are tokenized by their UTF-8 bytes: byte b is
/// id b + 3, then `</s>` (id 1), padded with `<pad>` (id 0) to the length asked for and truncated to leave room for
/// `</s>` (ids 0/1/2 are T5's pad/eos/unk). embedded_default_prompt_embeddings() runs this and the tiny T5 as
/// diffusers' `encode_prompt` does.

#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief The embedded default's component configs and the CLI's defaults for it.
struct EmbeddedDefault {
  static TransformerConfig transformer_config();  ///< the tiny transformer (sizes in the file comment)
  static VaeConfig vae_config();                  ///< the tiny "090"-style VAE with 32x / 8x compression
  static T5Config text_encoder_config();          ///< the tiny T5 over the byte vocabulary
  static constexpr uint64_t weight_seed = 20240101;  ///< seed of the weight generator
  static constexpr int64_t height = 64;              ///< the CLI's default height with this model
  static constexpr int64_t width = 64;               ///< the CLI's default width with this model
  static constexpr int64_t num_frames = 9;           ///< the CLI's default frame count with this model
  static constexpr int64_t num_inference_steps = 4;  ///< the CLI's default step count with this model
  static constexpr int64_t max_sequence_length = 32; ///< tokens per prompt (bytes + `</s>` + padding)
  static constexpr const char* prompt = "a red fox running through snow";  ///< the CLI's default prompt
};

/// @brief The byte tokenizer stand-in: ids `[B, max_length]` int64 and the mask `[B, max_length]` int64.
TokenizedPrompts embedded_default_tokenize(const std::vector<std::string>& prompts, int64_t max_length);

/// @brief Prompt embeddings of the embedded default (byte tokens + its tiny T5), as `encode_prompt` with
///        `encoder_attention_mask` (true: LTXConditionPipeline's masked T5 call). `negative_prompts`: empty for ""
///        each, one for all, or one per prompt. Throws when `model.text_encoder` is not loaded.
PromptEmbeddings embedded_default_prompt_embeddings(const LtxModel& model, const std::vector<std::string>& prompts,
                                                    const std::vector<std::string>& negative_prompts,
                                                    int64_t max_length = EmbeddedDefault::max_sequence_length,
                                                    bool encoder_attention_mask = false);

}  // namespace ltxmps::pipeline
