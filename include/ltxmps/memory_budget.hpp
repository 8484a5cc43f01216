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
// Model-level CPU offload (cpu_offload: each stage holds only its own component, Note [CPU offload]) and
// streaming T5's blocks are the two placements that cost time once per run instead of on every step, so they
// come before the options that slow every forward: the options are grouped in tiers (resident or streamed ahead;
// streamed without a copy ahead; FP8; FP8 and streamed ahead; FP8 streamed without a copy ahead) and each tier is
// tried as the settings place the components, then under model-level offload, then under offload with T5
// streamed. So the budget switches offload on by itself (CUDA and XPU, where the accelerator has its own memory;
// never on MPS or the CPU) when that is what makes a faster or exact option fit, and says so in the plan; the
// stages follow the plan's offload decision, which plan_weights() updates. A T5 that does not fit beside its own
// activations (T5-XXL is 9.5 GB in bf16) is streamed (CUDA): its blocks stay in pinned host memory and each is
// copied to the device just before it runs (Note [Streamed T5] in the pipeline's t5_streaming.hpp). When nothing
// fits at all, the option with the smallest peak is kept and the plan warns.
// Explicit requests (stream_weights on/off, weight_storage compute/fp8) narrow the options; they are never
// overridden. On MPS the memory is unified: the GPU already reads the weights where they lie, so streaming
// would copy them within the same RAM, and MPS has no float8 dtype; both requests are refused there, and the
// plan says why. On the CPU the weights stay in host memory.
//
// The phases counted (the pipeline's order): text encoding (the text encoder's device weights, whole or its
// non-block weights and one block when streamed, its activations and, without offload, every other component's
// device weights, which are loaded at the start), the denoising loop (the transformer's device weights, FP8
// storage's dequantized layer and the activations, the VAE, the text encoder where it is kept), the VAE decode.
// A streamed transformer's ring is on the device from its first forward on; under offload it leaves with the
// transformer, so only the loop holds it.

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
  /// FP8 storage, resident or streamed: the largest block linear in the compute dtype, which a forward holds
  /// dequantized for its matmul (one layer at a time).
  int64_t fp8_dequantized_bytes = 0;
  std::string dtype = "bfloat16";  ///< the compute dtype's name (for the reasons)
};

/// @brief What plan_weights() needs to know of a model and a request: weights and activation estimates in bytes.
struct WeightSizes {
  TransformerSizes transformer;           ///< the denoiser
  int64_t text_encoder = 0;               ///< T5's weights; 0 when none is loaded (prompt cache)
  int64_t text_encoder_blocks = 0;        ///< T5's encoder blocks; 0: its blocks are not streamed
  int64_t text_encoder_blocks_bytes = 0;  ///< all of T5's blocks
  int64_t text_encoder_block_bytes = 0;   ///< T5's largest block (the first: it holds the position bias)
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
  int64_t ring_bytes = 0;    ///< streamed: device bytes of the ring (in every phase without offload, the loop's with it)
};

/// @brief Every component's weight decision under the memory budget (plan_weights() in plan.hpp fills it).
struct WeightPlan {
  bool planned = false;       ///< false until plan_weights() ran (component sizes are known only then)
  int64_t budget = 0;         ///< device memory budget in bytes; 0: unknown (everything resident)
  std::string budget_source;  ///< where the budget comes from
  TransformerWeightPlan transformer;  ///< the denoiser
  ComponentWeightPlan text_encoder;   ///< T5 (resident, offloaded or streamed; device_bytes 0 when none is loaded)
  ComponentWeightPlan vae;            ///< the VAE
  bool offload = false;       ///< model-level CPU offload is on (requested, or switched on by the budget)
  bool offload_by_budget = false;  ///< the budget switched model-level CPU offload on (Note [Weight budget])
  Diagnostic offload_reason;       ///< why, when offload_by_budget (rule "weights.offload.enabled")
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

// Where the components other than the transformer's weights are placed (Note [Weight budget]).
struct Placement {
  bool offload = false;              // model-level CPU offload
  bool stream_text_encoder = false;  // T5's blocks streamed (only under offload)
};

inline int64_t text_encoder_device_bytes(const WeightSizes& s, bool streamed) {
  return streamed ? s.text_encoder - s.text_encoder_blocks_bytes + s.text_encoder_block_bytes : s.text_encoder;
}

// FP8 storage's dequantized layer, held while the transformer runs.
inline int64_t dequantized_bytes(const TransformerSizes& t, const WeightCandidate& c) {
  return is_fp8(c.mode) ? t.fp8_dequantized_bytes : 0;
}

inline int64_t ring_bytes(const TransformerSizes& t, const WeightCandidate& c) {
  return is_streamed(c.mode) ? ring_blocks(t, c.ahead) * (is_fp8(c.mode) ? t.fp8_block_bytes : t.block_bytes) : 0;
}

// The device's peak over the pipeline's phases (Note [Weight budget]).
inline WeightPhases weight_phases(const WeightSizes& s, const WeightCandidate& c, const Placement& where) {
  const auto& t = s.transformer;
  const bool offload = where.offload;
  const int64_t tdev = transformer_device_bytes(t, c);
  const int64_t t5 = text_encoder_device_bytes(s, where.stream_text_encoder);
  const int64_t kept_t5 = s.keep_text_encoder ? t5 : 0;
  WeightPhases p;
  auto phase = [&](const char* name, int64_t bytes) {
    if (bytes > p.peak) p.peak = bytes, p.phase = name;
  };
  if (s.text_encoder > 0)
    phase("text encoder", t5 + s.text_encoder_activations + (offload ? 0 : tdev + s.vae));
  phase("transformer loop",
        tdev + dequantized_bytes(t, c) + s.transformer_activations + (offload ? 0 : s.vae + kept_t5));
  phase("vae decode", s.vae + s.vae_activations + (offload ? 0 : tdev + kept_t5));
  return p;
}

// The placements tried, in order: as the settings say, then under model-level offload (where the accelerator has
// its own memory), then with T5's blocks streamed (CUDA) under it.
inline std::vector<Placement> placements(const LoaderSettings& settings, const c10::Device& device,
                                         const WeightSizes& s, bool offload_enabled) {
  const bool can_offload = offload_enabled || device.is_cuda() || device.is_xpu();
  const bool can_stream_t5 = device.is_cuda() && settings.stream_weights != StreamWeights::off &&
                             s.text_encoder > 0 && s.text_encoder_blocks > 0;
  std::vector<Placement> out{{offload_enabled, false}};
  if (!offload_enabled && can_offload) out.push_back({true, false});
  if (can_offload && can_stream_t5) out.push_back({true, true});
  return out;
}

// The cost tier of a transformer option (Note [Weight budget]): 0 resident or streamed ahead, 1 streamed without a
// copy ahead, 2 FP8, 3 FP8 and streamed ahead, 4 FP8 streamed without a copy ahead.
inline int tier(const WeightCandidate& c) {
  switch (c.mode) {
    case WeightMode::resident: return 0;
    case WeightMode::streamed: return c.ahead > 0 ? 0 : 1;
    case WeightMode::fp8: return 2;
    case WeightMode::fp8_streamed: return c.ahead > 0 ? 3 : 4;
    case WeightMode::offloaded: break;
  }
  return 0;
}
constexpr int kTiers = 5;

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
  for (int64_t v : {t.bytes, t.block_bytes, t.blocks, t.fp8_bytes, t.fp8_block_bytes, t.fp8_dequantized_bytes,
                    s.text_encoder, s.vae, s.text_encoder_blocks, s.text_encoder_blocks_bytes,
                    s.text_encoder_block_bytes, s.text_encoder_activations, s.transformer_activations,
                    s.vae_activations})
    LTXMPS_CHECK(v >= 0, "plan_weights: a component size is negative (", v, " bytes)");
  LTXMPS_CHECK(t.blocks == 0 || t.block_bytes <= t.bytes / t.blocks, "plan_weights: ", t.blocks, " blocks of ",
               t.block_bytes, " bytes exceed the transformer's ", t.bytes, " bytes");
  LTXMPS_CHECK(t.fp8_bytes == 0 || t.blocks == 0 || t.fp8_block_bytes <= t.fp8_bytes / t.blocks, "plan_weights: ",
               t.blocks, " FP8 blocks of ", t.fp8_block_bytes, " bytes exceed the transformer's ", t.fp8_bytes,
               " FP8 bytes");
  LTXMPS_CHECK(s.text_encoder_blocks_bytes <= s.text_encoder && s.text_encoder_block_bytes <= s.text_encoder_blocks_bytes,
               "plan_weights: the text encoder's blocks (", s.text_encoder_blocks_bytes, " bytes, the largest ",
               s.text_encoder_block_bytes, ") exceed its ", s.text_encoder, " bytes");
}

// "the rest stays resident" under the settings' placement; else how the budget placed the other components.
inline std::string describe_placement(const Placement& where, bool offload_enabled) {
  if (where.offload == offload_enabled && !where.stream_text_encoder) return "";
  return where.stream_text_encoder ? " (with model-level CPU offload and the text encoder streamed)"
                                   : " (with model-level CPU offload)";
}

// Why the chosen transformer option (Note [Weight budget]); `first` is the first option the settings allow, placed
// as the settings say.
inline Diagnostic transformer_reason(const LoaderSettings& settings, const WeightSizes& s, const MemoryBudget& budget,
                                     const WeightCandidate& chosen, const WeightCandidate& first,
                                     const WeightPhases& first_phases, const WeightPhases& phases, bool fits,
                                     const std::string& placement, int64_t device_bytes) {
  const auto& t = s.transformer;
  const std::string what = "transformer " + describe_bytes(t.bytes) + " " + t.dtype;
  const std::string action = describe_action(t, chosen, device_bytes);
  const std::string peak = describe_bytes(phases.peak) + " at peak (" + phases.phase + ")" + placement;
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
    d.message = what + ": even " + action + " needs " + peak + " > " + within + ": the run may stop out of memory; " +
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
  if (chosen.mode == first.mode && chosen.ahead == first.ahead && first_phases.peak <= budget.bytes) {
    d.message = what + ": " + action + (requested.empty() ? "" : " as requested (" + requested + ")") + "; " + peak +
                " within the " + within;
    return d;
  }
  d.message = what + (first.mode == WeightMode::resident ? " resident needs " : " " + requested + " needs ") +
              describe_bytes(first_phases.peak) + " at peak (" + first_phases.phase + ") > " + within + ": " + action +
              "; " + peak;
  return d;
}

// The text encoder's and the VAE's decisions (Note [Weight budget]).
inline void component_reasons(WeightPlan& w, const WeightSizes& s, const c10::Device& device, const Placement& where,
                              const WeightPhases& t5_whole) {
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
  component(w.vae, s.vae, "weights.vae", "VAE", "while it encodes or decodes");
  component(w.text_encoder, s.text_encoder, "weights.text_encoder", "text encoder", "while it encodes the prompts");
  if (s.text_encoder == 0) {
    w.text_encoder.reason.rule = "weights.text_encoder.none";
    w.text_encoder.reason.message = "no text encoder is loaded (prompt embeddings from a cache)";
  } else if (where.stream_text_encoder) {
    auto& p = w.text_encoder;
    p.mode = WeightMode::streamed;
    p.device_bytes = text_encoder_device_bytes(s, true);
    p.reason.rule = "weights.text_encoder.streamed";
    p.reason.message = "text encoder " + describe_bytes(s.text_encoder) + " needs " + describe_bytes(t5_whole.peak) +
                       " at peak (" + t5_whole.phase + ") on the device even under model-level CPU offload > " +
                       describe_bytes(w.budget) + " budget (" + w.budget_source + "): its " +
                       std::to_string(s.text_encoder_blocks) + " blocks stay in pinned host memory and each is copied to " +
                       device.str() + " just before it runs (largest block " +
                       describe_bytes(s.text_encoder_block_bytes) + ", " + describe_bytes(p.device_bytes) +
                       " on the device)";
  }
}

// Why the budget switched model-level CPU offload on: the chosen option's peak without it, and with it.
inline Diagnostic offload_reason(const WeightSizes& s, const c10::Device& device, const MemoryBudget& budget,
                                 const WeightPhases& without, const WeightPhases& with, bool fits) {
  return Diagnostic{Severity::info, "offload", "weights.offload.enabled",
                    "model-level CPU offload switched on by the memory budget: without it the chosen option needs " +
                        describe_bytes(without.peak) + " at peak (" + without.phase + ") > " +
                        describe_bytes(budget.bytes) + " budget (" + budget.source + "); with it the transformer (" +
                        describe_bytes(s.transformer.bytes) + "), the text encoder (" +
                        describe_bytes(s.text_encoder) + ") and the VAE (" + describe_bytes(s.vae) + ") are on " +
                        device.str() + " only while they run, " + describe_bytes(with.peak) + " at peak (" +
                        with.phase + ")" + (fits ? "" : ", still over the budget")};
}

}  // namespace detail

/// @brief Decides where each component's weights live (Note [Weight budget]). `offload_enabled`: the plan's
///        model-level CPU offload as resolved from the settings; the result's `offload` may switch it on.
inline WeightPlan decide_weights(const LoaderSettings& settings, const c10::Device& device, const WeightSizes& sizes,
                                 const MemoryBudget& budget, bool offload_enabled) {
  detail::check_sizes(sizes);
  const auto& t = sizes.transformer;
  const auto candidates = detail::weight_candidates(settings, device, t);
  const auto placements = detail::placements(settings, device, sizes, offload_enabled);
  struct Choice {
    detail::WeightCandidate candidate;
    detail::Placement where;
    detail::WeightPhases phases;
  };
  const Choice first{candidates.front(), placements.front(),
                     detail::weight_phases(sizes, candidates.front(), placements.front())};
  Choice chosen = first;
  Choice smallest = first;
  bool fits = true, found = budget.bytes == 0;
  for (int tier = 0; tier < detail::kTiers && !found; ++tier)
    for (const auto& where : placements) {
      for (const auto& c : candidates) {
        if (detail::tier(c) != tier) continue;
        const Choice option{c, where, detail::weight_phases(sizes, c, where)};
        if (option.phases.peak < smallest.phases.peak) smallest = option;
        if (option.phases.peak <= budget.bytes) {
          chosen = option, found = true;
          break;
        }
      }
      if (found) break;
    }
  if (!found) chosen = smallest, fits = false;

  WeightPlan w;
  w.planned = true;
  w.budget = budget.bytes;
  w.budget_source = budget.source;
  w.offload = chosen.where.offload;
  w.offload_by_budget = w.offload && !offload_enabled;
  w.fits = fits;
  w.peak_bytes = chosen.phases.peak;
  w.peak_phase = chosen.phases.phase;
  const auto& c = chosen.candidate;
  w.transformer.mode = c.mode == WeightMode::resident && w.offload ? WeightMode::offloaded : c.mode;
  w.transformer.device_bytes = detail::transformer_device_bytes(t, c);
  w.transformer.blocks_ahead = is_streamed(c.mode) ? std::min(c.ahead, std::max<int64_t>(t.blocks - 1, 0)) : 0;
  w.transformer.ring_blocks = is_streamed(c.mode) ? detail::ring_blocks(t, c.ahead) : 0;
  w.transformer.ring_bytes = detail::ring_bytes(t, c);
  w.transformer.reason = detail::transformer_reason(settings, sizes, budget, c, first.candidate, first.phases,
                                                    chosen.phases, fits,
                                                    detail::describe_placement(chosen.where, offload_enabled),
                                                    w.transformer.device_bytes);
  if (w.offload_by_budget)
    w.offload_reason = detail::offload_reason(sizes, device, budget,
                                              detail::weight_phases(sizes, c, detail::Placement{offload_enabled, false}),
                                              chosen.phases, fits);
  detail::component_reasons(w, sizes, device, chosen.where,
                            detail::weight_phases(sizes, c, detail::Placement{chosen.where.offload, false}));
  return w;
}

}  // namespace ltxmps
