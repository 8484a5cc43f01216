#pragma once
/// @file t5_streaming.hpp
/// @brief The T5 encoder's blocks kept in (pinned) host memory and copied to the device one at a time while the
///        encoder runs (Note [Streamed T5]).

#include "ltxmps_pipeline/t5.hpp"

#include <c10/core/Device.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace ltxmps::pipeline {

// Note [Streamed T5]
// T5-XXL's encoder is 9.5 GB in bf16: more than an 8 GB card holds beside anything else, although it runs only
// once per prompt. Streamed, its 24 blocks stay in host memory (page-locked when they go to a CUDA device) and
// forward() copies each block to the device just before it runs; the copy is dropped after the block's kernels
// are queued, so the caching allocator hands the same memory to the next block's copy. The device then holds the
// embedding, the final norm, one block and the activations (about 0.6 GB of weights for T5-XXL). The copies are
// queued on the compute stream, non-blocking from pinned memory: no host synchronization, no overlap. Overlap would
// buy little: one encoding of two 256-token prompts is about 10 ms of GEMMs on an H100 against about 0.2 s of
// copies at 50 GB/s, paid once per prompt, where model-level offload would copy the whole encoder as well. The same
// tensors reach the same kernels, so the result is the resident one bit for bit; with the CPU as both host and
// device the blocks are still copied, so that the CPU suite checks the path.
//
// Under model-level CPU offload the offload scope moves only the non-block weights (move_model() in runtime.hpp
// leaves streamed blocks where they are); the weight plan streams T5 only under offload (Note [Weight budget]).

/// @brief Bytes of the defined tensors of one T5 block.
int64_t t5_block_bytes(T5BlockWeights& block);

/// @brief A copy of `host` on `device` (a new tensor per weight, also when `device` is where `host` lies), queued
///        on the current stream: non-blocking from pinned memory.
T5BlockWeights copy_t5_block(const T5BlockWeights& host, const c10::Device& device);

/// @brief Streams a built encoder's blocks: moves them to host memory (page-locked when `execution_device` is CUDA;
///        a tensor already there is kept), one tensor at a time, and marks the model streamed. The other weights
///        stay where they are; forward() copies each block to `model.runtime.device` as it runs.
void stream_t5_blocks(T5EncoderModel& model, const c10::Device& execution_device);

/// @brief load_t5_encoder() for a streamed encoder: every weight is read from the mapped checkpoint straight into
///        host memory (page-locked when `execution_device` is CUDA: no second host copy), then the non-block weights
///        move to `runtime.device` (the plan's home device) and the blocks stay in host memory.
T5EncoderModel load_streamed_t5_encoder(const std::filesystem::path& model_dir, const T5Runtime& runtime,
                                        const c10::Device& execution_device,
                                        std::optional<std::string> variant = std::nullopt);

}  // namespace ltxmps::pipeline
