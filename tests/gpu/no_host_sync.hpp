#pragma once
// ltxmps_test::NoHostSync, for the GPU suites that check that a loop queues only kernels, copies and events.
#if defined(LTXMPS_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>

namespace ltxmps_test {

// While alive, any call that synchronizes the host with the GPU throws (c10::cuda::SyncDebugMode::L_ERROR).
struct NoHostSync {
  NoHostSync() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR); }
  ~NoHostSync() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED); }
  NoHostSync(const NoHostSync&) = delete;
  NoHostSync& operator=(const NoHostSync&) = delete;
};

}  // namespace ltxmps_test
#endif
