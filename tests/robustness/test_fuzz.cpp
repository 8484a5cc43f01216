// Fixed-seed fuzzing of the four readers that take untrusted files: safetensors, config.json (transformer, VAE,
// T5, scheduler), PNG and the prompt cache. Every generated input must either be accepted or rejected with
// ltxmps::Error; any other exception fails the test (the input is kept on disk), and a crash or a sanitizer
// report fails the suite. Each reader gets LTXMPS_FUZZ_ITERATIONS inputs (default 10,000) unless its time cap
// LTXMPS_FUZZ_SECONDS (default 30 s) comes first, which keeps the suite inside CI's budget under ASan on two cores.
#include "robustness_support.hpp"

#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/scheduler.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include <zlib.h>

#include <random>

#include <unistd.h>
#include <set>

#include "catch_compat.hpp"

using namespace robustness;
using namespace ltxmps::pipeline;

namespace {

using Rng = std::mt19937_64;

size_t pick(Rng& rng, size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); }

int64_t env_or(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::stoll(v) : fallback;
}

const char* const kNumbers[] = {"0", "1", "-1", "2", "1.9", "2.0", "7", "64", "65", "4611686018427387904",
                                "9223372036854775807", "-9223372036854775808", "18446744073709551615",
                                "18446744073709551616", "1e308", "1e-308", "NaN", "null", "true", "\"x\"", "[]", "{}",
                                "[1, 2]", "4294967296", "100000", "16384", "16385"};

// Byte-level mutations shared by all readers: flips, overwrites, insertions, deletions, truncation, splices.
void mutate_bytes(std::string& s, Rng& rng) {
  const int n = 1 + static_cast<int>(pick(rng, 4));
  for (int k = 0; k < n && !s.empty(); ++k) {
    switch (pick(rng, 7)) {
      case 0: s[pick(rng, s.size())] ^= static_cast<char>(1u << pick(rng, 8)); break;
      case 1: s[pick(rng, s.size())] = static_cast<char>(pick(rng, 256)); break;
      case 2: s.insert(pick(rng, s.size() + 1), std::string(1 + pick(rng, 16), static_cast<char>(pick(rng, 256)))); break;
      case 3: {
        const size_t at = pick(rng, s.size());
        s.erase(at, 1 + pick(rng, std::min<size_t>(64, s.size() - at)));
        break;
      }
      case 4: s.resize(pick(rng, s.size() + 1)); break;
      case 5: {
        const size_t from = pick(rng, s.size()), len = 1 + pick(rng, std::min<size_t>(32, s.size() - from));
        s.insert(pick(rng, s.size() + 1), s.substr(from, len));
        break;
      }
      default: {
        const size_t at = pick(rng, s.size());
        for (size_t i = at; i < std::min(s.size(), at + 8); ++i) s[i] = static_cast<char>(i % 2 ? 0xff : 0x00);
      }
    }
  }
}

// Replaces a random number or literal in JSON text by an interesting value.
void mutate_json_value(std::string& s, Rng& rng) {
  std::vector<size_t> starts;
  for (size_t i = 0; i < s.size(); ++i)
    if ((std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '-' || s[i] == 't' || s[i] == 'f' || s[i] == 'n' ||
         s[i] == '"') &&
        i > 0 && (s[i - 1] == ':' || s[i - 1] == ' ' || s[i - 1] == '[' || s[i - 1] == ','))
      starts.push_back(i);
  if (starts.empty()) return;
  const size_t at = starts[pick(rng, starts.size())];
  size_t end = at + 1;
  if (s[at] == '"') {
    end = s.find('"', at + 1);
    end = end == std::string::npos ? s.size() : end + 1;
  } else {
    while (end < s.size() && s[end] != ',' && s[end] != ']' && s[end] != '}' && s[end] != ' ') ++end;
  }
  s.replace(at, end - at, kNumbers[pick(rng, std::size(kNumbers))]);
}

// Inputs are written to memory-backed /dev/shm where there is one: tens of thousands of small writes and maps
// on a virtual disk otherwise dominate the run time.
fs::path scratch_dir(const std::string& reader) {
  std::error_code ec;
  if (!fs::is_directory("/dev/shm", ec)) return fresh_dir("fuzz_scratch_" + reader);
  const auto dir = fs::path("/dev/shm") / ("ltxmps_fuzz_" + std::to_string(::getpid()) + "_" + reader);
  fs::create_directories(dir);
  return dir;
}

struct Fuzz {
  Fuzz(std::string reader_, fs::path dir_) : reader(std::move(reader_)), dir(std::move(dir_)), scratch(scratch_dir(reader)) {}
  ~Fuzz() { remove_tree(scratch); }
  std::string reader;
  fs::path dir;      ///< where a failing input is kept
  fs::path scratch;  ///< where inputs are written
  int64_t iterations = env_or("LTXMPS_FUZZ_ITERATIONS", 10000);
  double seconds = static_cast<double>(env_or("LTXMPS_FUZZ_SECONDS", 30));

  // Runs `one(i)` until the iteration count or the time cap; `input(i)` gives the bytes to keep on failure.
  void run(const std::function<void(int64_t)>& one, const std::function<std::string()>& input) {
    const auto start = std::chrono::steady_clock::now();
    int64_t done = 0, rejected = 0;
    for (; done < iterations; ++done) {
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > seconds) break;
      try {
        one(done);
      } catch (const ltxmps::Error&) {
        ++rejected;
      } catch (const std::exception& e) {
        write_bytes(dir / ("failing_" + reader + ".bin"), input());
        FAIL(reader << " input " << done << " threw a non-ltxmps exception: " << e.what() << " (kept in "
                    << (dir / ("failing_" + reader + ".bin")).string() << ")");
      }
    }
    if (done < iterations) WARN(reader << ": the " << seconds << " s cap stopped the fuzzer after " << done << " inputs");
    INFO(reader << ": " << done << " inputs, " << rejected << " rejected");
    CHECK(rejected > done / 10);  // the mutations do reach the validation
    CHECK(rejected < done);       // and some inputs stay valid
  }
};

}  // namespace

TEST_CASE("fuzz: the safetensors reader", "[robustness][fuzz]") {
  Fuzz fuzz{"safetensors", fresh_dir("fuzz_safetensors")};
  const auto seed_file = fuzz.scratch / "seed.safetensors";
  save_safetensors(seed_file, {{"a", at::arange(12, at::kFloat).view({3, 4})}, {"b", at::arange(6, at::kLong)},
                               {"c", at::ones({2, 2}, at::kBool)}, {"d", at::zeros({0, 5}, at::kHalf)},
                               {"e", at::full({3}, 2.5, at::kBFloat16)}},
                   {{"format", "pt"}});
  const auto seed = read_bytes(seed_file);
  Rng rng(20261127);
  std::string bytes;
  const auto file = fuzz.scratch / "input.safetensors";
  fuzz.run(
      [&](int64_t) {
        bytes = seed;
        if (pick(rng, 2) == 0) {  // a JSON value of the header, the length field kept consistent
          uint64_t n = 0;
          for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(seed[i]);
          std::string header = seed.substr(8, n);
          mutate_json_value(header, rng);
          std::string length(8, '\0');
          for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
          bytes = length + header + seed.substr(8 + n);
        } else {
          mutate_bytes(bytes, rng);
        }
        write_bytes(file, bytes);
        const auto st = SafetensorsFile::open(file);
        for (const auto& t : st.tensors()) {
          st.load(t.name);
          st.load(t.name, at::TensorOptions().dtype(at::kFloat));
        }
      },
      [&] { return bytes; });
}

TEST_CASE("fuzz: the config readers", "[robustness][fuzz]") {
  Fuzz fuzz{"config", fresh_dir("fuzz_config")};
  nlohmann::json scheduler = {{"_class_name", "FlowMatchEulerDiscreteScheduler"}, {"shift", 1.0},
                              {"num_train_timesteps", 1000}, {"use_dynamic_shifting", false}};
  const std::vector<std::pair<std::function<void(const nlohmann::json&)>, std::string>> parsers = {
      {[](const nlohmann::json& j) { TransformerConfig::from_json(j); }, tiny_transformer_config().dump(1)},
      {[](const nlohmann::json& j) { VaeConfig::from_json(j); }, tiny_vae_config().dump(1)},
      {[](const nlohmann::json& j) { T5Config::from_json(j); }, tiny_t5_config().dump(1)},
      {[](const nlohmann::json& j) { FlowMatchSchedulerConfig::from_json(j); }, scheduler.dump(1)},
  };
  for (const auto& [parse, text] : parsers) parse(nlohmann::json::parse(text));  // the seeds are valid
  Rng rng(20261128);
  std::string text;
  fuzz.run(
      [&](int64_t i) {
        const auto& [parse, seed] = parsers[static_cast<size_t>(i) % parsers.size()];
        text = seed;
        for (int k = 0, n = 1 + static_cast<int>(pick(rng, 3)); k < n; ++k) mutate_json_value(text, rng);
        if (pick(rng, 4) == 0) mutate_bytes(text, rng);
        parse(ltxmps::pipeline::detail::parse_json_strict(text, "fuzz/config.json", ""));
      },
      [&] { return text; });
}

TEST_CASE("fuzz: the PNG reader", "[robustness][fuzz]") {
  Fuzz fuzz{"png", fresh_dir("fuzz_png")};
  const auto seed = png_bytes(5, 3);
  Rng rng(20261129);
  std::string bytes;
  const auto file = fuzz.scratch / "input.png";
  const auto fix_crc = [](std::string& s, size_t chunk) {  // chunk: offset of the length field
    if (chunk + 12 > s.size()) return;
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i) len = (len << 8) | static_cast<uint8_t>(s[chunk + i]);
    if (chunk + 12 + len > s.size()) return;
    const auto crc = crc32(0, reinterpret_cast<const Bytef*>(s.data() + chunk + 4), 4 + len);
    for (int i = 0; i < 4; ++i) s[chunk + 8 + len + i] = static_cast<char>((crc >> (24 - 8 * i)) & 0xff);
  };
  fuzz.run(
      [&](int64_t) {
        bytes = seed;
        switch (pick(rng, 3)) {
          case 0: {  // IHDR fields (width, height, depth, colour type, interlace) with a valid CRC
            const uint32_t sizes[] = {0, 1, 2, 5, 3, 16384, 16385, 100000, 0x7fffffff, 0xffffffff};
            for (int f = 0; f < 2; ++f) {
              const uint32_t v = pick(rng, 2) ? sizes[pick(rng, std::size(sizes))] : static_cast<uint32_t>(rng());
              for (int i = 0; i < 4; ++i) bytes[16 + 4 * f + i] = static_cast<char>((v >> (24 - 8 * i)) & 0xff);
            }
            if (pick(rng, 2)) bytes[24 + pick(rng, 5)] = static_cast<char>(pick(rng, 17));
            fix_crc(bytes, 8);
            break;
          }
          case 1: {  // IDAT content with a valid CRC, so the decompressor sees it
            const size_t idat = 8 + 25;
            std::string data = bytes.substr(idat + 8, bytes.size() - idat - 8 - 12 - 4);
            mutate_bytes(data, rng);
            std::string chunk;
            for (int i = 0; i < 4; ++i) chunk.push_back(static_cast<char>((data.size() >> (24 - 8 * i)) & 0xff));
            chunk += "IDAT" + data + std::string(4, '\0');
            bytes = bytes.substr(0, idat) + chunk + bytes.substr(bytes.size() - 12);
            fix_crc(bytes, idat);
            break;
          }
          default: mutate_bytes(bytes, rng);
        }
        write_bytes(file, bytes);
        read_png(file);
      },
      [&] { return bytes; });
}

TEST_CASE("fuzz: the prompt-cache reader", "[robustness][fuzz]") {
  Fuzz fuzz{"prompt_cache", fresh_dir("fuzz_prompt_cache")};
  Rng rng(20261130);
  const auto seed_file = fuzz.scratch / "seed.safetensors";
  save_prompt_cache(seed_file, {at::zeros({1, 4, 8}), at::ones({1, 4}, at::kBool), at::zeros({1, 4, 8}),
                                at::ones({1, 4}, at::kBool)});
  const auto seed = read_bytes(seed_file);
  const auto file = fuzz.scratch / "input.safetensors";
  std::string bytes;
  const char* names[] = {"prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                         "negative_prompt_attention_mask", "other"};
  const at::ScalarType dtypes[] = {at::kFloat, at::kHalf, at::kBFloat16, at::kBool, at::kLong, at::kByte};
  fuzz.run(
      [&](int64_t) {
        if (pick(rng, 3) == 0) {  // well-formed files with random names, shapes, dtypes and values
          std::vector<std::pair<std::string, at::Tensor>> tensors;
          std::set<std::string> used;
          for (int k = 0, n = 2 + static_cast<int>(pick(rng, 4)); k < n; ++k) {
            const std::string name = names[pick(rng, std::size(names))];
            if (!used.insert(name).second) continue;
            std::vector<int64_t> shape;
            for (size_t d = 0, dims = pick(rng, 5); d < dims; ++d) shape.push_back(static_cast<int64_t>(pick(rng, 4)));
            auto t = at::rand(shape).to(dtypes[pick(rng, std::size(dtypes))]);
            if (at::isFloatingType(t.scalar_type()) && t.numel() > 0 && pick(rng, 3) == 0)
              t.view(-1)[0] = pick(rng, 2) ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
            tensors.emplace_back(name, t);
          }
          save_safetensors(file, tensors);
          bytes = read_bytes(file);
        } else {
          bytes = seed;
          mutate_bytes(bytes, rng);
          write_bytes(file, bytes);
        }
        load_prompt_cache(file);
      },
      [&] { return bytes; });
}
