#pragma once
// diffusers' FlowMatchEulerDiscreteScheduler (as the LTX pipelines use it) and LTX's linear-quadratic
// schedule (spec §3.1, §3.4). API contract shared with pipeline.cpp and the tests: may gain members,
// never lose or rename them.

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief `scheduler/scheduler_config.json`, field by field, diffusers' defaults.
struct FlowMatchSchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = false;
  double base_shift = 0.5;
  double max_shift = 1.15;
  int64_t base_image_seq_len = 256;
  int64_t max_image_seq_len = 4096;
  bool invert_sigmas = false;
  std::optional<double> shift_terminal;
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_beta_sigmas = false;
  std::string time_shift_type = "exponential";
  bool stochastic_sampling = false;

  static FlowMatchSchedulerConfig from_json(const nlohmann::json& json, const std::string& source = "scheduler_config.json");
  static FlowMatchSchedulerConfig from_file(const std::filesystem::path& file);
};

/// @brief `calculate_shift` of the LTX pipelines: μ for dynamic shifting from the token count.
double calculate_shift(int64_t image_seq_len, int64_t base_seq_len, int64_t max_seq_len, double base_shift,
                       double max_shift);

/// @brief `numpy.linspace(start, stop, num)` in float64, value for value (LTXPipeline's default sigmas are
///        `np.linspace(1.0, 1 / N, N)`; the scheduler's default schedule is a linspace too).
std::vector<double> numpy_linspace(double start, double stop, int64_t num);

/// @brief `linear_quadratic_schedule(N, threshold_noise, linear_steps)` of LTXConditionPipeline, in Python
///        float64 arithmetic (diffusers then makes a float32 tensor of it); N < 2 gives {1.0}.
std::vector<double> linear_quadratic_schedule(int64_t num_steps, double threshold_noise = 0.025,
                                              std::optional<int64_t> linear_steps = std::nullopt);

/// @brief The scheduler's state for one generation.
class FlowMatchEulerScheduler {
 public:
  explicit FlowMatchEulerScheduler(FlowMatchSchedulerConfig config = {});
  /// @brief `set_timesteps(num_inference_steps, sigmas=, mu=, timesteps=)`; float32 arithmetic as diffusers.
  void set_timesteps(int64_t num_inference_steps, const std::optional<std::vector<double>>& sigmas = std::nullopt,
                     std::optional<double> mu = std::nullopt,
                     const std::optional<std::vector<double>>& timesteps = std::nullopt);
  const at::Tensor& timesteps() const;  ///< float32 [N]
  const at::Tensor& sigmas() const;     ///< float32 [N + 1], terminal appended
  /// @brief One Euler step `x + (σ_next − σ)·v` in float32, cast back to `model_output`'s dtype.
  at::Tensor step(const at::Tensor& model_output, double timestep, const at::Tensor& sample);
  /// @brief The per-token variant (LTXConditionPipeline): `per_token_timesteps` [B, S], stays float32.
  at::Tensor step_per_token(const at::Tensor& model_output, const at::Tensor& per_token_timesteps,
                            const at::Tensor& sample);
  const FlowMatchSchedulerConfig& config() const;

 private:
  FlowMatchSchedulerConfig config_;
  at::Tensor timesteps_;
  at::Tensor sigmas_;
  std::optional<int64_t> step_index_;
};

}  // namespace ltxmps::pipeline
