// diffusers' FlowMatchEulerDiscreteScheduler and LTXConditionPipeline's linear_quadratic_schedule.
//
// Note [Scheduler arithmetic as numpy does it]
// diffusers computes the schedule with numpy, and the dtype of each step depends on where it came from:
//   - the default schedule is `np.linspace(σ_max·1000, σ_min·1000, N)` in float64 (σ_max/σ_min are float32
//     values of the init schedule), divided by 1000 and shifted in float64, then cast to float32;
//   - custom `sigmas` (LTXPipeline passes `np.linspace(1, 1/N, N)`) and custom `timesteps` (the condition
//     pipeline) are cast to float32 first, so the shift and `shift_terminal` run in float32, Python floats
//     being converted to float32 before each operation (numpy 2, NEP 50);
//   - custom timesteps are kept as given (float32); the sigmas derived from them are timesteps/1000, shifted.
// Each element is computed here with the same operations in the same order and the same precision (the
// `Real` template parameter). `rounded()` stores through a volatile so that no product is fused into a
// following addition (an FMA would round once where numpy rounds twice).

#include "ltxmps_pipeline/scheduler.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"

#include "ltxmps/error.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace ltxmps::pipeline {

namespace {

template <typename T>
T rounded(T value) {
  volatile T stored = value;
  return stored;
}

}  // namespace

std::vector<double> numpy_linspace(double start, double stop, int64_t num) {
  std::vector<double> y(static_cast<size_t>(std::max<int64_t>(num, 0)));
  const int64_t div = num - 1;
  const double delta = stop - start;
  const double step = div > 0 ? delta / static_cast<double>(div) : std::numeric_limits<double>::quiet_NaN();
  for (int64_t i = 0; i < num; ++i) {
    double v;
    if (div > 0 && step != 0) v = rounded(static_cast<double>(i) * step);
    else if (div > 0) v = rounded(static_cast<double>(i) / static_cast<double>(div) * delta);
    else v = rounded(static_cast<double>(i) * delta);
    y[static_cast<size_t>(i)] = v + start;
  }
  if (num > 1) y.back() = stop;
  return y;
}

namespace {

/// The shift, the optional dynamic time shift and shift_terminal of set_timesteps(), in `Real`.
template <typename Real>
std::vector<Real> shift_sigmas(std::vector<Real> sigmas, const FlowMatchSchedulerConfig& config,
                               std::optional<double> mu) {
  const Real one = 1;
  if (config.use_dynamic_shifting) {
    const double m = *mu;
    const bool exponential = config.time_shift_type == "exponential";
    const Real numerator = static_cast<Real>(exponential ? std::exp(m) : m);
    for (auto& t : sigmas) {
      const Real base = rounded(one / t) - one;  // (1 / t - 1) ** 1.0 == (1 / t - 1)
      t = numerator / rounded(numerator + base);
    }
  } else {
    const Real shift = static_cast<Real>(config.shift);
    const Real shift_minus_one = static_cast<Real>(config.shift - 1.0);
    for (auto& s : sigmas) s = rounded(shift * s) / rounded(one + rounded(shift_minus_one * s));
  }
  if (config.shift_terminal && *config.shift_terminal != 0.0) {
    // one_minus_z = 1 - t; scale = one_minus_z[-1] / (1 - shift_terminal); t = 1 - one_minus_z / scale
    const Real last = one - sigmas.back();
    const Real scale = last / static_cast<Real>(1.0 - *config.shift_terminal);
    for (auto& t : sigmas) t = one - rounded(rounded(one - t) / scale);
  }
  return sigmas;
}

at::Tensor float_tensor(const std::vector<float>& values) {
  return at::tensor(at::ArrayRef<float>(values), at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

FlowMatchSchedulerConfig FlowMatchSchedulerConfig::from_json(const nlohmann::json& json, const std::string& source) {
  LTXMPS_CHECK(json.is_object(), source, ": expected a JSON object, got ", json.type_name());
  FlowMatchSchedulerConfig c;
  for (const auto& [key, value] : json.items()) {
    if (!key.empty() && key[0] == '_') {
      if (key == "_class_name") {
        const auto name = config_field<std::string>(value, key, source);
        LTXMPS_CHECK(name == "FlowMatchEulerDiscreteScheduler", source, ": _class_name is '", name,
                     "', expected 'FlowMatchEulerDiscreteScheduler' (the LTX-Video pipelines' scheduler)");
      }
      continue;  // _diffusers_version, ...: metadata
    }
    if (key == "num_train_timesteps") c.num_train_timesteps = config_field<int64_t>(value, key, source);
    else if (key == "shift") c.shift = config_field<double>(value, key, source);
    else if (key == "use_dynamic_shifting") c.use_dynamic_shifting = config_field<bool>(value, key, source);
    else if (key == "base_shift") c.base_shift = value.is_null() ? 0.5 : config_field<double>(value, key, source);
    else if (key == "max_shift") c.max_shift = value.is_null() ? 1.15 : config_field<double>(value, key, source);
    else if (key == "base_image_seq_len") c.base_image_seq_len = config_field<int64_t>(value, key, source);
    else if (key == "max_image_seq_len") c.max_image_seq_len = config_field<int64_t>(value, key, source);
    else if (key == "invert_sigmas") c.invert_sigmas = config_field<bool>(value, key, source);
    else if (key == "shift_terminal") {
      if (value.is_null()) c.shift_terminal.reset();
      else c.shift_terminal = config_field<double>(value, key, source);
    } else if (key == "use_karras_sigmas") c.use_karras_sigmas = config_field<bool>(value, key, source);
    else if (key == "use_exponential_sigmas") c.use_exponential_sigmas = config_field<bool>(value, key, source);
    else if (key == "use_beta_sigmas") c.use_beta_sigmas = config_field<bool>(value, key, source);
    else if (key == "time_shift_type") c.time_shift_type = config_field<std::string>(value, key, source);
    else if (key == "stochastic_sampling") c.stochastic_sampling = config_field<bool>(value, key, source);
    else throw Error(c10::str(source, ": unknown field '", key, "' for FlowMatchEulerDiscreteScheduler"));
  }
  LTXMPS_CHECK(c.num_train_timesteps > 0, source, ": num_train_timesteps must be > 0, got ", c.num_train_timesteps);
  LTXMPS_CHECK(c.time_shift_type == "exponential" || c.time_shift_type == "linear", source,
               ": time_shift_type must be 'exponential' or 'linear', got '", c.time_shift_type, "'");
  LTXMPS_CHECK(int(c.use_karras_sigmas) + int(c.use_exponential_sigmas) + int(c.use_beta_sigmas) <= 1, source,
               ": only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be true");
  LTXMPS_CHECK(!c.use_karras_sigmas && !c.use_exponential_sigmas && !c.use_beta_sigmas, source,
               ": Karras/exponential/beta sigmas are not supported by this port (no released LTX-Video "
               "scheduler config uses them)");
  LTXMPS_CHECK(!c.stochastic_sampling, source,
               ": stochastic_sampling is not supported by this port (no released LTX-Video config uses it)");
  return c;
}

FlowMatchSchedulerConfig FlowMatchSchedulerConfig::from_file(const std::filesystem::path& file) {
  return from_json(read_json_file(file), file.string());
}

double calculate_shift(int64_t image_seq_len, int64_t base_seq_len, int64_t max_seq_len, double base_shift,
                       double max_shift) {
  LTXMPS_CHECK(max_seq_len != base_seq_len, "calculate_shift: max_image_seq_len equals base_image_seq_len (",
               base_seq_len, ")");
  // m = (max_shift - base_shift) / (max_seq_len - base_seq_len); b = base_shift - m * base_seq_len
  const double m = (max_shift - base_shift) / static_cast<double>(max_seq_len - base_seq_len);
  const double b = base_shift - rounded(m * static_cast<double>(base_seq_len));
  return rounded(static_cast<double>(image_seq_len) * m) + b;
}

std::vector<double> linear_quadratic_schedule(int64_t num_steps, double threshold_noise,
                                              std::optional<int64_t> linear_steps) {
  const int64_t linear = linear_steps ? *linear_steps : num_steps / 2;
  if (num_steps < 2) return {1.0};
  LTXMPS_CHECK(linear > 0 && linear < num_steps, "linear_quadratic_schedule: linear_steps must be in [1, ",
               num_steps - 1, "], got ", linear);
  const double L = static_cast<double>(linear);
  std::vector<double> schedule;
  schedule.reserve(static_cast<size_t>(num_steps));
  for (int64_t i = 0; i < linear; ++i) schedule.push_back(static_cast<double>(i) * threshold_noise / L);
  const double step_diff = L - rounded(threshold_noise * static_cast<double>(num_steps));
  const int64_t quadratic = num_steps - linear;
  const double q2 = static_cast<double>(quadratic * quadratic);
  const double quadratic_coef = step_diff / (L * q2);
  const double linear_coef = threshold_noise / L - rounded(2 * step_diff) / q2;
  const double constant = quadratic_coef * static_cast<double>(linear * linear);
  for (int64_t i = linear; i < num_steps; ++i) {
    const double a = rounded(quadratic_coef * static_cast<double>(i * i));
    const double b = rounded(linear_coef * static_cast<double>(i));
    schedule.push_back(rounded(a + b) + constant);
  }
  for (auto& x : schedule) x = 1.0 - x;  // the appended 1.0 becomes 0 and is dropped
  return schedule;
}

FlowMatchEulerScheduler::FlowMatchEulerScheduler(FlowMatchSchedulerConfig config) : config_(std::move(config)) {
  // diffusers' __init__ schedule: timesteps 1000..1 (float32), sigmas = timesteps / N, shifted unless dynamic.
  const auto n = config_.num_train_timesteps;
  auto t = at::linspace(1, static_cast<double>(n), n, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat).flip(0);
  auto s = t / static_cast<double>(n);
  if (!config_.use_dynamic_shifting) s = config_.shift * s / (1 + (config_.shift - 1) * s);
  timesteps_ = s * static_cast<double>(n);
  sigmas_ = s;
  sigmas_on_device_ = at::Tensor();
}

void FlowMatchEulerScheduler::set_timesteps(int64_t num_inference_steps, const std::optional<std::vector<double>>& sigmas,
                                            std::optional<double> mu,
                                            const std::optional<std::vector<double>>& timesteps) {
  LTXMPS_CHECK(!config_.use_dynamic_shifting || mu.has_value(),
               "FlowMatchEulerScheduler::set_timesteps: mu must be given when use_dynamic_shifting is true");
  LTXMPS_CHECK(!(sigmas && timesteps) || sigmas->size() == timesteps->size(),
               "FlowMatchEulerScheduler::set_timesteps: sigmas and timesteps must have the same length");
  if (num_inference_steps > 0) {
    LTXMPS_CHECK((!sigmas || static_cast<int64_t>(sigmas->size()) == num_inference_steps) &&
                     (!timesteps || static_cast<int64_t>(timesteps->size()) == num_inference_steps),
                 "FlowMatchEulerScheduler::set_timesteps: sigmas and timesteps must have num_inference_steps (",
                 num_inference_steps, ") values");
  } else {
    LTXMPS_CHECK(sigmas || timesteps, "FlowMatchEulerScheduler::set_timesteps: num_inference_steps must be >= 1, got ",
                 num_inference_steps);
    num_inference_steps = static_cast<int64_t>(sigmas ? sigmas->size() : timesteps->size());
  }
  LTXMPS_CHECK(num_inference_steps >= 1, "FlowMatchEulerScheduler::set_timesteps: at least one step is needed");
  const double train = static_cast<double>(config_.num_train_timesteps);

  std::vector<float> custom_timesteps;
  if (timesteps) for (double t : *timesteps) custom_timesteps.push_back(static_cast<float>(t));

  std::vector<float> sigma32;
  if (!sigmas && !timesteps) {
    // float64 all the way, cast at the end (Note [Scheduler arithmetic as numpy does it]).
    const double sigma_max = sigmas_.index({0}).item<float>();
    const double sigma_min = sigmas_.index({-1}).item<float>();
    auto s = numpy_linspace(sigma_max * train, sigma_min * train, num_inference_steps);
    for (auto& v : s) v /= train;
    for (double v : shift_sigmas<double>(std::move(s), config_, mu)) sigma32.push_back(static_cast<float>(v));
  } else {
    std::vector<float> s;
    if (sigmas) for (double v : *sigmas) s.push_back(static_cast<float>(v));
    else for (float t : custom_timesteps) s.push_back(t / static_cast<float>(train));
    sigma32 = shift_sigmas<float>(std::move(s), config_, mu);
  }

  at::Tensor sig = float_tensor(sigma32);
  at::Tensor ts = timesteps ? float_tensor(custom_timesteps) : sig * train;
  if (config_.invert_sigmas) {
    sig = 1.0 - sig;
    ts = sig * train;
    sig = at::cat({sig, at::ones({1}, sig.options())});
  } else {
    sig = at::cat({sig, at::zeros({1}, sig.options())});
  }
  timesteps_ = ts;
  sigmas_ = sig;
  sigmas_on_device_ = at::Tensor();
  step_index_.reset();
}

const at::Tensor& FlowMatchEulerScheduler::timesteps() const { return timesteps_; }
const at::Tensor& FlowMatchEulerScheduler::sigmas() const { return sigmas_; }
const FlowMatchSchedulerConfig& FlowMatchEulerScheduler::config() const { return config_; }

at::Tensor FlowMatchEulerScheduler::step(const at::Tensor& model_output, double timestep, const at::Tensor& sample) {
  if (!step_index_) {
    // index_for_timestep: the second match when the value occurs twice, else the first.
    const auto matches = (timesteps_ == static_cast<float>(timestep)).nonzero();
    LTXMPS_CHECK(matches.size(0) > 0, "FlowMatchEulerScheduler::step: timestep ", timestep,
                 " is not in the schedule (call set_timesteps first and pass one of its timesteps)");
    step_index_ = matches.index({matches.size(0) > 1 ? 1 : 0, 0}).item<int64_t>();
  }
  LTXMPS_CHECK(*step_index_ + 1 < sigmas_.size(0), "FlowMatchEulerScheduler::step: called more often than the ",
               timesteps_.size(0), " scheduled steps");
  // sigmas_ stays on the CPU: a 0-dim CPU operand joins a device tensor without a copy (or a wait).
  const auto dt = sigmas_.index({*step_index_ + 1}) - sigmas_.index({*step_index_});
  auto prev = sample.to(at::kFloat) + dt * model_output;
  ++*step_index_;
  return prev.to(model_output.scalar_type());
}

at::Tensor FlowMatchEulerScheduler::step_per_token(const at::Tensor& model_output, const at::Tensor& per_token_timesteps,
                                                   const at::Tensor& sample) {
  LTXMPS_CHECK(sigmas_.size(0) > 1, "FlowMatchEulerScheduler::step_per_token: call set_timesteps first");
  if (!step_index_) step_index_ = 0;  // diffusers initialises it from the timestep; the per-token step ignores it
  if (!sigmas_on_device_.defined() || sigmas_on_device_.device() != sample.device())
    sigmas_on_device_ = sigmas_.to(sample.device());  // once per schedule, not per step
  const auto sigmas = sigmas_on_device_.view({-1, 1, 1});
  const auto per_token_sigmas = per_token_timesteps.to(sample.device()) / static_cast<double>(config_.num_train_timesteps);
  const auto lower_mask = sigmas < per_token_sigmas.unsqueeze(0) - 1e-6;
  const auto lower_sigmas = std::get<0>((lower_mask * sigmas).max(0));
  const auto dt = per_token_sigmas.unsqueeze(-1) - lower_sigmas.unsqueeze(-1);
  ++*step_index_;
  return sample.to(at::kFloat) + dt * model_output;
}

}  // namespace ltxmps::pipeline
