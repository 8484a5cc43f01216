// The fused kernels' entry points: argument checks, the choice between a CUDA kernel and the ATen reference,
// and the references themselves (the unfused transformer's op sequence).

#include "ltxmps_kernels/fused.hpp"

#include "ltxmps_kernels/fp8_attention.hpp"

#include "cuda_launch.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <initializer_list>
#include <optional>
#include <tuple>

namespace ltxmps::kernels {

bool built_with_cuda() noexcept {
#ifdef LTXMPS_KERNELS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// ---------------------------------------------------------------------------------------------------
// References

// Note [Block RMSNorm]
// diffusers `RMSNorm.forward` (models/normalization.py): the variance is taken in float32, the input
// (possibly bf16/fp16) is multiplied by the float32 rsqrt, which promotes to float32, and the result
// is cast back to the input dtype (no weight) or to the weight's half dtype before `* weight`.
at::Tensor block_rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto variance = x.to(at::kFloat).pow(2).mean(-1, /*keepdim=*/true);
  auto y = x * at::rsqrt(variance + eps);
  if (!weight.defined()) return y.to(x.scalar_type());
  if (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16) y = y.to(weight.scalar_type());
  return y * weight;
}

// Note [Per-token modulation rows]
// Object removal gives every token its own timestep, but the timesteps take only a few values (0 for the kept
// tokens, t for the regenerated ones). Modulating per token then needs [B, S, D] scale / shift / gate operands:
// the block's `table + temb` written for every token, 6 · B · S · D values per block, and read again by every
// norm and residual, an eighth of the 2B removal step's GPU time. With a token index the operands stay [B, K, D],
// one row per distinct timestep, and each kernel reads row index[b, s] for token s: the same values, so the
// same bits. Indices outside [0, K) are clamped (the kernels must not read outside the operand); the reference
// gathers the rows with the same clamp and then runs its usual ops.
namespace {

void check_token_index(const at::Tensor& index, const at::Tensor& x, const char* what) {
  if (!index.defined()) return;
  LTXMPS_CHECK(x.dim() == 3 && index.dim() == 2 && index.scalar_type() == at::kInt && index.size(0) == x.size(0) &&
                   index.size(1) == x.size(1),
               what, ": token_index must be int32 [B, S] for x ", x.sizes(), ", got ", index.scalar_type(), " ",
               index.sizes());
  LTXMPS_CHECK(index.device() == x.device(), what, ": token_index is on ", index.device(), " but x on ", x.device());
}

// [B or 1, K, D] rows chosen per token: [B, S, D], row index[b, s] (clamped to [0, K)) for token s of entry b.
at::Tensor select_token_rows(const at::Tensor& t, const at::Tensor& token_index) {
  if (!token_index.defined() || !t.defined()) return t;
  LTXMPS_CHECK(t.dim() == 3 && t.size(1) >= 1, "token_index: the modulation operand must be [B, K, D], got ",
               t.sizes());
  const int64_t B = token_index.size(0), S = token_index.size(1), K = t.size(1), D = t.size(2);
  const auto index = token_index.to(t.device(), at::kLong).clamp(0, K - 1).unsqueeze(-1).expand({B, S, D});
  return at::gather(t.expand({B, K, D}), 1, index);
}

}  // namespace

at::Tensor rms_norm_modulate_reference(const at::Tensor& x, const at::Tensor& weight, double eps,
                                       const at::Tensor& scale, const at::Tensor& shift,
                                       const at::Tensor& token_index) {
  check_token_index(token_index, x, "rms_norm_modulate");
  return block_rms_norm_reference(x, weight, eps) * (1 + select_token_rows(scale, token_index)) +
         select_token_rows(shift, token_index);
}

std::pair<at::Tensor, at::Tensor> residual_rms_norm_modulate_reference(const at::Tensor& x, const at::Tensor& y,
                                                                       const at::Tensor& gate,
                                                                       const at::Tensor& weight, double eps,
                                                                       const at::Tensor& scale,
                                                                       const at::Tensor& shift,
                                                                       const at::Tensor& token_index) {
  check_token_index(token_index, x, "residual_rms_norm_modulate");
  const auto g = select_token_rows(gate, token_index);
  auto h = g.defined() ? x + y * g : x + y;
  auto normed = rms_norm_modulate_reference(h, weight, eps, scale, shift, token_index);
  return {std::move(h), std::move(normed)};
}

at::Tensor rms_norm_modulate_silu_reference(const at::Tensor& x, double eps, const at::Tensor& scale,
                                            const at::Tensor& shift) {
  LTXMPS_CHECK(scale.defined() == shift.defined(),
               "rms_norm_modulate_silu: scale and shift must be given together or both be undefined");
  auto h = scale.defined() ? rms_norm_modulate_reference(x, {}, eps, scale, shift)
                           : block_rms_norm_reference(x, {}, eps);
  return at::silu_(h);  // h is a fresh tensor
}

at::Tensor add_channel_bias_reference_(at::Tensor x, const at::Tensor& bias) {
  LTXMPS_CHECK(x.dim() >= 2 && bias.dim() == 1 && bias.size(0) == x.size(1),
               "add_channel_bias_: bias must be [C] for x ", x.sizes(), " (C at dimension 1), got ", bias.sizes());
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[1] = bias.size(0);
  x.add_(bias.view(shape));
  return x;
}

at::Tensor layer_norm_modulate_reference(const at::Tensor& x, double eps, const at::Tensor& scale,
                                         const at::Tensor& shift, const at::Tensor& token_index) {
  check_token_index(token_index, x, "layer_norm_modulate");
  return at::layer_norm(x, {x.size(-1)}, {}, {}, eps) * (1 + select_token_rows(scale, token_index)) +
         select_token_rows(shift, token_index);
}

at::Tensor gated_residual_reference(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                                    const at::Tensor& token_index) {
  check_token_index(token_index, x, "gated_residual");
  return x + y * select_token_rows(gate, token_index);
}

// diffusers `apply_rotary_emb` (transformer_ltx.py): interleaved pairs (2i, 2i+1) over the full D,
// in float32, cast back to x's dtype.
at::Tensor rotary_emb_reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  auto pairs = x.unflatten(-1, {-1, 2});
  auto real = pairs.select(-1, 0), imag = pairs.select(-1, 1);
  auto rotated = at::stack({-imag, real}, -1).flatten(-2);
  return (x.to(at::kFloat) * cos + rotated.to(at::kFloat) * sin).to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> qk_rms_norm_rope_reference(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& q_weight, const at::Tensor& k_weight,
                                                             double eps, const at::Tensor& cos,
                                                             const at::Tensor& sin) {
  auto qn = at::rms_norm(q, {q.size(-1)}, q_weight, eps);
  auto kn = at::rms_norm(k, {k.size(-1)}, k_weight, eps);
  if (!cos.defined()) return {std::move(qn), std::move(kn)};
  return {rotary_emb_reference(qn, cos, sin), rotary_emb_reference(kn, cos, sin)};
}

at::Tensor linear_gelu_tanh_reference(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::gelu(at::linear(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt), "tanh");
}

// Note [FP8 row quantization]
// The formulas of quantize_fp8_rows_reference, which the kernel repeats operation for operation:
//  - amax = max |x| over the row, in the input's dtype: one of the values, so exact, and then exact in float32.
//    A NaN anywhere in the row makes it NaN (ATen's max reductions propagate NaN), an infinity makes it inf.
//  - scale = max(amax · float(1/448), FLT_MIN) in float32: amax · float(1/448), not amax / 448, because CUDA
//    divides by a scalar through its reciprocal, so this is the form that gives the same scales (and then the same
//    codes) on the CPU and on CUDA. It is within one float32 rounding of amax / 448, so |row / scale| stays
//    <= 448·(1 + 2^-22). The floor keeps a row of zeros finite (its codes are zeros); clamp_min keeps a NaN.
//  - q = row / scale: one division whose output tensor is float8, computed in float32 (the common dtype) and
//    rounded once on the store (no float32 copy of the row). The divisor is a tensor, so CUDA divides truly (the
//    reciprocal form is only for a CPU scalar divisor); a value a few float32 roundings above 448 rounds to 448,
//    so finite inputs need no saturation.
// Non-finite rows: inf gives scale = inf, finite elements code ±0 and the infinite ones NaN (inf / inf); NaN
// gives scale = NaN and NaN codes. Such a row is lost either way; the kernel reproduces it rather than hiding it.
std::pair<at::Tensor, at::Tensor> quantize_fp8_rows_reference(const at::Tensor& rows) {
  auto amax = at::linalg_vector_norm(rows, INFINITY, {1}, /*keepdim=*/true).to(at::kFloat);
  auto scale = amax.mul_(1.0 / kFp8E4m3Max).clamp_min_(FLT_MIN);
  auto q = at::empty(rows.sizes(), rows.options().dtype(at::kFloat8_e4m3fn));
  at::div_out(q, rows, scale);
  return {std::move(q), scale.squeeze(1)};
}

// float8 -> bf16/fp16/fp32 is exact; the in-place product is computed in float32 (the scale's dtype) and rounded
// once to `dtype`.
at::Tensor dequantize_fp8_rows_reference(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype) {
  return q.to(dtype).mul_(scale.unsqueeze(1));
}

// ---------------------------------------------------------------------------------------------------
// Choosing the CUDA kernel

namespace {

// Note [When a CUDA kernel runs]
// A kernel runs only for what it was written for: CUDA tensors on one device, float32 / float16 / bfloat16 (all
// operands of one dtype), [B, S, D] activations whose last dimension is contiguous, [B, T, D] modulation operands
// with T = 1 or S, or any T with a contiguous token index on the device (size-1 dimensions broadcast; strided
// slices such as the block's `ada` columns are read in place), weights as contiguous [D] vectors. Anything else
// (float64, a weight of another dtype, a transposed last dimension, more than INT_MAX rows) runs the reference,
// which also produces ATen's usual errors for bad input.
using cuda::kernel_dtype;

bool cuda_candidate(const at::Tensor& x) {
  return built_with_cuda() && x.defined() && x.is_cuda() && x.dim() == 3 && kernel_dtype(x.scalar_type()) &&
         x.numel() > 0 && x.size(0) * x.size(1) <= INT_MAX && (x.size(2) == 1 || x.stride(2) == 1);
}

// The Rows view of a [B', T', D] operand of `dtype` broadcast over `like` [B, S, D], or nothing when the kernel
// cannot read it.
// With `token_index` (checked by check_token_index) the operand is [B', K, D]: any K rows, token s of batch
// entry b reading row index[b, s] (Note [Per-token modulation rows]).
std::optional<cuda::Rows> rows_of(const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype,
                                  const at::Tensor& token_index = {}) {
  if (!t.defined() || t.dim() != 3 || t.scalar_type() != dtype || t.device() != like.device()) return std::nullopt;
  const int64_t B = like.size(0), S = like.size(1), D = like.size(2);
  if (t.size(2) != D || (D > 1 && t.stride(2) != 1)) return std::nullopt;
  if (t.size(0) != 1 && t.size(0) != B) return std::nullopt;
  const bool indexed = token_index.defined();
  if (!indexed && t.size(1) != 1 && t.size(1) != S) return std::nullopt;
  if (indexed && (t.size(1) < 1 || token_index.device() != like.device() || !token_index.is_contiguous()))
    return std::nullopt;
  cuda::Rows r;
  r.data = t.data_ptr();
  r.batch_stride = t.size(0) == 1 ? 0 : t.stride(0);
  r.token_stride = t.size(1) == 1 ? 0 : t.stride(1);
  if (indexed) {
    r.token_index = token_index.data_ptr<int32_t>();
    r.index_batch_stride = S;
    r.index_rows = t.size(1);
  }
  return r;
}

bool vector_ok(const at::Tensor& like, const at::Tensor& weight) {
  return !weight.defined() || (weight.dim() == 1 && weight.size(0) == like.size(2) && weight.is_contiguous() &&
                               weight.scalar_type() == like.scalar_type() && weight.device() == like.device());
}

// An operand as the kernels address it, for the alignment check: rows, their element size.
struct Operand {
  cuda::Rows rows;
  size_t element_size;
};

Operand operand(const void* data, size_t element_size) {
  return {cuda::Rows{data, 0, 0}, element_size};
}

// The widest vector access (at most 16 bytes of the activations' dtype) that divides D and keeps every row start
// of every operand aligned: row starts are data + b·batch_stride + t·token_stride elements, so the data pointers
// must be aligned and the strides multiples of the width.
int vector_width(int64_t dim, size_t element_size, std::initializer_list<Operand> operands) {
  for (int vec = static_cast<int>(16 / element_size); vec > 1; vec /= 2) {
    bool ok = dim % vec == 0;
    for (const auto& o : operands) {
      const auto alignment = std::min<size_t>(16, vec * o.element_size);
      ok = ok && reinterpret_cast<uintptr_t>(o.rows.data) % alignment == 0 && o.rows.batch_stride % vec == 0 &&
           o.rows.token_stride % vec == 0;
    }
    if (ok) return vec;
  }
  return 1;
}

std::optional<cuda::Rows> rows_of(const at::Tensor& t, const at::Tensor& like) {
  return rows_of(t, like, like.scalar_type());
}

int device_index(const at::Tensor& t) {
  return t.device().has_index() ? t.device().index() : 0;
}

std::atomic<uint64_t> fused_call_count{0};

// Where a fused kernel writes the FP8 rows of its [B, S, D] output `out` when the caller asks for them: codes
// [B·S, D] and scales [B·S], allocated into *fp8; {nullptr, nullptr} when it does not ask.
std::pair<void*, float*> allocate_fp8_rows(const at::Tensor& out, Fp8RowsOut fp8) {
  if (!fp8) return {nullptr, nullptr};
  const int64_t rows = out.numel() / out.size(-1);
  fp8->q = at::empty({rows, out.size(-1)}, out.options().dtype(at::kFloat8_e4m3fn));
  fp8->scale = at::empty({rows}, out.options().dtype(at::kFloat));
  return {fp8->q.data_ptr(), fp8->scale.data_ptr<float>()};
}

// The FP8 rows of `out` by the separate quantization, for the paths where the producing kernel did not run.
void quantize_rows_of(const at::Tensor& out, Fp8RowsOut fp8) {
  if (!fp8) return;
  std::tie(fp8->q, fp8->scale) = quantize_fp8_rows(out.reshape({-1, out.size(-1)}));
}

// The norm a launch computes: the RMS norm, the RMS norm followed by the SiLU (its modulation optional), the layer
// norm.
enum class Norm { rms, rms_silu, layer };

// The launch of a norm and modulation of x, or of h = x + y·gate when y is defined; nothing when the kernel does
// not apply (Note [When a CUDA kernel runs]). `residual` and `out` are allocated here.
std::optional<cuda::NormModulateLaunch> norm_launch(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                                                    const at::Tensor& weight, const at::Tensor& scale,
                                                    const at::Tensor& shift, double eps, Norm norm,
                                                    at::Tensor& residual, at::Tensor& out, Fp8RowsOut fp8,
                                                    const at::Tensor& token_index) {
  if (!cuda_candidate(x) || !vector_ok(x, weight)) return std::nullopt;
  const auto dtype = x.scalar_type();
  const bool unmodulated = norm == Norm::rms_silu && !scale.defined() && !shift.defined();
  const auto operand_rows = [&](const at::Tensor& t) {
    return unmodulated ? std::optional<cuda::Rows>(cuda::Rows{}) : rows_of(t, x, dtype, token_index);
  };
  const auto xr = rows_of(x, x), sc = operand_rows(scale), sh = operand_rows(shift);
  if (!xr || !sc || !sh) return std::nullopt;
  cuda::NormModulateLaunch l;
  if (y.defined()) {
    const auto yr = rows_of(y, x);
    const auto gr = gate.defined() ? rows_of(gate, x, dtype, token_index) : std::optional<cuda::Rows>(cuda::Rows{});
    if (!yr || !gr) return std::nullopt;
    l.y = *yr;
    l.gate = *gr;
    residual = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    l.residual = residual.data_ptr();
  }
  out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  l.dtype = x.scalar_type();
  l.device_index = device_index(x);
  l.batch = x.size(0);
  l.tokens = x.size(1);
  l.dim = x.size(2);
  l.layer_norm = norm == Norm::layer;
  l.silu = norm == Norm::rms_silu;
  l.eps = static_cast<float>(eps);
  l.x = *xr;
  l.scale = *sc;
  l.shift = *sh;
  l.weight = weight.defined() ? weight.data_ptr() : nullptr;
  l.out = out.data_ptr();
  std::tie(l.q, l.q_scale) = allocate_fp8_rows(out, fp8);
  const size_t e = x.element_size();
  l.vec = vector_width(l.dim, e, {{l.x, e}, {l.y, e}, {l.gate, e}, {l.scale, e}, {l.shift, e}, operand(l.weight, e),
                                  operand(l.residual, e), operand(l.out, e), operand(l.q, 1)});
  return l;
}

}  // namespace

uint64_t fused_calls() noexcept {
  return fused_call_count.load(std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------------
// Entry points

at::Tensor rms_norm_modulate(const at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& scale,
                             const at::Tensor& shift, Fp8RowsOut fp8, const at::Tensor& token_index) {
  check_token_index(token_index, x, "rms_norm_modulate");
  at::Tensor residual, out;
  if (const auto l = norm_launch(x, {}, {}, weight, scale, shift, eps, Norm::rms, residual, out, fp8,
                                 token_index)) {
    cuda::launch_norm_modulate(*l);
    ++fused_call_count;
    return out;
  }
  out = rms_norm_modulate_reference(x, weight, eps, scale, shift, token_index);
  quantize_rows_of(out, fp8);
  return out;
}

at::Tensor rms_norm_modulate_silu(const at::Tensor& x, double eps, const at::Tensor& scale, const at::Tensor& shift) {
  LTXMPS_CHECK(scale.defined() == shift.defined(),
               "rms_norm_modulate_silu: scale and shift must be given together or both be undefined");
  at::Tensor residual, out;
  if (const auto l = norm_launch(x, {}, {}, {}, scale, shift, eps, Norm::rms_silu, residual, out, nullptr, {})) {
    cuda::launch_norm_modulate(*l);
    ++fused_call_count;
    return out;
  }
  return rms_norm_modulate_silu_reference(x, eps, scale, shift);
}

// Note [Channel bias on channels-last rows]
// ATen adds a convolution's bias after cuDNN's convolution, `out.add_(bias.reshape({1, C, 1, 1, 1}))`. On a
// channels-last output that broadcast is no contiguous iteration, so the add runs ATen's generic elementwise kernel
// (an index computation per element, scalar accesses): 16.5 ms of a bf16 0.9.7 decode's 128 ms of GPU time, in 45
// launches. With the channels innermost the output is rows of C contiguous values; the kernel keeps a vector of the
// bias in registers per thread and adds it to the rows with 16-byte accesses, rounding as ATen's add (one float32
// sum rounded to the dtype; in pairs for half precision, Note [Packed half-precision arithmetic]), so the values are
// the same bits.
namespace {

// x's elements as rows of x.size(1) contiguous channels (dense, channels innermost), or false.
bool channels_innermost(const at::Tensor& x) {
  if (x.dim() < 2) return false;
  std::vector<int64_t> order{0};
  for (int64_t d = 2; d < x.dim(); ++d) order.push_back(d);
  order.push_back(1);
  return x.permute(order).is_contiguous();
}

}  // namespace

at::Tensor add_channel_bias_(at::Tensor x, const at::Tensor& bias) {
  const bool take = built_with_cuda() && x.defined() && x.is_cuda() && kernel_dtype(x.scalar_type()) &&
                    x.numel() > 0 && bias.defined() && bias.dim() == 1 && x.dim() >= 2 &&
                    bias.size(0) == x.size(1) && bias.scalar_type() == x.scalar_type() &&
                    bias.device() == x.device() && bias.is_contiguous() && channels_innermost(x);
  if (!take) return add_channel_bias_reference_(std::move(x), bias);
  cuda::ChannelBiasLaunch l;
  l.dtype = x.scalar_type();
  l.device_index = device_index(x);
  l.channels = x.size(1);
  l.rows = x.numel() / l.channels;
  l.x = x.data_ptr();
  l.bias = bias.data_ptr();
  const size_t e = x.element_size();
  l.vec = vector_width(l.channels, e, {operand(l.x, e), operand(l.bias, e)});
  cuda::launch_channel_bias(l);
  ++fused_call_count;
  return x;
}

std::pair<at::Tensor, at::Tensor> residual_rms_norm_modulate(const at::Tensor& x, const at::Tensor& y,
                                                             const at::Tensor& gate, const at::Tensor& weight,
                                                             double eps, const at::Tensor& scale,
                                                             const at::Tensor& shift, Fp8RowsOut fp8,
                                                             const at::Tensor& token_index) {
  check_token_index(token_index, x, "residual_rms_norm_modulate");
  at::Tensor residual, out;
  if (y.defined()) {
    if (const auto l = norm_launch(x, y, gate, weight, scale, shift, eps, Norm::rms, residual, out, fp8,
                                   token_index)) {
      cuda::launch_norm_modulate(*l);
      ++fused_call_count;
      return {std::move(residual), std::move(out)};
    }
  }
  auto result = residual_rms_norm_modulate_reference(x, y, gate, weight, eps, scale, shift, token_index);
  quantize_rows_of(result.second, fp8);
  return result;
}

at::Tensor layer_norm_modulate(const at::Tensor& x, double eps, const at::Tensor& scale, const at::Tensor& shift,
                               const at::Tensor& token_index) {
  check_token_index(token_index, x, "layer_norm_modulate");
  at::Tensor residual, out;
  if (const auto l = norm_launch(x, {}, {}, {}, scale, shift, eps, Norm::layer, residual, out, nullptr,
                                 token_index)) {
    cuda::launch_norm_modulate(*l);
    ++fused_call_count;
    return out;
  }
  return layer_norm_modulate_reference(x, eps, scale, shift, token_index);
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate, Fp8RowsOut fp8,
                          const at::Tensor& token_index) {
  check_token_index(token_index, x, "gated_residual");
  if (cuda_candidate(x)) {
    const auto xr = rows_of(x, x), yr = rows_of(y, x), gr = rows_of(gate, x, x.scalar_type(), token_index);
    if (xr && yr && gr) {
      auto out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
      cuda::GatedResidualLaunch l;
      l.dtype = x.scalar_type();
      l.device_index = device_index(x);
      l.batch = x.size(0);
      l.tokens = x.size(1);
      l.dim = x.size(2);
      l.x = *xr;
      l.y = *yr;
      l.gate = *gr;
      l.out = out.data_ptr();
      std::tie(l.q, l.q_scale) = allocate_fp8_rows(out, fp8);
      const size_t e = x.element_size();
      l.vec = vector_width(l.dim, e, {{l.x, e}, {l.y, e}, {l.gate, e}, operand(l.out, e), operand(l.q, 1)});
      cuda::launch_gated_residual(l);
      ++fused_call_count;
      return out;
    }
  }
  auto out = gated_residual_reference(x, y, gate, token_index);
  quantize_rows_of(out, fp8);
  return out;
}

namespace {

// One launch for q alone (k undefined), or for q and k of the same shape with an optional rotary embedding.
// With `fp8`, the kernel writes e4m3 codes and the bounded scales into *fp8 instead of q_out / k_out.
bool launch_qk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_weight, const at::Tensor& k_weight,
               double eps, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& q_out, at::Tensor& k_out,
               std::pair<Fp8Tensor, Fp8Tensor>* fp8 = nullptr) {
  cuda::QkNormRopeLaunch l;
  const auto qr = rows_of(q, q);
  if (!qr || !q_weight.defined() || !vector_ok(q, q_weight)) return false;
  if (k.defined()) {
    const auto kr = rows_of(k, q);
    if (!kr || k.sizes() != q.sizes() || !k_weight.defined() || !vector_ok(q, k_weight)) return false;
    l.k = *kr;
  }
  if (cos.defined()) {
    const auto cr = rows_of(cos, q, at::kFloat), sr = rows_of(sin, q, at::kFloat);
    if (!cr || !sr) return false;
    l.cos = *cr;
    l.sin = *sr;
  }
  if (fp8) {
    const auto codes = q.options().dtype(at::kFloat8_e4m3fn).memory_format(at::MemoryFormat::Contiguous);
    fp8->first = {at::empty(q.sizes(), codes), at::empty({1}, q.options().dtype(at::kFloat))};
    l.q_fp8 = fp8->first.q.data_ptr();
    l.q_scale = fp8->first.scale.data_ptr<float>();
    if (k.defined()) {
      fp8->second = {at::empty(k.sizes(), codes), at::empty({1}, q.options().dtype(at::kFloat))};
      l.k_fp8 = fp8->second.q.data_ptr();
      l.k_scale = fp8->second.scale.data_ptr<float>();
    }
    l.fp8_bound_factor = fp8_qk_bound_factor(q.size(2));
  } else {
    q_out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
    if (k.defined()) k_out = at::empty(k.sizes(), k.options().memory_format(at::MemoryFormat::Contiguous));
    l.q_out = q_out.data_ptr();
    l.k_out = k.defined() ? k_out.data_ptr() : nullptr;
  }
  l.dtype = q.scalar_type();
  l.device_index = device_index(q);
  l.batch = q.size(0);
  l.tokens = q.size(1);
  l.dim = q.size(2);
  l.eps = static_cast<float>(eps);
  l.q = *qr;
  l.q_weight = q_weight.data_ptr();
  l.k_weight = k.defined() ? k_weight.data_ptr() : nullptr;
  const size_t e = q.element_size(), f = sizeof(float);
  l.vec = vector_width(l.dim, e, {{l.q, e}, {l.k, e}, {l.cos, f}, {l.sin, f}, operand(l.q_weight, e),
                                  operand(l.k_weight, e), operand(l.q_out, e), operand(l.k_out, e),
                                  operand(l.q_fp8, 1), operand(l.k_fp8, 1)});
  if (cos.defined() && l.vec % 2 != 0) return false;  // pairs must not straddle two vectors
  cuda::launch_qk_norm_rope(l);
  ++fused_call_count;
  return true;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> qk_rms_norm_rope(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& q_weight, const at::Tensor& k_weight,
                                                   double eps, const at::Tensor& cos, const at::Tensor& sin) {
  if (cuda_candidate(q) && cuda_candidate(k) && k.scalar_type() == q.scalar_type() && k.device() == q.device()) {
    at::Tensor q_out, k_out, unused;
    if (q.sizes() == k.sizes()) {
      if (launch_qk(q, k, q_weight, k_weight, eps, cos, sin, q_out, k_out)) return {q_out, k_out};
    } else if (!cos.defined() && q.size(0) == k.size(0) && q.size(2) == k.size(2)) {
      // Cross-attention: keys of another length, no rotary embedding; one launch each.
      if (launch_qk(q, {}, q_weight, {}, eps, {}, {}, q_out, unused) &&
          launch_qk(k, {}, k_weight, {}, eps, {}, {}, k_out, unused))
        return {q_out, k_out};
    }
  }
  return qk_rms_norm_rope_reference(q, k, q_weight, k_weight, eps, cos, sin);
}

std::pair<Fp8Tensor, Fp8Tensor> qk_rms_norm_rope_fp8(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& q_weight, const at::Tensor& k_weight,
                                                     double eps, const at::Tensor& cos, const at::Tensor& sin) {
  if (cuda_candidate(q) && cuda_candidate(k) && k.scalar_type() == q.scalar_type() && k.device() == q.device() &&
      q.sizes() == k.sizes()) {
    at::Tensor unused_q, unused_k;
    std::pair<Fp8Tensor, Fp8Tensor> out;
    if (launch_qk(q, k, q_weight, k_weight, eps, cos, sin, unused_q, unused_k, &out)) return out;
  }
  return qk_rms_norm_rope_fp8_reference(q, k, q_weight, k_weight, eps, cos, sin);
}

at::Tensor linear_gelu_tanh(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const bool dense = x.defined() && weight.defined() && bias.defined() && x.layout() == at::kStrided &&
                     weight.layout() == at::kStrided && bias.layout() == at::kStrided;
  if (dense && x.is_cuda() && x.dim() >= 2 && x.numel() > 0 && kernel_dtype(x.scalar_type()) &&
      weight.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type() &&
      weight.device() == x.device() && bias.device() == x.device() && weight.dim() == 2 && bias.dim() == 1 &&
      x.size(-1) == weight.size(1) && bias.size(0) == weight.size(0) && bias.is_contiguous()) {
    auto sizes = x.sizes().vec();
    sizes.back() = weight.size(0);
    auto out = at::_addmm_activation(bias, x.reshape({-1, x.size(-1)}), weight.t(), 1, 1, /*use_gelu=*/true);
    ++fused_call_count;
    return out.view(sizes);
  }
  return linear_gelu_tanh_reference(x, weight, bias);
}

namespace {

// A 2-D CUDA tensor the FP8 kernels address row by row: its last dimension contiguous, at most INT_MAX rows.
bool fp8_rows_candidate(const at::Tensor& t) {
  return built_with_cuda() && t.defined() && t.is_cuda() && t.layout() == at::kStrided && t.dim() == 2 &&
         t.numel() > 0 && t.size(0) <= INT_MAX;
}

// `t` itself when its rows are read in place (unit column stride), otherwise a contiguous copy.
at::Tensor with_contiguous_rows(const at::Tensor& t) {
  return t.size(1) == 1 || t.stride(1) == 1 ? t : t.contiguous();
}

}  // namespace

namespace {

// quantize_fp8_rows(gelu ? gelu_tanh(rows) : rows) by the kernel, or nothing when it does not take `rows`.
std::optional<std::pair<at::Tensor, at::Tensor>> quantize_launch(const at::Tensor& rows, bool gelu,
                                                                 at::Tensor* activation) {
  if (!fp8_rows_candidate(rows) || !kernel_dtype(rows.scalar_type())) return std::nullopt;
  const auto x = with_contiguous_rows(rows);
  auto q = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn).memory_format(at::MemoryFormat::Contiguous));
  auto scale = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  cuda::QuantizeFp8Launch l;
  l.dtype = x.scalar_type();
  l.device_index = device_index(x);
  l.rows = x.size(0);
  l.cols = x.size(1);
  l.row_stride = x.size(0) == 1 ? 0 : x.stride(0);
  l.x = x.data_ptr();
  l.q = q.data_ptr();
  l.scale = scale.data_ptr<float>();
  l.gelu = gelu;
  if (activation) {
    *activation = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    l.activation = activation->data_ptr();
  }
  const size_t e = x.element_size();
  l.vec = vector_width(l.cols, e, {{cuda::Rows{l.x, 0, l.row_stride}, e}, operand(l.q, 1), operand(l.activation, e)});
  cuda::launch_quantize_fp8(l);
  ++fused_call_count;
  return std::make_pair(std::move(q), std::move(scale));
}

}  // namespace

std::pair<at::Tensor, at::Tensor> quantize_fp8_rows(const at::Tensor& rows) {
  if (auto result = quantize_launch(rows, /*gelu=*/false, nullptr)) return std::move(*result);
  return quantize_fp8_rows_reference(rows);
}

std::pair<at::Tensor, at::Tensor> quantize_fp8_rows_gelu_tanh(const at::Tensor& rows, at::Tensor* activation) {
  if (auto result = quantize_launch(rows, /*gelu=*/true, activation)) return std::move(*result);
  const auto gelu = at::gelu(rows, "tanh");
  if (activation) *activation = gelu;
  return quantize_fp8_rows_reference(gelu);
}

at::Tensor dequantize_fp8_rows(const at::Tensor& q, const at::Tensor& scale, at::ScalarType dtype) {
  const bool take = fp8_rows_candidate(q) && q.scalar_type() == at::kFloat8_e4m3fn && kernel_dtype(dtype) &&
                    scale.defined() && scale.scalar_type() == at::kFloat && scale.device() == q.device() &&
                    scale.dim() == 1 && scale.size(0) == q.size(0);
  if (!take) return dequantize_fp8_rows_reference(q, scale, dtype);
  const auto codes = with_contiguous_rows(q);
  const auto s = scale.contiguous();
  auto out = at::empty(codes.sizes(), codes.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous));
  cuda::DequantizeFp8Launch l;
  l.dtype = dtype;
  l.device_index = device_index(codes);
  l.rows = codes.size(0);
  l.cols = codes.size(1);
  l.row_stride = codes.size(0) == 1 ? 0 : codes.stride(0);
  l.q = codes.data_ptr();
  l.scale = s.data_ptr<float>();
  l.out = out.data_ptr();
  l.vec = vector_width(l.cols, 1, {{cuda::Rows{l.q, 0, l.row_stride}, 1}, operand(l.out, c10::elementSize(dtype))});
  cuda::launch_dequantize_fp8(l);
  ++fused_call_count;
  return out;
}

Fp8Tensor quantize_fp8_tensor_reference(const at::Tensor& x) {
  auto [q, scale] = quantize_fp8_rows_reference(x.reshape({1, -1}));
  return {q.view(x.sizes()), scale};
}

Fp8Tensor quantize_fp8_tensor(const at::Tensor& x) {
  const bool take = built_with_cuda() && x.defined() && x.is_cuda() && kernel_dtype(x.scalar_type()) &&
                    x.is_contiguous() && x.numel() > 0;
  if (!take) return quantize_fp8_tensor_reference(x);
  auto q = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  auto scale = at::empty({1}, x.options().dtype(at::kFloat));
  auto amax = at::empty({1}, x.options().dtype(at::kInt));
  cuda::QuantizeFp8TensorLaunch l;
  l.dtype = x.scalar_type();
  l.device_index = device_index(x);
  l.numel = x.numel();
  l.x = x.data_ptr();
  l.q = q.data_ptr();
  l.scale = scale.data_ptr<float>();
  l.amax = reinterpret_cast<unsigned*>(amax.data_ptr<int>());
  l.vec = vector_width(l.numel, x.element_size(), {operand(l.x, x.element_size()), operand(l.q, 1)});
  cuda::launch_quantize_fp8_tensor(l);
  ++fused_call_count;
  return {std::move(q), std::move(scale)};
}

}  // namespace ltxmps::kernels
