// The VAE of an original Lightricks single-file checkpoint (diffusers' AutoencoderKLLTXVideo.from_single_file with
// convert_ltx_vae_checkpoint_to_diffusers); the key tables live in checkpoint.cpp (Note [Lightricks single-file
// VAE] in checkpoint.hpp).

#include "ltxmps_pipeline/vae.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"

#include "ltxmps/error.hpp"

namespace ltxmps::pipeline {

VaeModel load_lightricks_vae(const std::filesystem::path& file, const VaeRuntime& runtime, const VaeConfig& config) {
  config.validate(file.string() + " (VAE config)");
  const auto info = inspect_lightricks_checkpoint(WeightStore::open_file(file));
  LTXMPS_CHECK(info.has_vae, file.string(), ": no VAE in this Lightricks single file (no 'vae.encoder.conv_in.conv.bias'",
               "; it is a ", info.model_type, " transformer-only file)");
  const bool keys_095 = info.vae_layout == LightricksVaeLayout::v095;
  LTXMPS_CHECK(keys_095 == config.is_095_encoder(), file.string(), ": its VAE keys are laid out as ",
               keys_095 ? "0.9.5+ (encoder conv_out takes 2048 channels)" : "0.9.0/0.9.1", ", but the config's ",
               "down_block_types describe a ", config.is_095_encoder() ? "0.9.5+" : "0.9.0/0.9.1",
               " encoder; pass the vae/config.json of the release the file is (diffusers would use ",
               info.reference_config, ")");
  const bool keys_091 = info.vae_layout == LightricksVaeLayout::v091;
  LTXMPS_CHECK(!keys_091 || config.timestep_conditioning, file.string(), ": its decoder has a last_time_embedder ",
               "(0.9.1 layout), but the config has timestep_conditioning false");
  return load_strict<VaeModel>(WeightStore::open_lightricks_vae(file), config, runtime);
}

}  // namespace ltxmps::pipeline
