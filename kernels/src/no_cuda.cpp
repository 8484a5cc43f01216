// The CUDA launchers of a build without the CUDA kernels: never reached, because built_with_cuda() is false and
// every entry point then runs its reference.

#include "cuda_launch.hpp"

#include "ltxmps/error.hpp"

namespace ltxmps::kernels::cuda {

namespace {
[[noreturn]] void not_built(const char* kernel) {
  throw ltxmps::Error(c10::str("ltxmps_kernels: ", kernel, " was called, but this build has no CUDA kernels"));
}
}  // namespace

void launch_norm_modulate(const NormModulateLaunch&) { not_built("launch_norm_modulate"); }
void launch_gated_residual(const GatedResidualLaunch&) { not_built("launch_gated_residual"); }
void launch_qk_norm_rope(const QkNormRopeLaunch&) { not_built("launch_qk_norm_rope"); }
void launch_quantize_fp8(const QuantizeFp8Launch&) { not_built("launch_quantize_fp8"); }
void launch_dequantize_fp8(const DequantizeFp8Launch&) { not_built("launch_dequantize_fp8"); }
void launch_quantize_fp8_tensor(const QuantizeFp8TensorLaunch&) { not_built("launch_quantize_fp8_tensor"); }
void launch_channel_bias(const ChannelBiasLaunch&) { not_built("launch_channel_bias"); }

}  // namespace ltxmps::kernels::cuda
