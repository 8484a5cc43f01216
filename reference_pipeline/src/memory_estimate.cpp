#include "ltxmps_pipeline/memory_estimate.hpp"

#include "ltxmps_pipeline/fp8.hpp"
#include "ltxmps_pipeline/runtime.hpp"

#include <ltxmps/error.hpp>
#include <ltxmps/memory.hpp>

#include <ATen/ATen.h>
#if defined(LTXMPS_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <sstream>
#include <tuple>
#include <unistd.h>
#if defined(__APPLE__)
#include <mach/mach.h>
#endif

// Note [Request memory estimate]
// Before a model loads, the CLI estimates what the request will hold on the plan's device and refuses one that
// cannot fit, instead of failing an hour into the run (or being killed by the OOM killer, which prints nothing).
// The estimate is meant to be conservative but sane: a request it accepts may still fail on fragmentation or on
// what other processes take meanwhile (memory_warning() flags a peak above 80 % of the limit), a request it
// refuses would not have run. The model, phase by phase:
//  - weights: exact. Each component is built on the meta device from its config (the loaders' own code, so
//    every tensor and its dtype, T5's float32 `wo` included, is counted) and its bytes summed. Without CPU
//    offload every component stays resident on the device (the text encoder until it is released after
//    encoding, or for the whole run with removal, which keeps it); with offload a phase holds only its own
//    component on the device (a streamed transformer's ring leaves with it) and the host holds all of them (`host_bytes`).
//    A streamed transformer or T5 counts what the weight plan puts on the device (Note [Weight budget]). With
//    FP8 storage the transformer's phases also hold the layer dequantized for the matmul that runs: the largest
//    block linear in the compute dtype (fp8_dequantized_bytes()).
//  - text encoder: T5 over 2·batch (CFG: the negative prompts) × L tokens: hidden states, the feed-forward's
//    d_ff hidden (three of them for a gated activation), counted in float32 (the `wo` input is upcast), and
//    the [rows, heads, L, L] position bias, mask and scores.
//  - transformer loop (and the effects pass): one forward, with 2·batch rows under CFG. Resident for the
//    whole forward: the hidden states (rows·tokens·D), RoPE's cos and sin (tokens·D each, float32, once for all
//    rows: Note [RoPE once per batch] in transformer.cpp), the projected caption. Transient inside one block: ten tokens·D tensors in the compute dtype (the norm output, q, k, v,
//    the attention output and its projection, the 4·D feed-forward hidden before and after GELU) plus four
//    tokens·D float32 temporaries (the RMS norms' statistics and RoPE). SDPA's kernels keep O(tokens) memory
//    (flash / memory-efficient on CUDA, the flash kernel on the CPU), so the scores are not counted; the
//    written-out upcast kernel (plan.attention.kernel == upcast, MPS in half precision) materializes float32
//    scores and the probabilities, rows·heads·tokens² each, which is what dominates a long video there. The
//    denoising state (latents, noise, velocity, guidance temporaries) is six float32 latent tensors.
//    The effects pass is one forward at batch rows (no CFG) plus its capture's float32 score chunks
//    (heads · query_chunk · tokens, scores and probabilities).
//  - VAE decode / encode: the largest activation of the conv stack, channels × frames × height × width of
//    the widest level at its resolution (found by walking the config's blocks: the decoder's up blocks
//    upsample by 2 in time and space, the encoder's down blocks halve per downsample_type), times five live
//    tensors of that size (a resnet's input kept for the residual, the norm output, the causally padded copy,
//    the conv output, the upsampler's rearranged copy). With tiling the level is the tile's (diffusers'
//    default 512×512 pixel tiles; tiling is spatial only), with slicing one batch item at a time. The
//    decoded video is counted twice (the result and its postprocessed copy), three times with tiling (the
//    decoded tiles are kept until they are blended).
// Activations get 10 % for the allocator's rounding and fragmentation, and every phase 256 MiB for the
// runtime (kernels' workspaces, RNG state, small tensors). The limit is the device's free memory (CUDA) or the
// host's available memory (CPU, and MPS whose memory is unified); the host's limit also applies to the
// weights CPU offload keeps there. No margin is added at the check: the estimate carries it.

namespace ltxmps::pipeline {

namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kRuntimeBytes = 256 * kMiB;
constexpr int64_t kVaeLiveTensors = 5;
constexpr int64_t kLoopStateTensors = 6;

// Every size of the estimate goes through here: a request whose bytes do not fit int64 gets an error naming
// the quantity, never a wrapped (small, accepted) number.
class Checked {
 public:
  explicit Checked(std::string context) : context_(std::move(context)) {}
  int64_t mul(std::initializer_list<int64_t> factors, const char* what) const {
    int64_t r = 1;
    for (int64_t f : factors)
      LTXMPS_CHECK(!__builtin_mul_overflow(r, f, &r), "memory estimate: the size of ", what, " overflows int64 for ",
                   context_, "; the request is far larger than any machine can hold");
    return r;
  }
  int64_t add(std::initializer_list<int64_t> terms, const char* what) const {
    int64_t r = 0;
    for (int64_t t : terms)
      LTXMPS_CHECK(!__builtin_add_overflow(r, t, &r), "memory estimate: ", what, " overflows int64 for ", context_,
                   "; the request is far larger than any machine can hold");
    return r;
  }

 private:
  std::string context_;
};

int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }  // a >= 0, b >= 1, no overflow
int64_t element_bytes(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

template <typename Model>
int64_t weight_bytes(Model& model, const Checked& c) {
  int64_t total = 0;
  for_each_tensor(model, [&](at::Tensor& t) {
    if (!t.defined()) return;
    int64_t n = element_bytes(t.scalar_type());
    for (int64_t s : t.sizes()) n = c.mul({n, s}, "a weight");
    total = c.add({total, n}, "the weights");
  });
  return total;
}

at::Tensor meta_tensor(const std::vector<int64_t>& shape, at::ScalarType dtype = at::kFloat) {
  return at::empty(shape, at::TensorOptions().device(c10::kMeta).dtype(dtype));
}

struct ComponentWeights {
  int64_t transformer = 0, vae = 0, text_encoder = 0;
};

// The loaders' own from_weights() on meta tensors: exact shapes and dtypes, no memory.
ComponentWeights component_weights(const TransformerConfig& transformer, const VaeConfig& vae,
                                   const std::optional<T5Config>& t5, const ltxmps::ExecutionPlan& plan,
                                   const Checked& c) {
  ComponentWeights w;
  auto tr = transformer_runtime(plan);
  tr.device = c10::kMeta;
  auto tm = TransformerModel::from_weights(transformer, tr, [](const std::string&, const std::vector<int64_t>& s) {
    return meta_tensor(s);
  });
  w.transformer = weight_bytes(tm, c);
  auto vr = vae_runtime(plan);
  vr.device = c10::kMeta;
  auto vm = VaeModel::from_weights(vae, vr, [](const std::string&, const std::vector<int64_t>& s) {
    return meta_tensor(s);
  });
  w.vae = weight_bytes(vm, c);
  if (t5) {
    auto er = t5_runtime(plan);
    er.device = c10::kMeta;
    auto em = T5EncoderModel::from_weights(
        *t5, er, [](const std::string&, const std::vector<int64_t>& s, at::ScalarType d) { return meta_tensor(s, d); });
    w.text_encoder = weight_bytes(em, c);
  }
  return w;
}

struct LatentSize {
  int64_t frames = 0, height = 0, width = 0, tokens = 0;
};

LatentSize latent_size(const TransformerConfig& t, const VaeConfig& v, const MemoryRequest& r, const Checked& c) {
  LatentSize l;
  l.frames = (r.frames - 1) / v.temporal_compression() + 1;
  l.height = ceil_div(r.height, v.spatial_compression());
  l.width = ceil_div(r.width, v.spatial_compression());
  l.tokens = c.mul({ceil_div(l.frames, t.patch_size_t), ceil_div(l.height, t.patch_size),
                    ceil_div(l.width, t.patch_size)},
                   "the transformer's token count");
  return l;
}

// Allocator rounding and fragmentation (10 %) and the runtime's own memory, on top of the counted tensors.
int64_t with_slack(int64_t activations, const Checked& c) {
  return c.add({activations, activations / 10, kRuntimeBytes}, "the activations");
}

int64_t text_encoder_activations(const T5Config& t5, const ltxmps::ExecutionPlan& plan, const MemoryRequest& r,
                                 const Checked& c) {
  const int64_t rows = c.mul({r.batch, r.guidance ? 2 : 1}, "the text encoder's batch");
  const int64_t tokens = c.mul({rows, r.text_tokens}, "the text encoder's tokens");
  const int64_t per_token = c.add({6 * t5.d_model, c.mul({t5.is_gated_act ? 3 : 2, t5.d_ff}, "T5's d_ff")},
                                  "T5's hidden widths");
  const int64_t hidden = c.mul({tokens, per_token, 4}, "the text encoder's hidden states");
  const int64_t scores = c.mul({rows, t5.num_heads, r.text_tokens, r.text_tokens, 4, 3}, "the text encoder's scores");
  const int64_t output = c.mul({tokens, t5.d_model, element_bytes(plan.precision.text_encoder.compute)},
                               "the prompt embeddings");
  return with_slack(c.add({hidden, scores, output}, "the text encoder's activations"), c);
}

// One forward of `rows` sequences of `tokens` tokens (Note [Request memory estimate]).
int64_t transformer_forward(const TransformerConfig& t, const ltxmps::ExecutionPlan& plan, int64_t rows,
                            int64_t tokens, int64_t text_tokens, const Checked& c) {
  const int64_t e = element_bytes(plan.precision.transformer.compute);
  const int64_t hidden = c.mul({rows, tokens, t.inner_dim()}, "the transformer's hidden states");
  const int64_t caption = c.mul({rows, text_tokens, t.caption_channels + t.inner_dim(), e}, "the projected caption");
  const int64_t resident = c.add({c.mul({hidden, e}, "the hidden states"), c.mul({tokens, t.inner_dim(), 8}, "RoPE's cos and sin"),
                                  caption},
                                 "the transformer's resident activations");
  const int64_t block = c.mul({hidden, 10 * e + 4 * 4}, "one transformer block's activations");
  int64_t scores = 0;
  if (plan.attention.kernel != ltxmps::AttentionKernel::sdpa) {
    const int64_t self = c.mul({rows, t.num_attention_heads, tokens, tokens, 4 + e}, "the self-attention scores");
    const int64_t cross = c.mul({rows, t.num_attention_heads, tokens, text_tokens, 4 + e}, "the cross-attention scores");
    scores = c.add({self, cross}, "the attention scores");
  }
  return c.add({resident, block, scores}, "one transformer forward");
}

int64_t loop_activations(const TransformerConfig& t, const ltxmps::ExecutionPlan& plan, const MemoryRequest& r,
                         const LatentSize& l, const Checked& c) {
  const int64_t rows = c.mul({r.batch, r.guidance ? 2 : 1}, "the transformer's batch");
  const int64_t state = c.mul({kLoopStateTensors, rows, l.tokens, t.in_channels, 4}, "the denoising state");
  return with_slack(c.add({transformer_forward(t, plan, rows, l.tokens, r.text_tokens, c), state}, "the loop"), c);
}

int64_t effects_activations(const TransformerConfig& t, const ltxmps::ExecutionPlan& plan, const MemoryRequest& r,
                            const LatentSize& l, const Checked& c) {
  const int64_t chunk = std::min(*r.effects_query_chunk, l.tokens);
  const int64_t capture = c.mul({r.batch, t.num_attention_heads, chunk, l.tokens, 4 * 2}, "the effects pass's scores");
  return with_slack(
      c.add({transformer_forward(t, plan, r.batch, l.tokens, r.text_tokens, c), capture}, "the effects pass"), c);
}

// Elements of the decoder's widest level for a latent (tile) of f × h × w, one batch item.
int64_t decoder_widest(const VaeConfig& v, int64_t f, int64_t h, int64_t w, const Checked& c) {
  const auto& ch = v.decoder_block_out_channels;
  const size_t n = ch.size();
  auto rev = [](const auto& vec, size_t i) { return vec.at(vec.size() - 1 - i); };
  int64_t channels = rev(ch, 0);
  int64_t widest = c.mul({channels, f, h, w}, "the VAE decoder's activations");
  for (size_t i = 0; i < n; ++i) {
    const int64_t u = i < v.upsample_factor.size() ? rev(v.upsample_factor, i) : 1;
    channels = std::max<int64_t>(rev(ch, i) / u, 1);
    widest = std::max(widest, c.mul({channels, f, h, w}, "the VAE decoder's activations"));
    if (i < v.decoder_spatio_temporal_scaling.size() && rev(v.decoder_spatio_temporal_scaling, i)) {
      f = c.mul({f, 2}, "the VAE decoder's frames") - 1;
      h = c.mul({h, 2}, "the VAE decoder's height");
      w = c.mul({w, 2}, "the VAE decoder's width");
      widest = std::max(widest, c.mul({channels, f, h, w}, "the VAE decoder's activations"));
    }
  }
  const int64_t p = v.patch_size * v.patch_size;
  return std::max(widest, c.mul({v.out_channels, p, f, h, w}, "the VAE decoder's output"));
}

// Elements of the encoder's widest level for a video (tile) of f × h × w pixels, one batch item.
int64_t encoder_widest(const VaeConfig& v, int64_t f, int64_t h, int64_t w, const Checked& c) {
  f = ceil_div(f, v.patch_size_t);
  h = ceil_div(h, v.patch_size);
  w = ceil_div(w, v.patch_size);
  const auto& ch = v.block_out_channels;
  int64_t widest = c.mul({v.in_channels, v.patch_size_t * v.patch_size * v.patch_size, f, h, w}, "the VAE input");
  for (size_t i = 0; i < ch.size(); ++i) {
    const int64_t wider = std::max(ch[i], ch[std::min(i + 1, ch.size() - 1)]);
    widest = std::max(widest, c.mul({wider, f, h, w}, "the VAE encoder's activations"));
    if (i >= v.spatio_temporal_scaling.size() || !v.spatio_temporal_scaling[i]) continue;
    const std::string type = i < v.downsample_type.size() ? v.downsample_type[i] : "conv";
    if (type != "spatial") f = (f - 1) / 2 + 1;
    if (type != "temporal") h = ceil_div(h, 2), w = ceil_div(w, 2);
  }
  return widest;
}

struct VaeTile {
  int64_t items = 1;     // batch items decoded at once
  int64_t height = 0;    // pixels of one tile (the frame when tiling is off)
  int64_t width = 0;
};

VaeTile vae_tile(const ltxmps::ExecutionPlan& plan, const MemoryRequest& r) {
  VaeTiling tiling;  // the tile sizes load_ltx_model() sets with tiling on
  if (plan.vae.tiling) tiling.enable_tiling();
  VaeTile t;
  t.items = plan.vae.slicing ? 1 : r.batch;
  t.height = plan.vae.tiling ? std::min(r.height, tiling.tile_sample_min_height) : r.height;
  t.width = plan.vae.tiling ? std::min(r.width, tiling.tile_sample_min_width) : r.width;
  return t;
}

int64_t decode_activations(const VaeConfig& v, const ltxmps::ExecutionPlan& plan, const MemoryRequest& r,
                           const LatentSize& l, const Checked& c) {
  const auto tile = vae_tile(plan, r);
  const int64_t sc = v.spatial_compression();
  const int64_t widest = decoder_widest(v, l.frames, ceil_div(tile.height, sc), ceil_div(tile.width, sc), c);
  const int64_t e = element_bytes(plan.precision.vae.compute);
  const int64_t stack = c.mul({widest, tile.items, kVaeLiveTensors, e}, "the VAE decoder's activations");
  const int64_t video = c.mul({r.batch, v.out_channels, r.frames, r.height, r.width, e, plan.vae.tiling ? 3 : 2},
                              "the decoded video");
  const int64_t latents = c.mul({r.batch, v.latent_channels, l.frames, l.height, l.width, 4, 2}, "the latents");
  return with_slack(c.add({stack, video, latents}, "the VAE decode"), c);
}

int64_t encode_activations(const VaeConfig& v, const ltxmps::ExecutionPlan& plan, const MemoryRequest& r,
                           const Checked& c) {
  const auto tile = vae_tile(plan, r);
  const int64_t widest = encoder_widest(v, r.encode_frames, tile.height, tile.width, c);
  const int64_t e = element_bytes(plan.precision.vae.compute);
  const int64_t stack = c.mul({widest, tile.items, kVaeLiveTensors, e}, "the VAE encoder's activations");
  const int64_t video = c.mul({r.batch, v.in_channels, r.encode_frames, r.height, r.width, 4, 2}, "the input video");
  return with_slack(c.add({stack, video}, "the VAE encode"), c);
}

std::string advice(const ltxmps::ExecutionPlan& plan) {
  std::string s = "lower --num-frames, --height or --width";
  if (!plan.vae.tiling) s += ", use --vae-tiling";
  if (!plan.offload.enabled && (plan.device.is_cuda() || plan.device.is_xpu())) s += ", use --cpu-offload";
  return s;
}

}  // namespace

void MemoryRequest::validate() const {
  const std::pair<const char*, int64_t> sizes[] = {
      {"batch", batch}, {"frames", frames}, {"height", height}, {"width", width}, {"text_tokens", text_tokens}};
  for (const auto& [name, v] : sizes)
    LTXMPS_CHECK(v >= 1, "memory estimate: ", name, " must be >= 1, got ", v);
  LTXMPS_CHECK(encode_frames >= 0, "memory estimate: encode_frames must be >= 0, got ", encode_frames);
  LTXMPS_CHECK(!effects_query_chunk || *effects_query_chunk >= 1, "memory estimate: effects_query_chunk must be >= 1, got ",
               effects_query_chunk.value_or(0));
}

MemoryEstimate estimate_request_memory(const TransformerConfig& transformer, const VaeConfig& vae,
                                       const std::optional<T5Config>& text_encoder, const ltxmps::ExecutionPlan& plan,
                                       const MemoryRequest& r) {
  r.validate();
  const Checked c("a request of " + std::to_string(r.batch) + " x " + std::to_string(r.frames) + " frames of " +
                  std::to_string(r.width) + "x" + std::to_string(r.height));
  const bool encode_text = r.encode_text && text_encoder.has_value();
  const auto w = component_weights(transformer, vae, encode_text ? text_encoder : std::nullopt, plan, c);
  const auto l = latent_size(transformer, vae, r, c);
  const bool offload = plan.offload.enabled;
  // A streamed transformer holds its ring and its non-block weights on the device, its blocks in host memory
  // (Note [Weight budget]).
  const bool streamed = plan.weights.planned && ltxmps::is_streamed(plan.weights.transformer.mode);
  const int64_t transformer_device = streamed ? plan.weights.transformer.device_bytes : w.transformer;
  // Its ring is part of transformer_device (under offload it leaves the device with the transformer: Note
  // [Streamed weights]); a streamed T5 holds one block there at a time.
  const bool t5_streamed = plan.weights.planned && plan.weights.text_encoder.mode == ltxmps::WeightMode::streamed;
  const int64_t t5_device = t5_streamed ? plan.weights.text_encoder.device_bytes : w.text_encoder;
  // FP8 storage's dequantized layer is held while the transformer runs (Note [Weight storage]).
  const int64_t dequantized = fp8_dequantized_bytes(transformer, transformer_runtime(plan));
  MemoryEstimate est;
  est.weights_bytes = c.add({w.transformer, w.vae, w.text_encoder}, "the weights");
  est.advice = advice(plan);
  bool t5_resident = encode_text;
  // Without offload every component stays on the device; with it a phase holds its own component only.
  auto on_device = [&](int64_t own) {
    if (offload) return own;
    return c.add({transformer_device, w.vae, t5_resident ? t5_device : 0}, "the weights");
  };
  if (encode_text) {
    est.phases.push_back({"text encoder", on_device(t5_device), text_encoder_activations(*text_encoder, plan, r, c)});
    t5_resident = !r.release_text_encoder;
  }
  if (r.encode_frames > 0) est.phases.push_back({"vae encode", on_device(w.vae), encode_activations(vae, plan, r, c)});
  const auto running_transformer = [&] { return c.add({on_device(transformer_device), dequantized}, "the weights"); };
  if (r.effects_query_chunk)
    est.phases.push_back({"effects pass", running_transformer(), effects_activations(transformer, plan, r, l, c)});
  if (r.denoise)
    est.phases.push_back({"transformer loop", running_transformer(), loop_activations(transformer, plan, r, l, c)});
  if (r.decode) est.phases.push_back({"vae decode", on_device(w.vae), decode_activations(vae, plan, r, l, c)});
  for (const auto& p : est.phases) {
    const int64_t total = c.add({p.weights_bytes, p.activation_bytes}, "a phase's memory");
    if (total > est.peak_bytes) est.peak_bytes = total, est.peak_phase = p.name;
  }
  if (offload) est.host_bytes = est.weights_bytes;
  else if (streamed) est.host_bytes = w.transformer;
  return est;
}

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"GiB", "TiB", "PiB", "EiB"};
  char buf[64];
  if (bytes < 1024 * kMiB) {
    std::snprintf(buf, sizeof buf, "%.0f MiB", static_cast<double>(bytes) / static_cast<double>(kMiB));
    return buf;
  }
  double v = static_cast<double>(bytes) / static_cast<double>(1024 * kMiB);
  size_t u = 0;
  while (v >= 1024.0 && u + 1 < std::size(units)) v /= 1024.0, ++u;
  std::snprintf(buf, sizeof buf, v < 10.0 ? "%.2f %s" : "%.1f %s", v, units[u]);
  return buf;
}

std::string MemoryEstimate::describe() const {
  std::ostringstream os;
  os << "about " << format_bytes(peak_bytes) << " at peak";
  for (const auto& p : phases)
    if (p.name == peak_phase)
      os << " (" << p.name << ": weights " << format_bytes(p.weights_bytes) << " + activations "
         << format_bytes(p.activation_bytes) << ")";
  os << "; phases:";
  for (size_t i = 0; i < phases.size(); ++i)
    os << (i ? ", " : " ") << phases[i].name << " " << format_bytes(phases[i].total_bytes());
  os << "; weights " << format_bytes(weights_bytes);
  if (host_bytes > 0) os << ", " << format_bytes(host_bytes) << " held in host memory (CPU offload or streamed blocks)";
  return os.str();
}

namespace {

// cgroup v2 limits a container below what /proc/meminfo reports for the whole machine.
std::optional<int64_t> cgroup_available() {
  std::ifstream max_file("/sys/fs/cgroup/memory.max"), current_file("/sys/fs/cgroup/memory.current");
  std::string max_text;
  int64_t current = 0;
  if (!(max_file >> max_text) || max_text == "max" || !(current_file >> current)) return std::nullopt;
  try {
    return std::max<int64_t>(std::stoll(max_text) - current, 0);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::optional<MemoryLimit> linux_available() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  int64_t kib = 0;
  while (meminfo >> key >> kib >> unit) {
    if (key != "MemAvailable:") continue;
    MemoryLimit limit{kib * 1024, "the host (MemAvailable of /proc/meminfo)"};
    if (const auto cg = cgroup_available(); cg && *cg < limit.bytes)
      limit = MemoryLimit{*cg, "the host (this cgroup's memory.max less its memory.current)"};
    return limit;
  }
  return std::nullopt;
}

int64_t cuda_cached_bytes(const c10::Device& device) {
  const auto stats = ltxmps::memory_stats(device);
  return stats.reserved && stats.allocated ? std::max<int64_t>(*stats.reserved - *stats.allocated, 0) : 0;
}

std::optional<MemoryLimit> cuda_available(const c10::Device& device) {
  if (!torch::cuda::is_available()) return std::nullopt;
  const c10::DeviceIndex index = device.has_index() ? device.index() : 0;
  size_t free = 0, total = 0;
#if defined(LTXMPS_WITH_CUDA)
  const c10::cuda::CUDAGuard guard(index);
  LTXMPS_CHECK(cudaMemGetInfo(&free, &total) == cudaSuccess, "available_memory: cudaMemGetInfo failed on ", device);
#elif LTXMPS_TORCH_AT_LEAST(2, 9)
  std::tie(free, total) = c10::getDeviceAllocator(c10::DeviceType::CUDA)->getMemoryInfo(index);
#else
  (void)index;
  return std::nullopt;
#endif
  // Blocks this process's caching allocator holds but no tensor uses are free for the request too.
  const int64_t bytes = static_cast<int64_t>(free) + cuda_cached_bytes(device);
  return MemoryLimit{bytes, "cuda:" + std::to_string(index) + " (free device memory of " +
                                format_bytes(static_cast<int64_t>(total)) + ")"};
}

}  // namespace

MemoryLimit available_host_memory() {
#if defined(__linux__)
  if (auto limit = linux_available()) return *limit;
#endif
#if defined(__APPLE__)
  vm_statistics64_data_t vm{};
  mach_msg_type_number_t count = HOST_VM_INFO64_COUNT;
  if (host_statistics64(mach_host_self(), HOST_VM_INFO64, reinterpret_cast<host_info64_t>(&vm), &count) ==
      KERN_SUCCESS) {
    const int64_t pages = static_cast<int64_t>(vm.free_count) + vm.inactive_count + vm.purgeable_count;
    return MemoryLimit{pages * static_cast<int64_t>(sysconf(_SC_PAGESIZE)),
                       "the host (free, inactive and purgeable pages; unified memory)"};
  }
#endif
#if defined(_SC_AVPHYS_PAGES)
  const long pages = sysconf(_SC_AVPHYS_PAGES);
  LTXMPS_CHECK(pages > 0, "available_host_memory: sysconf(_SC_AVPHYS_PAGES) failed");
  return MemoryLimit{static_cast<int64_t>(pages) * sysconf(_SC_PAGESIZE), "the host (available physical pages)"};
#else
  const long pages = sysconf(_SC_PHYS_PAGES);
  LTXMPS_CHECK(pages > 0, "available_host_memory: sysconf(_SC_PHYS_PAGES) failed");
  return MemoryLimit{static_cast<int64_t>(pages) * sysconf(_SC_PAGESIZE), "the host (physical memory)"};
#endif
}

std::optional<MemoryLimit> available_memory(const ltxmps::ExecutionPlan& plan) {
  switch (plan.device.type()) {
    case c10::DeviceType::CPU: return available_host_memory();
    case c10::DeviceType::MPS: {
      auto limit = available_host_memory();
      limit.what += " shared with MPS";
      return limit;
    }
    case c10::DeviceType::CUDA: return cuda_available(plan.device);
    default: return std::nullopt;
  }
}

namespace {

[[noreturn]] void refuse(const MemoryEstimate& estimate, int64_t needed, const std::string& detail,
                         const MemoryLimit& limit, const std::string& request_description) {
  std::ostringstream os;
  os << request_description << " needs about " << format_bytes(needed) << " (" << detail << ") but " << limit.what
     << " has " << format_bytes(limit.bytes) << " available; "
     << (estimate.advice.empty() ? std::string("lower --num-frames, --height or --width") : estimate.advice);
  throw ltxmps::Error(os.str());
}

}  // namespace

void check_request_fits(const MemoryEstimate& estimate, const MemoryLimit& limit,
                        const std::string& request_description) {
  if (estimate.peak_bytes <= limit.bytes) return;
  std::string detail = "peak in " + estimate.peak_phase;
  for (const auto& p : estimate.phases)
    if (p.name == estimate.peak_phase)
      detail += ": weights " + format_bytes(p.weights_bytes) + " + activations " + format_bytes(p.activation_bytes);
  refuse(estimate, estimate.peak_bytes, detail, limit, request_description);
}

void check_request_fits(const MemoryEstimate& estimate, const ltxmps::ExecutionPlan& plan,
                        const std::string& request_description) {
  if (const auto limit = available_memory(plan)) check_request_fits(estimate, *limit, request_description);
  if (estimate.host_bytes == 0) return;
  const auto host = available_host_memory();
  if (estimate.host_bytes > host.bytes)
    refuse(estimate, estimate.host_bytes, "the weights held in host memory under CPU offload or streaming", host,
           request_description);
}

std::optional<ltxmps::Diagnostic> memory_warning(const MemoryEstimate& estimate, const MemoryLimit& limit,
                                                 double fraction) {
  LTXMPS_CHECK(fraction > 0 && fraction <= 1, "memory_warning: fraction must be in (0, 1], got ", fraction);
  if (static_cast<double>(estimate.peak_bytes) <= fraction * static_cast<double>(limit.bytes)) return std::nullopt;
  if (estimate.peak_bytes > limit.bytes) return std::nullopt;  // check_request_fits() refuses it instead
  return ltxmps::Diagnostic{ltxmps::Severity::warning, "memory", "memory.near_limit",
                            "the request needs " + estimate.describe() + "; that is more than " +
                                std::to_string(static_cast<int>(fraction * 100)) + " % of the " +
                                format_bytes(limit.bytes) + " available on " + limit.what +
                                ": it may fail if other processes take memory meanwhile"};
}

std::optional<T5Config> read_text_encoder_config(const std::filesystem::path& model_root) {
  const auto path = model_root / "text_encoder" / "config.json";
  if (!std::filesystem::is_regular_file(path)) return std::nullopt;
  return T5Config::from_file(path);
}

}  // namespace ltxmps::pipeline
