// Picks a device, resolves a plan and draws reproducible noise through the installed ltxmps package.
#include <ltxmps/ltxmps.hpp>

#include <iostream>

int main() {
  ltxmps::LoaderSettings settings;
  settings.precision = ltxmps::Precision::bf16;
  const ltxmps::ExecutionPlan plan = ltxmps::resolve(settings);
  std::cout << "device " << plan.device << ", transformer " << ltxmps::dtype_name(plan.precision.transformer.compute)
            << ", attention " << ltxmps::to_string(plan.attention.kernel) << "\n";
  for (const auto& d : plan.diagnostics)
    if (d.severity == ltxmps::Severity::warning) std::cout << "warning: " << d.message << "\n";

  auto generator = ltxmps::make_cpu_generator(42);
  const auto noise = ltxmps::randn({1, 4}, generator, at::TensorOptions().device(plan.device).dtype(at::kFloat));
  // The first value of torch.randn(1, 4, generator=torch.Generator().manual_seed(42)) is 0.3367.
  std::cout << "noise[0,0] = " << noise.cpu()[0][0].item<float>() << " on " << noise.device() << "\n";
  return 0;
}
