#pragma once
/// @file ltxmps_pipeline.hpp
/// @brief The umbrella header of the ltxmps LTX-Video pipeline library (`ltxmps::pipeline`): the models, the
///        stages, the generation pipelines, object removal and the video files.

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/composition.hpp"
#include "ltxmps_pipeline/effects_mask.hpp"
#include "ltxmps_pipeline/effects_pass.hpp"
#include "ltxmps_pipeline/embedded_default.hpp"
#include "ltxmps_pipeline/latent_grid.hpp"
#include "ltxmps_pipeline/linear.hpp"
#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/pipeline.hpp"
#include "ltxmps_pipeline/progress.hpp"
#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/removal.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/scheduler.hpp"
#include "ltxmps_pipeline/stages.hpp"
#include "ltxmps_pipeline/synthetic_clip.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/tokenizer.hpp"
#include "ltxmps_pipeline/transformer.hpp"
#include "ltxmps_pipeline/vae.hpp"
#include "ltxmps_pipeline/video_io.hpp"
