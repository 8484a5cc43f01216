// What the C++ benchmarks share: the "--key value" command line with a --smoke preset and, for the transformer
// benches (transformer_bench.cpp, memory_bench.cpp, effects_bench.cpp), the TransformerConfig of the shape options,
// random weights made on the device and the inputs of one forward. Header-only so that each bench stays one file
// with its main().
#pragma once

#include "ltxmps_pipeline/transformer.hpp"

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ltxmps::bench {

/// Option name (without "--") -> value, as typed on the command line.
using Options = std::map<std::string, std::string>;

/// An argument the bench does not take; transformer_bench and effects_bench exit with status 2 on it.
struct BadArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// @brief `defaults` overridden by "--key value" pairs; `--smoke` applies `smoke` at its place, so that options
///        after it still win. Only keys of `defaults` are taken; anything else throws BadArgument naming `source`
///        (the bench's .cpp, whose header lists the options).
inline Options parse_options(int argc, char** argv, Options defaults, const Options& smoke, const std::string& source) {
  Options opt = std::move(defaults);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") {
      for (const auto& [k, v] : smoke) opt.insert_or_assign(k, v);
      continue;
    }
    if (a.rfind("--", 0) != 0 || !opt.count(a.substr(2)) || i + 1 >= argc)
      throw BadArgument("bad argument '" + a + "' (see the header of " + source + ")");
    opt[a.substr(2)] = argv[++i];
  }
  return opt;
}

inline int64_t option_int(const Options& opt, const char* key) { return std::stoll(opt.at(key)); }

/// @brief The config of the options "layers", "heads", "head-dim", "caption-channels" and, where the bench has it,
///        "channels" (in = out); cross-attention width = inner width, as in the released models.
inline pipeline::TransformerConfig transformer_config(const Options& opt) {
  pipeline::TransformerConfig config;
  config.num_layers = option_int(opt, "layers");
  config.num_attention_heads = option_int(opt, "heads");
  config.attention_head_dim = option_int(opt, "head-dim");
  config.cross_attention_dim = config.inner_dim();
  config.caption_channels = option_int(opt, "caption-channels");
  if (opt.count("channels")) config.in_channels = config.out_channels = option_int(opt, "channels");
  return config;
}

// Note [Random bench weights]
// The benches time shapes, not checkpoints: every tensor is N(0, 0.02²) (diffusers' init scale, so activations
// stay finite through 48 blocks), drawn on the device in the compute dtype so that no file is read and no host
// copy is made. The draws come from the global generator: the caller seeds it (at::manual_seed) where its runs
// must repeat.
inline pipeline::TransformerModel random_transformer(const pipeline::TransformerConfig& config,
                                                     const pipeline::TransformerRuntime& runtime) {
  const auto options = at::TensorOptions().device(runtime.device).dtype(runtime.dtype);
  return pipeline::TransformerModel::from_weights(
      config, runtime,
      [&](const std::string&, const std::vector<int64_t>& shape) { return at::randn(shape, options).mul_(0.02); });
}

/// @brief The inputs of one guided forward as LTXPipeline makes them: "batch" samples of the latent grid
///        "latent-frames" x "latent-height" x "latent-width", "text-len" caption tokens (all attended), timestep 500
///        and the RoPE scale (8/25, 32, 32) of 32x spatial, 8x temporal compression at 25 fps. Random from the
///        global generator (Note [Random bench weights]).
inline pipeline::TransformerInputs transformer_inputs(const Options& opt, const pipeline::TransformerConfig& config,
                                                      const at::TensorOptions& options) {
  const int64_t F = option_int(opt, "latent-frames"), H = option_int(opt, "latent-height");
  const int64_t W = option_int(opt, "latent-width"), L = option_int(opt, "text-len"), B = option_int(opt, "batch");
  pipeline::TransformerInputs in;
  in.hidden_states = at::randn({B, F * H * W, config.in_channels}, options);
  in.encoder_hidden_states = at::randn({B, L, config.caption_channels}, options);
  in.timestep = at::full({B}, 500.0, options.dtype(at::kFloat));
  in.encoder_attention_mask = at::ones({B, L}, options.dtype(at::kLong));
  in.num_frames = F;
  in.height = H;
  in.width = W;
  in.rope_interpolation_scale = {8.0 / 25.0, 32.0, 32.0};
  return in;
}

/// @brief The median of `sorted` (ascending, not empty); the mean of the middle two for an even count.
inline double median_of_sorted(const std::vector<double>& sorted) {
  const size_t n = sorted.size();
  return n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
}

}  // namespace ltxmps::bench
