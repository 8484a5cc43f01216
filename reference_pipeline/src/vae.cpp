// AutoencoderKLLTXVideo's forward passes, tiling and slicing, following diffusers 0.42.1
// models/autoencoders/autoencoder_kl_ltx.py top to bottom (the weights and the loading: vae_weights.cpp).

#include "ltxmps_pipeline/vae.hpp"

#include "vae_cpu.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/random.hpp"

#include "ltxmps_kernels/fused.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace ltxmps::pipeline {

// ---------------------------------------------------------------------------------------------------
// Building blocks

namespace {

// Note [Causal conv padding]
// LTXVideoCausalConv3d.forward: no temporal padding inside the Conv3d; instead kt−1 copies of frame 0
// are prepended (causal), or (kt−1)/2 copies of the first and of the last frame are added
// (non-causal). The Conv3d zero-pads (kh/2, kw/2) spatially. A kt = 1 kernel gets no frames (diffusers
// concatenates empty tensors, which changes nothing). diffusers materializes the copies with `repeat` and then
// concatenates; one `cat` of views of the edge frames writes the same padded input without those copies.
at::Tensor conv3d(const VaeConv3dWeights& c, const at::Tensor& x) {
  const int64_t kt = c.weight.size(2), kh = c.weight.size(3), kw = c.weight.size(4);
  at::Tensor h = x;
  if (kt > 1) {
    const size_t front = static_cast<size_t>(c.is_causal ? kt - 1 : (kt - 1) / 2);
    const size_t back = c.is_causal ? 0 : front;
    std::vector<at::Tensor> parts(front, x.narrow(2, 0, 1));
    parts.push_back(x);
    parts.insert(parts.end(), back, x.narrow(2, x.size(2) - 1, 1));
    h = at::cat(parts, 2);
  }
  if (detail::is_cpu_float(h)) return detail::cpu_conv3d(c, h);  // vae_cpu.cpp
  if (!h.is_cuda() || !c.bias.defined()) return at::conv3d(h, c.weight, c.bias, c.stride, {0, kh / 2, kw / 2});
  // ATen's bias add after cuDNN's convolution, with vector accesses on a channels-last output (Note [Channel bias on
  // channels-last rows] in ltxmps_kernels): the same values.
  return ltxmps::kernels::add_channel_bias_(at::conv3d(h, c.weight, {}, c.stride, {0, kh / 2, kw / 2}), c.bias);
}

// Note [VAE RMSNorm]
// diffusers `RMSNorm(C, eps=1e-8, elementwise_affine=False)` applied to `x.movedim(1, -1)`: the mean of
// squares in float32, `x * rsqrt(var + eps)` (promotes to float32), cast back to the input dtype. The
// same op sequence on the same permuted view keeps the reduction order identical.
at::Tensor channel_rms_norm(const at::Tensor& x) {
  const auto h = x.movedim(1, -1);
  const auto variance = h.to(at::kFloat).pow(2).mean(-1, /*keepdim=*/true);
  return (h * at::rsqrt(variance + detail::kChannelRmsNormEps)).to(x.scalar_type()).movedim(-1, 1);
}

// diffusers `get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)` in float32:
// exponent = -ln(10000)·j / 128, arg = t·exp(exponent), output [cos(arg), sin(arg)].
at::Tensor sinusoidal_embedding(const at::Tensor& timesteps) {
  constexpr int64_t half = 128;
  const auto exponent = at::arange(0, half, timesteps.options().dtype(at::kFloat)).mul(-std::log(10000.0)).div(half);
  const auto arg = timesteps.unsqueeze(1).to(at::kFloat) * at::exp(exponent).unsqueeze(0);
  return at::cat({at::cos(arg), at::sin(arg)}, -1);
}

// PixArtAlphaCombinedTimestepSizeEmbeddings(dim, 0) without additional conditions: the projection in
// float32, cast to the hidden dtype, linear_1, SiLU, linear_2; viewed as [B, dim, 1, 1, 1].
at::Tensor embed_timestep(const VaeTimeEmbedderWeights& te, const at::Tensor& temb, int64_t batch, at::ScalarType dtype) {
  auto h = sinusoidal_embedding(temb.flatten()).to(dtype);
  h = apply_linear(te.linear_2, at::silu(apply_linear(te.linear_1, h)));
  return h.view({batch, -1, 1, 1, 1});
}

// A small CPU tensor moved to `like`'s device without a synchronization: a copy to CUDA from pageable memory
// waits until the device has run everything queued before it; from pinned memory it is queued like a kernel (the
// host allocator keeps the buffer until the copy has run).
at::Tensor to_device_queued(at::Tensor t, const at::Tensor& like) {
  if (like.is_cuda()) t = t.pin_memory();
  return t.to(t.options().device(like.device()), /*non_blocking=*/true);
}

// Noise for LTXVideoResnetBlock3d's injection: an (H, W) map, as `torch.randn(spatial_shape, ...)`.
at::Tensor spatial_noise(int64_t height, int64_t width, const at::Tensor& like, at::Generator* generator) {
  if (generator == nullptr) return at::randn({height, width}, like.options());
  // at::randn takes the generator's lock itself.
  return to_device_queued(at::randn({height, width}, *generator, like.options().device(c10::kCPU)), like);
}

at::Tensor inject_noise(const at::Tensor& h, const at::Tensor& per_channel_scale, at::Generator* generator) {
  const auto noise = spatial_noise(h.size(3), h.size(4), h, generator).unsqueeze(0);  // [1, H, W]
  return h + (noise * per_channel_scale).unsqueeze(0).unsqueeze(2);
}

// A channels-last activation (Note [VAE channels-last on CUDA]): its channels are the innermost dimension.
bool is_channels_last(const at::Tensor& x) {
  return x.dim() == 5 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
}

// Note [VAE norms through the row kernel]
// In ATen ops the norm and modulation before each convolution move about 42 bytes per value (a float32 copy, pow,
// mean, the product, the cast back, two modulation passes); with the SiLU they were most of the elementwise work
// that took 152 of a bf16 decode's 228 ms of GPU time against 76 ms of convolutions (docs/benchmarks.md). A
// channels-last activation is a stack of rows of C contiguous channels, which is the [B, S, D] input of
// ltxmps::kernels::rms_norm_modulate_silu: it reads each row once and writes only the activation, with the same
// rounding points as channel_rms_norm and `h * (1 + scale) + shift` where conditioned (Note [VAE RMSNorm];
// docs/kernels.md), its sum of squares in another order, and a SiLU within a few thousandths of a rounding of ATen's.
at::Tensor cuda_channel_norm_silu(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  const int64_t B = x.size(0), C = x.size(1);
  const auto rows = x.permute({0, 2, 3, 4, 1}).reshape({B, -1, C});  // a view of channels-last x
  const auto per_entry = [C](const at::Tensor& t) { return t.defined() ? t.reshape({t.size(0), 1, C}) : t; };
  return ltxmps::kernels::rms_norm_modulate_silu(rows, detail::kChannelRmsNormEps, per_entry(scale), per_entry(shift))
      .view({B, x.size(2), x.size(3), x.size(4), C})
      .permute({0, 4, 1, 2, 3});
}

// Note [VAE activation lifetimes]
// channel_rms_norm, the modulation `h * (1 + scale) + shift` where given, then SiLU in place: `at::silu(h)` would keep
// the normalized h alive beside its SiLU during the convolution that follows (diffusers' `hidden_states =
// self.nonlinearity(hidden_states)` frees it first). h is always a fresh tensor here, never `x`, so the in-place
// form holds one full-size activation less than either. Callers assign the result to the variable that held `x`
// where `x` is not needed afterwards, so that it is released before the convolution (diffusers rebinds
// `hidden_states` at each step to the same effect). CPU float32 normalizes in one pass (vae_cpu.cpp), a channels-last
// CUDA activation in one kernel that also applies the SiLU (Note [VAE norms through the row kernel]).
at::Tensor norm_silu(const at::Tensor& x, const at::Tensor& shift = {}, const at::Tensor& scale = {}) {
  at::Tensor h;
  if (detail::is_cpu_float(x)) {
    h = detail::cpu_channel_rms_norm(x, shift, scale);
  } else if (x.is_cuda() && is_channels_last(x) && ltxmps::kernels::built_with_cuda()) {
    return cuda_channel_norm_silu(x, shift, scale);
  } else {
    h = channel_rms_norm(x);
    if (shift.defined()) h = h * (1 + scale) + shift;
  }
  return at::silu_(h);
}

// LTXVideoResnetBlock3d.forward; `temb` is the block's embedding [B, 4C, 1, 1, 1] (conditioned) or undefined.
at::Tensor resnet_forward(const VaeResnetWeights& r, const at::Tensor& inputs, const at::Tensor& temb,
                          at::Generator* generator) {
  at::Tensor shift_1, scale_1, shift_2, scale_2;
  if (r.scale_shift_table.defined()) {
    // (shift_1, scale_1, shift_2, scale_2) = temb.unflatten(1, (4, -1)) + table[None, ..., None, None, None]
    const auto mod = temb.unflatten(1, {4, -1}) +
                     r.scale_shift_table.unsqueeze(0).unsqueeze(-1).unsqueeze(-1).unsqueeze(-1);
    const auto parts = mod.unbind(1);
    shift_1 = parts[0];
    scale_1 = parts[1];
    shift_2 = parts[2];
    scale_2 = parts[3];
  }
  auto h = conv3d(r.conv1, norm_silu(inputs, shift_1, scale_1));
  if (r.per_channel_scale1.defined()) h = inject_noise(h, r.per_channel_scale1, generator);
  h = norm_silu(h, shift_2, scale_2);  // conv1's output is released before conv2 runs (Note [VAE activation lifetimes])
  h = conv3d(r.conv2, h);              // dropout is the identity in eval mode
  if (r.per_channel_scale2.defined()) h = inject_noise(h, r.per_channel_scale2, generator);
  at::Tensor shortcut = inputs;
  if (r.norm3_weight.defined()) {
    shortcut =
        at::layer_norm(inputs.movedim(1, -1), {inputs.size(1)}, r.norm3_weight, r.norm3_bias, r.norm3_eps).movedim(-1, 1);
  }
  if (r.conv_shortcut.weight.defined()) shortcut = conv3d(r.conv_shortcut, shortcut);
  return h + shortcut;
}

}  // namespace

namespace {

// Note [VAE channels-last on CUDA]
// cuDNN's 3-D convolutions on Hopper run as implicit GEMMs over channels-last (NDHWC) data: a channels-first
// (NCDHW) input is transposed into that layout and the output back, around every convolution. With the weights
// stored channels-last (VaeRuntime::channels_last, converted at load) ATen hands cuDNN channels-last operands and
// keeps the output channels-last; the elementwise ops follow their input's layout, and the channel norms, which
// read `x.movedim(1, -1)`, then reduce over contiguous rows instead of a strided dimension. Only the depth-to-space
// and space-to-depth shuffles need their own order: written for channels-first they would copy into channels-first
// and the next convolution would transpose back. The results are those of the channels-first layout up to the
// convolution algorithms' own rounding (cuDNN picks per layout). The plan chooses it (Note [VAE layout in the
// plan]); the encoder's output is made channels-first again, and the decoder's unpatchify writes channels-first.

// Depth-to-space of LTXVideoUpsampler3d: [B, C'·st·sh·sw, T, H, W] -> [B, C', T·st, H·sh, W·sw] with the
// channel layout (c', st, sh, sw).
at::Tensor depth_to_space(const at::Tensor& x, const std::array<int64_t, 3>& s) {
  if (is_channels_last(x)) {  // through [B, T, H, W, C]: one copy, channels-last out
    return x.permute({0, 2, 3, 4, 1})
        .unflatten(4, {-1, s[0], s[1], s[2]})
        .permute({0, 1, 5, 2, 6, 3, 7, 4})
        .reshape({x.size(0), x.size(2) * s[0], x.size(3) * s[1], x.size(4) * s[2], -1})
        .permute({0, 4, 1, 2, 3});
  }
  return x.reshape({x.size(0), -1, s[0], s[1], s[2], x.size(2), x.size(3), x.size(4)})
      .permute({0, 1, 5, 2, 6, 3, 7, 4})
      .flatten(6, 7)
      .flatten(4, 5)
      .flatten(2, 3);
}

// Space-to-depth of LTXVideoDownsampler3d: channel index ((c·st + it)·sh + ih)·sw + iw.
at::Tensor space_to_depth(const at::Tensor& x, const std::array<int64_t, 3>& s) {
  if (is_channels_last(x)) {
    return x.permute({0, 2, 3, 4, 1})
        .unflatten(3, {-1, s[2]})
        .unflatten(2, {-1, s[1]})
        .unflatten(1, {-1, s[0]})
        .permute({0, 1, 3, 5, 7, 2, 4, 6})
        .reshape({x.size(0), x.size(2) / s[0], x.size(3) / s[1], x.size(4) / s[2], -1})
        .permute({0, 4, 1, 2, 3});
  }
  return x.unflatten(4, {-1, s[2]}).unflatten(3, {-1, s[1]}).unflatten(2, {-1, s[0]}).permute({0, 1, 3, 5, 7, 2, 4, 6}).flatten(1, 4);
}

// Note [LTX upsampler]
// LTXVideoUpsampler3d.forward with stride (2, 2, 2): conv (in -> in·8/u), depth-to-space, drop the
// first st−1 = 1 frames. The residual path depth-to-spaces the input (in/8 channels), tiles it r = 8/u
// times along channels with `repeat` (channel k = input channel k mod in/8) and drops the same frame.
// Here the tiling is a broadcast: h viewed as [B, r, in/8, ...] plus the residual as [B, 1, in/8, ...] adds
// the same pairs of values as diffusers' `h + residual`, without writing and reading the repeated copy.
at::Tensor upsampler_forward(const VaeUpsamplerWeights& u, const at::Tensor& x) {
  constexpr std::array<int64_t, 3> stride{2, 2, 2};
  const int64_t drop = stride[0] - 1;
  auto h = depth_to_space(conv3d(u.conv, x), stride);
  h = h.narrow(2, drop, h.size(2) - drop);
  if (!u.residual) return h;
  auto residual = depth_to_space(x, stride);
  residual = residual.narrow(2, drop, residual.size(2) - drop);
  return (h.unflatten(1, {8 / u.upscale_factor, -1}) + residual.unsqueeze(1)).flatten(1, 2);
}

// Note [LTX 0.9.5 downsampler]
// LTXVideoDownsampler3d.forward: prepend st−1 copies of frame 0 (x[:, :, :st−1]); the residual is the
// space-to-depth of that, averaged over groups of `group_size` consecutive channels; the main path is
// the stride-1 causal conv followed by the same space-to-depth.
at::Tensor downsampler_forward(const VaeDownsamplerWeights& d, const at::Tensor& x) {
  if (!d.space_to_depth) return conv3d(d.conv, x);
  const auto h = at::cat({x.narrow(2, 0, d.stride[0] - 1), x}, 2);
  const auto residual = space_to_depth(h, d.stride).unflatten(1, {-1, d.group_size}).mean(2);
  return space_to_depth(conv3d(d.conv, h), d.stride) + residual;
}

// Note [Deferred VAE finiteness checks]
// Reading "is this stage finite?" on the host at each check would make the host wait for the device at every
// decoder stage of every tile (five synchronizations per tile: hundreds with framewise tiles), and while it waits
// it queues nothing, so the device idles through the host's work that follows (the next tile's launches, the tile
// blending). Each check instead queues one reduction, `aminmax` (a NaN propagates into both results and an Inf
// shows in one of them; one read of the activation, no full-size bool tensor as isfinite().all() writes), and
// keeps the two 0-dim results under the stage's name. finish() reads all of them in one copy, the one
// synchronization of an encode or decode, and names the first failing check in execution order, the stage an
// immediate read would have named. The price: a NaN/Inf is reported after the whole decode instead of at its
// stage. The input latents are still read before decoding (decode()).
class FiniteChecks {
 public:
  FiniteChecks(const VaeRuntime& runtime, const char* what) : enabled_(runtime.check_finite), what_(what) {}

  // Queues the check of `t`, the output of `stage`.
  void check(const at::Tensor& t, std::string stage) {
    if (!enabled_ || t.numel() == 0) return;
    // A dense tensor's elements are one block of memory, read in place through a flat view: aminmax of a
    // channels-last activation would first copy it to channels-first (12.6 ms of a bf16 decode on CUDA).
    auto [lo, hi] = at::aminmax(t.is_non_overlapping_and_dense() ? t.as_strided({t.numel()}, {1}) : t);
    pending_.push_back({std::move(stage), std::move(lo), std::move(hi)});
  }

  // Reads the queued checks (one synchronization) and throws for the first that failed.
  void finish() {
    if (pending_.empty()) return;
    std::vector<at::Tensor> extremes;
    extremes.reserve(2 * pending_.size());
    for (const auto& p : pending_) {
      extremes.push_back(p.lo);
      extremes.push_back(p.hi);
    }
    const auto finite = at::isfinite(at::stack(extremes)).view({-1, 2}).all(1).cpu();
    const auto* ok = finite.data_ptr<bool>();
    for (size_t i = 0; i < pending_.size(); ++i)
      if (!ok[i]) fail(pending_[i]);
    pending_.clear();
  }

 private:
  struct Pending {
    std::string stage;
    at::Tensor lo, hi;  // 0-dim, the stage's dtype and device
  };

  [[noreturn]] void fail(const Pending& p) const {
    const bool decode = std::string(what_) == "decode";
    throw Error(c10::str("vae ", what_, ": ", p.stage, " produced NaN/Inf values (", c10::toString(p.lo.scalar_type()),
                         " on ", p.lo.device(), "); the ", decode ? "decoded frames" : "latents",
                         " would contain NaN/Inf. Run the VAE in float32 (vae_float32, --precision fp32) and check "
                         "the weights and inputs for NaN/Inf"));
  }

  bool enabled_;
  const char* what_;  // "encode" or "decode"
  std::vector<Pending> pending_;
};

// Note [In-place tile blending]
// diffusers' blend_v / blend_h / blend_t write into the stored tile `b` row by row:
// b[y] = a[−e+y]·(1 − y/e) + b[y]·(y/e) for y < e = min(a.size, b.size, extent). Because the stored
// tiles are modified in place, a later blend reads already-blended neighbours; the callers below keep
// diffusers' row-major order (vertical, then horizontal) so the result is the same.
// Within one blend the rows are independent (a and b are different tiles), so groups of rows are blended at
// once with the weights as a tensor along `dim`, in place: b·(y/e) into b, then a·(1 − y/e) added, three
// operations per group instead of six per row (e = 64 rows for the default tiles: hundreds of launches per tile
// pair). A group holds up to kBlendGroup elements, so that on the CPU the one temporary stays in cache (a whole
// temporal overlap at once is slower there than diffusers' rows). The weights are y/e and 1 − y/e in double, as
// Python computes them, cast to the type a Python float takes in a tensor-scalar product (the operation's compute
// type: float for half precision, whose products are rounded back before the sum as diffusers' are), and the sum
// is commutative, so every value is the same.
constexpr int64_t kBlendGroup = int64_t{1} << 20;

void blend(const at::Tensor& a, const at::Tensor& b, int64_t dim, int64_t extent) {
  extent = std::min({a.size(dim), b.size(dim), extent});
  if (extent <= 0) return;
  const auto dtype = b.scalar_type();
  const auto compute = at::isReducedFloatingType(dtype) ? at::kFloat : dtype;
  std::vector<int64_t> shape(static_cast<size_t>(b.dim()), 1);
  shape[static_cast<size_t>(dim)] = extent;
  // Made on the CPU: not every device has float64 (MPS).
  const auto y_over_e = at::arange(extent, at::TensorOptions().dtype(at::kDouble)).div_(static_cast<double>(extent));
  const auto weight_b = to_device_queued(y_over_e.to(compute).view(shape), b);
  const auto weight_a = to_device_queued((1 - y_over_e).to(compute).view(shape), b);
  const int64_t rows = std::max<int64_t>(1, kBlendGroup / std::max<int64_t>(1, b.numel() / b.size(dim)));
  for (int64_t y = 0; y < extent; y += rows) {
    const int64_t n = std::min(rows, extent - y);
    const auto tail = a.narrow(dim, a.size(dim) - extent + y, n);
    b.narrow(dim, y, n).mul_(weight_b.narrow(dim, y, n)).add_((tail * weight_a.narrow(dim, y, n)).to(dtype));
  }
}

// The row-major spatial tile loop shared by tiled_encode and tiled_decode: `run(i, j)` produces the tile
// at input offsets (i, j); tiles are blended over `blend_{h,w}` and cropped to `keep_{h,w}`.
at::Tensor spatial_tiles(int64_t height, int64_t width, int64_t stride_h, int64_t stride_w, int64_t blend_h,
                         int64_t blend_w, int64_t keep_h, int64_t keep_w,
                         const std::function<at::Tensor(int64_t, int64_t)>& run) {
  std::vector<std::vector<at::Tensor>> rows;
  for (int64_t i = 0; i < height; i += stride_h) {
    rows.emplace_back();
    for (int64_t j = 0; j < width; j += stride_w) rows.back().push_back(run(i, j));
  }
  std::vector<at::Tensor> result_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<at::Tensor> result_row;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      const auto& tile = rows[i][j];
      if (i > 0) blend(rows[i - 1][j], tile, 3, blend_h);
      if (j > 0) blend(rows[i][j - 1], tile, 4, blend_w);
      result_row.push_back(tile.slice(3, 0, keep_h).slice(4, 0, keep_w));
    }
    result_rows.push_back(at::cat(result_row, 4));
  }
  return at::cat(result_rows, 3);
}

// The temporal tile loop shared by _temporal_tiled_encode and _temporal_tiled_decode: `run(i)` produces
// the (already trimmed) tile at frame offset i; tile 0 keeps keep + 1 frames, the others keep frames.
at::Tensor temporal_tiles(int64_t frames, int64_t stride, int64_t blend_extent, int64_t keep,
                          const std::function<at::Tensor(int64_t)>& run) {
  std::vector<at::Tensor> row;
  for (int64_t i = 0; i < frames; i += stride) row.push_back(run(i));
  std::vector<at::Tensor> result;
  for (size_t i = 0; i < row.size(); ++i) {
    if (i > 0) {
      blend(row[i - 1], row[i], 2, blend_extent);
      result.push_back(row[i].slice(2, 0, keep));
    } else {
      result.push_back(row[i].slice(2, 0, keep + 1));
    }
  }
  return at::cat(result, 2);
}

int64_t tile_step(int64_t sample_size, int64_t compression, const char* name) {
  const int64_t step = sample_size / compression;
  LTXMPS_CHECK(step > 0, "VAE tiling: ", name, " = ", sample_size, " is smaller than the compression ", compression,
               " (it would be 0 latent units; diffusers fails with a zero range step)");
  return step;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Encoder and decoder (their checks are read by the caller: Note [Deferred VAE finiteness checks])

namespace {

void check_layout(const VaeRuntime& runtime, const at::Tensor& input, const char* what) {
  LTXMPS_CHECK(!runtime.channels_last || input.is_cuda(), "vae ", what,
               ": VaeRuntime::channels_last is for CUDA (Note [VAE channels-last on CUDA]), the input is on ",
               input.device().str());
}

// LTXVideoEncoder3d.forward.
at::Tensor run_encoder(const VaeModel& m, const at::Tensor& video, FiniteChecks& checks) {
  check_layout(m.runtime, video, "encode");
  const auto& encoder = m.encoder;
  const int64_t p = m.config.patch_size, pt = m.config.patch_size_t;
  const int64_t B = video.size(0), C = video.size(1), F = video.size(2), H = video.size(3), W = video.size(4);
  // Patchify with channel order (c, pt, pw, ph): the W sub-index comes before the H sub-index.
  auto h = video.reshape({B, C, F / pt, pt, H / p, p, W / p, p}).permute({0, 1, 3, 7, 5, 2, 4, 6}).flatten(1, 4);
  h = conv3d(encoder.conv_in, h);
  for (size_t i = 0; i < encoder.down_blocks.size(); ++i) {
    const auto& block = encoder.down_blocks[i];
    for (const auto& r : block.resnets) h = resnet_forward(r, h, {}, nullptr);
    if (block.downsampler) h = downsampler_forward(*block.downsampler, h);
    if (block.conv_out) h = resnet_forward(*block.conv_out, h, {}, nullptr);
    checks.check(h, "encoder.down_blocks." + std::to_string(i));
  }
  for (const auto& r : encoder.mid_block.resnets) h = resnet_forward(r, h, {}, nullptr);
  h = norm_silu(h);  // released before conv_out runs (Note [VAE activation lifetimes])
  h = conv3d(encoder.conv_out, h);
  checks.check(h, "encoder.conv_out");
  // The last channel is the single log-variance channel; it is repeated to latent_channels channels.
  const auto last = h.narrow(1, h.size(1) - 1, 1).repeat({1, h.size(1) - 2, 1, 1, 1});
  return at::cat({h, last}, 1).contiguous();  // channels-first out (Note [VAE channels-last on CUDA])
}

// LTXVideoDecoder3d.forward.
at::Tensor run_decoder(const VaeModel& m, const at::Tensor& latents, const at::Tensor& temb_in,
                       at::Generator* noise_generator, FiniteChecks& checks) {
  check_layout(m.runtime, latents, "decode");
  const auto& decoder = m.decoder;
  const int64_t B = latents.size(0);
  auto h = conv3d(decoder.conv_in, latents);
  // Note [Decoder timestep]
  // temb (the decode timestep) is multiplied by the learned timestep_scale_multiplier (1000) and each
  // time embedder (mid block, each up block, the output) embeds it independently.
  at::Tensor temb = temb_in;
  if (decoder.timestep_scale_multiplier.defined()) temb = temb * decoder.timestep_scale_multiplier;
  auto block_temb = [&](const VaeTimeEmbedderWeights& te) {
    return te.defined() ? embed_timestep(te, temb, B, h.scalar_type()) : at::Tensor();
  };
  {
    const auto t = block_temb(decoder.mid_block.time_embedder);
    for (const auto& r : decoder.mid_block.resnets) h = resnet_forward(r, h, t, noise_generator);
  }
  checks.check(h, "mid_block");
  for (size_t i = 0; i < decoder.up_blocks.size(); ++i) {
    const auto& block = decoder.up_blocks[i];
    if (block.conv_in) h = resnet_forward(*block.conv_in, h, {}, noise_generator);  // never conditioned (validate)
    const auto t = block_temb(block.time_embedder);
    if (block.upsampler) h = upsampler_forward(*block.upsampler, h);
    for (const auto& r : block.resnets) h = resnet_forward(r, h, t, noise_generator);
    checks.check(h, "up_blocks." + std::to_string(i));
  }
  at::Tensor shift, scale;
  if (decoder.time_embedder.defined()) {
    // (shift, scale) = embedding.unflatten(1, (2, -1)) + scale_shift_table[None, ..., None, None, None]
    const auto mod = embed_timestep(decoder.time_embedder, temb, B, h.scalar_type()).unflatten(1, {2, -1}) +
                     decoder.scale_shift_table.unsqueeze(0).unsqueeze(-1).unsqueeze(-1).unsqueeze(-1);
    shift = mod.select(1, 0);
    scale = mod.select(1, 1);
  }
  h = norm_silu(h, shift, scale);  // the last block's output is released before conv_out runs
  h = conv3d(decoder.conv_out, h);
  checks.check(h, "conv_out");
  // Unpatchify with the encoder's channel convention (c, pt, pw, ph).
  const int64_t p = m.config.patch_size, pt = m.config.patch_size_t;
  return h.reshape({B, -1, pt, p, p, h.size(2), h.size(3), h.size(4)})
      .permute({0, 1, 5, 2, 6, 4, 7, 3})
      .flatten(6, 7)
      .flatten(4, 5)
      .flatten(2, 3);
}

}  // namespace

at::Tensor VaeModel::encoder_forward(const at::Tensor& video) const {
  FiniteChecks checks(runtime, "encode");
  auto h = run_encoder(*this, video, checks);
  checks.finish();
  return h;
}

at::Tensor VaeModel::decoder_forward(const at::Tensor& latents, const at::Tensor& temb,
                                     at::Generator* noise_generator) const {
  FiniteChecks checks(runtime, "decode");
  auto h = run_decoder(*this, latents, temb, noise_generator, checks);
  checks.finish();
  return h;
}

// ---------------------------------------------------------------------------------------------------
// Encode / decode with tiling and slicing (AutoencoderKLLTXVideo._encode / _decode and friends)

namespace {

at::Tensor tiled_encode(const VaeModel& m, const at::Tensor& x, FiniteChecks& checks) {
  const auto& t = m.tiling;
  const int64_t sc = m.config.spatial_compression();
  const int64_t min_h = tile_step(t.tile_sample_min_height, sc, "tile_sample_min_height");
  const int64_t min_w = tile_step(t.tile_sample_min_width, sc, "tile_sample_min_width");
  const int64_t stride_h = tile_step(t.tile_sample_stride_height, sc, "tile_sample_stride_height");
  const int64_t stride_w = tile_step(t.tile_sample_stride_width, sc, "tile_sample_stride_width");
  const auto enc = spatial_tiles(x.size(3), x.size(4), t.tile_sample_stride_height, t.tile_sample_stride_width,
                                 min_h - stride_h, min_w - stride_w, stride_h, stride_w, [&](int64_t i, int64_t j) {
                                   const auto tile = x.slice(3, i, i + t.tile_sample_min_height)
                                                         .slice(4, j, j + t.tile_sample_min_width);
                                   return run_encoder(m, tile, checks);
                                 });
  return enc.slice(3, 0, x.size(3) / sc).slice(4, 0, x.size(4) / sc);
}

at::Tensor temporal_tiled_encode(const VaeModel& m, const at::Tensor& x, FiniteChecks& checks) {
  const auto& t = m.tiling;
  const int64_t tc = m.config.temporal_compression();
  const int64_t min_f = tile_step(t.tile_sample_min_num_frames, tc, "tile_sample_min_num_frames");
  const int64_t stride_f = tile_step(t.tile_sample_stride_num_frames, tc, "tile_sample_stride_num_frames");
  const bool spatial = t.use_tiling && (x.size(3) > t.tile_sample_min_height || x.size(4) > t.tile_sample_min_width);
  const auto enc = temporal_tiles(x.size(2), t.tile_sample_stride_num_frames, min_f - stride_f, stride_f, [&](int64_t i) {
    const auto tile = x.slice(2, i, i + t.tile_sample_min_num_frames + 1);
    auto out = spatial ? tiled_encode(m, tile, checks) : run_encoder(m, tile, checks);
    return i > 0 ? out.slice(2, 1) : out;
  });
  return enc.slice(2, 0, (x.size(2) - 1) / tc + 1);
}

at::Tensor encode_one(const VaeModel& m, const at::Tensor& x, FiniteChecks& checks) {
  const auto& t = m.tiling;
  // diffusers 0.42.1's _encode checks use_framewise_decoding here (not use_framewise_encoding); encodes match
  // only with the same switch (docs/models/vae.md, "Tiling, framewise tiling and slicing").
  if (t.use_framewise_decoding && x.size(2) > t.tile_sample_min_num_frames)
    return temporal_tiled_encode(m, x, checks);
  if (t.use_tiling && (x.size(4) > t.tile_sample_min_width || x.size(3) > t.tile_sample_min_height))
    return tiled_encode(m, x, checks);
  return run_encoder(m, x, checks);
}

at::Tensor tiled_decode(const VaeModel& m, const at::Tensor& z, const at::Tensor& temb, at::Generator* gen,
                        FiniteChecks& checks) {
  const auto& t = m.tiling;
  const int64_t sc = m.config.spatial_compression();
  const int64_t min_h = tile_step(t.tile_sample_min_height, sc, "tile_sample_min_height");
  const int64_t min_w = tile_step(t.tile_sample_min_width, sc, "tile_sample_min_width");
  const int64_t stride_h = tile_step(t.tile_sample_stride_height, sc, "tile_sample_stride_height");
  const int64_t stride_w = tile_step(t.tile_sample_stride_width, sc, "tile_sample_stride_width");
  const auto dec = spatial_tiles(
      z.size(3), z.size(4), stride_h, stride_w, t.tile_sample_min_height - t.tile_sample_stride_height,
      t.tile_sample_min_width - t.tile_sample_stride_width, t.tile_sample_stride_height, t.tile_sample_stride_width,
      [&](int64_t i, int64_t j) {
        return run_decoder(m, z.slice(3, i, i + min_h).slice(4, j, j + min_w), temb, gen, checks);
      });
  return dec.slice(3, 0, z.size(3) * sc).slice(4, 0, z.size(4) * sc);
}

at::Tensor temporal_tiled_decode(const VaeModel& m, const at::Tensor& z, const at::Tensor& temb, at::Generator* gen,
                                 FiniteChecks& checks) {
  const auto& t = m.tiling;
  const int64_t sc = m.config.spatial_compression(), tc = m.config.temporal_compression();
  const int64_t min_h = t.tile_sample_min_height / sc, min_w = t.tile_sample_min_width / sc;
  const int64_t min_f = tile_step(t.tile_sample_min_num_frames, tc, "tile_sample_min_num_frames");
  const int64_t stride_f = tile_step(t.tile_sample_stride_num_frames, tc, "tile_sample_stride_num_frames");
  const auto dec = temporal_tiles(z.size(2), stride_f, t.tile_sample_min_num_frames - t.tile_sample_stride_num_frames,
                                  t.tile_sample_stride_num_frames, [&](int64_t i) {
                                    const auto tile = z.slice(2, i, i + min_f + 1);
                                    auto out = t.use_tiling && (tile.size(4) > min_w || tile.size(3) > min_h)
                                                   ? tiled_decode(m, tile, temb, gen, checks)
                                                   : run_decoder(m, tile, temb, gen, checks);
                                    return i > 0 ? out.slice(2, 0, out.size(2) - 1) : out;
                                  });
  return dec.slice(2, 0, (z.size(2) - 1) * tc + 1);
}

at::Tensor decode_one(const VaeModel& m, const at::Tensor& z, const at::Tensor& temb, at::Generator* gen,
                      FiniteChecks& checks) {
  const auto& t = m.tiling;
  const int64_t sc = m.config.spatial_compression(), tc = m.config.temporal_compression();
  if (t.use_framewise_decoding && z.size(2) > t.tile_sample_min_num_frames / tc)
    return temporal_tiled_decode(m, z, temb, gen, checks);
  if (t.use_tiling && (z.size(4) > t.tile_sample_min_width / sc || z.size(3) > t.tile_sample_min_height / sc))
    return tiled_decode(m, z, temb, gen, checks);
  return run_decoder(m, z, temb, gen, checks);
}

std::string size_hint(int64_t value, int64_t multiple) {
  const int64_t below = value / multiple * multiple;
  return below > 0 ? c10::str(below, " or ", below + multiple) : c10::str(multiple);
}

}  // namespace

VaePosterior VaeModel::encode(const at::Tensor& video) const {
  tiling.validate();
  LTXMPS_CHECK(video.defined() && video.dim() == 5, "vae encode: the video must be [batch, channels, frames, height, "
               "width], got ", video.defined() ? video.sizes() : at::IntArrayRef{});
  LTXMPS_CHECK(video.size(1) == config.in_channels, "vae encode: the video has ", video.size(1),
               " channels, the VAE expects in_channels = ", config.in_channels);
  const int64_t sc = config.spatial_compression(), tc = config.temporal_compression();
  const int64_t F = video.size(2), H = video.size(3), W = video.size(4);
  LTXMPS_CHECK(video.size(0) > 0 && F > 0 && (F - 1) % tc == 0, "vae encode: the video has ", F,
               " frames; the VAE needs k*", tc, "+1 frames (temporal compression ", tc, "), e.g. ",
               (F > 0 ? (F - 1) / tc * tc + 1 : 1), " or ", (F > 0 ? (F - 1) / tc * tc + 1 + tc : 1 + tc));
  LTXMPS_CHECK(H > 0 && W > 0 && H % sc == 0 && W % sc == 0, "vae encode: height x width = ", H, "x", W,
               " must be multiples of the spatial compression ", sc, " (height ", size_hint(H, sc), ", width ",
               size_hint(W, sc), ")");
  const auto x = video.to(runtime.device, runtime.dtype);
  FiniteChecks checks(runtime, "encode");
  at::Tensor h;
  if (tiling.use_slicing && x.size(0) > 1) {
    std::vector<at::Tensor> slices;
    for (const auto& s : x.split(1)) slices.push_back(encode_one(*this, s, checks));
    h = at::cat(slices);
  } else {
    h = encode_one(*this, x, checks);
  }
  checks.finish();
  const int64_t L = h.size(1) / 2;  // torch.chunk(parameters, 2, dim=1)
  return {h.narrow(1, 0, L), at::clamp(h.narrow(1, L, h.size(1) - L), -30.0, 20.0)};
}

at::Tensor VaeModel::decode(const at::Tensor& latents, const std::optional<at::Tensor>& temb,
                            at::Generator* noise_generator) const {
  tiling.validate();
  LTXMPS_CHECK(latents.defined() && latents.dim() == 5, "vae decode: the latents must be [batch, channels, frames, "
               "height, width], got ", latents.defined() ? latents.sizes() : at::IntArrayRef{});
  LTXMPS_CHECK(latents.size(1) == config.latent_channels, "vae decode: the latents have ", latents.size(1),
               " channels, the VAE expects latent_channels = ", config.latent_channels);
  LTXMPS_CHECK(latents.numel() > 0, "vae decode: the latents are empty: ", latents.sizes());
  const int64_t B = latents.size(0);
  const auto z = latents.to(runtime.device, runtime.dtype);
  FiniteChecks checks(runtime, "decode");
  // Read at once: NaN/Inf latents are not worth a decode.
  checks.check(z, "the input latents");
  checks.finish();
  at::Tensor t;
  if (config.timestep_conditioning) {
    LTXMPS_CHECK(temb && temb->defined(), "vae decode: this VAE is timestep-conditioned (timestep_conditioning = "
                 "true); pass the decode timestep temb ([batch] values, e.g. 0.05)");
    t = temb->to(runtime.device).flatten();
    LTXMPS_CHECK(t.numel() == B || t.numel() == 1, "vae decode: temb has ", t.numel(), " values for a batch of ", B,
                 " (give one per sample, or one for all)");
    if (t.numel() != B) t = t.expand({B}).contiguous();
  }
  if (noise_generator != nullptr)
    LTXMPS_CHECK(noise_generator->device().is_cpu(), "vae decode: the noise generator must be a CPU generator");
  if (tiling.use_slicing && B > 1) {
    // diffusers 0.42.1 zips (z.split(1), temb.split(1)) wrongly when temb is given; here each sample gets
    // its own temb, which equals the unsliced decode.
    std::vector<at::Tensor> slices;
    for (int64_t b = 0; b < B; ++b) {
      const auto t_b = t.defined() ? t.narrow(0, b, 1) : t;
      slices.push_back(decode_one(*this, z.narrow(0, b, 1), t_b, noise_generator, checks));
    }
    checks.finish();
    return at::cat(slices);
  }
  auto frames = decode_one(*this, z, t, noise_generator, checks);
  checks.finish();
  return frames;
}

// ---------------------------------------------------------------------------------------------------
// Posterior, latent normalization, decode noise

at::Tensor VaePosterior::std() const { return at::exp(0.5 * logvar); }

at::Tensor VaePosterior::sample(at::Generator& generator) const {
  // DiagonalGaussianDistribution.sample: randn_tensor(mean.shape, generator, dtype=parameters.dtype).
  return mean + std() * ltxmps::randn(mean.sizes(), generator, mean.options());
}

at::Tensor VaeModel::normalize_latents(const at::Tensor& latents, std::optional<double> scaling_factor) const {
  const auto mean = latents_mean.view({1, -1, 1, 1, 1}).to(latents.device(), latents.scalar_type());
  const auto std = latents_std.view({1, -1, 1, 1, 1}).to(latents.device(), latents.scalar_type());
  return (latents - mean) * scaling_factor.value_or(config.scaling_factor) / std;
}

at::Tensor VaeModel::denormalize_latents(const at::Tensor& latents, std::optional<double> scaling_factor) const {
  const auto mean = latents_mean.view({1, -1, 1, 1, 1}).to(latents.device(), latents.scalar_type());
  const auto std = latents_std.view({1, -1, 1, 1, 1}).to(latents.device(), latents.scalar_type());
  return latents * std / scaling_factor.value_or(config.scaling_factor) + mean;
}

at::Tensor mix_decode_noise(const at::Tensor& latents, const at::Tensor& noise, const at::Tensor& decode_noise_scale) {
  LTXMPS_CHECK(latents.dim() >= 1 && noise.sizes() == latents.sizes(), "mix_decode_noise: noise has shape ",
               noise.sizes(), ", the latents ", latents.sizes());
  const int64_t B = latents.size(0);
  auto s = decode_noise_scale.to(latents.device(), latents.scalar_type()).flatten();
  LTXMPS_CHECK(s.numel() == B || s.numel() == 1, "mix_decode_noise: ", s.numel(), " scales for a batch of ", B);
  std::vector<int64_t> shape(static_cast<size_t>(latents.dim()), 1);
  shape[0] = B;
  s = s.expand({B}).reshape(shape);
  return (1 - s) * latents + s * noise.to(latents.device(), latents.scalar_type());
}

}  // namespace ltxmps::pipeline
