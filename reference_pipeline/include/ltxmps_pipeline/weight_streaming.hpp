#pragma once
/// @file weight_streaming.hpp
/// @brief The transformer's blocks streamed from (pinned) host memory into a ring of device buffers, a few blocks
///        ahead of the one running, on a side CUDA stream ordered by events (Note [Streamed weights]).

#include "ltxmps_pipeline/transformer.hpp"

#include <ltxmps/plan.hpp>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

// Note [Streamed weights]
// A streamed transformer keeps its blocks in host memory (page-locked on CUDA, so that copies run asynchronously
// at full PCIe/NVLink-C2C bandwidth) and everything else on the device. A BlockStreamer owns a ring of
// `ring_blocks = blocks_ahead + 1` device buffers shaped like one block. A pass over the blocks (one forward):
//
//   begin:      the copy stream waits for everything already queued on the compute stream (an event), then
//               copies blocks 0 .. ring_blocks-1 into slots 0 .. ring_blocks-1, recording ready[slot] after each;
//   block i:    the compute stream waits on ready[i % ring] and runs block i from slot i % ring;
//               free[i % ring] is recorded on the compute stream after the block's kernels;
//               the copy stream waits on free[i % ring] and copies block i + ring into the same slot.
//
// So while block i runs, the copies of blocks i+1 .. i+blocks_ahead are queued or running on the side stream,
// and a slot is overwritten only after the block that last read it has finished on the GPU. Nothing waits on the
// host: the loop only queues work and events (a synchronizing call inside it is a bug, and the GPU suite runs the
// loop under CUDA's sync-debug mode to catch one). Device memory for the blocks is ring_blocks × one block
// instead of all of them; each block crosses the bus once per forward, which hides under the block's GEMMs when
// the bus is fast enough: 26 GB at 54.5 GB/s is 0.48 s against ~0.73 s of compute for the 13B model at 6144
// tokens and batch 2. The values are the same bits as the resident model's: the same tensors reach the same
// kernels, only their addresses differ.
//
// The ring is allocated by the first pass and freed by park() when the transformer leaves the device (model-level
// offload moves it home after the loop), so the text encoder and VAE phases under offload do not carry it.
//
// With the CPU as both host and device (no CUDA; the CI's machine) the streamer runs the same schedule with
// synchronous copies, so that its bookkeeping, shapes and visitor are tested where there is no GPU: a schedule
// that overwrote a slot before its block ran would change the output there too.
//
// The blocks are walked with for_each_tensor() (runtime.hpp), so whatever a block holds, FP8 codes and scales
// included (Note [Weight storage]), is streamed; every block must have the same tensors, shapes and dtypes.

/// @brief How a transformer's blocks are streamed.
struct BlockStreamOptions {
  c10::Device device = c10::kCPU;  ///< where the blocks run (CUDA; the CPU runs the same schedule synchronously)
  int64_t blocks_ahead = 2;        ///< copies in flight while a block runs; the ring has blocks_ahead + 1 slots
};

/// @brief A ring of device buffers that the transformer's blocks are copied into, `blocks_ahead` ahead of use
///        (Note [Streamed weights]). One pass (forward) at a time; passes from several threads are serialized.
class BlockStreamer {
 public:
  /// @brief Takes (shares) the tensors of `host_blocks`; the ring on `options.device` is allocated by the first
  ///        pass. Throws
  ///        ltxmps::Error when there are no blocks, blocks differ in their tensors, a block tensor is not on the
  ///        CPU, blocks_ahead is negative, or the device is neither the CPU nor CUDA (with CUDA support built in).
  BlockStreamer(const std::vector<TransformerBlockWeights>& host_blocks, const BlockStreamOptions& options);
  ~BlockStreamer();
  BlockStreamer(const BlockStreamer&) = delete;
  BlockStreamer& operator=(const BlockStreamer&) = delete;

  /// @brief Runs `run(i, weights)` for every block in order, `weights` being block i on the device, ready for
  ///        kernels queued on the device's current stream. No host synchronization.
  void for_each_block(const std::function<void(int64_t, const TransformerBlockWeights&)>& run);

  /// @brief The device the ring lives on.
  const c10::Device& device() const noexcept { return device_; }
  /// @brief Copies in flight while a block runs (at most the block count - 1).
  int64_t blocks_ahead() const noexcept { return ring_blocks() - 1; }
  /// @brief Device block buffers.
  int64_t ring_blocks() const noexcept { return static_cast<int64_t>(slots_.size()); }
  /// @brief Number of blocks streamed.
  int64_t block_count() const noexcept { return static_cast<int64_t>(host_.size()); }
  /// @brief Bytes of one block.
  int64_t block_bytes() const noexcept { return block_bytes_; }
  /// @brief Device bytes of the ring.
  int64_t ring_bytes() const noexcept { return block_bytes_ * ring_blocks(); }
  /// @brief Block copies issued since construction (a pass issues one per block).
  int64_t copies_issued() const noexcept { return copies_issued_; }
  /// @brief The block each slot holds, or was last asked to hold (-1: none yet); for tests.
  const std::vector<int64_t>& slot_blocks() const noexcept { return slot_block_; }
  /// @brief Frees the ring's device buffers while the transformer waits off the device (model-level offload:
  ///        the VAE and T5 phases then do not carry it); the next pass allocates them again. Waits for copies in
  ///        flight (outside any block loop). Idempotent.
  void park();
  /// @brief Whether the ring's device buffers are allocated (false after park() until the next pass).
  bool ring_allocated() const noexcept { return ring_allocated_; }

 private:
  struct CudaState;
  void allocate_ring();
  void begin_pass();
  void issue_copy(int64_t block);
  const TransformerBlockWeights& acquire(int64_t block);
  void release(int64_t block);

  c10::Device device_;
  std::vector<std::vector<at::Tensor>> host_;      // per block, its tensors in visitor order
  std::vector<TransformerBlockWeights> slots_;     // the ring on the device
  std::vector<std::vector<at::Tensor*>> slot_tensors_;
  std::vector<int64_t> slot_block_;
  int64_t block_bytes_ = 0;
  int64_t copies_issued_ = 0;
  bool ring_allocated_ = false;
  std::unique_ptr<CudaState> cuda_;
  std::mutex pass_mutex_;
};

/// @brief The blocks ahead when `plan` streams the transformer's blocks: the weight plan's decision when the
///        weights are planned (ltxmps::plan_weights()), else kDefaultBlocksAhead under stream_weights=on; empty
///        when the blocks stay resident.
std::optional<int64_t> streamed_blocks_ahead(const ltxmps::ExecutionPlan& plan);

/// @brief "transformer: 28 blocks of 81 MiB in pinned host memory, streamed to cuda:0 2 blocks ahead (3 block
///        buffers, 243 MiB on the device)" for a streamed model (rule "weights.streaming").
ltxmps::Diagnostic streaming_diagnostic(const TransformerModel& model);

/// @brief Bytes of the defined tensors of one block.
int64_t block_bytes(TransformerBlockWeights& block);

/// @brief Streams a loaded model's blocks: moves them to host memory (page-locked when `device` is CUDA; a tensor
///        already there is kept), leaves the other weights where they are, and attaches a BlockStreamer on
///        `device`. The forward then runs on `device` (the model's runtime device must equal it when it runs).
///        One block tensor at a time is copied, so host memory peaks at the blocks plus one tensor.
void stream_transformer_blocks(TransformerModel& model, const c10::Device& device, int64_t blocks_ahead);

/// @brief Stops streaming: the blocks move back to the model's runtime device and the streamer is dropped.
void unstream_transformer_blocks(TransformerModel& model);

/// @brief load_transformer() for a streamed model: every weight is read from the mapped checkpoint straight into
///        host memory (page-locked when `execution_device` is CUDA: no second host copy), the non-block weights
///        then move to `runtime.device` (the plan's home device) and the blocks stream to `execution_device`.
TransformerModel load_streamed_transformer(const std::filesystem::path& model_dir, const TransformerRuntime& runtime,
                                           const c10::Device& execution_device, int64_t blocks_ahead,
                                           std::optional<std::string> variant = std::nullopt,
                                           std::optional<TransformerConfig> config = std::nullopt);

}  // namespace ltxmps::pipeline
