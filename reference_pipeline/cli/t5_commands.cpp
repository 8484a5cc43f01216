// `ltxmps forward t5` (T5EncoderModel once on saved ids) and `ltxmps encode-prompt` (the prompt cache).

#include "cli_common.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/tokenizer.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

#include <filesystem>
#include <iostream>
#include <memory>

namespace ltxmps::cli {

namespace {

// Far above T5's 512 positions in every LTX pipeline; the bound keeps `[batch, tokens, d_model]` and the
// `[heads, tokens, tokens]` attention bias from being sized by a typo (4000000000 tokens).
constexpr int64_t kMaxSequenceLength = 65536;

std::map<std::string, std::string> runtime_metadata(const ltxmps::pipeline::T5Runtime& runtime) {
  return {{"device", runtime.device.str()}, {"dtype", c10::toString(runtime.dtype)}};
}

// ltxmps forward t5

struct ForwardT5Options {
  std::string model_dir, inputs, output;
  RuntimeOptions runtime;
};

int run_forward_t5(const ForwardT5Options& o) {
  using namespace ltxmps::pipeline;
  check_outputs({{"--output", o.output}}, {{"--inputs", o.inputs}, {"--model-dir", o.model_dir}});
  const auto plan = resolve_plan(o.runtime);
  at::Tensor input_ids;
  std::optional<at::Tensor> attention_mask;
  Activity reading("reading --inputs " + o.inputs);
  for (auto& [name, tensor] : load_all(o.inputs)) {
    require_finite_input(tensor, "--inputs", o.inputs, name);
    if (name == "input_ids") input_ids = tensor;
    else if (name == "attention_mask") attention_mask = tensor;
    else throw ltxmps::Error(o.inputs + ": unknown tensor '" + name + "' (expected input_ids, attention_mask)");
  }
  LTXMPS_CHECK(input_ids.defined(), o.inputs, ": missing tensor 'input_ids'");
  const auto runtime = ltxmps::pipeline::t5_runtime(plan);
  Activity loading("loading the text encoder from " + o.model_dir);
  const WeightCheckGuard weight_check(!o.runtime.skip_weight_check);
  const auto model = load_t5_encoder(o.model_dir, runtime);
  throw_if_cancelled();
  Activity running("running the text encoder");
  const auto out = model.forward(input_ids, attention_mask).to(at::kCPU).to(at::kFloat).contiguous();
  require_finite_output(out, "text encoder (T5)", "last_hidden_state", runtime.dtype, o.runtime);
  Activity writing("writing --output " + o.output);
  save_safetensors(o.output, {{"last_hidden_state", out}}, runtime_metadata(runtime));
  std::cout << "last_hidden_state " << out.sizes() << " (" << plan.device << ", " << c10::toString(runtime.dtype)
            << ") -> " << o.output << "\n";
  return 0;
}

// ltxmps encode-prompt

struct EncodePromptCliOptions {
  std::string model_dir, output;
  std::vector<std::string> prompts, negative_prompts;
  int64_t max_sequence_length = 128;
  bool encoder_attention_mask = false;
  RuntimeOptions runtime;
};

int run_encode_prompt(const EncodePromptCliOptions& o) {
  using namespace ltxmps::pipeline;
  if (!o.negative_prompts.empty() && o.negative_prompts.size() != 1 && o.negative_prompts.size() != o.prompts.size())
    throw UsageError("--negative-prompt is given " + std::to_string(o.negative_prompts.size()) + " times for " +
                     std::to_string(o.prompts.size()) + " prompts (give it once, or once per --prompt)");
  const std::filesystem::path root(o.model_dir);
  check_outputs({{"--output", o.output}}, {{"--model-dir", o.model_dir}});
  const auto plan = resolve_plan(o.runtime);
  const auto runtime = ltxmps::pipeline::t5_runtime(plan);
  Activity loading("loading the tokenizer and text encoder from " + o.model_dir);
  const auto tokenizer = T5Tokenizer::load(root / "tokenizer");
  EncodePromptOptions options;
  options.prompts = o.prompts;
  options.negative_prompts = o.negative_prompts;
  options.max_sequence_length = o.max_sequence_length;
  options.encoder_attention_mask = o.encoder_attention_mask;
  PromptEmbeddings embeddings;
  {
    const WeightCheckGuard weight_check(!o.runtime.skip_weight_check);
    auto encoder = load_t5_encoder(root / "text_encoder", runtime);
    throw_if_cancelled();
    Activity encoding(c10::str("encoding ", o.prompts.size(), " prompt(s) of ", o.max_sequence_length, " tokens"));
    embeddings = encode_prompt(tokenizer, encoder, options);
    encoder.release();  // the weights go before the cache is written (and before any transformer loads)
  }
  // An all-NaN cache would only move the failure to generate, which would then blame the transformer.
  require_finite_output(embeddings.prompt_embeds, "text encoder (T5)", "prompt_embeds", runtime.dtype, o.runtime);
  require_finite_output(embeddings.negative_prompt_embeds, "text encoder (T5)", "negative_prompt_embeds",
                        runtime.dtype, o.runtime);
  Activity writing("writing --output " + o.output);
  auto metadata = runtime_metadata(runtime);
  metadata["max_sequence_length"] = std::to_string(o.max_sequence_length);
  metadata["encoder_attention_mask"] = o.encoder_attention_mask ? "true" : "false";
  save_prompt_cache(o.output, embeddings, metadata);
  std::cout << "prompt_embeds " << embeddings.prompt_embeds.sizes() << " (" << plan.device << ", "
            << c10::toString(runtime.dtype) << ") -> " << o.output << "\n";
  return 0;
}

}  // namespace

Runner setup_forward_t5(CLI::App* cmd) {
  auto o = std::make_shared<ForwardT5Options>();
  cmd->add_option("--model-dir", o->model_dir, "transformers text_encoder folder (config.json + model*.safetensors)")
      ->required();
  cmd->add_option("--inputs", o->inputs, "safetensors file with input_ids [B, L] and optionally attention_mask [B, L]")
      ->required();
  cmd->add_option("--output", o->output, "safetensors file to write; the output is 'last_hidden_state' (float32)")
      ->required();
  add_runtime_options(cmd, o->runtime);
  add_weight_check_option(cmd, o->runtime);
  return [o] { return run_forward_t5(*o); };
}

Runner setup_encode_prompt(CLI::App* cmd) {
  auto o = std::make_shared<EncodePromptCliOptions>();
  cmd->add_option("--model-dir", o->model_dir, "diffusers LTX folder with text_encoder/ and tokenizer/")->required();
  cmd->add_option("--prompt", o->prompts, "prompt (repeatable: a batch)")->required();
  cmd->add_option("--negative-prompt", o->negative_prompts,
                  "negative prompt: once for all prompts or once per prompt (default \"\", as diffusers)");
  cmd->add_option("--max-sequence-length", o->max_sequence_length,
                  "tokens per prompt (128: LTXPipeline / LTXImageToVideoPipeline, 256: LTXConditionPipeline)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, kMaxSequenceLength));
  cmd->add_flag("--encoder-attention-mask", o->encoder_attention_mask,
                "pass the tokenizer's mask to T5 (LTXConditionPipeline); by default T5 attends to the padding "
                "(LTXPipeline, LTXImageToVideoPipeline)");
  cmd->add_option("--output", o->output,
                  "safetensors file: prompt_embeds, prompt_attention_mask, negative_prompt_embeds, "
                  "negative_prompt_attention_mask")
      ->required();
  add_runtime_options(cmd, o->runtime);
  add_weight_check_option(cmd, o->runtime);
  return [o] { return run_encode_prompt(*o); };
}

}  // namespace ltxmps::cli
