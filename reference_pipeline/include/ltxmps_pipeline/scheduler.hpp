#pragma once
/// @file scheduler.hpp
/// @brief diffusers' FlowMatchEulerDiscreteScheduler (as the LTX pipelines use it) and LTXConditionPipeline's
///        linear-quadratic schedule; docs/models/scheduler.md explains both.

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
  int64_t num_train_timesteps = 1000;  ///< timestep = σ · num_train_timesteps
  double shift = 1.0;                  ///< static shift σ' = shift·σ / (1 + (shift − 1)·σ) (no dynamic shifting)
  bool use_dynamic_shifting = false;   ///< shift by μ (the caller's, from the token count) instead of `shift`
  double base_shift = 0.5;             ///< μ at `base_image_seq_len` tokens (calculate_shift())
  double max_shift = 1.15;             ///< μ at `max_image_seq_len` tokens
  int64_t base_image_seq_len = 256;    ///< token count of `base_shift`
  int64_t max_image_seq_len = 4096;    ///< token count of `max_shift`
  bool invert_sigmas = false;          ///< σ → 1 − σ, terminal σ 1 instead of 0
  std::optional<double> shift_terminal;  ///< stretch the schedule so that its last σ is this value
  bool use_karras_sigmas = false;        ///< rejected by from_json() (no LTX-Video config uses it)
  bool use_exponential_sigmas = false;   ///< rejected by from_json()
  bool use_beta_sigmas = false;          ///< rejected by from_json()
  std::string time_shift_type = "exponential";  ///< dynamic shift formula: "exponential" or "linear"
  bool stochastic_sampling = false;             ///< rejected by from_json()

  /// @brief Parses a config object; errors name `source`. Keys starting with '_' are metadata; unknown keys
  ///        and the sigma families this port does not implement are errors.
  static FlowMatchSchedulerConfig from_json(const nlohmann::json& json, const std::string& source = "scheduler_config.json");
  /// @brief Reads and parses `file` (a `scheduler_config.json`).
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
  /// @brief diffusers' `__init__`: the training schedule (statically shifted unless dynamic shifting is on).
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
  /// @brief The configuration the scheduler was built with.
  const FlowMatchSchedulerConfig& config() const;

 private:
  FlowMatchSchedulerConfig config_;
  at::Tensor timesteps_;
  at::Tensor sigmas_;
  at::Tensor sigmas_on_device_;  // step_per_token's copy of sigmas_ on the sample's device
  std::optional<int64_t> step_index_;
};

}  // namespace ltxmps::pipeline
