#include "robustness_support.hpp"

#include <zlib.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace robustness {

using namespace ltxmps::pipeline;

fs::path fresh_dir(const std::string& name) {
  const char* env = std::getenv("LTXMPS_TEST_DATA");
  const fs::path root = env && *env ? fs::path(env) : fs::temp_directory_path() / "ltxmps_test_data";
  const auto dir = root / "robustness" / name;
  remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void write_bytes(const fs::path& file, const std::string& bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

std::map<std::string, std::string> snapshot(const fs::path& root) {
  std::map<std::string, std::string> out;
  struct stat st {};
  if (::lstat(root.c_str(), &st) != 0) return {{"", "absent"}};
  if (!S_ISDIR(st.st_mode)) return {{"", S_ISREG(st.st_mode) ? read_bytes(root) : std::string("special")}};
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    const auto rel = fs::relative(e.path(), root).string();
    out[rel] = e.is_regular_file() ? read_bytes(e.path()) : std::string(e.is_directory() ? "<dir>" : "<special>");
  }
  return out;
}

std::vector<std::string> temporaries_in(const fs::path& dir) {
  // Polled while a child writes: entries may vanish between listing and reading, so errors end the walk.
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (name.find(".partial") != std::string::npos || name.find(".tmp-") != std::string::npos ||
        name.find(".ltxmps-probe") != std::string::npos)
      out.push_back(it->path().string());
  }
  return out;
}

Run run_cli(const std::vector<std::string>& args, const RunOptions& options) {
  const auto dir = options.dir.empty() ? fs::current_path() : options.dir;
  const auto out_file = dir / ".stdout", err_file = dir / ".stderr";
  std::vector<std::string> argv_text{LTXMPS_CLI_PATH};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The environment: ours, with the overrides applied.
  std::vector<std::string> env_text;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    if (!options.env.count(entry.substr(0, entry.find('=')))) env_text.push_back(entry);
  }
  for (const auto& [k, v] : options.env)
    if (!v.empty()) env_text.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_text) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addchdir_np(&actions, dir.c_str());
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error(std::string("cannot start ltxmps: ") + std::strerror(rc));

  Run r;
  const auto start = std::chrono::steady_clock::now();
  bool calling = static_cast<bool>(options.while_running);
  int status = 0;
  for (;;) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (calling) calling = !options.while_running(pid);
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > options.timeout_s) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? -WTERMSIG(status) : -1000;
  r.out = read_bytes(out_file);
  r.err = read_bytes(err_file);
  fs::remove(out_file);
  fs::remove(err_file);
  return r;
}

// ---- tiny models

namespace {

using Named = std::vector<std::pair<std::string, at::Tensor>>;

// Random weights of the shapes a from_weights() asks for, recorded for writing; `poison` gets a NaN.
struct Recorder {
  at::Generator generator = at::detail::createCPUGenerator(17);
  std::string poison;
  Named weights;
  at::Tensor operator()(const std::string& name, const std::vector<int64_t>& shape) {
    auto t = at::randn(shape, generator).mul(0.2);
    if (name == poison) t.view(-1)[0] = std::numeric_limits<float>::quiet_NaN();
    weights.emplace_back(name, t);
    return t;
  }
  void check_poisoned() const {
    if (poison.empty()) return;
    for (const auto& [n, t] : weights)
      if (n == poison) return;
    throw std::runtime_error("no weight named " + poison);
  }
};

void write_json(const fs::path& file, const nlohmann::json& json) { write_bytes(file, json.dump(2)); }

}  // namespace

nlohmann::json tiny_transformer_config() {
  return {{"_class_name", "LTXVideoTransformer3DModel"},
          {"in_channels", 8}, {"out_channels", 8}, {"patch_size", 1}, {"patch_size_t", 1},
          {"num_attention_heads", 2}, {"attention_head_dim", 8}, {"cross_attention_dim", 16},
          {"num_layers", 1}, {"caption_channels", 16}};
}

void write_transformer(const fs::path& dir, const std::string& poison) {
  fs::create_directories(dir);
  const auto json = tiny_transformer_config();
  Recorder r;
  r.poison = poison;
  TransformerModel::from_weights(TransformerConfig::from_json(json), {}, std::ref(r));
  r.check_poisoned();
  write_json(dir / "config.json", json);
  save_safetensors(dir / "diffusion_pytorch_model.safetensors", r.weights);
}

nlohmann::json tiny_vae_config() {
  return {{"_class_name", "AutoencoderKLLTXVideo"},
          {"latent_channels", 8},
          {"block_out_channels", {16, 16, 16, 16}},
          {"decoder_block_out_channels", {16, 16, 16, 16}},
          {"layers_per_block", {1, 1, 1, 1, 1}},
          {"decoder_layers_per_block", {1, 1, 1, 1, 1}},
          {"spatio_temporal_scaling", {true, true, true, false}},
          {"decoder_spatio_temporal_scaling", {true, true, true, false}},
          {"decoder_inject_noise", {false, false, false, false, false}},
          {"upsample_residual", {false, false, false, false}},
          {"upsample_factor", {1, 1, 1, 1}},
          {"timestep_conditioning", false},
          {"patch_size", 4},
          {"patch_size_t", 1}};
}

void write_vae(const fs::path& dir, const std::string& poison) {
  fs::create_directories(dir);
  const auto json = tiny_vae_config();
  Recorder r;
  r.poison = poison;
  VaeModel::from_weights(VaeConfig::from_json(json), {}, std::ref(r));
  r.check_poisoned();
  write_json(dir / "config.json", json);
  save_safetensors(dir / "diffusion_pytorch_model.safetensors", r.weights);
}

nlohmann::json tiny_t5_config() {
  return {{"vocab_size", 400}, {"d_model", 32}, {"d_kv", 8}, {"d_ff", 64}, {"num_layers", 2}, {"num_heads", 4},
          {"relative_attention_num_buckets", 8}, {"relative_attention_max_distance", 16},
          {"feed_forward_proj", "relu"}, {"layer_norm_epsilon", 1e-6}};
}

void write_t5(const fs::path& dir, const std::string& poison) {
  fs::create_directories(dir);
  const auto json = tiny_t5_config();
  Recorder r;
  r.poison = poison;
  T5EncoderModel::from_weights(T5Config::from_json(json), {},
                               [&](const std::string& name, const std::vector<int64_t>& shape, at::ScalarType) {
                                 return r(name, shape);
                               });
  r.check_poisoned();
  write_json(dir / "config.json", json);
  save_safetensors(dir / "model.safetensors", r.weights);
}

fs::path tokenizer_dir() {
  const char* env = std::getenv("LTXMPS_TEST_DATA");
  const fs::path root = env && *env ? fs::path(env) : fs::temp_directory_path() / "ltxmps_test_data";
  return root / "robustness" / "tokenizer";
}

void write_transformer_inputs(const fs::path& file, float hidden_value) {
  // 2 x 2 x 2 latent tokens of 8 channels, a caption of 3 tokens of 16 channels.
  save_safetensors(file, {{"hidden_states", at::full({1, 8, 8}, hidden_value)},
                          {"encoder_hidden_states", at::full({1, 3, 16}, 0.1f)},
                          {"timestep", at::full({1}, 500.0f)}});
}

void write_vae_encode_inputs(const fs::path& file, float value) {
  save_safetensors(file, {{"sample", at::full({1, 3, 9, 64, 64}, value)}});
}

void write_vae_decode_inputs(const fs::path& file, float value) {
  save_safetensors(file, {{"latents", at::full({1, 8, 2, 2, 2}, value)}});
}

void write_t5_inputs(const fs::path& file) {
  save_safetensors(file, {{"input_ids", at::tensor(std::vector<int64_t>{5, 17, 42, 1}).view({1, 4})}});
}

// ---- PNG

namespace {

void put_be32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

void put_chunk(std::string& out, const char* type, const std::string& data) {
  put_be32(out, static_cast<uint32_t>(data.size()));
  std::string body = std::string(type, 4) + data;
  out += body;
  put_be32(out, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()))));
}

}  // namespace

std::string png_bytes(uint32_t width, uint32_t height, uint32_t declared_width, uint32_t declared_height) {
  std::string out("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  put_be32(ihdr, declared_width ? declared_width : width);
  put_be32(ihdr, declared_height ? declared_height : height);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB, deflate, filter 0, no interlace
  put_chunk(out, "IHDR", ihdr);
  std::string raw;
  for (uint32_t y = 0; y < height; ++y) {
    raw.push_back('\0');  // filter: none
    for (uint32_t x = 0; x < width; ++x) raw += std::string{static_cast<char>(x * 7), static_cast<char>(y * 5), '\x40'};
  }
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::string packed(size, '\0');
  compress(reinterpret_cast<Bytef*>(packed.data()), &size, reinterpret_cast<const Bytef*>(raw.data()),
           static_cast<uLong>(raw.size()));
  packed.resize(size);
  put_chunk(out, "IDAT", packed);
  put_chunk(out, "IEND", "");
  return out;
}

void make_fifo(const fs::path& path) {
  if (::mkfifo(path.c_str(), 0600) != 0) throw std::runtime_error("mkfifo " + path.string() + ": " + std::strerror(errno));
}

}  // namespace robustness
