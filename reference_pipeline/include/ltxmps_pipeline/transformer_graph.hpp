#pragma once
/// @file transformer_graph.hpp
/// @brief The transformer forward replayed as one CUDA graph while its inputs keep their shapes (the denoising
///        loop's steps): the same kernels on the same buffers, launched by one call instead of one per op.

#include "ltxmps_pipeline/transformer.hpp"

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>

namespace ltxmps::pipeline {

// Note [CUDA graphs for the denoising step]
// Why, and where the pipelines use it: Note [CUDA graphs in the plan] (ltxmps/plan.hpp). How: the forward is
// captured once into a CUDA graph (at::cuda::CUDAGraph) and each later call copies its inputs into the graph's
// input buffers and replays it:
//   - call 1 of a signature (input shapes, dtypes, devices, RoPE grid and scale, the model's runtime switches) runs
//     the forward eagerly on the graph's own stream: it is the step's result and the warm-up that builds cuBLAS
//     workspaces, cuDNN plans and the FP8 attention graphs for that stream, none of which may be built inside a
//     capture;
//   - call 2 captures the forward on that stream (nothing runs while capturing) and replays it;
//   - later calls replay. The output is copied out of the graph's memory pool, so a result never changes under its
//     holder at the next replay.
// The replay launches the captured kernels on the captured buffers, so its result is the eager forward's bit for
// bit (the GPU suite checks it for bf16, FP8 matmul and FP8 attention). What it cannot follow: weights that move
// or change after the capture (the graph keeps their addresses: a TransformerGraph lives no longer than one loop,
// inside its offload scope) and streamed blocks (their copies and events are driven by the host between blocks),
// which run eagerly, as does everything off CUDA; an attention capture (a host callback) is not taken at all. A
// capture that fails is ended, its reason kept (capture_failure()), and the signature runs eagerly from then on.
// Every TransformerGraph of the process warms up and captures on one stream per device: cuBLAS keeps a workspace
// for each stream it has run on, for the life of the process.
// The graph's memory pool keeps the forward's activations between steps; the eager forward frees them at each
// step's end and allocates them again at the next, so the loop's peak stays that of one forward. The cache the
// warm-up filled is emptied before the capture, so the pool does not come on top of it.

/// @brief Why `model`'s forward cannot be replayed as a CUDA graph; empty when it can (a CUDA build, the model on
///        a CUDA device, resident blocks).
std::string cuda_graph_unavailable(const TransformerModel& model);

/// @brief TransformerModel::forward() with the forward captured into a CUDA graph on its second call with the same
///        input signature and replayed from then on (Note [CUDA graphs for the denoising step]). Where
///        cuda_graph_unavailable() gives a reason, or `enabled` is false, every call is the eager forward. `model`
///        must outlive this object and its weights must stay where they are while it exists.
class TransformerGraph {
 public:
  /// @brief Replays `model`'s forward where it can; `enabled` false: every call is the eager forward.
  explicit TransformerGraph(const TransformerModel& model, bool enabled = true);
  /// @brief Releases the graph and its memory pool (a replay still running finishes first).
  ~TransformerGraph();
  TransformerGraph(const TransformerGraph&) = delete;             ///< not copyable: one graph, one pool
  TransformerGraph& operator=(const TransformerGraph&) = delete;  ///< not copyable: one graph, one pool

  /// @brief The velocity, equal to `model.forward(in)` (the same bits on CUDA); a new tensor each call.
  at::Tensor forward(const TransformerInputs& in);

  /// @brief Forwards that were replays of a captured graph (the first two calls of a signature never are).
  int64_t replays() const;
  /// @brief Forwards that ran eagerly (warm-ups, and every forward where no graph can be used).
  int64_t eager_forwards() const;
  /// @brief Why the last capture failed (its signature then runs eagerly); empty when none failed.
  const std::string& capture_failure() const;

 private:
  at::Tensor eager(const TransformerInputs& in);
  at::Tensor warm_up(const TransformerInputs& in, std::string sig);
  bool capture();

  struct State;
  const TransformerModel& model_;
  std::unique_ptr<State> state_;
  int64_t replays_ = 0, eager_ = 0;
  std::string capture_failure_;
};

}  // namespace ltxmps::pipeline
