#pragma once
/// @file ltxmps.hpp
/// @brief Umbrella header: every ltxmps policy.
///
/// ltxmps is a header-only C++17 library on LibTorch >= 2.1 that decides, and explains, where and in
/// which precision a diffusion model runs, so one program gives the same result for the same seed on
/// NVIDIA GPUs, Apple Silicon (MPS) and the CPU. Each policy lives in its own header:
///  - device.hpp     — Capabilities, DeviceRequest, resolve_device (CUDA -> XPU -> MPS -> CPU)
///  - precision.hpp  — LoaderSettings, PrecisionPlan per component, device_dtype / to_device
///  - offload.hpp    — decide_offload, OffloadScope
///  - random.hpp     — CPU-generator noise, bit-equal to torch.randn
///  - attention.hpp  — SDPA and the float32-softmax path, attention_probs
///  - memory.hpp     — synchronize, empty_cache, memory_stats, ReleaseMemoryScope
///  - memory_budget.hpp — the device memory budget; resident / FP8 / streamed / offloaded weights per component
///  - plan.hpp       — resolve(LoaderSettings, Capabilities) -> ExecutionPlan, plan_weights, to_text, to_json

#include "ltxmps/attention.hpp"
#include "ltxmps/device.hpp"
#include "ltxmps/diagnostics.hpp"
#include "ltxmps/error.hpp"
#include "ltxmps/memory.hpp"
#include "ltxmps/memory_budget.hpp"
#include "ltxmps/offload.hpp"
#include "ltxmps/plan.hpp"
#include "ltxmps/precision.hpp"
#include "ltxmps/random.hpp"
#include "ltxmps/version.hpp"
