// The denoising loop shared by every pipeline, and the per-token conditioning hooks of LTXConditionPipeline
// (also used by object removal).

#include "ltxmps_pipeline/stages.hpp"

#include "ltxmps_pipeline/output_files.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/transformer_graph.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/memory.hpp"
#include "ltxmps/offload.hpp"

#if defined(LTXMPS_WITH_CUDA)
#include <ATen/cuda/CUDAEvent.h>
#endif

#include <array>
#include <memory>

namespace ltxmps::pipeline {

namespace {

// `rows`, where defined, are the timestep's values and each token's index into them (DenoiseHooks::timestep_rows).
at::Tensor velocity(TransformerGraph& transformer, const PromptBatch& prompts, const TransformerInputs& grid,
                    const at::Tensor& latents, const at::Tensor& timestep,
                    const std::pair<at::Tensor, at::Tensor>& rows) {
  TransformerInputs in = grid;
  in.hidden_states = (prompts.guidance ? at::cat({latents, latents}, 0) : latents).to(prompts.dtype());
  in.encoder_hidden_states = prompts.embeds;
  in.encoder_attention_mask = prompts.mask;
  in.timestep = timestep;
  if (rows.first.defined()) {
    in.timestep = rows.first;
    in.timestep_index = rows.second;
  }
  return transformer.forward(in);
}

// The loop's transformer: replayed as a CUDA graph where the plan says so and the model allows it (Note [CUDA graphs
// in the plan]); else every step is the eager forward. A loop of fewer than three steps would replay once at most,
// which the warm-up on another stream and the capture cost.
std::unique_ptr<TransformerGraph> loop_transformer(const StageContext& ctx, const TransformerModel& transformer,
                                                   int64_t steps) {
  if (!ctx.plan.graphs.denoise_step || steps < 3)
    return std::make_unique<TransformerGraph>(transformer, /*enabled=*/false);
  const auto unavailable = cuda_graph_unavailable(transformer);
  if (!unavailable.empty())
    ctx.sink({ltxmps::Severity::info, "graphs", "graphs.unavailable",
              "denoise: the step runs op by op: " + unavailable});
  return std::make_unique<TransformerGraph>(transformer, unavailable.empty());
}

// After the loop: how the steps ran (and why a capture failed, if one did).
void report_graph(const StageContext& ctx, const TransformerGraph& graph) {
  if (!graph.capture_failure().empty())
    ctx.sink({ltxmps::Severity::warning, "graphs", "graphs.capture_failed",
              "denoise: capturing the transformer forward into a CUDA graph failed, the steps ran op by op: " +
                  graph.capture_failure()});
  if (graph.replays() > 0)
    ctx.sink({ltxmps::Severity::info, "graphs", "graphs.replayed",
              c10::str("denoise: the transformer forward ran ", graph.eager_forwards(), " time(s) op by op and ",
                       graph.replays(), " time(s) as a CUDA graph replay")});
}

at::Tensor guide(const at::Tensor& noise_pred, const PromptBatch& prompts, const DenoiseSettings& s) {
  if (!prompts.guidance) return noise_pred;
  const auto chunks = noise_pred.chunk(2, 0);
  const auto& uncond = chunks[0];
  const auto& text = chunks[1];
  auto guided = uncond + s.guidance_scale * (text - uncond);
  if (s.guidance_rescale > 0) guided = rescale_noise_cfg(guided, text, s.guidance_rescale);
  return guided;
}

// Note [Deferred finiteness checks]
// Reading "is this step's output finite?" on the host every step would make the host wait for each step before it
// can queue the next one (one device synchronization per step). Instead each check only queues device work: one
// int64 flag on the device keeps the code of the first non-finite check (2·step + what). The flag is read
//   - at once on the CPU, where there is no queue to drain (the loop stops at the step it happened);
//   - on CUDA, without blocking: every step queues a copy of the flag into pinned host memory behind an event,
//     and the host reads the copy of an earlier step only once its event has completed, so a NaN stops the loop a
//     step or two later, still naming the step where it first appeared;
//   - everywhere, once after the loop (the decode that follows synchronizes anyway).
class FiniteWatch {
 public:
  FiniteWatch(const c10::Device& device, int64_t total) : device_(device), total_(total) {
    first_bad_ = at::full({}, -1, at::TensorOptions().dtype(at::kLong).device(device));
#if defined(LTXMPS_WITH_CUDA)
    if (device.is_cuda())
      for (auto& h : host_) h = at::full({}, -1, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
#endif
  }

  // Queues the check of `t` (what: 0 = transformer output, 1 = latents) at `step`; throws when a check is known to
  // have failed (at once on the CPU, a step or two late on CUDA).
  void check(const at::Tensor& t, int what, int64_t step) {
    const auto bad = at::logical_not(at::isfinite(t).all());
    first_bad_ = at::where(at::logical_and(first_bad_ < 0, bad), first_bad_.new_full({}, 2 * step + what), first_bad_);
    if (device_.is_cpu()) throw_if_bad(first_bad_.item<int64_t>());
  }

  // Once per step, after its checks: polls the flag without blocking where the device has a queue.
  void poll(int64_t step) {
#if defined(LTXMPS_WITH_CUDA)
    if (!device_.is_cuda()) return;
    const size_t prev = static_cast<size_t>((step + 1) % 2), cur = static_cast<size_t>(step % 2);
    if (pending_[prev] && events_[prev].query()) {
      pending_[prev] = false;
      throw_if_bad(host_[prev].item<int64_t>());
    }
    host_[cur].copy_(first_bad_, /*non_blocking=*/true);
    events_[cur].record();
    pending_[cur] = true;
#else
    (void)step;
#endif
  }

  // After the loop: one read of the flag.
  void finish() const { throw_if_bad(first_bad_.item<int64_t>()); }

 private:
  void throw_if_bad(int64_t code) const {
    if (code < 0) return;
    const int64_t step = code / 2;
    const bool latents = code % 2 == 1;
    throw Error(c10::str("generate: the ", latents ? "latents contain" : "transformer output contains", " NaN or Inf ",
                         latents ? "after" : "at", " denoising step ", step + 1, " of ", total_,
                         " (broken weights, or a precision too low for this model; try fp32 or bf16)"));
  }

  c10::Device device_;
  int64_t total_;
  at::Tensor first_bad_;
#if defined(LTXMPS_WITH_CUDA)
  std::array<at::Tensor, 2> host_;
  std::array<at::cuda::CUDAEvent, 2> events_;
  std::array<bool, 2> pending_{false, false};
#endif
};

}  // namespace

// Note [Few timesteps per step]
// The pipelines with conditioning give token s a timestep of its own, a function of the step's t and the token's
// conditioning mask m_s: t·(1 − m_s) in LTXImageToVideoPipeline, min(t, (1 − m_s)·1000) in LTXConditionPipeline
// and object removal. m takes few values: 0 for the generated tokens, 1 (image-to-video, removal's kept tokens)
// or each condition's strength for the others. So the step's timesteps take as few values, and the transformer
// gets them as rows [B, K] with each token's row index (DenoiseHooks::timestep_rows, Note [Timestep rows] in
// transformer.cpp) instead of [B, S]: its time embedding runs for K values and its blocks keep K modulation rows
// instead of one per token (12 of the 2B removal step's 119 ms of GPU time went to those, measured). The rows are
// the per-token formula applied to the distinct mask values, the same float32 operations, so each token's value
// is the one it had. The distinct values are read once, before the loop; a mask with more than kMaxTimestepRows of
// them (no pipeline makes one) keeps the per-token timesteps.
std::optional<MaskLevels> mask_levels(const at::Tensor& mask) {
  LTXMPS_CHECK(mask.defined() && mask.dim() == 2 && mask.scalar_type() == at::kFloat,
               "mask_levels: the conditioning mask must be float32 [rows, tokens], got ",
               mask.defined() ? mask.sizes() : at::IntArrayRef{});
  // On the host: a few hundred KB at most, and every backend has the CPU's unique.
  const auto unique = at::_unique2(mask.to(at::kCPU), /*sorted=*/true, /*return_inverse=*/true);
  const auto& values = std::get<0>(unique);
  const auto& inverse = std::get<1>(unique);
  if (values.numel() > kMaxTimestepRows) return std::nullopt;
  return MaskLevels{values.to(mask.device()), inverse.to(at::kInt).view(mask.sizes()).to(mask.device())};
}

void set_conditioned_timesteps(DenoiseHooks& hooks, int64_t rows, const at::Tensor& mask,
                               const TimestepOfMask& per_token) {
  const auto column = [rows](const DenoiseStep& s) { return s.t.expand({rows}).unsqueeze(-1); };
  hooks.timestep = [column, mask, per_token](const DenoiseStep& s) { return per_token(column(s), mask); };
  if (const auto levels = mask_levels(mask))
    hooks.timestep_rows = [column, per_token, values = levels->values.unsqueeze(0),
                           index = levels->index](const DenoiseStep& s) {
      return std::make_pair(per_token(column(s), values), index);
    };
}

at::Tensor denoise(StageContext& ctx, const PromptBatch& prompts, const TransformerInputs& grid, at::Tensor latents,
                   const at::Tensor& timesteps, const DenoiseSettings& settings, const DenoiseHooks& hooks) {
  LTXMPS_CHECK(static_cast<bool>(hooks.timestep) && static_cast<bool>(hooks.step),
               "denoise: the hooks need a timestep and a step function");
  auto& transformer = ctx.model.transformer;
  transformer.runtime.attention.kernel = ctx.plan.attention.kernel;
  const int64_t total = timesteps.size(0);
  {
    ltxmps::OffloadScope offload(ctx.plan.offload, [&](const c10::Device& d) { move_model(transformer, d); },
                                 "transformer", ctx.sink);
    const auto graph = loop_transformer(ctx, transformer, total);  // inside the offload scope: the weights stay put
    FiniteWatch finite(ctx.device, total);
    const auto host_timesteps = timesteps.to(at::kCPU).to(at::kDouble);  // one read before the loop
    for (int64_t i = 0; i < total; ++i) {
      throw_if_cancelled();  // SIGINT/SIGTERM: stop between steps
      const DenoiseStep step{i, total, timesteps[i], host_timesteps[i].item<double>()};
      if (hooks.before_model) hooks.before_model(step, latents);
      const auto timestep = hooks.timestep(step);
      const auto rows = hooks.timestep_rows ? hooks.timestep_rows(step) : std::pair<at::Tensor, at::Tensor>();
      auto v = velocity(*graph, prompts, grid, latents, timestep, rows);
      if (settings.float32_velocity) v = v.to(at::kFloat);
      const auto noise_pred = guide(v, prompts, settings);
      finite.check(noise_pred, 0, i);
      latents = hooks.step(step, noise_pred, timestep, latents);
      finite.check(latents, 1, i);
      finite.poll(i);
      report(ctx.progress, "denoise", i + 1, total);
    }
    finite.finish();
    report_graph(ctx, *graph);
  }
  if (ctx.plan.memory.release_after_heavy_ops) ltxmps::release_memory(ctx.device);
  return latents;
}

DenoiseHooks condition_hooks(StageContext& ctx, FlowMatchEulerScheduler& scheduler, const PromptBatch& prompts,
                             std::optional<TokenConditioning> conditioning) {
  DenoiseHooks hooks;
  const int64_t rows = prompts.rows();
  at::Tensor mask, mask_in;
  if (conditioning) {
    mask = conditioning->mask;
    mask_in = prompts.guidance ? at::cat({mask, mask}, 0) : mask;
  }
  if (conditioning && conditioning->noise_scale > 0) {
    // add_noise_to_image_conditioning_latents: fresh noise of the packed shape for all tokens, every step.
    const auto init = conditioning->init;
    const double scale = conditioning->noise_scale;
    hooks.before_model = [&ctx, mask, init, scale](const DenoiseStep& s, at::Tensor& latents) {
      const auto n = ctx.noise(latents.sizes());
      const auto need = (mask > 1.0 - 1e-6).unsqueeze(-1);
      const auto noised = init + scale * n * at::pow(s.t / 1000.0, 2);
      latents = at::where(need, noised, latents);
    };
  }
  if (mask_in.defined()) {
    set_conditioned_timesteps(hooks, rows, mask_in, [](const at::Tensor& t, const at::Tensor& m) {
      return at::minimum(t.to(at::kFloat), (1 - m) * 1000.0);
    });
  } else {
    hooks.timestep = [rows](const DenoiseStep& s) { return s.t.expand({rows}).unsqueeze(-1).to(at::kFloat); };
  }
  const bool guidance = prompts.guidance;
  hooks.step = [&scheduler, mask, guidance](const DenoiseStep& s, const at::Tensor& v, const at::Tensor& timestep,
                                            const at::Tensor& latents) {
    const auto per_token = guidance ? timestep.chunk(2, 0)[0] : timestep;
    auto denoised = scheduler.step_per_token(-v, per_token, latents);
    if (!mask.defined()) return denoised;
    const auto to_denoise = (s.t / 1000 - 1e-6 < (1.0 - mask)).unsqueeze(-1);
    return at::where(to_denoise, denoised, latents);
  };
  return hooks;
}

}  // namespace ltxmps::pipeline
