// `ltxmps forward vae-encode` and `ltxmps forward vae-decode`: AutoencoderKLLTXVideo once on saved inputs.

#include "cli_common.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/vae.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/random.hpp"

#include <ATen/ATen.h>

#include <iostream>
#include <memory>

namespace ltxmps::cli {

namespace {

struct ForwardVaeOptions {
  std::string model_dir, inputs, output;
  RuntimeOptions runtime;
  std::vector<std::string> args;
  bool tiling = false, slicing = false, framewise = false;
};

const std::set<std::string> kTileArgs = {"tile_sample_min_height",    "tile_sample_min_width",
                                         "tile_sample_min_num_frames", "tile_sample_stride_height",
                                         "tile_sample_stride_width",  "tile_sample_stride_num_frames"};

struct LoadedVae {
  ltxmps::ExecutionPlan plan;
  ltxmps::pipeline::VaeModel model;
};

LoadedVae load(const ForwardVaeOptions& o, const std::map<std::string, std::string>& named) {
  using namespace ltxmps::pipeline;
  auto arg = [&](const char* name) -> std::optional<int64_t> {
    const auto it = named.find(name);
    if (it == named.end()) return std::nullopt;
    return positive_int_arg(name, it->second);
  };
  VaeTiling tiling;
  // As diffusers' enable_tiling(...): the given sizes override the defaults.
  tiling.enable_tiling(arg("tile_sample_min_height"), arg("tile_sample_min_width"), arg("tile_sample_min_num_frames"),
                       arg("tile_sample_stride_height"), arg("tile_sample_stride_width"),
                       arg("tile_sample_stride_num_frames"));
  tiling.use_tiling = o.tiling;
  tiling.use_slicing = o.slicing;
  tiling.use_framewise_encoding = tiling.use_framewise_decoding = o.framewise;
  try {
    tiling.validate();
  } catch (const ltxmps::Error& e) {
    throw UsageError(e.what());
  }

  auto plan = resolve_plan(o.runtime);
  const VaeRuntime runtime = vae_runtime(plan);
  Activity loading("loading the VAE from " + o.model_dir);
  const WeightCheckGuard weight_check(!o.runtime.skip_weight_check);
  auto model = load_vae(o.model_dir, runtime);
  throw_if_cancelled();
  model.tiling = tiling;
  return {std::move(plan), std::move(model)};
}

std::string describe(const LoadedVae& v) {
  const auto& t = v.model.tiling;
  return c10::str(v.plan.device, ", ", c10::toString(v.model.runtime.dtype), t.use_tiling ? ", tiled" : "",
                  t.use_framewise_decoding ? ", framewise" : "", t.use_slicing ? ", sliced" : "");
}

std::map<std::string, std::string> metadata(const LoadedVae& v) {
  return {{"device", v.plan.device.str()}, {"dtype", c10::toString(v.model.runtime.dtype)}};
}

// Reads --inputs, each tensor checked for NaN/Inf.
std::vector<std::pair<std::string, at::Tensor>> read_inputs(const ForwardVaeOptions& o) {
  Activity reading("reading --inputs " + o.inputs);
  auto inputs = ltxmps::pipeline::load_all(o.inputs);
  for (const auto& [name, tensor] : inputs) require_finite_input(tensor, "--inputs", o.inputs, name);
  return inputs;
}

int run_forward_vae_encode(const ForwardVaeOptions& o) {
  const auto named = parse_named_args(o.args, kTileArgs, "forward vae-encode");
  check_outputs({{"--output", o.output}}, {{"--inputs", o.inputs}, {"--model-dir", o.model_dir}});
  at::Tensor sample;
  for (auto& [name, tensor] : read_inputs(o)) {
    if (name == "sample") sample = tensor;
    else throw ltxmps::Error(o.inputs + ": unknown tensor '" + name + "' (expected sample)");
  }
  LTXMPS_CHECK(sample.defined(), o.inputs, ": missing tensor 'sample' (the video [B, C, F, H, W] in [-1, 1])");
  const auto vae = load(o, named);
  Activity running("running the VAE encoder");
  const auto posterior = vae.model.encode(sample);
  auto cpu = [](const at::Tensor& t) { return t.to(at::kCPU).to(at::kFloat).contiguous(); };
  const auto mean = cpu(posterior.mean), logvar = cpu(posterior.logvar);
  require_finite_output(mean, "VAE encoder", "mean", vae.model.runtime.dtype, o.runtime);
  require_finite_output(logvar, "VAE encoder", "logvar", vae.model.runtime.dtype, o.runtime);
  Activity writing("writing --output " + o.output);
  ltxmps::pipeline::save_safetensors(o.output, {{"mean", mean}, {"logvar", logvar}}, metadata(vae));
  std::cout << "mean, logvar " << mean.sizes() << " (" << describe(vae) << ") -> " << o.output << "\n";
  return 0;
}

int run_forward_vae_decode(const ForwardVaeOptions& o) {
  auto allowed = kTileArgs;
  allowed.insert("noise_seed");
  const auto named = parse_named_args(o.args, allowed, "forward vae-decode");
  check_outputs({{"--output", o.output}}, {{"--inputs", o.inputs}, {"--model-dir", o.model_dir}});
  at::Tensor latents;
  std::optional<at::Tensor> temb;
  for (auto& [name, tensor] : read_inputs(o)) {
    if (name == "latents") latents = tensor;
    else if (name == "temb") temb = tensor;
    else throw ltxmps::Error(o.inputs + ": unknown tensor '" + name + "' (expected latents, temb)");
  }
  LTXMPS_CHECK(latents.defined(), o.inputs, ": missing tensor 'latents' ([B, latent_channels, F, H, W])");
  std::optional<at::Generator> noise;
  if (named.count("noise_seed"))
    noise = ltxmps::make_cpu_generator(parse_seed("--arg noise_seed", named.at("noise_seed")));
  const auto vae = load(o, named);
  Activity running("running the VAE decoder");
  const auto sample =
      vae.model.decode(latents, temb, noise ? &*noise : nullptr).to(at::kCPU).to(at::kFloat).contiguous();
  require_finite_output(sample, "VAE decoder", "sample", vae.model.runtime.dtype, o.runtime);
  Activity writing("writing --output " + o.output);
  ltxmps::pipeline::save_safetensors(o.output, {{"sample", sample}}, metadata(vae));
  std::cout << "sample " << sample.sizes() << " (" << describe(vae) << ") -> " << o.output << "\n";
  return 0;
}

std::shared_ptr<ForwardVaeOptions> add_vae_options(CLI::App* cmd, const std::string& inputs_help,
                                                   const std::string& output_help, const std::string& args_help) {
  auto o = std::make_shared<ForwardVaeOptions>();
  cmd->add_option("--model-dir", o->model_dir, "diffusers vae folder (config.json + weights)")->required();
  cmd->add_option("--inputs", o->inputs, inputs_help)->required();
  cmd->add_option("--output", o->output, output_help)->required();
  add_runtime_options(cmd, o->runtime);
  add_weight_check_option(cmd, o->runtime);
  cmd->add_flag("--tiling", o->tiling, "spatial tiles, as diffusers' enable_tiling()");
  cmd->add_flag("--slicing", o->slicing, "one batch item at a time, as enable_slicing()");
  cmd->add_flag("--framewise", o->framewise,
                "temporal tiles (use_framewise_decoding, which diffusers also applies to encode)");
  cmd->add_option("--arg", o->args, args_help);
  return o;
}

const char* const kTileArgsHelp =
    "tile_sample_min_height, tile_sample_min_width, tile_sample_min_num_frames, tile_sample_stride_height, "
    "tile_sample_stride_width, tile_sample_stride_num_frames (pixels/frames, as enable_tiling's arguments)";

}  // namespace

Runner setup_forward_vae_encode(CLI::App* cmd) {
  auto o = add_vae_options(cmd, "safetensors file with 'sample', the video [B, C, F, H, W] in [-1, 1]",
                           "safetensors file to write: the posterior's 'mean' and clamped 'logvar' (float32)",
                           std::string("NAME=VALUE (repeatable): ") + kTileArgsHelp);
  return [o] { return run_forward_vae_encode(*o); };
}

Runner setup_forward_vae_decode(CLI::App* cmd) {
  auto o = add_vae_options(cmd, "safetensors file with 'latents' [B, C, F, H, W] and optional 'temb' [B]",
                           "safetensors file to write: the decoded video 'sample' (float32)",
                           std::string("NAME=VALUE (repeatable): noise_seed (CPU generator for 0.9.1's noise "
                                       "injection), ") +
                               kTileArgsHelp);
  return [o] { return run_forward_vae_decode(*o); };
}

}  // namespace ltxmps::cli
