// The seed job end to end under a device memory budget (issue 13): LTX-Video 0.9.7 13B + T5-XXL + the
// timestep-conditioned fp32 VAE, 512x768x121, tiled decode, generate (and object removal), each phase's peak
// device memory and seconds. Unlike the other benches it goes through files and the real loader: it writes a
// diffusers LTXConditionPipeline folder with random weights (transformer/, text_encoder/ with a small SentencePiece
// tokenizer/, vae/, scheduler/), plans the weights for the request under --max-gpu-memory (plan_model_weights():
// the budget may stream the transformer and T5 and switch model-level CPU offload on, Note [Weight budget]), loads
// with load_ltx_model() (mmap -> pinned host memory) and runs generate() / remove_object() with T5 encoding the
// prompts. Prints one JSON line: the plan's decisions, the loading's host memory (VmHWM and sampled RssAnon /
// RssFile / RssShmem peaks of /proc/self/status beside the weights' bytes) and, per job, each phase's seconds and
// peak allocated device memory (the peak is reset when a phase ends, at the pipeline's progress reports).
//
// Weights: every tensor is a window of one N(0, 0.02²) pool (twice the largest weight) drawn on --device (Note
// [Random bench weights] in bench_support.hpp) at an offset derived from its name, written in bf16 one tensor at a
// time; no component is ever whole in memory while the files are written. The peaks do not depend on the step count, so 2 steps are the default.
//
//   seed_job_bench [--device cuda] [--max-gpu-memory 8GiB] [--height 512] [--width 768] [--frames 121]
//                  [--steps 2] [--jobs generate,remove] [--framewise 1] [--dir PATH] [--keep 0] [--smoke]
// --framewise 1 decodes in temporal tiles as well as spatial ones (spatial tiles alone peak at about 12 GiB for
// the fp32 0.9.7 VAE at this size: docs/benchmarks.md); the weight plan then leaves the VAE out (job_request()). --dir: where the model folder is written (default: a new
// folder in the temporary directory, removed at the end unless --keep 1; the 13B job writes about 37 GB).
// --smoke: tiny configs (2-layer transformer, 2-layer T5, the narrow 0.9.7 VAE) on the CPU at 64x64x9, seconds.
// Built as ltxmps_seed_job_bench (benchmarks/CMakeLists.txt).

#include "bench_configs.hpp"
#include "bench_support.hpp"

#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/memory_estimate.hpp"
#include "ltxmps_pipeline/model.hpp"
#include "ltxmps_pipeline/pipeline.hpp"
#include "ltxmps_pipeline/removal.hpp"
#include "ltxmps_pipeline/runtime.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/weight_plan.hpp"

#include "ltxmps/memory.hpp"
#include "ltxmps/plan.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace ltxmps::pipeline;
using Json = nlohmann::ordered_json;
namespace fs = std::filesystem;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---------------------------------------------------------------------------------------------------
// The model folder

struct Shapes {
  TransformerConfig transformer;
  T5Config text_encoder;
  VaeConfig vae;
};

Shapes seed_shapes(bool smoke) {
  using namespace ltxmps::pipeline;
  Shapes s{ltx_13b_transformer_config(), t5_xxl_config(),
           smoke ? ltxmps::bench::vae_097_smoke_config(128) : ltx_097_vae_config()};
  if (smoke) {
    auto& t = s.transformer;
    t.num_layers = 2, t.num_attention_heads = 4, t.attention_head_dim = 8;
    t.cross_attention_dim = t.inner_dim();
    auto& e = s.text_encoder;
    e.vocab_size = 128, e.d_model = 32, e.d_kv = 8, e.num_heads = 4, e.d_ff = 64, e.num_layers = 2;
    t.caption_channels = e.d_model;
  }
  return s;
}

using Shapelist = std::vector<std::pair<std::string, std::vector<int64_t>>>;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

// The names and shapes a component's loader asks for: its own from_weights() on the meta device.
template <typename Build>
Shapelist weight_shapes(Build&& build) {
  Shapelist out;
  build([&](const std::string& name, const std::vector<int64_t>& shape) {
    out.emplace_back(name, shape);
    return at::empty(shape, at::TensorOptions().device(c10::kMeta));
  });
  return out;
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Every weight a window of one bf16 pool on the device, twice the largest weight; the offset comes from the name,
// so that the tensors differ.
std::vector<Named> windows(const std::vector<const Shapelist*>& components, const c10::Device& device) {
  std::vector<Named> out;
  int64_t largest = 1;
  for (const auto* c : components)
    for (const auto& [name, shape] : *c) largest = std::max(largest, numel_of(shape));
  at::manual_seed(0);
  const auto pool = at::randn({2 * largest}, at::TensorOptions().device(device).dtype(at::kBFloat16)).mul_(0.02);
  for (const auto* c : components) {
    Named named;
    for (const auto& [name, shape] : *c) {
      const int64_t room = pool.numel() - numel_of(shape);
      const auto offset = static_cast<int64_t>(std::hash<std::string>{}(name) % static_cast<size_t>(room + 1));
      named.emplace_back(name, pool.narrow(0, offset, numel_of(shape)).view(shape));
    }
    out.push_back(std::move(named));
  }
  return out;
}

void write_json(const fs::path& file, const Json& j) {
  fs::create_directories(file.parent_path());
  std::ofstream(file) << j.dump(2) << "\n";
}

// A SentencePiece unigram model (protobuf wire format, field by field: `pieces = 1` of {piece = 1, score = 2,
// type = 3}, every spec at its defaults): <pad>, </s>, <unk>, then "▁" and the lower-case letters.
std::string spiece_model() {
  auto varint = [](uint64_t v) {
    std::string out;
    for (; v >= 0x80; v >>= 7) out += static_cast<char>((v & 0x7F) | 0x80);
    return out + static_cast<char>(v);
  };
  auto field = [&](int number, int wire, const std::string& bytes) {
    return static_cast<char>(number << 3 | wire) + (wire == 2 ? varint(bytes.size()) : "") + bytes;
  };
  auto entry = [&](const std::string& text, float score, int type) {
    std::string score_bytes(4, '\0');
    std::memcpy(score_bytes.data(), &score, 4);
    return field(1, 2, field(1, 2, text) + field(2, 5, score_bytes) + field(3, 0, varint(type)));
  };
  std::string model = entry("<pad>", 0, 3) + entry("</s>", 0, 3) + entry("<unk>", 0, 2) + entry("\xE2\x96\x81", -2, 1);
  for (char c = 'a'; c <= 'z'; ++c) model += entry(std::string(1, c), -3, 1);
  return model;
}

Json transformer_json(const TransformerConfig& c) {
  return {{"_class_name", "LTXVideoTransformer3DModel"}, {"in_channels", c.in_channels},
          {"out_channels", c.out_channels},             {"num_attention_heads", c.num_attention_heads},
          {"attention_head_dim", c.attention_head_dim}, {"cross_attention_dim", c.cross_attention_dim},
          {"num_layers", c.num_layers},                 {"caption_channels", c.caption_channels}};
}

Json t5_json(const T5Config& c) {
  return {{"vocab_size", c.vocab_size}, {"d_model", c.d_model},     {"d_kv", c.d_kv},
          {"d_ff", c.d_ff},             {"num_layers", c.num_layers}, {"num_heads", c.num_heads},
          {"feed_forward_proj", c.feed_forward_proj}};
}

Json vae_json(const VaeConfig& c) {
  return {{"_class_name", "AutoencoderKLLTXVideo"},
          {"latent_channels", c.latent_channels},
          {"block_out_channels", c.block_out_channels},
          {"down_block_types", c.down_block_types},
          {"decoder_block_out_channels", c.decoder_block_out_channels},
          {"layers_per_block", c.layers_per_block},
          {"decoder_layers_per_block", c.decoder_layers_per_block},
          {"spatio_temporal_scaling", c.spatio_temporal_scaling},
          {"decoder_spatio_temporal_scaling", c.decoder_spatio_temporal_scaling},
          {"decoder_inject_noise", c.decoder_inject_noise},
          {"downsample_type", c.downsample_type},
          {"upsample_residual", c.upsample_residual},
          {"upsample_factor", c.upsample_factor},
          {"timestep_conditioning", c.timestep_conditioning},
          {"spatial_compression_ratio", c.spatial_compression()},
          {"temporal_compression_ratio", c.temporal_compression()}};
}

// Writes the folder; returns the bytes of the weight files.
int64_t write_model_folder(const fs::path& root, const Shapes& s, const c10::Device& device) {
  auto meta = [](auto runtime) {
    runtime.device = c10::kMeta;
    return runtime;
  };
  const auto transformer_shapes = weight_shapes([&](const auto& source) {
    TransformerModel::from_weights(s.transformer, meta(TransformerRuntime{}), source);
  });
  const auto text_encoder_shapes = weight_shapes([&](const auto& source) {
    T5EncoderModel::from_weights(s.text_encoder, meta(T5Runtime{}),
                                 [&](const std::string& n, const std::vector<int64_t>& shape, at::ScalarType) {
                                   return source(n, shape);
                                 });
  });
  const auto vae_shapes =
      weight_shapes([&](const auto& source) { VaeModel::from_weights(s.vae, meta(VaeRuntime{}), source); });
  const auto named = windows({&transformer_shapes, &text_encoder_shapes, &vae_shapes}, device);
  const auto &transformer = named[0], &text_encoder = named[1], &vae = named[2];
  for (const char* component : {"transformer", "text_encoder", "vae"}) fs::create_directories(root / component);
  save_safetensors(root / "transformer" / "diffusion_pytorch_model.safetensors", transformer);
  save_safetensors(root / "text_encoder" / "model.safetensors", text_encoder);
  save_safetensors(root / "vae" / "diffusion_pytorch_model.safetensors", vae);
  write_json(root / "model_index.json", {{"_class_name", "LTXConditionPipeline"}});
  write_json(root / "transformer" / "config.json", transformer_json(s.transformer));
  write_json(root / "text_encoder" / "config.json", t5_json(s.text_encoder));
  write_json(root / "vae" / "config.json", vae_json(s.vae));
  write_json(root / "scheduler" / "scheduler_config.json",  // the 0.9.7 release's
             {{"_class_name", "FlowMatchEulerDiscreteScheduler"}, {"base_image_seq_len", 1024}, {"base_shift", 0.95},
              {"max_image_seq_len", 4096}, {"max_shift", 2.05}, {"num_train_timesteps", 1000}, {"shift", 1.0},
              {"shift_terminal", 0.1}, {"use_dynamic_shifting", false}, {"time_shift_type", "exponential"}});
  fs::create_directories(root / "tokenizer");
  std::ofstream(root / "tokenizer" / "spiece.model", std::ios::binary) << spiece_model();
  int64_t bytes = 0;
  for (const auto* part : {&transformer, &text_encoder, &vae})
    for (const auto& [name, t] : *part) bytes += static_cast<int64_t>(t.nbytes());
  return bytes;
}

// ---------------------------------------------------------------------------------------------------
// Host memory while loading

// Fields of /proc/self/status in bytes (0 where absent: not Linux).
std::map<std::string, int64_t> proc_status() {
  std::map<std::string, int64_t> out;
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos || line.find(" kB") == std::string::npos) continue;
    out[line.substr(0, colon)] = std::stoll(line.substr(colon + 1)) * 1024;
  }
  return out;
}

// Samples RssAnon, RssFile and RssShmem every 2 ms while alive; VmHWM is reset at the start (clear_refs 5), so
// that it covers the loading alone.
class HostMemorySampler {
 public:
  HostMemorySampler() {
    const auto status = proc_status();
    before_ = status.count("VmRSS") ? status.at("VmRSS") : 0;
    std::ofstream("/proc/self/clear_refs") << "5";
    thread_ = std::thread([this] {
      while (!stop_) {
        sample();
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
  }
  ~HostMemorySampler() { finish(); }
  Json finish() {
    if (!stop_.exchange(true)) thread_.join();
    sample();
    const auto status = proc_status();
    auto get = [&](const char* key) { return status.count(key) ? status.at(key) : int64_t{0}; };
    return {{"vm_rss_before_bytes", before_},     {"vm_hwm_bytes", get("VmHWM")},       {"rss_anon_peak_bytes", peak_["RssAnon"]},
            {"rss_file_peak_bytes", peak_["RssFile"]}, {"rss_shmem_peak_bytes", peak_["RssShmem"]},
            {"vm_rss_after_bytes", get("VmRSS")},  {"vm_pin_after_bytes", get("VmPin")},
            {"vm_lck_after_bytes", get("VmLck")}};
  }

 private:
  void sample() {
    for (const auto& [key, bytes] : proc_status())
      if (key.rfind("Rss", 0) == 0) peak_[key] = std::max(peak_[key], bytes);
  }
  std::atomic<bool> stop_{false};
  int64_t before_ = 0;
  std::map<std::string, int64_t> peak_;
  std::thread thread_;
};

// Bytes of the model's weights held in host memory (streamed blocks, offloaded components) and on the device.
template <typename Model>
void count_weights(Model& model, int64_t& host, int64_t& device) {
  for_each_tensor(model, [&](at::Tensor& t) {
    if (t.defined()) (t.is_cpu() ? host : device) += static_cast<int64_t>(t.nbytes());
  });
}

// ---------------------------------------------------------------------------------------------------
// Phases

// Splits a run into the pipeline's stages at its progress reports: a stage ends at its last report (done ==
// total) and starts where the one before ended, so the denoising phase holds the latents' preparation. The
// device is synchronized and the allocator's peak read and reset at each end.
class PhaseMeter {
 public:
  explicit PhaseMeter(c10::Device device) : device_(device) {
    ltxmps::synchronize(device_);
    ltxmps::reset_peak_memory(device_);
  }
  ProgressCallback callback() {
    return [this](const Progress& p) {
      if (p.done < p.total) return;
      ltxmps::synchronize(device_);
      const double t = seconds_since(start_);
      const auto peak = ltxmps::memory_stats(device_).peak_allocated;
      phases_[p.stage] = Json{{"seconds", t - last_end_}, {"peak_bytes", peak ? Json(*peak) : Json(nullptr)}};
      if (peak) max_peak_ = std::max(max_peak_, *peak);
      last_end_ = t;
      ltxmps::reset_peak_memory(device_);
    };
  }
  Json finish() {
    ltxmps::synchronize(device_);
    return {{"phases", phases_}, {"total_seconds", seconds_since(start_)}, {"max_phase_peak_bytes", max_peak_}};
  }

 private:
  c10::Device device_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  double last_end_ = 0;
  int64_t max_peak_ = 0;
  Json phases_ = Json::object();
};

// ---------------------------------------------------------------------------------------------------
// The jobs

struct Args {
  ltxmps::bench::Options opt;
  bool smoke = false;
  int64_t num(const char* key) const { return ltxmps::bench::option_int(opt, key); }
};

Args parse_args(int argc, char** argv) {
  Args a;
  a.opt = ltxmps::bench::parse_options(
      argc, argv,
      {{"device", "cuda"}, {"max-gpu-memory", "8GiB"}, {"height", "512"}, {"width", "768"}, {"frames", "121"},
       {"steps", "2"}, {"jobs", "generate,remove"}, {"framewise", "1"}, {"dir", ""}, {"keep", "0"}},
      {{"device", "cpu"}, {"height", "64"}, {"width", "64"}, {"frames", "9"}}, "benchmarks/seed_job_bench.cpp");
  for (int i = 1; i < argc; ++i) a.smoke = a.smoke || std::string(argv[i]) == "--smoke";
  return a;
}

// The request the weights are planned for. The estimate knows spatial VAE tiles only (Note [Request memory
// estimate]): with --framewise 1 (temporal tiles for the decode and, as in diffusers, the encode) the VAE's phases
// are left out of the plan, which would otherwise see the spatially tiled fp32 decode (about 12 GiB) over an 8 GiB
// budget and shrink the transformer's ring for nothing; their measured peaks are reported all the same.
MemoryRequest job_request(const Args& a, const std::string& job) {
  MemoryRequest need;
  need.batch = 1, need.frames = a.num("frames"), need.height = a.num("height"), need.width = a.num("width");
  need.text_tokens = 256, need.guidance = true, need.encode_text = true;
  need.decode = a.num("framewise") == 0;
  if (job == "remove") need.release_text_encoder = false, need.encode_frames = need.decode ? a.num("frames") : 0;
  return need;
}

Json plan_json(const ltxmps::ExecutionPlan& plan, const MemoryEstimate& estimate) {
  const auto& w = plan.weights;
  Json phases = Json::object();
  for (const auto& p : estimate.phases) phases[p.name] = p.total_bytes();
  Json reasons = Json::array();
  for (const auto& d : plan.diagnostics)
    if (d.rule.rfind("weights.", 0) == 0) reasons.push_back(std::string(d.rule) + ": " + d.message);
  return {{"budget_bytes", w.budget},
          {"offload", plan.offload.enabled},
          {"offload_by_budget", w.offload_by_budget},
          {"transformer", ltxmps::to_string(w.transformer.mode)},
          {"blocks_ahead", w.transformer.blocks_ahead},
          {"text_encoder", ltxmps::to_string(w.text_encoder.mode)},
          {"vae", ltxmps::to_string(w.vae.mode)},
          {"planned_peak_bytes", w.peak_bytes},
          {"planned_peak_phase", w.peak_phase},
          {"fits", w.fits},
          {"estimate_phase_bytes", phases},
          {"reasons", reasons}};
}

Json run_job(const Args& a, const std::string& job, const fs::path& root, int64_t file_bytes) {
  ltxmps::LoaderSettings settings;
  settings.device = a.opt.at("device");
  settings.max_device_memory = ltxmps::parse_memory_size(a.opt.at("max-gpu-memory"), "--max-gpu-memory");
  settings.vae_tiling = true;
  auto plan = ltxmps::resolve(settings);
  const auto folder = inspect_ltx_folder(root);
  const auto t5 = read_text_encoder_config(root);
  const auto need = job_request(a, job);
  plan_model_weights(plan, folder.transformer, folder.vae, t5, need);
  const auto estimate = estimate_request_memory(folder.transformer, folder.vae, t5, plan, need);
  Json out{{"job", job}, {"plan", plan_json(plan, estimate)}};
  out["plan"]["vae_phases_planned"] = need.decode;

  const auto load_start = std::chrono::steady_clock::now();
  HostMemorySampler host;
  auto model = load_ltx_model(folder, plan);
  ltxmps::synchronize(plan.device);
  Json load = host.finish();
  load["seconds"] = seconds_since(load_start);
  load["weight_file_bytes"] = file_bytes;
  int64_t on_host = 0, on_device = 0;
  count_weights(model.transformer, on_host, on_device);
  count_weights(model.vae, on_host, on_device);
  if (model.text_encoder) count_weights(*model.text_encoder, on_host, on_device);
  load["weights_in_host_memory_bytes"] = on_host;
  load["weights_on_device_bytes"] = on_device;
  load["vm_hwm_over_weights"] = static_cast<double>(load["vm_hwm_bytes"].get<int64_t>()) / static_cast<double>(file_bytes);
  out["load"] = load;
  if (a.num("framewise") != 0) model.vae.tiling.use_framewise_decoding = true;

  const int64_t f = a.num("frames"), h = a.num("height"), w = a.num("width");
  PhaseMeter meter(plan.device);
  if (job == "remove") {
    RemovalRequest rr;
    rr.video = at::rand({f, 3, h, w});
    rr.mask = at::zeros({f, 1, h, w});
    rr.mask.slice(2, h / 3, 2 * h / 3).slice(3, w / 3, 2 * w / 3).fill_(1);
    rr.num_inference_steps = a.num("steps");
    rr.decode_timestep = 0.05;
    remove_object(model, rr, plan, ltxmps::null_sink(), meter.callback());
  } else {
    GenerateRequest r;
    r.kind = choose_pipeline(model, false, false);
    r.prompts = {"a red fox runs through fresh snow at dawn"};
    r.height = h, r.width = w, r.num_frames = f;
    r.num_inference_steps = a.num("steps");
    r.decode_timestep = 0.05;
    r.decode_noise_scale = 0.025;
    generate(model, r, plan, ltxmps::null_sink(), meter.callback());
  }
  out.update(meter.finish());
  const auto budget = static_cast<int64_t>(settings.max_device_memory);
  out["within_budget"] = plan.device.is_cuda() ? Json(out["max_phase_peak_bytes"].get<int64_t>() <= budget) : Json(nullptr);
  return out;
}

std::vector<std::string> split_jobs(const std::string& text) {
  std::vector<std::string> jobs;
  std::stringstream in(text);
  for (std::string job; std::getline(in, job, ',');) {
    if (job != "generate" && job != "remove")
      throw ltxmps::bench::BadArgument("--jobs: '" + job + "' is not generate or remove");
    jobs.push_back(job);
  }
  return jobs;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  const auto jobs = split_jobs(a.opt.at("jobs"));
  const c10::Device device(a.opt.at("device"));
  const fs::path root = a.opt.at("dir").empty()
                            ? fs::temp_directory_path() / ("ltxmps_seed_job_" + std::to_string(::getpid()))
                            : fs::path(a.opt.at("dir"));
  const auto write_start = std::chrono::steady_clock::now();
  const int64_t file_bytes = write_model_folder(root, seed_shapes(a.smoke), device);
  ltxmps::release_memory(device);
  Json line{{"bench", "seed_job"},
            {"device", device.str()},
            {"smoke", a.smoke},
            {"size", {a.num("frames"), a.num("height"), a.num("width")}},
            {"steps", a.num("steps")},
            {"vae_tiles", a.num("framewise") != 0 ? "spatial+framewise" : "spatial"},
            {"max_gpu_memory", a.opt.at("max-gpu-memory")},
            {"weight_file_bytes", file_bytes},
            {"write_seconds", seconds_since(write_start)},
            {"jobs", Json::array()}};
  for (const auto& job : jobs) line["jobs"].push_back(run_job(a, job, root, file_bytes));
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
  // Note [No std::filesystem::remove_all] (file_tree.hpp).
  if (a.opt.at("keep") == "0") (void)ltxmps::pipeline::remove_tree(root);
  return 0;
} catch (const ltxmps::bench::BadArgument& e) {
  std::cerr << "seed_job_bench: " << e.what() << "\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "seed_job_bench: " << e.what() << "\n";
  return 1;
}
