// The T5 encoder's blocks streamed from host memory, one at a time (Note [Streamed T5]).

#include "ltxmps_pipeline/t5_streaming.hpp"

#include "ltxmps_pipeline/runtime.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

namespace ltxmps::pipeline {

int64_t t5_block_bytes(T5BlockWeights& block) {
  int64_t n = 0;
  for_each_tensor(block, [&](at::Tensor& t) { n += t.defined() ? static_cast<int64_t>(t.nbytes()) : 0; });
  return n;
}

T5BlockWeights copy_t5_block(const T5BlockWeights& host, const c10::Device& device) {
  T5BlockWeights out = host;
  for_each_tensor(out, [&](at::Tensor& t) {
    if (t.defined()) t = at::empty(t.sizes(), t.options().device(device).pinned_memory(false)).copy_(t, /*non_blocking=*/true);
  });
  return out;
}

void stream_t5_blocks(T5EncoderModel& model, const c10::Device& execution_device) {
  LTXMPS_CHECK(!model.streamed_blocks, "stream_t5_blocks: the encoder's blocks are streamed already");
  LTXMPS_CHECK(model.loaded(), "stream_t5_blocks: the encoder's weights were released");
  const bool pin = execution_device.is_cuda();
  for (auto& block : model.block)
    for_each_tensor(block, [&](at::Tensor& t) {
      if (!t.defined() || (t.is_cpu() && t.is_contiguous() && (!pin || t.is_pinned()))) return;
      // One tensor at a time: host memory holds the blocks plus this one copy.
      t = at::empty(t.sizes(), t.options().device(c10::kCPU).pinned_memory(pin)).copy_(t);
    });
  model.streamed_blocks = true;
}

T5EncoderModel load_streamed_t5_encoder(const std::filesystem::path& model_dir, const T5Runtime& runtime,
                                        const c10::Device& execution_device, std::optional<std::string> variant) {
  auto host = runtime;
  host.device = c10::kCPU;
  auto model = load_t5_encoder(model_dir, host, std::move(variant), /*pinned_memory=*/execution_device.is_cuda());
  stream_t5_blocks(model, execution_device);  // the blocks are in (pinned) host memory already: nothing is copied
  move_model(model, runtime.device);          // the embedding and the final norm
  return model;
}

}  // namespace ltxmps::pipeline
