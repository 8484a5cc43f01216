// The transformer's blocks streamed from host memory into a ring of device buffers (Note [Streamed weights]).

#include "ltxmps_pipeline/weight_streaming.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/runtime.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#if defined(LTXMPS_WITH_CUDA)
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <unordered_set>

namespace ltxmps::pipeline {

namespace {

std::vector<at::Tensor> block_tensors(const TransformerBlockWeights& block) {
  TransformerBlockWeights b = block;  // tensor handles: the visitor needs a mutable struct
  std::vector<at::Tensor> out;
  for_each_tensor(b, [&](at::Tensor& t) { out.push_back(t); });
  return out;
}

std::string describe_tensor(const at::Tensor& t) {
  return t.defined() ? c10::str(t.sizes(), " ", t.scalar_type()) : std::string("undefined");
}

}  // namespace

#if defined(LTXMPS_WITH_CUDA)
// The side stream and the events of Note [Streamed weights]; `compute` is the stream current when a pass begins.
struct BlockStreamer::CudaState {
  c10::cuda::CUDAStream copy;
  c10::cuda::CUDAStream compute;
  at::cuda::CUDAEvent pass_start;
  std::vector<at::cuda::CUDAEvent> ready;  // per slot: recorded on `copy` after the slot's copy
  std::vector<at::cuda::CUDAEvent> done;   // per slot: recorded on `compute` after the block that read the slot
  CudaState(c10::DeviceIndex index, size_t slots)
      : copy(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index)),
        compute(c10::cuda::getCurrentCUDAStream(index)),
        ready(slots),
        done(slots) {}
};
#else
struct BlockStreamer::CudaState {};
#endif

BlockStreamer::BlockStreamer(const std::vector<TransformerBlockWeights>& host_blocks, const BlockStreamOptions& options)
    : device_(options.device) {
  LTXMPS_CHECK(!host_blocks.empty(), "BlockStreamer: the transformer has no blocks to stream");
  LTXMPS_CHECK(options.blocks_ahead >= 0, "BlockStreamer: blocks_ahead must be >= 0, got ", options.blocks_ahead);
  LTXMPS_CHECK(device_.is_cpu() || device_.is_cuda(), "BlockStreamer: blocks stream to a CUDA device (or run the same ",
               "schedule on the CPU), not to ", device_);
#if !defined(LTXMPS_WITH_CUDA)
  LTXMPS_CHECK(!device_.is_cuda(), "BlockStreamer: this build of ltxmps has no CUDA streams (LTXMPS_WITH_CUDA is not "
               "defined: LibTorch without CUDA); streaming to ", device_, " needs them");
#else
  if (device_.is_cuda() && !device_.has_index())
    device_ = c10::Device(c10::kCUDA, c10::cuda::current_device());
#endif
  for (const auto& block : host_blocks) host_.push_back(block_tensors(block));
  const auto& first = host_.front();
  for (size_t b = 0; b < host_.size(); ++b) {
    const auto& tensors = host_[b];
    for (size_t k = 0; k < tensors.size(); ++k) {
      const auto& t = tensors[k];
      const bool same = t.defined() == first[k].defined() &&
                        (!t.defined() || (t.sizes() == first[k].sizes() && t.scalar_type() == first[k].scalar_type()));
      LTXMPS_CHECK(same, "BlockStreamer: tensor ", k, " of block ", b, " is ", describe_tensor(t), " but block 0's is ",
                   describe_tensor(first[k]), "; every streamed block must hold the same tensors");
      if (!t.defined()) continue;
      LTXMPS_CHECK(t.is_cpu(), "BlockStreamer: tensor ", k, " of block ", b, " is on ", t.device(),
                   "; streamed blocks live in host memory (stream_transformer_blocks() moves them there)");
      LTXMPS_CHECK(t.is_contiguous(), "BlockStreamer: tensor ", k, " of block ", b, " is not contiguous");
      if (b == 0) block_bytes_ += static_cast<int64_t>(t.nbytes());
    }
  }
  const auto ring = static_cast<size_t>(std::min<int64_t>(options.blocks_ahead + 1, block_count()));
  slots_.assign(ring, host_blocks.front());
  // Pointers into the slots are taken once the vector no longer moves its elements.
  for (auto& slot : slots_) {
    std::vector<at::Tensor*> pointers;
    for_each_tensor(slot, [&](at::Tensor& t) { pointers.push_back(&t); });
    slot_tensors_.push_back(std::move(pointers));
  }
  // The ring is allocated by the first pass, not here: under model-level offload the text encoder runs before
  // the transformer and gets that memory (Note [Streamed weights]).
  for (auto& pointers : slot_tensors_)
    for (auto* t : pointers) *t = at::Tensor();
  slot_block_.assign(ring, -1);
#if defined(LTXMPS_WITH_CUDA)
  if (device_.is_cuda()) cuda_ = std::make_unique<CudaState>(device_.index(), ring);
#endif
}

BlockStreamer::~BlockStreamer() {
#if defined(LTXMPS_WITH_CUDA)
  // Copies still in flight write into the ring, which is freed with this object (the caching allocator may hand
  // its blocks to the compute stream at once): let them land first. Outside any block loop.
  if (cuda_) {
    try {
      cuda_->copy.synchronize();
    } catch (...) {
    }
  }
#endif
}

void BlockStreamer::allocate_ring() {
  // Normal tensors even when the first pass runs under InferenceMode: a pass outside it copies into them too.
  const c10::InferenceMode normal_tensors(/*enabled=*/false);
  const auto& shape = host_.front();
  for (auto& pointers : slot_tensors_)
    for (size_t k = 0; k < pointers.size(); ++k)
      *pointers[k] = shape[k].defined() ? at::empty(shape[k].sizes(), shape[k].options().device(device_).pinned_memory(false))
                                        : at::Tensor();
  slot_block_.assign(slots_.size(), -1);
  ring_allocated_ = true;
}

void BlockStreamer::park() {
  const std::lock_guard<std::mutex> lock(pass_mutex_);
  if (!ring_allocated_) return;
#if defined(LTXMPS_WITH_CUDA)
  // Copies still in flight write into the ring (see the destructor).
  if (cuda_) cuda_->copy.synchronize();
#endif
  for (auto& pointers : slot_tensors_)
    for (auto* t : pointers) *t = at::Tensor();
  slot_block_.assign(slots_.size(), -1);
  ring_allocated_ = false;
}

void BlockStreamer::for_each_block(const std::function<void(int64_t, const TransformerBlockWeights&)>& run) {
  const std::lock_guard<std::mutex> lock(pass_mutex_);
  if (!ring_allocated_) allocate_ring();
  begin_pass();
  for (int64_t i = 0; i < block_count(); ++i) {
    run(i, acquire(i));
    release(i);
  }
}

void BlockStreamer::begin_pass() {
#if defined(LTXMPS_WITH_CUDA)
  if (cuda_) {
    // Every copy of this pass comes after whatever the compute stream has queued so far (an aborted pass's
    // blocks included), so no slot is overwritten under a kernel still reading it.
    cuda_->compute = c10::cuda::getCurrentCUDAStream(device_.index());
    cuda_->pass_start.record(cuda_->compute);
    cuda_->pass_start.block(cuda_->copy);
  }
#endif
  for (int64_t b = 0; b < ring_blocks(); ++b) issue_copy(b);
}

void BlockStreamer::issue_copy(int64_t block) {
  const auto slot = static_cast<size_t>(block % ring_blocks());
  const auto& src = host_[static_cast<size_t>(block)];
  auto& dst = slot_tensors_[slot];
#if defined(LTXMPS_WITH_CUDA)
  if (cuda_) {
    const c10::cuda::CUDAStreamGuard guard(cuda_->copy);
    for (size_t k = 0; k < src.size(); ++k)
      if (src[k].defined()) dst[k]->copy_(src[k], /*non_blocking=*/true);
    cuda_->ready[slot].record(cuda_->copy);
    slot_block_[slot] = block;
    ++copies_issued_;
    return;
  }
#endif
  for (size_t k = 0; k < src.size(); ++k)
    if (src[k].defined()) dst[k]->copy_(src[k]);
  slot_block_[slot] = block;
  ++copies_issued_;
}

const TransformerBlockWeights& BlockStreamer::acquire(int64_t block) {
  const auto slot = static_cast<size_t>(block % ring_blocks());
  LTXMPS_CHECK(slot_block_[slot] == block, "BlockStreamer: slot ", slot, " holds block ", slot_block_[slot],
               " when block ", block, " runs (the schedule is broken)");
#if defined(LTXMPS_WITH_CUDA)
  if (cuda_) cuda_->ready[slot].block(cuda_->compute);
#endif
  return slots_[slot];
}

void BlockStreamer::release(int64_t block) {
  [[maybe_unused]] const auto slot = static_cast<size_t>(block % ring_blocks());
  const int64_t next = block + ring_blocks();
#if defined(LTXMPS_WITH_CUDA)
  if (cuda_) {
    cuda_->done[slot].record(cuda_->compute);
    if (next < block_count()) cuda_->done[slot].block(cuda_->copy);
  }
#endif
  if (next < block_count()) issue_copy(next);
}

std::optional<int64_t> streamed_blocks_ahead(const ltxmps::ExecutionPlan& plan) {
  if (plan.weights.planned)
    return ltxmps::is_streamed(plan.weights.transformer.mode) ? std::optional<int64_t>(plan.weights.transformer.blocks_ahead)
                                                              : std::nullopt;
  return plan.settings.stream_weights == ltxmps::StreamWeights::on ? std::optional<int64_t>(ltxmps::kDefaultBlocksAhead)
                                                                   : std::nullopt;
}

ltxmps::Diagnostic streaming_diagnostic(const TransformerModel& model) {
  LTXMPS_CHECK(model.streamer, "streaming_diagnostic: the model's blocks are not streamed");
  const auto& s = *model.streamer;
  return ltxmps::Diagnostic{
      ltxmps::Severity::info, "weights", "weights.streaming",
      c10::str("transformer: ", s.block_count(), " blocks of ", ltxmps::describe_bytes(s.block_bytes()), " in ",
               s.device().is_cuda() ? "pinned " : "", "host memory, streamed to ", s.device(), " ", s.blocks_ahead(),
               s.blocks_ahead() == 1 ? " block" : " blocks", " ahead (", s.ring_blocks(), " block buffers, ",
               ltxmps::describe_bytes(s.ring_bytes()), " on the device; Note [Streamed weights])")};
}

int64_t block_bytes(TransformerBlockWeights& block) {
  int64_t n = 0;
  for_each_tensor(block, [&](at::Tensor& t) { n += t.defined() ? static_cast<int64_t>(t.nbytes()) : 0; });
  return n;
}

void stream_transformer_blocks(TransformerModel& model, const c10::Device& device, int64_t blocks_ahead) {
  LTXMPS_CHECK(!model.streamer, "stream_transformer_blocks: the model's blocks are streamed already");
  const bool pin = device.is_cuda();
  for (auto& block : model.transformer_blocks)
    for_each_tensor(block, [&](at::Tensor& t) {
      if (!t.defined() || (t.is_cpu() && t.is_contiguous() && (!pin || t.is_pinned()))) return;
      // One tensor at a time: host memory holds the blocks plus this one copy.
      t = at::empty(t.sizes(), t.options().device(c10::kCPU).pinned_memory(pin)).copy_(t);
    });
  model.streamer = std::make_shared<BlockStreamer>(model.transformer_blocks, BlockStreamOptions{device, blocks_ahead});
}

void unstream_transformer_blocks(TransformerModel& model) {
  model.streamer.reset();
  for (auto& block : model.transformer_blocks)
    for_each_tensor(block, [&](at::Tensor& t) {
      if (t.defined()) t = t.to(model.runtime.device);
    });
}

TransformerModel load_streamed_transformer(const std::filesystem::path& model_dir, const TransformerRuntime& runtime,
                                           const c10::Device& execution_device, int64_t blocks_ahead,
                                           std::optional<std::string> variant, std::optional<TransformerConfig> parsed) {
  LTXMPS_CHECK(std::filesystem::is_directory(model_dir), "transformer folder ", model_dir.string(),
               " does not exist or is not a folder");
  const auto config = parsed ? *parsed : TransformerConfig::from_file(model_dir / "config.json");
  const auto store = WeightStore::open_component(model_dir, std::move(variant));
  // Every weight lands in (page-locked) host memory straight from the mapping; FP8 blocks are quantized there.
  auto host_runtime = runtime;
  host_runtime.device = c10::kCPU;
  StrictLoader loader(store, at::TensorOptions().device(c10::kCPU).dtype(runtime.dtype).pinned_memory(
                                 execution_device.is_cuda()));
  auto model = TransformerModel::from_weights(
      config, host_runtime, [&](const std::string& name, const std::vector<int64_t>& shape) { return loader.take(name, shape); });
  loader.finish();
  // The non-block weights (about 1 % of them) go to the home device; the blocks stream.
  std::unordered_set<const c10::TensorImpl*> in_blocks;
  for (auto& block : model.transformer_blocks)
    for_each_tensor(block, [&](at::Tensor& t) {
      if (t.defined()) in_blocks.insert(t.unsafeGetTensorImpl());
    });
  for_each_tensor(model, [&](at::Tensor& t) {
    if (t.defined() && in_blocks.count(t.unsafeGetTensorImpl()) == 0) t = t.to(runtime.device);
  });
  model.runtime.device = runtime.device;
  stream_transformer_blocks(model, execution_device, blocks_ahead);
  return model;
}

}  // namespace ltxmps::pipeline
