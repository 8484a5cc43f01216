// FP8 self-attention: the per-tensor quantizations (fused.cpp's quantize_fp8_tensor), cuDNN's FP8 fused attention
// through the cuDNN frontend's graph API (built where CMake finds the frontend), and the ATen model of both.

#include "ltxmps_kernels/fp8_attention.hpp"

#include "ltxmps_kernels/fused.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

#include <cfloat>
#include <cmath>

#ifdef LTXMPS_KERNELS_WITH_CUDNN_FRONTEND
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <cudnn_frontend.h>

#include <dlfcn.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

// The frontend's dynamic loading reads cuDNN's functions through this handle, which its user sets.
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}  // namespace cudnn_frontend
#endif

namespace ltxmps::kernels {

namespace {

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads) {
  LTXMPS_CHECK(q.defined() && k.defined() && v.defined(), "fp8_attention: q, k and v must be defined");
  LTXMPS_CHECK(q.dim() == 3 && q.sizes() == k.sizes() && q.sizes() == v.sizes(),
               "fp8_attention: q, k and v must be [B, S, D] of one shape (self-attention), got ", q.sizes(), ", ",
               k.sizes(), ", ", v.sizes());
  LTXMPS_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
               "fp8_attention: q, k and v must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
               v.scalar_type());
  LTXMPS_CHECK(heads > 0 && q.size(2) % heads == 0, "fp8_attention: D = ", q.size(2), " is not a multiple of ",
               heads, " heads");
}

void check_fp8_inputs(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, int64_t heads) {
  check_inputs(q.q, k.q, v.q, heads);
  LTXMPS_CHECK(q.q.scalar_type() == at::kFloat8_e4m3fn, "fp8_attention: the codes must be float8_e4m3fn, got ",
               q.q.scalar_type());
  for (const auto* t : {&q, &k, &v})
    LTXMPS_CHECK(t->scale.defined() && t->scale.scalar_type() == at::kFloat && t->scale.numel() == 1 &&
                     t->scale.device() == t->q.device(),
                 "fp8_attention: each scale must be one float32 value on its codes' device");
}

// [B, S, H·Dh] -> [B, H, S, Dh]
at::Tensor split_heads(const at::Tensor& x, int64_t heads) {
  return x.unflatten(2, {heads, -1}).permute({0, 2, 1, 3});
}

// A scale in float32 of the bounded q/k quantization: max|w| · factor, at least FLT_MIN (a NaN stays NaN).
Fp8Tensor quantize_by_bound(const at::Tensor& x, const at::Tensor& weight) {
  const auto weight_max = weight.defined() ? at::linalg_vector_norm(weight, INFINITY, {}, /*keepdim=*/false)
                                                 .to(at::kFloat)
                                                 .reshape({1})
                                           : at::ones({1}, x.options().dtype(at::kFloat));
  const auto scale =
      weight_max.mul(static_cast<double>(fp8_qk_bound_factor(x.size(-1)))).clamp_min_(FLT_MIN);
  auto q = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  at::div_out(q, x, scale);
  return {std::move(q), scale};
}

}  // namespace

float fp8_qk_bound_factor(int64_t dim) {
  return static_cast<float>(std::sqrt(static_cast<double>(dim)) * (1.0 + 1.0 / 64) / kFp8E4m3Max);
}

std::pair<Fp8Tensor, Fp8Tensor> qk_rms_norm_rope_fp8_reference(const at::Tensor& q, const at::Tensor& k,
                                                               const at::Tensor& q_weight, const at::Tensor& k_weight,
                                                               double eps, const at::Tensor& cos,
                                                               const at::Tensor& sin) {
  LTXMPS_CHECK(q.sizes() == k.sizes(), "qk_rms_norm_rope_fp8: q and k must have one shape, got ", q.sizes(), " and ",
               k.sizes());
  const auto [qn, kn] = qk_rms_norm_rope_reference(q, k, q_weight, k_weight, eps, cos, sin);
  return {quantize_by_bound(qn, q_weight), quantize_by_bound(kn, k_weight)};
}

Fp8Rows fp8_attention_rows_reference(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, int64_t heads,
                                     double scale) {
  check_fp8_inputs(q, k, v, heads);
  const auto values = [heads](const Fp8Tensor& t) { return split_heads(t.q.to(at::kFloat).mul_(t.scale), heads); };
  const auto scores = at::matmul(values(q), values(k).transpose(-1, -2)).mul_(scale);
  const auto e = (scores - std::get<0>(scores.max(-1, /*keepdim=*/true))).exp_();
  const auto sum = e.sum(-1, /*keepdim=*/true);
  const auto e_q = e.mul(kFp8E4m3Max).to(at::kFloat8_e4m3fn).to(at::kFloat).div_(kFp8E4m3Max);
  const auto o = at::matmul(e_q, values(v)).div_(sum).permute({0, 2, 1, 3}).flatten(2, 3);  // [B, S, D]
  const int64_t rows = o.size(0) * o.size(1);
  return {o.reshape({rows, o.size(2)}).div(v.scale).to(at::kFloat8_e4m3fn), v.scale.expand({rows}).contiguous()};
}

at::Tensor fp8_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads,
                                   double scale) {
  check_inputs(q, k, v, heads);
  const auto quantize = [](const at::Tensor& x) { return quantize_fp8_tensor_reference(x.contiguous()); };
  const auto rows = fp8_attention_rows_reference(quantize(q), quantize(k), quantize(v), heads, scale);
  return dequantize_fp8_rows_reference(rows.q, rows.scale, q.scalar_type()).view(q.sizes());
}

at::Tensor fp8_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads, double scale) {
  check_inputs(q, k, v, heads);
  if (q.is_cuda())
    LTXMPS_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
                 "fp8_attention: q, k and v must be bfloat16 or float16 on CUDA, got ", q.scalar_type());
  const auto quantize = [](const at::Tensor& x) { return quantize_fp8_tensor(x.contiguous()); };
  const auto rows = fp8_attention_rows(quantize(q), quantize(k), quantize(v), heads, scale);
  return dequantize_fp8_rows(rows.q, rows.scale, q.scalar_type()).view(q.sizes());
}

#ifdef LTXMPS_KERNELS_WITH_CUDNN_FRONTEND

namespace {

namespace fe = cudnn_frontend;

// Note [Opening cuDNN]
// LibTorch with CUDA loads libcudnn.so.9 when it starts (libtorch_cuda needs it), so opening it by its soname
// returns that very library and the frontend calls the cuDNN that ATen calls; a process without it gets the one
// the loader finds. Opened once; an empty string when that worked, dlerror()'s text otherwise.
const std::string& open_cudnn() {
  static const std::string error = [] {
    void* handle = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_NOLOAD);
    if (handle == nullptr) handle = dlopen("libcudnn.so.9", RTLD_NOW);
    if (handle == nullptr) {
      const char* e = dlerror();
      return std::string(e ? e : "libcudnn.so.9 could not be opened");
    }
    cudnn_frontend::cudnn_dlhandle = handle;
    return std::string();
  }();
  return error;
}


using TensorAttr = std::shared_ptr<fe::graph::Tensor_attributes>;

// One built cuDNN graph for a shape: the graph, its tensors (the variant pack's keys), its workspace size, and the
// device values that are the same in every call: the probabilities' scales 448 and 1/448 and room for the two amax
// outputs, which nothing reads.
struct Fp8AttentionGraph {
  std::shared_ptr<fe::graph::Graph> graph;
  TensorAttr q, k, v, o, descale_q, descale_k, descale_v, descale_s, scale_s, scale_o, amax_s, amax_o;
  int64_t workspace = 0;
  at::Tensor descale_s_value, scale_s_value, amax_values;
};

// Note [cuDNN handles and graphs]
// A cuDNN handle belongs to one device; it is created once per device and bound to the current stream before each
// execution. Building a graph (heuristics, plan compilation) takes milliseconds to seconds, so each shape is built
// once per process and kept. Both live behind one mutex: cuDNN handles are not to be used by two threads at once.
std::mutex& cudnn_mutex() {
  static std::mutex m;
  return m;
}

cudnnHandle_t cudnn_handle(int device) {
  static std::map<int, cudnnHandle_t> handles;  // never destroyed: cuDNN may be unloaded before static destructors
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  cudnnHandle_t h = nullptr;
  const auto status = fe::detail::create_handle(&h);
  LTXMPS_CHECK(status == CUDNN_STATUS_SUCCESS, "fp8_attention: cudnnCreate failed on cuda:", device, ": ",
               fe::detail::get_error_string(status));
  handles.emplace(device, h);
  return h;
}

void check_step(fe::error_t status, const char* step, const std::string& shape) {
  LTXMPS_CHECK(status.is_good(), "fp8_attention: cuDNN cannot run FP8 attention for ", shape, " (", step,
               "): ", status.get_message());
}

TensorAttr scalar_input(fe::graph::Graph& g, const char* name) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_dim({1, 1, 1, 1})
                      .set_stride({1, 1, 1, 1})
                      .set_data_type(fe::DataType_t::FLOAT));
}

// How cuDNN's errors name a shape.
std::string shape_text(int64_t b, int64_t h, int64_t s, int64_t d) {
  return c10::str("[B ", b, ", H ", h, ", S ", s, ", Dh ", d, "]");
}

// The graph of one shape up to cuDNN's support check: everything but compiling the kernel.
Fp8AttentionGraph supported_graph(cudnnHandle_t handle, int64_t b, int64_t h, int64_t s, int64_t d, float scale) {
  const std::string shape = shape_text(b, h, s, d);
  Fp8AttentionGraph G;
  G.graph = std::make_shared<fe::graph::Graph>();
  auto& g = *G.graph;
  g.set_io_data_type(fe::DataType_t::FP8_E4M3)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  // [B, S, H, Dh] in memory (the projections' [B, S, D]), addressed as [B, H, S, Dh]
  const std::vector<int64_t> dims{b, h, s, d}, strides{s * h * d, d, h * d, 1};
  const auto tensor = [&](const char* name) {
    return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_dim(dims).set_stride(strides));
  };
  G.q = tensor("q");
  G.k = tensor("k");
  G.v = tensor("v");
  G.descale_q = scalar_input(g, "descale_q");
  G.descale_k = scalar_input(g, "descale_k");
  G.descale_v = scalar_input(g, "descale_v");
  G.descale_s = scalar_input(g, "descale_s");
  G.scale_s = scalar_input(g, "scale_s");
  G.scale_o = scalar_input(g, "scale_o");
  const auto options =
      fe::graph::SDPA_fp8_attributes().set_name("ltxmps_fp8_attention").set_generate_stats(false).set_attn_scale(scale);
  auto [o, stats, amax_s, amax_o] = g.sdpa_fp8(G.q, G.k, G.v, G.descale_q, G.descale_k, G.descale_v, G.descale_s,
                                               G.scale_s, G.scale_o, options);
  (void)stats;
  G.o = o;
  G.amax_s = amax_s;
  G.amax_o = amax_o;
  o->set_output(true).set_dim(dims).set_stride(strides);
  for (const auto& a : {amax_s, amax_o})
    a->set_output(true).set_dim({1, 1, 1, 1}).set_stride({1, 1, 1, 1}).set_data_type(fe::DataType_t::FLOAT);
  check_step(g.validate(), "validate", shape);
  check_step(g.build_operation_graph(handle), "build_operation_graph", shape);
  check_step(g.create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans", shape);
  check_step(g.check_support(handle), "check_support", shape);
  return G;
}

Fp8AttentionGraph build_graph(cudnnHandle_t handle, int device, int64_t b, int64_t h, int64_t s, int64_t d,
                              float scale) {
  const std::string shape = shape_text(b, h, s, d);
  Fp8AttentionGraph G = supported_graph(handle, b, h, s, d, scale);
  auto& g = *G.graph;
  check_step(g.build_plans(handle), "build_plans", shape);
  check_step(g.get_workspace_size(G.workspace), "get_workspace_size", shape);
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
  G.descale_s_value = at::full({1}, 1.0 / kFp8E4m3Max, f32);
  G.scale_s_value = at::full({1}, kFp8E4m3Max, f32);
  G.amax_values = at::empty({2}, f32);
  // Filled on this stream; a later call may come on another stream, so the fills finish here, once per shape.
  c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).synchronize();
  return G;
}

// Note [FP8 attention availability]
// Whether this machine can run the kernel (a device of sm_90+, a cuDNN that opens and is 9.1+) cannot change while
// the process runs, so it is asked once, where a shape's graph is first built, not on every forward's every layer.
const Fp8AttentionGraph& graph_for(int device, int64_t b, int64_t h, int64_t s, int64_t d, float scale) {
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, uint32_t>;
  // Never destroyed, as the handles: at exit cuDNN and the CUDA allocator may be gone before static destructors run.
  static auto& graphs = *new std::map<Key, Fp8AttentionGraph>();
  uint32_t scale_bits = 0;
  std::memcpy(&scale_bits, &scale, sizeof scale);
  const Key key{device, b, h, s, d, scale_bits};
  auto it = graphs.find(key);
  if (it == graphs.end()) {
    const auto reason = fp8_attention_unavailable(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device)));
    LTXMPS_CHECK(reason.empty(), "fp8_attention: ", reason);
    it = graphs.emplace(key, build_graph(cudnn_handle(device), device, b, h, s, d, scale)).first;
  }
  return it->second;
}

}  // namespace

bool built_with_fp8_attention() noexcept {
  return true;
}

std::string fp8_attention_unavailable(const c10::Device& device) {
  if (!device.is_cuda()) return c10::str("FP8 attention runs on CUDA only; the device is ", device);
  if (c10::cuda::device_count() == 0) return "no CUDA device is available";
  const int index = device.has_index() ? device.index() : c10::cuda::current_device();
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index) != cudaSuccess)
    return c10::str("the compute capability of cuda:", index, " could not be read");
  if (major < 9)
    return c10::str("cuDNN's FP8 attention needs compute capability 9.0 or newer (Hopper); cuda:", index, " is sm_",
                    major, minor);
  if (!open_cudnn().empty()) return c10::str("cuDNN could not be opened: ", open_cudnn());
  try {
    const auto version = fe::detail::get_backend_version();
    if (version < 90100)
      return c10::str("cuDNN's FP8 attention needs cuDNN 9.1 or newer; the loaded cuDNN is ", version);
  } catch (const std::exception& e) {
    return c10::str("cuDNN could not be loaded: ", e.what());
  }
  return {};
}

// Note [FP8 attention head shapes]
// cuDNN documents head dimensions up to 256 for Hopper's FP8 attention but not every one below, and which it takes can
// change with its version; so the loaded cuDNN is asked, with the model's heads and head dimension at one sequence
// length, before a model's weights are read (its refusals name the head dimension: "hidden_dim should be less than or
// equal to 256 and hidden_dim should be multiple of 16" in cuDNN 9.19; the GPU suite checks that each answer is what
// the attention then does at other lengths). The check stops before the kernel is compiled; the forward builds its
// own graph per shape.
std::string fp8_attention_unsupported(const c10::Device& device, int64_t heads, int64_t head_dim) {
  if (auto reason = fp8_attention_unavailable(device); !reason.empty()) return reason;
  if (heads < 1 || head_dim < 1) return c10::str("no attention heads of ", heads, " x ", head_dim);
  const int index = device.has_index() ? device.index() : c10::cuda::current_device();
  using Key = std::tuple<int, int64_t, int64_t>;
  static auto& answers = *new std::map<Key, std::string>();
  std::lock_guard<std::mutex> lock(cudnn_mutex());
  const Key key{index, heads, head_dim};
  if (const auto it = answers.find(key); it != answers.end()) return it->second;
  std::string answer;
  try {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
    (void)supported_graph(cudnn_handle(index), 1, heads, 256, head_dim, scale);
  } catch (const std::exception& e) {
    answer = c10::str("cuDNN's FP8 attention does not take ", heads, " heads of dimension ", head_dim, " on cuda:",
                      index, ": ", e.what());
  }
  answers.emplace(key, answer);
  return answer;
}

Fp8Rows fp8_attention_rows(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, int64_t heads, double scale) {
  check_fp8_inputs(q, k, v, heads);
  if (!q.q.is_cuda()) return fp8_attention_rows_reference(q, k, v, heads, scale);
  LTXMPS_CHECK(k.q.device() == q.q.device() && v.q.device() == q.q.device(),
               "fp8_attention: q, k and v must be on one device");
  const c10::cuda::CUDAGuard guard(q.q.device());
  const int64_t B = q.q.size(0), S = q.q.size(1), D = q.q.size(2), Dh = D / heads;
  const auto qc = q.q.contiguous(), kc = k.q.contiguous(), vc = v.q.contiguous();
  const auto scale_o = at::reciprocal(v.scale);  // |O| <= amax(v) <= 448 · v.scale: O · scale_o stays in range
  auto o8 = at::empty({B * S, D}, qc.options());
  const int device = q.q.device().index();
  std::lock_guard<std::mutex> lock(cudnn_mutex());
  const auto& G = graph_for(device, B, heads, S, Dh, static_cast<float>(scale));
  auto workspace = at::empty({std::max<int64_t>(G.workspace, 1)}, qc.options().dtype(at::kByte));
  std::unordered_map<TensorAttr, void*> pack{
      {G.q, qc.data_ptr()},           {G.k, kc.data_ptr()},
      {G.v, vc.data_ptr()},           {G.o, o8.data_ptr()},
      {G.descale_q, q.scale.data_ptr()}, {G.descale_k, k.scale.data_ptr()},
      {G.descale_v, v.scale.data_ptr()}, {G.descale_s, G.descale_s_value.data_ptr()},
      {G.scale_s, G.scale_s_value.data_ptr()}, {G.scale_o, scale_o.data_ptr()},
      {G.amax_s, G.amax_values.data_ptr<float>()}, {G.amax_o, G.amax_values.data_ptr<float>() + 1}};
  const auto handle = cudnn_handle(device);
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
  const auto stream_status = fe::detail::set_stream(handle, stream);
  LTXMPS_CHECK(stream_status == CUDNN_STATUS_SUCCESS, "fp8_attention: cudnnSetStream failed: ",
               fe::detail::get_error_string(stream_status));
  check_step(G.graph->execute(handle, pack, workspace.data_ptr()), "execute",
             shape_text(B, heads, S, Dh));
  // Every row of O has v's scale.
  return {std::move(o8), v.scale.expand({B * S}).contiguous()};
}

#else  // no cuDNN frontend in this build

bool built_with_fp8_attention() noexcept {
  return false;
}

std::string fp8_attention_unavailable(const c10::Device& device) {
  if (!device.is_cuda()) return c10::str("FP8 attention runs on CUDA only; the device is ", device);
  return "this build has no FP8 attention (configured without the cuDNN frontend headers, "
         "LTXMPS_CUDNN_FRONTEND_INCLUDE_DIR, or without CUDA kernels)";
}

std::string fp8_attention_unsupported(const c10::Device& device, int64_t, int64_t) {
  return fp8_attention_unavailable(device);
}

Fp8Rows fp8_attention_rows(const Fp8Tensor& q, const Fp8Tensor& k, const Fp8Tensor& v, int64_t heads, double scale) {
  check_fp8_inputs(q, k, v, heads);
  LTXMPS_CHECK(!q.q.is_cuda(), "fp8_attention: ", fp8_attention_unavailable(q.q.device()));
  return fp8_attention_rows_reference(q, k, v, heads, scale);
}

#endif

}  // namespace ltxmps::kernels
