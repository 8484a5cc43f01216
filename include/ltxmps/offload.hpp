#pragma once
/// @file offload.hpp
/// @brief CPU offload: whether it applies on a device, and a scope that brings a component in.

#include "ltxmps/diagnostics.hpp"
#include "ltxmps/memory.hpp"

#include <c10/core/Device.h>

#include <exception>
#include <functional>
#include <string>
#include <utility>

namespace ltxmps {

// Note [CPU offload]
// Offloading pays off only where the accelerator has its own memory (CUDA, XPU): the component lives
// in host memory and moves to the GPU only while it runs, as diffusers' `enable_model_cpu_offload`
// does (model level, sequence text_encoder -> transformer -> vae). On MPS the memory is unified, so
// moving weights would only copy them within the same RAM (ComfyUI's VRAMState.SHARED loads models
// straight to the device; diffusers' offload was hard-wired to "cuda" until v0.34 and failed there).
// On the CPU there is nothing to offload to. In both cases the setting is accepted and ignored, with
// a diagnostic, never an error.

/// @brief The offload decision for one run.
struct OffloadDecision {
  /// True when components live on `home` and visit `execution` while they run.
  bool enabled = false;
  /// Where components live between uses (the CPU when enabled, else the execution device).
  c10::Device home = c10::Device(c10::DeviceType::CPU);
  /// Where components run.
  c10::Device execution = c10::Device(c10::DeviceType::CPU);
  /// Why.
  Diagnostic reason;
};

/// @brief Decides whether `requested` CPU offload applies on `device` (Note [CPU offload]).
inline OffloadDecision decide_offload(bool requested, const c10::Device& device) {
  OffloadDecision d;
  d.execution = device;
  d.home = device;
  d.reason.topic = "offload";
  if (!requested) {
    d.reason.rule = "offload.off";
    d.reason.message = "cpu_offload off: every component stays on " + device.str();
    return d;
  }
  switch (device.type()) {
    case c10::DeviceType::CUDA:
    case c10::DeviceType::XPU:
      d.enabled = true;
      d.home = c10::Device(c10::DeviceType::CPU);
      d.reason.rule = "offload.model";
      d.reason.message = "cpu_offload on: components live on the CPU and move to " + device.str() +
                         " only while they run (model-level, like diffusers' enable_model_cpu_offload)";
      return d;
    case c10::DeviceType::MPS:
      d.reason.severity = Severity::warning;
      d.reason.rule = "offload.ignored.mps";
      d.reason.message = "cpu_offload ignored on MPS: Apple Silicon memory is unified, there is no separate "
                         "VRAM to offload from";
      return d;
    default:
      d.reason.severity = Severity::warning;
      d.reason.rule = "offload.ignored.cpu";
      d.reason.message = "cpu_offload ignored: the model already runs on the CPU";
      return d;
  }
}

/// @brief RAII: while alive, the component is on the execution device; at scope exit it goes back home
///        and the device cache is released.
///
/// `move` is the component's own "move all weights to this device" function, so any representation
/// (an `nn::Module`, a struct of tensors) can be offloaded. When the decision is disabled the scope
/// does nothing.
class OffloadScope {
 public:
  /// @param decision from `decide_offload` (usually the plan's)
  /// @param move     moves the component's weights to the given device
  /// @param what     the component's name, for diagnostics
  /// @param sink     receives notes and, at scope exit, any failure to move back
  OffloadScope(const OffloadDecision& decision, std::function<void(const c10::Device&)> move, std::string what,
               DiagnosticSink sink = null_sink())
      : decision_(decision), move_(std::move(move)), what_(std::move(what)), sink_(std::move(sink)) {
    if (!decision_.enabled) return;
    move_(decision_.execution);
    sink_(Diagnostic{Severity::info, "offload", "offload.onload",
                     what_ + " moved to " + decision_.execution.str() + " for its run"});
  }
  OffloadScope(const OffloadScope&) = delete;
  OffloadScope& operator=(const OffloadScope&) = delete;
  ~OffloadScope() {
    if (!decision_.enabled) return;
    try {
      move_(decision_.home);
      release_memory(decision_.execution);
      sink_(Diagnostic{Severity::info, "offload", "offload.offload",
                       what_ + " moved back to " + decision_.home.str() + " and the device cache released"});
    } catch (const std::exception& e) {
      sink_(Diagnostic{Severity::warning, "offload", "offload.offload_failed",
                       "could not move " + what_ + " back to " + decision_.home.str() + ": " + e.what()});
    }
  }

  /// The device the component runs on inside this scope.
  const c10::Device& device() const noexcept { return decision_.execution; }

 private:
  OffloadDecision decision_;
  std::function<void(const c10::Device&)> move_;
  std::string what_;
  DiagnosticSink sink_;
};

}  // namespace ltxmps
