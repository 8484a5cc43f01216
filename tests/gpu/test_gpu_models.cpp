// The reference pipeline's models on CUDA: each runs in fp32 (TF32 off) and in half precision on the GPU and is
// compared with the same weights in fp32 on the CPU, whose parity with diffusers/transformers the parity suites
// establish. Without CUDA the suite reports SKIPPED (exit code 77) with its reason.
#define CATCH_CONFIG_RUNNER  // Catch2 v2: this file provides main() (v3 ignores the macro)
#include "catch_compat.hpp"
#if LTXMPS_CATCH_V3
#include <catch2/catch_session.hpp>
#endif

#include "ltxmps_kernels/fused.hpp"
#include "ltxmps_pipeline/released_configs.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/stages.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/t5_streaming.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include <ltxmps/ltxmps.hpp>

#include <cmath>
#include <iostream>

using namespace ltxmps::pipeline;

namespace {

const c10::Device kCuda("cuda:0");
const c10::Device kCpu("cpu");

// Deterministic weights by name: a CPU generator seeded from the name, scaled by 1/sqrt(fan_in) so activations
// stay O(1); 1-D tensors (norm weights, biases) near 1 and near 0.
at::Tensor random_weight(const std::string& name, const std::vector<int64_t>& shape) {
  auto g = ltxmps::make_cpu_generator(std::hash<std::string>{}(name));
  if (shape.empty()) return at::full({}, 1000.0);
  auto t = ltxmps::randn(shape, g);
  if (shape.size() == 1) {
    const bool bias = name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0;
    return bias ? t.mul_(0.05) : t.mul_(0.05).add_(1.0);
  }
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  return t.mul_(1.0 / std::sqrt(static_cast<double>(fan_in)));
}

double scaled_error(const at::Tensor& out, const at::Tensor& ref) {
  const auto o = out.to(kCpu, at::kDouble), r = ref.to(kCpu, at::kDouble);
  return (o - r).abs().max().item<double>() / std::max(1.0, r.abs().max().item<double>());
}

// fp32 on CUDA must not use TF32 (10-bit mantissa) for the comparison with the CPU.
struct NoTF32 {
  NoTF32() {
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
};

}  // namespace

TEST_CASE("transformer on CUDA: fp32 equals the CPU; bf16 and fp16 within half-precision error", "[gpu][transformer]") {
  NoTF32 no_tf32;
  TransformerConfig config;
  config.in_channels = 8;
  config.out_channels = 8;
  config.num_attention_heads = 4;
  config.attention_head_dim = 8;
  config.cross_attention_dim = 32;
  config.num_layers = 2;
  config.caption_channels = 32;
  auto g = ltxmps::make_cpu_generator(1);
  TransformerInputs in;
  in.hidden_states = ltxmps::randn({2, 2 * 4 * 4, 8}, g);
  in.encoder_hidden_states = ltxmps::randn({2, 8, 32}, g);
  in.timestep = at::tensor({500.0f, 20.0f});
  in.encoder_attention_mask = at::ones({2, 8});
  in.encoder_attention_mask->narrow(1, 6, 2).zero_();
  in.num_frames = 2;
  in.height = 4;
  in.width = 4;
  in.rope_interpolation_scale = std::array<double, 3>{8.0 / 25.0, 32.0, 32.0};

  const auto reference = TransformerModel::from_weights(config, {kCpu, at::kFloat, {}}, random_weight).forward(in);
  const auto fp32 = TransformerModel::from_weights(config, {kCuda, at::kFloat, {}}, random_weight).forward(in);
  REQUIRE(fp32.device() == kCuda);
  CHECK(scaled_error(fp32, reference) <= 1e-4);
  const auto upcast = TransformerModel::from_weights(config, {kCuda, at::kFloat, {ltxmps::AttentionKernel::upcast}},
                                                     random_weight).forward(in);
  CHECK(scaled_error(upcast, reference) <= 1e-4);
  // Bounds against the CPU fp32 reference, as fractions of the output scale: fp16 rounds to 11 mantissa bits
  // (1e-2), bf16 to 8 (5e-2 here). Bit-level parity of each dtype with diffusers is the CPU parity suites' job.
  const auto bf16 = TransformerModel::from_weights(config, {kCuda, at::kBFloat16, {}}, random_weight).forward(in);
  CHECK(bf16.scalar_type() == at::kBFloat16);
  CHECK(scaled_error(bf16, reference) <= 5e-2);
  const auto fp16 = TransformerModel::from_weights(config, {kCuda, at::kHalf, {}}, random_weight).forward(in);
  CHECK(scaled_error(fp16, reference) <= 1e-2);
}

// Both layouts of the activations (Note [VAE channels-last on CUDA] in vae.cpp): the channels-last one also runs the
// depth-to-space and space-to-depth shuffles through its own order.
TEST_CASE("VAE on CUDA: fp32 encode/decode and tiled decode equal the CPU", "[gpu][vae]") {
  NoTF32 no_tf32;
  const bool channels_last = GENERATE(false, true);
  CAPTURE(channels_last);
  VaeConfig config;  // diffusers' "090" unit-test VAE
  config.latent_channels = 8;
  config.block_out_channels = {8, 8, 8, 8};
  config.decoder_block_out_channels = {8, 8, 8, 8};
  config.layers_per_block = {1, 1, 1, 1, 1};
  config.decoder_layers_per_block = {1, 1, 1, 1, 1};
  config.spatio_temporal_scaling = {true, true, false, false};
  config.decoder_spatio_temporal_scaling = {true, true, false, false};
  config.patch_size = 1;
  auto g = ltxmps::make_cpu_generator(2);
  const auto video = ltxmps::randn({1, 3, 9, 32, 32}, g);
  const auto cpu = VaeModel::from_weights(config, {kCpu, at::kFloat, true}, random_weight);
  auto gpu = VaeModel::from_weights(config, {kCuda, at::kFloat, true, channels_last}, random_weight);
  CHECK(gpu.decoder.conv_in.weight.is_contiguous(at::MemoryFormat::ChannelsLast3d) == channels_last);
  const auto cpu_post = cpu.encode(video);
  const auto gpu_post = gpu.encode(video);
  CHECK(scaled_error(gpu_post.mean, cpu_post.mean) <= 1e-4);
  const auto cpu_frames = cpu.decode(cpu_post.mean);
  CHECK(scaled_error(gpu.decode(cpu_post.mean.to(kCuda)), cpu_frames) <= 1e-4);
  auto cpu_tiled = cpu;
  cpu_tiled.tiling.enable_tiling(16, 16, std::nullopt, 8, 8);
  gpu.tiling.enable_tiling(16, 16, std::nullopt, 8, 8);
  CHECK(scaled_error(gpu.decode(cpu_post.mean.to(kCuda)), cpu_tiled.decode(cpu_post.mean)) <= 1e-4);
}

// On CUDA the stage checks are queued and read once per decode, the CPU generator's noise maps are queued from
// pinned memory and the tile blends take their weights the same way (Note [Deferred VAE finiteness checks],
// spatial_noise and blend in vae.cpp): the framewise + spatially tiled decode must still equal the CPU's, and a NaN
// must still be named by its stage.
TEST_CASE("VAE on CUDA: framewise tiled decode with 0.9.1 noise equals the CPU; a NaN names its stage", "[gpu][vae]") {
  NoTF32 no_tf32;
  const bool channels_last = GENERATE(false, true);
  CAPTURE(channels_last);
  VaeConfig config;  // the parity suite's "091_noise" VAE: noise injection, timestep conditioning
  config.latent_channels = 8;
  config.block_out_channels = {8, 8, 8, 8};
  config.decoder_block_out_channels = {16, 32, 64};
  config.layers_per_block = {1, 1, 1, 1};
  config.decoder_layers_per_block = {1, 1, 1, 1};
  config.spatio_temporal_scaling = {true, true, true, false};
  config.decoder_spatio_temporal_scaling = {true, true, true};
  config.decoder_inject_noise = {true, true, true, false};
  config.upsample_residual = {true, true, true};
  config.upsample_factor = {2, 2, 2};
  config.timestep_conditioning = true;
  config.patch_size = 1;
  auto cpu = VaeModel::from_weights(config, {kCpu, at::kFloat, true}, random_weight);
  auto gpu = VaeModel::from_weights(config, {kCuda, at::kFloat, true, channels_last}, random_weight);
  for (auto* m : {&cpu, &gpu}) {
    m->tiling.enable_tiling(32, 32, 16, 16, 16, 8);  // 4-latent tiles, stride 2; 2-latent-frame tiles, stride 1
    m->tiling.use_framewise_decoding = true;
  }
  auto g = ltxmps::make_cpu_generator(3);
  const auto latents = ltxmps::randn({1, 8, 4, 6, 6}, g);
  const auto temb = at::tensor({0.05f});
  auto cpu_noise = ltxmps::make_cpu_generator(11), gpu_noise = ltxmps::make_cpu_generator(11);
  const auto cpu_frames = cpu.decode(latents, temb, &cpu_noise);
  const auto gpu_frames = gpu.decode(latents.to(kCuda), temb.to(kCuda), &gpu_noise);
  REQUIRE(gpu_frames.sizes() == cpu_frames.sizes());
  CHECK(gpu_frames.device() == kCuda);
  CHECK(scaled_error(gpu_frames, cpu_frames) <= 1e-4);

  auto broken = gpu;
  auto& conv2 = broken.decoder.up_blocks[1].resnets.back().conv2;
  conv2.bias = at::full_like(conv2.bias, NAN);
  CHECK_THROWS_WITH(broken.decode(latents.to(kCuda), temb.to(kCuda)),
                    ltxmps_test::ContainsAll({"vae decode: up_blocks.1 produced NaN/Inf", "cuda"}));
  broken.runtime.check_finite = false;
  CHECK(at::isnan(broken.decode(latents.to(kCuda), temb.to(kCuda))).any().item<bool>());
}

// The 0.9.7 layout, narrow: space-to-depth downsamplers and depth-to-space upsamplers with residuals, so that both
// shuffles run on channels-last activations; encode and timestep-conditioned decode against the CPU.
TEST_CASE("VAE 0.9.7 layout on CUDA channels-last: encode and decode equal the CPU", "[gpu][vae]") {
  NoTF32 no_tf32;
  auto config = ltx_097_vae_config();
  config.latent_channels = 8;
  config.block_out_channels = {8, 16, 32, 64, 128};
  config.decoder_block_out_channels = {16, 32, 64};
  config.layers_per_block = {1, 1, 1, 1, 1};
  config.decoder_layers_per_block = {1, 1, 1, 1};
  const auto cpu = VaeModel::from_weights(config, {kCpu, at::kFloat, true}, random_weight);
  const auto gpu = VaeModel::from_weights(config, {kCuda, at::kFloat, true, true}, random_weight);
  auto g = ltxmps::make_cpu_generator(5);
  const auto video = ltxmps::randn({1, 3, 17, 64, 96}, g);  // 3 x 2 x 3 latents
  const auto fused_before = ltxmps::kernels::fused_calls();
  const auto cpu_post = cpu.encode(video);
  const auto gpu_post = gpu.encode(video.to(kCuda));
  // Every norm of a CUDA build ran through the row kernel (Note [VAE norms through the row kernel]).
  if (ltxmps::kernels::built_with_cuda()) CHECK(ltxmps::kernels::fused_calls() > fused_before);
  CHECK(gpu_post.mean.is_contiguous());
  CHECK(scaled_error(gpu_post.mean, cpu_post.mean) <= 1e-4);
  const auto temb = at::tensor({0.05f});
  const auto cpu_frames = cpu.decode(cpu_post.mean, temb);
  const auto gpu_frames = gpu.decode(cpu_post.mean.to(kCuda), temb.to(kCuda));
  REQUIRE(gpu_frames.sizes() == cpu_frames.sizes());
  CHECK(gpu_frames.is_contiguous());
  CHECK(scaled_error(gpu_frames, cpu_frames) <= 1e-4);
}

namespace {

// A small gated T5 (64 token ids, 4 heads) of `layers` blocks of width `d_model`.
T5Config small_t5(int64_t d_model, int64_t d_ff, int64_t layers) {
  T5Config config;
  config.vocab_size = 64;
  config.d_model = d_model;
  config.d_kv = d_model / 4;
  config.num_heads = 4;
  config.d_ff = d_ff;
  config.num_layers = layers;
  config.feed_forward_proj = "gated-gelu";
  config.dense_act_fn = "gelu_new";
  config.is_gated_act = true;
  return config;
}

at::Tensor t5_source(const std::string& name, const std::vector<int64_t>& shape, at::ScalarType dtype) {
  return random_weight(name, shape).to(dtype);
}

}  // namespace

TEST_CASE("T5 on CUDA: fp32 equals the CPU; bf16 within half-precision error; fp16 keeps wo in fp32", "[gpu][t5]") {
  NoTF32 no_tf32;
  const auto config = small_t5(32, 48, 2);
  const auto source = t5_source;
  const auto ids = at::randint(0, 64, {2, 40}, at::TensorOptions().dtype(at::kLong));
  auto mask = at::ones({2, 40});
  mask.narrow(1, 30, 10).zero_();
  const auto reference = T5EncoderModel::from_weights(config, {kCpu, at::kFloat, {}, {}}, source).forward(ids, mask);
  const auto fp32 = T5EncoderModel::from_weights(config, {kCuda, at::kFloat, {}, {}}, source).forward(ids, mask);
  CHECK(scaled_error(fp32, reference) <= 1e-4);
  // fp16 1e-2 as for the transformer. bf16 8e-2, the full 8x of its 3 fewer mantissa bits: T5 does not scale
  // q·kᵀ, so its scores are large and their bf16 rounding moves the softmax more (measured on the H200: 6.2e-2).
  const auto bf16 = T5EncoderModel::from_weights(config, {kCuda, at::kBFloat16, {}, {}}, source).forward(ids, mask);
  CHECK(scaled_error(bf16, reference) <= 8e-2);
  auto fp16_model =
      T5EncoderModel::from_weights(config, {kCuda, at::kHalf, ltxmps::t5_fp32_modules(at::kHalf), {}}, source);
  CHECK(fp16_model.block[0].wo.scalar_type() == at::kFloat);
  CHECK(scaled_error(fp16_model.forward(ids, mask), reference) <= 1e-2);
  fp16_model.release();
  CHECK_FALSE(fp16_model.loaded());
}

TEST_CASE("T5 streamed from pinned host memory equals the resident encoder on CUDA bit for bit", "[gpu][t5]") {
  const auto config = small_t5(64, 96, 3);
  const auto source = t5_source;
  const auto ids = at::randint(0, 64, {2, 40}, at::TensorOptions().dtype(at::kLong));
  auto mask = at::ones({2, 40});
  mask.narrow(1, 30, 10).zero_();
  const auto resident = T5EncoderModel::from_weights(config, {kCuda, at::kBFloat16, {}, {}}, source);
  // Offloaded and streamed, as the 8 GiB plan runs it: home on the CPU, blocks pinned, moved in for the run.
  auto streamed = T5EncoderModel::from_weights(config, {kCpu, at::kBFloat16, {}, {}}, source);
  stream_t5_blocks(streamed, kCuda);
  CHECK(streamed.block[1].wi_0.is_pinned());
  move_model(streamed, kCuda);
  CHECK(streamed.shared.is_cuda());
  CHECK(streamed.block[1].wi_0.is_cpu());
  CHECK(at::equal(streamed.forward(ids, mask), resident.forward(ids, mask)));
  CHECK(at::equal(streamed.forward(ids), resident.forward(ids)));
}

TEST_CASE("decoded frames reach the host through the pinned pieces with every value of a plain copy", "[gpu][frames]") {
  // Three 32 MiB pieces and a remainder; a permuted view as the decode hands it over, float32 and bf16.
  const int64_t frames = 2 * 1024 + 7, pixels = 8193;
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    INFO(dtype);
    const auto video = at::randn({1, 2, frames, pixels}, at::TensorOptions().device(kCuda)).to(dtype);
    const auto view = video.permute({0, 2, 1, 3});
    const auto host = to_host_frames(view);
    CHECK(host.is_cpu());
    CHECK(host.is_contiguous());
    CHECK(host.scalar_type() == at::kFloat);
    CHECK(host.sizes() == view.sizes());
    CHECK(at::equal(host, view.to(kCpu, at::kFloat).contiguous()));
  }
  CHECK(to_host_frames(at::empty({0, 3}, at::TensorOptions().device(kCuda))).numel() == 0);
}

int main(int argc, char* argv[]) {
  if (!torch::cuda::is_available()) {
    std::cout << "SKIPPED: no CUDA device on this machine (torch::cuda::is_available() is false); "
                 "the models' CUDA paths are tested on the GPU machine\n";
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
