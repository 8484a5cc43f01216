#pragma once
// The CPU lowerings of the VAE's convolutions and channel RMSNorm (vae_cpu.cpp). Private to the pipeline library:
// vae.cpp is their only user, for float32 activations on the CPU only (and the VAE suite, which checks
// skinny_product against at::addmm); every other device and dtype keeps the ATen op sequences of vae.cpp.

#include "ltxmps_pipeline/vae.hpp"

#include <ATen/ATen.h>

namespace ltxmps::pipeline::detail {

/// @brief The epsilon of diffusers' `RMSNorm(C, eps=1e-8)` in the VAE (Note [VAE RMSNorm] in vae.cpp), shared by
///        the ATen op sequence and the CPU lowering.
constexpr float kChannelRmsNormEps = 1e-8f;

/// @brief True where cpu_conv3d() applies: a float32 tensor on the CPU.
bool is_cpu_float(const at::Tensor& x);

/// @brief `at::conv3d(x, c.weight, c.bias, c.stride, {0, kh / 2, kw / 2})` for a CPU float32 `x` that already
///        holds the temporal padding, lowered by the number of output positions (Note [Small CPU convolutions],
///        Note [Mid-size CPU convolutions] in vae_cpu.cpp).
at::Tensor cpu_conv3d(const VaeConv3dWeights& c, const at::Tensor& x);

/// @brief True where skinny_product() runs: an x86-64 CPU with AVX-512 (checked once at run time).
bool skinny_product_available();

/// @brief `columns @ weight.t() + bias` for CPU float32 `columns` [N, K] and `weight` [M, K] with few rows N,
///        reading each weight row once (Note [Skinny CPU products] in vae_cpu.cpp); `bias` [M] or undefined.
///        Throws where skinny_product_available() is false.
at::Tensor skinny_product(const at::Tensor& columns, const at::Tensor& weight, const at::Tensor& bias);

/// @brief channel_rms_norm(x), then `h * (1 + scale) + shift` where `shift` is defined (scale and shift
///        [B or 1, C, 1, 1, 1]), for a CPU float32 `x` in one pass (Note [CPU channel RMSNorm] in vae_cpu.cpp).
at::Tensor cpu_channel_rms_norm(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale);

}  // namespace ltxmps::pipeline::detail
