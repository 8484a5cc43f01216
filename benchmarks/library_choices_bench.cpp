// Whether the libraries' own first choices are the fastest they have for the forward's GEMMs and attention: every
// algorithm cuBLASLt's heuristic offers for each linear layer of the 2B / 13B forward, and (built with the cuDNN
// frontend) every engine configuration cuDNN offers for the self-attention, bf16 and FP8, timed beside what ATen runs
// for the same operation (at::_addmm_activation, at::scaled_dot_product_attention). Random operands (at::randn):
// constant ones draw less power and run at higher clocks, which would flatter every choice alike but not equally.
//
// Prints one JSON line per operation: the ATen time, each candidate's time and name, the first candidate's (the
// heuristic's choice, which ATen and ltxmps run) and the fastest candidate's. Median of --iters samples after 3
// warm-ups, CUDA events on the current stream (Note [Timing one operation]).
//
//   library_choices_bench [--iters N] [--tokens N]
// Built as ltxmps_library_choices_bench where CMake finds a CUDA compiler and cuBLASLt (benchmarks/CMakeLists.txt);
// the attention part where LTXMPS_CUDNN_FRONTEND_INCLUDE_DIR is set, as for FP8 attention.

#include "bench_support.hpp"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAStream.h>
#include <cublasLt.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#ifdef LTXMPS_BENCH_WITH_CUDNN_FRONTEND
#include <cudnn_frontend.h>
#include <dlfcn.h>
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;  // the frontend's dynamic loading reads cuDNN through this handle
}  // namespace cudnn_frontend
#endif

namespace {

int g_iters = 10;

// Note [Timing one operation]
// A run's host side (ATen's dispatch, its cuBLASLt heuristic query, a frontend's variant pack) must not count,
// as it does not in a forward, where the host runs ahead of the GPU. So each sample enqueues one run first, records
// the start event behind it and then kRunsPerSample more runs: while the GPU works through the first, the host
// queues the rest, and the events see GPU time only.
constexpr int kRunsPerSample = 5;

/// Median milliseconds per run of `run` over g_iters samples after 3 warm-ups.
double time_ms(const std::function<void()>& run) {
  for (int i = 0; i < 3; ++i) run();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<double> ms;
  for (int i = 0; i < g_iters; ++i) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    run();
    start.record(stream);
    for (int r = 0; r < kRunsPerSample; ++r) run();
    stop.record(stream);
    stop.synchronize();
    ms.push_back(start.elapsed_time(stop) / kRunsPerSample);
  }
  std::sort(ms.begin(), ms.end());
  return ltxmps::bench::median_of_sorted(ms);
}

void check_lt(cublasStatus_t status, const char* what) {
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "library_choices_bench: ", what, " failed: ", status);
}

struct Candidate {
  std::string name;
  double ms = -1;  ///< < 0: it did not run
};

/// One JSON line: the ATen time, every candidate, the first and the fastest.
void print_line(const std::string& op, const std::string& shape, double flops, double aten_ms,
                const std::vector<Candidate>& cands) {
  std::string list;
  int best = -1;
  for (size_t i = 0; i < cands.size(); ++i) {
    if (cands[i].ms >= 0 && (best < 0 || cands[i].ms < cands[best].ms)) best = static_cast<int>(i);
    list += c10::str(i ? ", " : "", "{\"name\": \"", cands[i].name, "\", \"ms\": ", cands[i].ms, "}");
  }
  const double first = cands.empty() ? -1 : cands.front().ms;
  const double fastest = best < 0 ? -1 : cands[best].ms;
  std::printf("{\"op\": \"%s\", \"shape\": \"%s\", \"aten_ms\": %.4f, \"aten_tflops\": %.1f, \"first_ms\": %.4f, "
              "\"fastest\": %d, \"fastest_ms\": %.4f, \"first_over_fastest\": %.4f, \"candidates\": [%s]}\n",
              op.c_str(), shape.c_str(), aten_ms, flops / aten_ms / 1e9, first, best, fastest,
              fastest > 0 ? first / fastest : 0.0, list.c_str());
  std::fflush(stdout);
}

// torch.nn.Linear as ATen runs it on CUDA: out[n, m] = x[n, k] · W[m, k]ᵀ + b (with cuBLASLt's GELU in the epilogue
// for the feed-forward's first layer, at::_addmm_activation), in cuBLASLt's column-major terms Wᵀ-op times x.
void linear_algorithms(const char* op, int64_t n, int64_t k, int64_t m, bool gelu) {
  const auto o = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const auto x = at::randn({n, k}, o), w = at::randn({m, k}, o).div_(std::sqrt(double(k))), b = at::randn({m}, o);
  auto out = at::empty({n, m}, o);
  const double aten = time_ms([&] { at::_addmm_activation_out(out, b, x, w.t(), 1, 1, gelu); });

  cublasLtMatmulDesc_t desc = nullptr;
  check_lt(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  const cublasLtEpilogue_t epilogue = gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
  const void* bias = b.data_ptr();
  const cudaDataType_t bias_type = CUDA_R_16BF;
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue), "EPILOGUE");
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias), "BIAS");
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type),
           "BIAS_DATA_TYPE");
  cublasLtMatrixLayout_t A = nullptr, B = nullptr, C = nullptr;
  check_lt(cublasLtMatrixLayoutCreate(&A, CUDA_R_16BF, k, m, k), "layout A");
  check_lt(cublasLtMatrixLayoutCreate(&B, CUDA_R_16BF, k, n, k), "layout B");
  check_lt(cublasLtMatrixLayoutCreate(&C, CUDA_R_16BF, m, n, m), "layout C");
  size_t workspace_size = at::cuda::getCUDABlasLtWorkspaceSize();  // ATen's own workspace and its size
  void* workspace = at::cuda::getCUDABlasLtWorkspace();
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_size,
                                                sizeof workspace_size),
           "MAX_WORKSPACE_BYTES");
  std::vector<cublasLtMatmulHeuristicResult_t> found(32);
  int count = 0;
  const auto handle = at::cuda::getCurrentCUDABlasLtHandle();
  check_lt(cublasLtMatmulAlgoGetHeuristic(handle, desc, A, B, C, C, pref, static_cast<int>(found.size()),
                                          found.data(), &count),
           "cublasLtMatmulAlgoGetHeuristic");
  const float alpha = 1, beta = 0;
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  std::vector<Candidate> cands;
  for (int i = 0; i < count; ++i) {
    int id = 0, tile = 0, stages = 0;
    size_t written = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&found[i].algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &written);
    cublasLtMatmulAlgoConfigGetAttribute(&found[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &written);
    cublasLtMatmulAlgoConfigGetAttribute(&found[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages,
                                         &written);
    Candidate c{c10::str("algo ", id, " tile ", tile, " stages ", stages)};
    const auto run = [&] {
      return cublasLtMatmul(handle, desc, &alpha, w.data_ptr(), A, x.data_ptr(), B, &beta, out.data_ptr(), C,
                            out.data_ptr(), C, &found[i].algo, workspace, workspace_size, stream);
    };
    if (run() == CUBLAS_STATUS_SUCCESS) c.ms = time_ms([&] { (void)run(); });
    cands.push_back(c);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(A);
  cublasLtMatrixLayoutDestroy(B);
  cublasLtMatrixLayoutDestroy(C);
  cublasLtMatmulDescDestroy(desc);
  print_line(op, c10::str(n, "x", k, " -> ", m), 2.0 * n * k * m, aten, cands);
}

#ifdef LTXMPS_BENCH_WITH_CUDNN_FRONTEND
namespace fe = cudnn_frontend;
using TensorAttr = std::shared_ptr<fe::graph::Tensor_attributes>;

TensorAttr scalar(fe::graph::Graph& g, const char* name) {
  return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_dim({1, 1, 1, 1}).set_stride({1, 1, 1, 1})
                      .set_data_type(fe::DataType_t::FLOAT));
}

void check_fe(fe::error_t status, const char* step) {
  TORCH_CHECK(status.is_good(), "library_choices_bench: cuDNN ", step, ": ", status.get_message());
}

/// Self-attention on [B, S, H·Dh] layouts (the projections' output), as ATen and fp8_attention address them.
void attention_plans(cudnnHandle_t handle, bool fp8, int64_t b, int64_t h, int64_t s, int64_t d) {
  const auto o16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const auto q = at::randn({b, s, h * d}, o16), k = at::randn({b, s, h * d}, o16), v = at::randn({b, s, h * d}, o16);
  const auto heads = [&](const at::Tensor& t) { return t.view({b, s, h, d}).transpose(1, 2); };
  const double aten = time_ms([&] { (void)at::scaled_dot_product_attention(heads(q), heads(k), heads(v)); });
  const auto as_io = [&](const at::Tensor& t) { return fp8 ? t.to(at::kFloat8_e4m3fn) : t; };
  const auto q_io = as_io(q), k_io = as_io(k), v_io = as_io(v);
  auto out = at::empty_like(q_io);
  fe::graph::Graph g;
  g.set_io_data_type(fp8 ? fe::DataType_t::FP8_E4M3 : fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  const std::vector<int64_t> dims{b, h, s, d}, strides{s * h * d, d, h * d, 1};
  const auto tensor = [&](const char* name) {
    return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_dim(dims).set_stride(strides));
  };
  const auto tq = tensor("q"), tk = tensor("k"), tv = tensor("v");
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  // FP8: descale q, k, v = 1; the probabilities as fp8_attention scales them (448, 1/448); O unscaled.
  const auto scalars = at::tensor({1.f, 1.f, 1.f, 1.f / 448, 448.f, 1.f, 0.f, 0.f}, at::device(at::kCUDA));
  std::unordered_map<TensorAttr, void*> pack{{tq, q_io.data_ptr()}, {tk, k_io.data_ptr()}, {tv, v_io.data_ptr()}};
  TensorAttr to;
  if (fp8) {
    std::vector<TensorAttr> sc;
    for (const char* name : {"descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o"})
      sc.push_back(scalar(g, name));
    const auto opt = fe::graph::SDPA_fp8_attributes().set_name("fp8").set_generate_stats(false).set_attn_scale(scale);
    auto [o, stats, amax_s, amax_o] = g.sdpa_fp8(tq, tk, tv, sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], opt);
    (void)stats;
    to = o;
    for (size_t i = 0; i < sc.size(); ++i) pack[sc[i]] = scalars.data_ptr<float>() + i;
    for (const auto& a : {amax_s, amax_o})
      a->set_output(true).set_dim({1, 1, 1, 1}).set_stride({1, 1, 1, 1}).set_data_type(fe::DataType_t::FLOAT);
    pack[amax_s] = scalars.data_ptr<float>() + 6;
    pack[amax_o] = scalars.data_ptr<float>() + 7;
  } else {
    const auto opt = fe::graph::SDPA_attributes().set_name("bf16").set_generate_stats(false).set_attn_scale(scale);
    auto [o, stats] = g.sdpa(tq, tk, tv, opt);
    (void)stats;
    to = o;
  }
  to->set_output(true).set_dim(dims).set_stride(strides);
  pack[to] = out.data_ptr();
  check_fe(g.validate(), "validate");
  check_fe(g.build_operation_graph(handle), "build_operation_graph");
  check_fe(g.create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::B, fe::HeurMode_t::FALLBACK}),
           "create_execution_plans");
  check_fe(g.check_support(handle), "check_support");
  TORCH_CHECK(fe::detail::set_stream(handle, c10::cuda::getCurrentCUDAStream().stream()) == CUDNN_STATUS_SUCCESS,
              "library_choices_bench: cudnnSetStream failed");
  std::vector<Candidate> cands;
  for (int64_t i = 0; i < g.get_execution_plan_count(); ++i) {
    Candidate c;
    (void)g.get_plan_name_at_index(i, c.name);
    int64_t workspace_size = 0;
    if (g.build_plan_at_index(handle, i).is_good() && g.get_workspace_size_plan_at_index(i, workspace_size).is_good()) {
      const auto workspace = at::empty({std::max<int64_t>(workspace_size, 1)}, o16.dtype(at::kByte));
      if (g.execute_plan_at_index(handle, pack, workspace.data_ptr(), i).is_good())
        c.ms = time_ms([&] { (void)g.execute_plan_at_index(handle, pack, workspace.data_ptr(), i); });
    }
    cands.push_back(c);
  }
  print_line(fp8 ? "attention fp8 (aten_ms: bf16 SDPA)" : "attention bf16", c10::str("B ", b, " H ", h, " S ", s,
             " Dh ", d), 4.0 * b * h * s * s * d, aten, cands);
}

void attention_all(int64_t tokens) {
  fe::cudnn_dlhandle = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_NOLOAD);
  if (fe::cudnn_dlhandle == nullptr) fe::cudnn_dlhandle = dlopen("libcudnn.so.9", RTLD_NOW);
  TORCH_CHECK(fe::cudnn_dlhandle, "library_choices_bench: libcudnn.so.9 could not be opened");
  cudnnHandle_t handle = nullptr;
  TORCH_CHECK(fe::detail::create_handle(&handle) == CUDNN_STATUS_SUCCESS, "library_choices_bench: cudnnCreate");
  for (bool fp8 : {false, true})
    for (int64_t d : {64, 128}) attention_plans(handle, fp8, 2, 32, tokens, d);
}
#endif

}  // namespace

int main(int argc, char** argv) try {
  const auto opt = ltxmps::bench::parse_options(argc, argv, {{"iters", "10"}, {"tokens", "6144"}}, {{"iters", "2"}},
                                                "library_choices_bench.cpp");
  g_iters = static_cast<int>(ltxmps::bench::option_int(opt, "iters"));
  const int64_t tokens = ltxmps::bench::option_int(opt, "tokens"), n = 2 * tokens;  // the CFG batch's rows
  TORCH_CHECK(at::cuda::is_available(), "library_choices_bench: no CUDA device");
  for (const int64_t dim : {2048, 4096}) {
    const auto name = [&](const char* what) { return c10::str(dim == 2048 ? "2B " : "13B ", what); };
    linear_algorithms(name("attention projection").c_str(), n, dim, dim, false);
    linear_algorithms(name("ff.net.0 (GELU epilogue)").c_str(), n, dim, 4 * dim, true);
    linear_algorithms(name("ff.net.2").c_str(), n, 4 * dim, dim, false);
  }
#ifdef LTXMPS_BENCH_WITH_CUDNN_FRONTEND
  attention_all(tokens);
#else
  std::cerr << "library_choices_bench: built without the cuDNN frontend: the attention part is skipped\n";
#endif
  return 0;
} catch (const ltxmps::bench::BadArgument& e) {
  std::cerr << "library_choices_bench: " << e.what() << "\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "library_choices_bench: " << e.what() << "\n";
  return 1;
}
