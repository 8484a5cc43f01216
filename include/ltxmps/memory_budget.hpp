#pragma once
/// @file memory_budget.hpp
/// @brief The device memory budget, and how each component's weights are kept within it: resident, in FP8
///        storage, streamed block by block from pinned host memory, both, or under model-level CPU offload.

#include "ltxmps/device.hpp"
#include "ltxmps/diagnostics.hpp"
#include "ltxmps/error.hpp"
#include "ltxmps/precision.hpp"

#include <c10/core/Device.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace ltxmps {

// Note [Weight budget]
// A 13B LTX-Video transformer is 26 GB in bf16: it does not fit a 24 GB card, let alone an 8 GB one, next to the
// text encoder, the VAE and the activations. The budget (LoaderSettings::max_device_memory, else what the device
// reports free) decides, per component, where the weights live; the first option whose peak fits wins:
//  1. resident: every weight on the device, as without a budget;
//  2. streamed (CUDA): the transformer's blocks stay in pinned host memory and are copied into a ring of
//     `blocks_ahead + 1` device buffers on a side stream, `blocks_ahead` blocks ahead of the one running
//     (Note [Streamed weights]); 2 ahead first, then 1, then 0 (no overlap) while the ring does not fit;
//  3. FP8 storage: the transformer's block linears in float8 e4m3 with per-channel scales (half the bytes),
//     dequantized to the compute dtype just before use;
//  4. FP8 storage and streamed: both, for the smallest cards.
// Streaming comes before FP8 because it keeps the results bit for bit (the same weights reach the same kernels)
// while FP8 changes them, and because the copies hide under the compute: 26 GB at 54.5 GB/s of pinned
// host-to-device bandwidth is 0.48 s against about 0.73 s of GEMMs per forward of 6144 tokens at batch 2. FP8
// is picked automatically only where streaming is off or unavailable, or does not fit even with one buffer.
// Under model-level CPU offload (cpu_offload) each stage holds only its own component (Note [CPU offload]); the
// budget does not switch offload on by itself (the pipeline's stages follow the plan's offload decision, which is
// fixed before the sizes are known), but when nothing fits without it and something would with it, the plan
// says so.
// Explicit requests (stream_weights on/off, weight_storage compute/fp8) narrow the options; they are never
// overridden. On MPS the memory is unified: the GPU already reads the weights where they lie, so streaming
// would copy them within the same RAM, and MPS has no float8 dtype; both requests are refused there, and the
// plan says why. On the CPU the weights stay in host memory.
//
// The phases counted (the pipeline's order): text encoding (the text encoder, its activations and, without
// offload, every other component's device weights, which are loaded at the start), the denoising loop (the
// transformer's device weights and activations, the VAE, the text encoder where it is kept), the VAE decode.
// A streamed transformer's ring stays allocated in every phase.

/// @brief Blocks copied ahead of the running one when the budget allows it (Note [Weight budget]).
constexpr int64_t kDefaultBlocksAhead = 2;

/// @brief "24.3 GiB", "515 MiB", "12 KiB", "100 B".
inline std::string describe_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes);
  size_t u = 0;
  while (std::fabs(v) >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) v /= 1024.0, ++u;
  char buf[48];
  std::snprintf(buf, sizeof buf, u >= 3 ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

/// @brief Parses a memory size: "8GiB", "8 GiB", "8GB", "512MiB", "1.5 GiB", "8000000000" (bytes); units B, KB,
///        MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024), case-insensitive; "auto" is 0 (the
///        device decides). Throws ltxmps::Error naming `option` for anything else, a size of 0, a negative size or
///        one above 2^63 - 1 bytes.
inline uint64_t parse_memory_size(const std::string& text, const std::string& option = "max_device_memory") {
  const std::string expected = "expected a size such as 8GiB, 8 GiB, 8GB, 512MiB or a number of bytes";
  auto fail = [&](const std::string& why) -> Error {
    return Error(option + " '" + text + "': " + why + (why.empty() ? "" : "; ") + expected);
  };
  std::string lower;
  for (char ch : text) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (lower == "auto") return 0;
  size_t i = 0;
  while (i < lower.size() && std::isspace(static_cast<unsigned char>(lower[i]))) ++i;
  if (i < lower.size() && lower[i] == '-') throw fail("a memory size cannot be negative");
  const size_t digits_begin = i;
  bool dot = false;
  while (i < lower.size() && (std::isdigit(static_cast<unsigned char>(lower[i])) || (lower[i] == '.' && !dot))) {
    dot = dot || lower[i] == '.';
    ++i;
  }
  const std::string number = lower.substr(digits_begin, i - digits_begin);
  if (number.empty() || number == ".") throw fail("");
  while (i < lower.size() && std::isspace(static_cast<unsigned char>(lower[i]))) ++i;
  std::string unit = lower.substr(i);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.back()))) unit.pop_back();
  struct Unit {
    const char* name;
    long double factor;
  };
  const Unit units[] = {{"", 1.0L},        {"b", 1.0L},          {"kb", 1e3L},
                        {"mb", 1e6L},      {"gb", 1e9L},         {"tb", 1e12L},
                        {"kib", 1024.0L},  {"mib", 1048576.0L},  {"gib", 1073741824.0L},
                        {"tib", 1099511627776.0L}};
  const Unit* found = nullptr;
  for (const auto& u : units)
    if (unit == u.name) found = &u;
  if (found == nullptr) throw fail("unknown unit '" + text.substr(text.size() - std::min(text.size(), unit.size())) + "'");
  if (!dot && found->factor == 1.0L && number.size() > 19) throw fail("the size overflows 64 bits");
  const long double value = std::strtold(number.c_str(), nullptr) * found->factor;
  if (!std::isfinite(static_cast<double>(value)) ||
      value > static_cast<long double>(std::numeric_limits<int64_t>::max()))
    throw fail("the size overflows 64 bits");
  const auto bytes = static_cast<uint64_t>(std::llround(static_cast<double>(value)));
  if (bytes == 0) throw fail("a memory budget must be more than 0 bytes (\"auto\": what the device reports free)");
  return bytes;
}

/// @brief The name of a stream_weights setting ("auto", "on", "off").
inline const char* to_string(StreamWeights s) noexcept {
  switch (s) {
    case StreamWeights::automatic: return "auto";
    case StreamWeights::on: return "on";
    case StreamWeights::off: return "off";
  }
  return "?";
}

/// @brief Parses "auto", "on", "off" (the stream_weights setting); throws naming `option` otherwise.
inline StreamWeights parse_stream_weights(const std::string& text, const std::string& option = "stream_weights") {
  if (text == "auto") return StreamWeights::automatic;
  if (text == "on") return StreamWeights::on;
  if (text == "off") return StreamWeights::off;
  throw Error(option + " '" + text + "' is not one of auto, on, off");
}

/// @brief Where one component's weights live during the run.
enum class WeightMode {
  /// On the device, in the compute dtype.
  resident,
  /// On the device, the transformer's block linears in FP8 (e4m3) storage.
  fp8,
  /// Blocks in pinned host memory, copied into a ring of device buffers ahead of use.
  streamed,
  /// FP8 storage and streamed.
  fp8_streamed,
  /// On the CPU, moved to the device while the component runs (model-level CPU offload).
  offloaded,
};

/// @brief "resident", "fp8", "streamed", "fp8+streamed", "cpu offload".
inline const char* to_string(WeightMode m) noexcept {
  switch (m) {
    case WeightMode::resident: return "resident";
    case WeightMode::fp8: return "fp8";
    case WeightMode::streamed: return "streamed";
    case WeightMode::fp8_streamed: return "fp8+streamed";
    case WeightMode::offloaded: return "cpu offload";
  }
  return "?";
}

/// @brief True for the modes whose blocks are streamed.
inline bool is_streamed(WeightMode m) noexcept { return m == WeightMode::streamed || m == WeightMode::fp8_streamed; }
/// @brief True for the modes with FP8 storage.
inline bool is_fp8(WeightMode m) noexcept { return m == WeightMode::fp8 || m == WeightMode::fp8_streamed; }

/// @brief The transformer's weight bytes, whole and per block, in the compute dtype and in FP8 storage.
struct TransformerSizes {
  int64_t bytes = 0;            ///< every weight in the compute dtype
  int64_t block_bytes = 0;      ///< one transformer block in the compute dtype (every block has the same shapes)
  int64_t blocks = 0;           ///< number of blocks
  int64_t fp8_bytes = 0;        ///< every weight with the block linears in FP8 storage; 0: FP8 not offered
  int64_t fp8_block_bytes = 0;  ///< one block with its linears in FP8 storage
  std::string dtype = "bfloat16";  ///< the compute dtype's name (for the reasons)
};

/// @brief What plan_weights() needs to know of a model and a request: weights and activation estimates in bytes.
struct WeightSizes {
  TransformerSizes transformer;           ///< the denoiser
  int64_t text_encoder = 0;               ///< T5's weights; 0 when none is loaded (prompt cache)
  int64_t vae = 0;                        ///< the VAE's weights
  int64_t text_encoder_activations = 0;   ///< peak activations of text encoding
  int64_t transformer_activations = 0;    ///< peak activations of one transformer forward in the loop
  int64_t vae_activations = 0;            ///< peak activations of the VAE decode
  bool keep_text_encoder = false;         ///< the text encoder stays loaded through the loop (object removal)
};

/// @brief One component's weight decision.
struct ComponentWeightPlan {
  WeightMode mode = WeightMode::resident;  ///< where its weights live
  int64_t device_bytes = 0;                ///< its weights on the device while it runs
  Diagnostic reason;                       ///< why
};

/// @brief The transformer's weight decision.
struct TransformerWeightPlan : ComponentWeightPlan {
  int64_t blocks_ahead = 0;  ///< streamed: blocks whose copies are in flight while one runs
  int64_t ring_blocks = 0;   ///< streamed: device block buffers (blocks_ahead + 1, at most the block count)
};

/// @brief Every component's weight decision under the memory budget (plan_weights() in plan.hpp fills it).
struct WeightPlan {
  bool planned = false;       ///< false until plan_weights() ran (component sizes are known only then)
  int64_t budget = 0;         ///< device memory budget in bytes; 0: unknown (everything resident)
  std::string budget_source;  ///< where the budget comes from
  TransformerWeightPlan transformer;  ///< the denoiser
  ComponentWeightPlan text_encoder;   ///< T5 (resident or offloaded; device_bytes 0 when none is loaded)
  ComponentWeightPlan vae;            ///< the VAE
  bool offload = false;       ///< model-level CPU offload is on (the plan's cpu_offload decision)
  int64_t peak_bytes = 0;     ///< the planned peak on the device
  std::string peak_phase;     ///< the phase of that peak
  bool fits = true;           ///< false when even the smallest option exceeds the budget
};

/// @brief A memory budget and where it comes from.
struct MemoryBudget {
  int64_t bytes = 0;   ///< 0: unknown
  std::string source;  ///< "max_device_memory", "free memory of cuda:0", ...
};

/// @brief The budget of `device`: `max_device_memory` when set, else the free memory of a CUDA device (asked of
///        the device when the probe did not read it and `caps` are this machine's), Metal's recommended working
///        set on MPS, unknown elsewhere (the CPU's limit is the host's memory, which the request estimate checks).
inline MemoryBudget memory_budget(const LoaderSettings& settings, const c10::Device& device, const Capabilities& caps) {
  if (settings.max_device_memory > 0) {
    LTXMPS_CHECK(settings.max_device_memory <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                 "max_device_memory ", settings.max_device_memory, " is above 2^63 - 1 bytes");
    return {static_cast<int64_t>(settings.max_device_memory), "max_device_memory"};
  }
  if (device.is_cuda()) {
    const auto* info = cuda_info(caps, device);
    if (info == nullptr) return {};
    uint64_t free = info->free_memory;
#if defined(LTXMPS_WITH_CUDA)
    if (free == 0 && !caps.simulated) free = detail::cuda_free_memory(info->index);
#endif
    if (free > 0) return {static_cast<int64_t>(free), "free memory of cuda:" + std::to_string(info->index)};
    if (info->total_memory > 0)
      return {static_cast<int64_t>(info->total_memory),
              "total memory of cuda:" + std::to_string(info->index) + " (free memory unknown)"};
    return {};
  }
  if (device.is_mps() && caps.unified_memory > 0)
    return {static_cast<int64_t>(caps.unified_memory), "MPS working set of the unified memory"};
  return {};
}

/// @brief Refuses stream_weights=on off CUDA (on MPS: unified memory; the FP8 requests are checked with the
///        precision, precision.hpp). resolve() calls it before anything loads.
inline void check_weight_requests(const LoaderSettings& settings, const c10::Device& device) {
  if (settings.stream_weights == StreamWeights::on && !device.is_cuda()) {
    LTXMPS_CHECK(!device.is_mps(),
                 "stream_weights=on: MPS memory is unified, the GPU already reads the weights where they lie; "
                 "streaming would copy them within the same RAM (Note [Streamed weights]); use stream_weights=auto "
                 "or off");
    throw Error("stream_weights=on: streaming the transformer's blocks from pinned host memory needs a CUDA device; "
                "this plan runs on " + device.str() +
                (device.is_cpu() ? ", where the weights are in host memory already" : "") +
                "; use stream_weights=auto or off");
  }
}

namespace detail {

struct WeightCandidate {
  WeightMode mode = WeightMode::resident;
  int64_t ahead = 0;
};

struct WeightPhases {
  int64_t peak = 0;
  const char* phase = "";
};

inline int64_t ring_blocks(const TransformerSizes& t, int64_t ahead) { return std::min(ahead + 1, t.blocks); }

inline int64_t transformer_device_bytes(const TransformerSizes& t, const WeightCandidate& c) {
  const bool fp8 = is_fp8(c.mode);
  const int64_t all = fp8 ? t.fp8_bytes : t.bytes;
  if (!is_streamed(c.mode)) return all;
  const int64_t block = fp8 ? t.fp8_block_bytes : t.block_bytes;
  return all - t.blocks * block + ring_blocks(t, c.ahead) * block;
}

// The device's peak over the pipeline's phases (Note [Weight budget]).
inline WeightPhases weight_phases(const WeightSizes& s, const WeightCandidate& c, bool offload) {
  const auto& t = s.transformer;
  const int64_t tdev = transformer_device_bytes(t, c);
  const int64_t ring =
      is_streamed(c.mode) ? ring_blocks(t, c.ahead) * (is_fp8(c.mode) ? t.fp8_block_bytes : t.block_bytes) : 0;
  const int64_t kept_t5 = s.keep_text_encoder ? s.text_encoder : 0;
  WeightPhases p;
  auto phase = [&](const char* name, int64_t bytes) {
    if (bytes > p.peak) p.peak = bytes, p.phase = name;
  };
  if (s.text_encoder > 0)
    phase("text encoder", s.text_encoder + s.text_encoder_activations + (offload ? ring : tdev + s.vae));
  phase("transformer loop", tdev + s.transformer_activations + (offload ? 0 : s.vae + kept_t5));
  phase("vae decode", s.vae + s.vae_activations + (offload ? ring : tdev + kept_t5));
  return p;
}

inline std::vector<WeightCandidate> weight_candidates(const LoaderSettings& settings, const c10::Device& device,
                                                      const TransformerSizes& t) {
  const bool can_stream = device.is_cuda() && settings.stream_weights != StreamWeights::off && t.blocks > 0;
  const bool must_stream = settings.stream_weights == StreamWeights::on;
  const bool can_fp8 = fp8_storage_supported(device) && settings.weight_storage != WeightStorage::compute &&
                       t.fp8_bytes > 0;
  const bool must_fp8 = settings.weight_storage == WeightStorage::fp8 || settings.fp8_matmul;
  std::vector<WeightCandidate> out;
  auto streamed = [&](WeightMode m) {
    for (int64_t ahead = std::min(kDefaultBlocksAhead, std::max<int64_t>(t.blocks - 1, 0)); ahead >= 0; --ahead)
      out.push_back({m, ahead});
  };
  if (!must_stream && !must_fp8) out.push_back({WeightMode::resident, 0});
  if (can_stream && !must_fp8) streamed(WeightMode::streamed);
  if (can_fp8 && !must_stream) out.push_back({WeightMode::fp8, 0});
  if (can_stream && can_fp8) streamed(WeightMode::fp8_streamed);
  if (out.empty()) {  // an explicit request the sizes cannot serve (no blocks, no FP8 size): honour what exists
    if (must_fp8) out.push_back({WeightMode::fp8, 0});
    if (must_stream) streamed(must_fp8 ? WeightMode::fp8_streamed : WeightMode::streamed);
    if (out.empty()) out.push_back({WeightMode::resident, 0});
  }
  return out;
}

inline std::string describe_action(const TransformerSizes& t, const WeightCandidate& c, int64_t device_bytes) {
  const int64_t ring = ring_blocks(t, c.ahead);
  const std::string fp8 = "FP8 e4m3 storage, dequantized to " + t.dtype + " before each layer (results change slightly)";
  const std::string streamed =
      "streamed from pinned host memory, " +
      (c.ahead == 0 ? std::string("one block at a time (no copy ahead: slower)")
                    : std::to_string(c.ahead) + (c.ahead == 1 ? " block" : " blocks") + " ahead") +
      " (" + std::to_string(ring) + (ring == 1 ? " block buffer of " : " block buffers of ") +
      describe_bytes(is_fp8(c.mode) ? t.fp8_block_bytes : t.block_bytes) + ")";
  switch (c.mode) {
    case WeightMode::resident: return "resident (" + describe_bytes(device_bytes) + ")";
    case WeightMode::fp8: return fp8 + ", " + describe_bytes(device_bytes) + " on the device";
    case WeightMode::streamed: return streamed;
    case WeightMode::fp8_streamed: return fp8 + ", " + streamed;
    case WeightMode::offloaded: break;
  }
  return "under model-level CPU offload";
}

inline void check_sizes(const WeightSizes& s) {
  const auto& t = s.transformer;
  for (int64_t v : {t.bytes, t.block_bytes, t.blocks, t.fp8_bytes, t.fp8_block_bytes, s.text_encoder, s.vae,
                    s.text_encoder_activations, s.transformer_activations, s.vae_activations})
    LTXMPS_CHECK(v >= 0, "plan_weights: a component size is negative (", v, " bytes)");
  LTXMPS_CHECK(t.blocks == 0 || t.block_bytes <= t.bytes / t.blocks, "plan_weights: ", t.blocks, " blocks of ",
               t.block_bytes, " bytes exceed the transformer's ", t.bytes, " bytes");
  LTXMPS_CHECK(t.fp8_bytes == 0 || t.blocks == 0 || t.fp8_block_bytes <= t.fp8_bytes / t.blocks, "plan_weights: ",
               t.blocks, " FP8 blocks of ", t.fp8_block_bytes, " bytes exceed the transformer's ", t.fp8_bytes,
               " FP8 bytes");
}

// Why the chosen transformer option (Note [Weight budget]); `first` is the first option the settings allow.
inline Diagnostic transformer_reason(const LoaderSettings& settings, const WeightSizes& s, const MemoryBudget& budget,
                                     const WeightCandidate& chosen, const WeightCandidate& first,
                                     const WeightPhases& first_phases, const WeightPhases& phases, bool fits,
                                     bool fits_offloaded, int64_t device_bytes) {
  const auto& t = s.transformer;
  const std::string what = "transformer " + describe_bytes(t.bytes) + " " + t.dtype;
  const std::string action = describe_action(t, chosen, device_bytes);
  const std::string peak = describe_bytes(phases.peak) + " at peak (" + phases.phase + ")";
  const std::string within = describe_bytes(budget.bytes) + " budget (" + budget.source + ")";
  std::string requested;
  if (settings.stream_weights == StreamWeights::on) requested += "stream_weights=on";
  if (settings.weight_storage == WeightStorage::fp8 || settings.fp8_matmul)
    requested += std::string(requested.empty() ? "" : ", ") +
                 (settings.fp8_matmul ? "fp8_matmul" : "weight_storage=fp8");
  Diagnostic d{Severity::info, "weights.transformer", "", ""};
  if (budget.bytes == 0) {
    d.rule = "weights.transformer.no_budget";
    d.message = what + ": " + action + (requested.empty() ? "" : " as requested (" + requested + ")") +
                "; no device memory budget is known (set max_device_memory to plan for one)";
    return d;
  }
  if (!fits) {
    d.severity = Severity::warning;
    d.rule = "weights.over_budget";
    d.message = what + ": even " + action + " needs " + peak + " > " + within +
                ": the run may stop out of memory; " +
                (fits_offloaded ? "it fits with model-level CPU offload (cpu_offload), or " : "") +
                (std::string(phases.phase) == "text encoder" && s.text_encoder > 0
                     ? "encode the prompt once into a prompt cache so that no text encoder is loaded, or "
                     : "") +
                (std::string(phases.phase) == "vae decode" && !settings.vae_tiling ? "decode in tiles (vae_tiling), or "
                                                                                    : "") +
                "lower the frames, height or width";
    return d;
  }
  switch (chosen.mode) {
    case WeightMode::resident: d.rule = "weights.transformer.resident"; break;
    case WeightMode::fp8: d.rule = "weights.transformer.fp8"; break;
    case WeightMode::streamed: d.rule = "weights.transformer.streamed"; break;
    case WeightMode::fp8_streamed: d.rule = "weights.transformer.fp8_streamed"; break;
    case WeightMode::offloaded: d.rule = "weights.transformer.offloaded"; break;
  }
  if (chosen.mode == first.mode && chosen.ahead == first.ahead) {
    d.message = what + ": " + action + (requested.empty() ? "" : " as requested (" + requested + ")") + "; " + peak +
                " within the " + within;
    return d;
  }
  d.message = what + (first.mode == WeightMode::resident ? " resident needs " : " " + requested + " needs ") +
              describe_bytes(first_phases.peak) + " at peak (" + first_phases.phase + ") > " + within + ": " + action +
              "; " + peak;
  return d;
}

}  // namespace detail

/// @brief Decides where each component's weights live (Note [Weight budget]). `offload_enabled`: the plan's
///        model-level CPU offload.
inline WeightPlan decide_weights(const LoaderSettings& settings, const c10::Device& device, const WeightSizes& sizes,
                                 const MemoryBudget& budget, bool offload_enabled) {
  detail::check_sizes(sizes);
  const auto& t = sizes.transformer;
  const auto candidates = detail::weight_candidates(settings, device, t);
  struct Choice {
    detail::WeightCandidate candidate;
    detail::WeightPhases phases;
  };
  Choice chosen{candidates.front(), detail::weight_phases(sizes, candidates.front(), offload_enabled)};
  const auto first = chosen;
  bool fits = true, fits_offloaded = false;
  if (budget.bytes > 0) {
    bool found = false;
    Choice smallest = chosen;
    for (const auto& c : candidates) {
      const auto phases = detail::weight_phases(sizes, c, offload_enabled);
      if (phases.peak < smallest.phases.peak) smallest = Choice{c, phases};
      if (phases.peak <= budget.bytes) {
        chosen = Choice{c, phases};
        found = true;
        break;
      }
    }
    if (!found) {
      chosen = smallest, fits = false;
      if (!offload_enabled && (device.is_cuda() || device.is_xpu()))
        for (const auto& c : candidates) fits_offloaded = fits_offloaded || detail::weight_phases(sizes, c, true).peak <= budget.bytes;
    }
  }

  WeightPlan w;
  w.planned = true;
  w.budget = budget.bytes;
  w.budget_source = budget.source;
  w.offload = offload_enabled;
  w.fits = fits;
  w.peak_bytes = chosen.phases.peak;
  w.peak_phase = chosen.phases.phase;
  const auto& c = chosen.candidate;
  w.transformer.mode = c.mode == WeightMode::resident && w.offload ? WeightMode::offloaded : c.mode;
  w.transformer.device_bytes = detail::transformer_device_bytes(t, c);
  w.transformer.blocks_ahead = is_streamed(c.mode) ? std::min(c.ahead, std::max<int64_t>(t.blocks - 1, 0)) : 0;
  w.transformer.ring_blocks = is_streamed(c.mode) ? detail::ring_blocks(t, c.ahead) : 0;
  w.transformer.reason = detail::transformer_reason(settings, sizes, budget, c, first.candidate, first.phases,
                                                    chosen.phases, fits, fits_offloaded, w.transformer.device_bytes);
  auto component = [&](ComponentWeightPlan& p, int64_t bytes, const char* topic, const char* name, const char* when) {
    p.device_bytes = bytes;
    p.mode = w.offload && bytes > 0 ? WeightMode::offloaded : WeightMode::resident;
    p.reason.topic = topic;
    if (w.offload) {
      p.reason.rule = "weights.component.offloaded";
      p.reason.message = std::string(name) + " " + describe_bytes(bytes) + " under model-level CPU offload: on " +
                         device.str() + " only " + when;
    } else {
      p.reason.rule = "weights.component.resident";
      p.reason.message = std::string(name) + " " + describe_bytes(bytes) + " resident on " + device.str();
    }
  };
  component(w.vae, sizes.vae, "weights.vae", "VAE", "while it encodes or decodes");
  component(w.text_encoder, sizes.text_encoder, "weights.text_encoder", "text encoder", "while it encodes the prompts");
  if (sizes.text_encoder == 0) {
    w.text_encoder.reason.rule = "weights.text_encoder.none";
    w.text_encoder.reason.message = "no text encoder is loaded (prompt embeddings from a cache)";
  }
  return w;
}

}  // namespace ltxmps
