// The transformer forward as a CUDA graph (Note [CUDA graphs for the denoising step] in transformer_graph.hpp).

#include "ltxmps_pipeline/transformer_graph.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps/version.hpp"

#if defined(LTXMPS_WITH_CUDA)
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <utility>

namespace ltxmps::pipeline {

std::string cuda_graph_unavailable(const TransformerModel& model) {
#if defined(LTXMPS_WITH_CUDA)
  if (!model.runtime.device.is_cuda())
    return c10::str("the transformer runs on ", model.runtime.device, " and CUDA graphs are CUDA only");
  if (model.streamer)
    return "the transformer's blocks are streamed: their copies are queued by the host between blocks";
  return {};
#else
  (void)model;
  return "this build has no CUDA (LibTorch without CUDA)";
#endif
}

#if defined(LTXMPS_WITH_CUDA)

namespace {

void describe(std::ostringstream& os, const char* name, const at::Tensor& t) {
  os << name << '=';
  if (t.defined()) os << t.sizes() << ' ' << t.scalar_type() << ' ' << t.device();
  os << ';';
}

// Everything the captured kernels depend on besides the input values: the inputs' shapes, dtypes and devices, the
// RoPE grid and scale (baked into the graph as scalars) and the model's runtime switches.
std::string signature(const TransformerModel& model, const TransformerInputs& in) {
  std::ostringstream os;
  os.precision(17);
  describe(os, "hidden_states", in.hidden_states);
  describe(os, "encoder_hidden_states", in.encoder_hidden_states);
  describe(os, "timestep", in.timestep);
  describe(os, "timestep_index", in.timestep_index.value_or(at::Tensor()));
  describe(os, "encoder_attention_mask", in.encoder_attention_mask.value_or(at::Tensor()));
  describe(os, "video_coords", in.video_coords.value_or(at::Tensor()));
  os << "grid=" << in.num_frames.value_or(-1) << ',' << in.height.value_or(-1) << ',' << in.width.value_or(-1) << ';';
  if (in.rope_interpolation_scale)
    os << "rope_scale=" << (*in.rope_interpolation_scale)[0] << ',' << (*in.rope_interpolation_scale)[1] << ','
       << (*in.rope_interpolation_scale)[2] << ';';
  const auto& r = model.runtime;
  os << "runtime=" << r.device << ' ' << r.dtype << ' ' << static_cast<int>(r.attention.kernel) << ' '
     << r.attention.scale.value_or(0.0) << ' ' << static_cast<int>(r.block_linears) << ' ' << r.fused_kernels << ' '
     << r.fp8_attention;
  return os.str();
}

// `f(buffer, value)` for each tensor input given in `in`, beside its buffer in `buffers` (the same fields).
template <typename F>
void each_tensor_input(TransformerInputs& buffers, const TransformerInputs& in, F&& f) {
  f(buffers.hidden_states, in.hidden_states);
  f(buffers.encoder_hidden_states, in.encoder_hidden_states);
  f(buffers.timestep, in.timestep);
  if (in.timestep_index) f(*buffers.timestep_index, *in.timestep_index);
  if (in.encoder_attention_mask) f(*buffers.encoder_attention_mask, *in.encoder_attention_mask);
  if (in.video_coords) f(*buffers.video_coords, *in.video_coords);
}

// `waiter` runs what it is given next only after what `done` has been given so far.
void wait_for(const c10::cuda::CUDAStream& waiter, const c10::cuda::CUDAStream& done) {
  at::cuda::CUDAEvent event;
  event.record(done);
  event.block(waiter);
}

// One stream per device for every TransformerGraph: libraries keep what they set up for a stream for the life of
// the process (cuBLAS a workspace per handle and stream, tens of MiB), so a new stream for each loop would leave
// one more of them behind each time. Loops on several threads take turns on it for their warm-ups and captures
// (`busy`): work another thread queued on a stream while it is being captured would land in that graph.
struct GraphStream {
  explicit GraphStream(c10::DeviceIndex index) : stream(c10::cuda::getStreamFromPool(false, index)) {}
  c10::cuda::CUDAStream stream;
  std::mutex busy;
};

GraphStream& graph_stream(c10::DeviceIndex index) {
  static std::mutex mutex;
  static std::map<c10::DeviceIndex, std::unique_ptr<GraphStream>> streams;  // never destroyed, like the pool's
  const std::lock_guard<std::mutex> lock(mutex);
  auto& entry = streams[index];
  if (!entry) entry = std::make_unique<GraphStream>(index);
  return *entry;
}

}  // namespace

struct TransformerGraph::State {
  explicit State(const c10::Device& device)
      : shared(graph_stream(device.has_index() ? device.index() : c10::cuda::current_device())) {}

  GraphStream& shared;       ///< where the warm-up and the capture run
  std::string signature;     ///< of the inputs below; empty before the first call
  TransformerInputs inputs;  ///< the graph's input buffers (device copies)
  bool eager_only = false;   ///< a capture of this signature failed
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor output;  ///< the captured forward's result, in the graph's pool
  std::optional<c10::cuda::CUDAStream> last_replay;  ///< the stream the last replay ran on
};

TransformerGraph::TransformerGraph(const TransformerModel& model, bool enabled) : model_(model) {
  if (enabled && cuda_graph_unavailable(model).empty()) state_ = std::make_unique<State>(model.runtime.device);
}

TransformerGraph::~TransformerGraph() = default;

at::Tensor TransformerGraph::eager(const TransformerInputs& in) {
  ++eager_;
  return model_.forward(in);
}

at::Tensor TransformerGraph::forward(const TransformerInputs& in) {
  if (!state_ || !cuda_graph_unavailable(model_).empty()) return eager(in);
  c10::InferenceMode inference;
  auto& s = *state_;
  const c10::cuda::CUDAGuard guard(model_.runtime.device);
  const auto current = c10::cuda::getCurrentCUDAStream();
  auto sig = signature(model_, in);
  if (sig != s.signature) return warm_up(in, std::move(sig));
  if (s.eager_only) return eager(in);
  // Replays on another stream than the last one must not overwrite the buffers that one may still read.
  if (s.last_replay && *s.last_replay != current) wait_for(current, *s.last_replay);
  s.last_replay = current;
  each_tensor_input(s.inputs, in, [](at::Tensor& buffer, const at::Tensor& value) {
    buffer.copy_(value, /*non_blocking=*/true);
  });
  if (!s.graph && !capture()) return eager(in);
  s.graph->replay();
  ++replays_;
  return s.output.clone();
}

// A new signature: the old graph dropped, device copies of the inputs kept, the forward run on the graph's stream.
at::Tensor TransformerGraph::warm_up(const TransformerInputs& in, std::string sig) {
  auto& s = *state_;
  s.output = at::Tensor();
  s.graph.reset();
  s.eager_only = false;
  s.last_replay.reset();
  s.signature = std::move(sig);
  s.inputs = in;
  each_tensor_input(s.inputs, in, [&](at::Tensor& buffer, const at::Tensor& value) {
    buffer = at::empty(value.sizes(), value.options().device(model_.runtime.device)).copy_(value, /*non_blocking=*/true);
  });
  const auto current = c10::cuda::getCurrentCUDAStream();
  const auto& stream = s.shared.stream;
  const std::lock_guard<std::mutex> turn(s.shared.busy);
  wait_for(stream, current);
  at::Tensor out;
  try {
    const c10::cuda::CUDAStreamGuard on_graph_stream(stream);
    out = model_.forward(s.inputs);
  } catch (...) {
    s.signature.clear();  // a bad input is reported again, not captured
    throw;
  }
  wait_for(current, stream);
  out.record_stream(current);
  ++eager_;
  return out;
}

// Captures the forward on the graph's stream. On failure the capture is ended and its memory pool released, the
// reason kept, and false returned: the signature then runs eagerly.
bool TransformerGraph::capture() {
  auto& s = *state_;
  const std::lock_guard<std::mutex> turn(s.shared.busy);
  // The blocks the warm-up left cached would stay reserved beside the graph's own pool (Note [CUDA graphs for the
  // denoising step]).
  c10::cuda::CUDACachingAllocator::emptyCache();
  const auto& stream = s.shared.stream;
  const auto device = stream.device_index();
  (void)device;
  const auto pool = at::cuda::graph_pool_handle();
  auto graph = std::make_unique<at::cuda::CUDAGraph>();
  const c10::cuda::CUDAStreamGuard on_graph_stream(stream);
  // Thread-local: another thread's CUDA calls (a progress display, a loader) do not invalidate the capture.
  graph->capture_begin(pool, cudaStreamCaptureModeThreadLocal);
  try {
    s.output = model_.forward(s.inputs);
  } catch (const std::exception& e) {
    s.output = at::Tensor();
    bool ended = false;
    try {
      graph->capture_end();
      ended = true;
    } catch (const std::exception&) {
    }
    (void)cudaGetLastError();  // the invalidated capture's error is not sticky; clear it
    if (!ended) {
#if LTXMPS_TORCH_AT_LEAST(2, 3)
      try {
        c10::cuda::CUDACachingAllocator::endAllocateToPool(device, pool);
      } catch (const std::exception&) {
      }
      c10::cuda::CUDACachingAllocator::releasePool(device, pool);
#endif
    }
    capture_failure_ = e.what();
    s.eager_only = true;
    return false;
  }
  graph->capture_end();
  s.graph = std::move(graph);
  return true;
}

#else  // no CUDA in this build: every forward is eager

struct TransformerGraph::State {};

TransformerGraph::TransformerGraph(const TransformerModel& model, bool) : model_(model) {}

TransformerGraph::~TransformerGraph() = default;

at::Tensor TransformerGraph::eager(const TransformerInputs& in) {
  ++eager_;
  return model_.forward(in);
}

at::Tensor TransformerGraph::forward(const TransformerInputs& in) { return eager(in); }

#endif

int64_t TransformerGraph::replays() const { return replays_; }

int64_t TransformerGraph::eager_forwards() const { return eager_; }

const std::string& TransformerGraph::capture_failure() const { return capture_failure_; }

}  // namespace ltxmps::pipeline
