// Randomized corruption of valid safetensors files and sharded indexes: every open() and every
// load() must either succeed or throw ltxmps::Error; anything else (another exception, a crash, a
// sanitizer report) is a bug. Fixed seed, so a failure reproduces; the failing input is kept on disk.
//
// LTXMPS_FUZZ_ITERATIONS overrides the number of mutated files (default 4000).
#include "catch_compat.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/safetensors.hpp"

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;

namespace st_test {  // defined in test_safetensors.cpp
fs::path test_dir(const std::string& sub);
void write_bytes(const fs::path& file, const std::string& bytes);
std::string read_bytes(const fs::path& file);
std::string raw_file(std::string header, const std::string& data, bool pad = true);
}  // namespace st_test

namespace {

using Rng = std::mt19937_64;

size_t pick(Rng& rng, size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); }

uint64_t header_length(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 7; i >= 0 && bytes.size() >= 8; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  return n;
}

void set_header_length(std::string& bytes, uint64_t n) {
  if (bytes.size() < 8) return;
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
}

// The header text when the length field is sane, else empty (JSON-level mutations then skip).
bool header_bounds(const std::string& bytes, size_t* begin, size_t* end) {
  if (bytes.size() < 8) return false;
  const uint64_t n = header_length(bytes);
  if (n == 0 || n > bytes.size() - 8) return false;
  *begin = 8;
  *end = 8 + static_cast<size_t>(n);
  return true;
}

// Replaces [pos, pos + len) of the header by `text` and keeps the length field consistent, so the
// file reaches the validation behind the JSON parser.
void splice_header(std::string& bytes, size_t pos, size_t len, const std::string& text) {
  const uint64_t n = header_length(bytes);
  bytes.replace(pos, len, text);
  set_header_length(bytes, n - len + text.size());
}

// The value after a random occurrence of `key` in the header, up to `close`: [*start, *close).
bool pick_value(const std::string& bytes, const std::string& key, char close_char, Rng& rng, size_t* start, size_t* close) {
  size_t hb = 0, he = 0;
  if (!header_bounds(bytes, &hb, &he)) return false;
  std::vector<size_t> hits;
  for (size_t p = bytes.find(key, hb); p != std::string::npos && p < he; p = bytes.find(key, p + 1)) hits.push_back(p);
  if (hits.empty()) return false;
  *start = hits[pick(rng, hits.size())] + key.size();
  *close = bytes.find(close_char, *start);
  return *close != std::string::npos && *close < he;
}

const char* const kNumbers[] = {"0", "1", "2", "3", "7", "8", "-1", "4294967296", "9223372036854775807",
                                "18446744073709551615", "18446744073709551616", "1e400", "2.5", "100000000"};
const char* const kDtypes[] = {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "C64",
                               "F33", "", "f32"};
const char kJsonChars[] = "{}[],:\"0123456789-. e";

void mutate(std::string& bytes, Rng& rng) {
  size_t hb = 0, he = 0;
  switch (pick(rng, 10)) {
    case 0:  // bit flip anywhere
      if (!bytes.empty()) bytes[pick(rng, bytes.size())] ^= static_cast<char>(1 << pick(rng, 8));
      break;
    case 1:  // truncate
      bytes.resize(pick(rng, bytes.size() + 1));
      break;
    case 2: {  // append garbage
      const size_t n = 1 + pick(rng, 64);
      for (size_t i = 0; i < n; ++i) bytes.push_back(static_cast<char>(pick(rng, 256)));
      break;
    }
    case 3: {  // header length edits
      const uint64_t n = header_length(bytes);
      const uint64_t choices[] = {0, 1, n - 1, n + 1, n + 8, n - 8, bytes.size(), bytes.size() - 8, 100'000'001,
                                  ~uint64_t{0}, rng()};
      set_header_length(bytes, choices[pick(rng, std::size(choices))]);
      break;
    }
    case 4:  // change a number in the JSON (offsets, shapes)
    case 5: {
      if (!header_bounds(bytes, &hb, &he)) break;
      std::vector<std::pair<size_t, size_t>> runs;
      for (size_t i = hb; i < he;) {
        if (std::isdigit(static_cast<unsigned char>(bytes[i]))) {
          size_t j = i;
          while (j < he && std::isdigit(static_cast<unsigned char>(bytes[j]))) ++j;
          runs.emplace_back(i, j - i);
          i = j;
        } else {
          ++i;
        }
      }
      if (runs.empty()) break;
      const auto [pos, len] = runs[pick(rng, runs.size())];
      const std::string text = pick(rng, 3) == 0 ? std::to_string(pick(rng, 200)) : kNumbers[pick(rng, std::size(kNumbers))];
      splice_header(bytes, pos, len, text);
      break;
    }
    case 6: {  // change a dtype
      size_t start = 0, close = 0;
      if (pick_value(bytes, "\"dtype\":\"", '"', rng, &start, &close))
        splice_header(bytes, start, close - start, kDtypes[pick(rng, std::size(kDtypes))]);
      break;
    }
    case 7: {  // insert or delete a JSON-structural character
      if (!header_bounds(bytes, &hb, &he)) break;
      const size_t pos = hb + pick(rng, he - hb);
      if (pick(rng, 2) == 0)
        splice_header(bytes, pos, 1, "");
      else
        splice_header(bytes, pos, 0, std::string(1, kJsonChars[pick(rng, sizeof(kJsonChars) - 1)]));
      break;
    }
    case 9: {  // move one tensor's data_offsets, keeping its size (overlaps, holes)
      size_t start = 0, close = 0;
      unsigned long long a = 0, b = 0;
      if (!pick_value(bytes, "\"data_offsets\":[", ']', rng, &start, &close) ||
          std::sscanf(bytes.substr(start, close - start).c_str(), "%llu,%llu", &a, &b) != 2)
        break;
      const long long deltas[] = {-8, -4, -2, -1, 1, 2, 4, 8};
      const long long d = deltas[pick(rng, std::size(deltas))];
      if (d < 0 && a < static_cast<unsigned long long>(-d)) break;
      splice_header(bytes, start, close - start, std::to_string(a + d) + "," + std::to_string(b + d));
      break;
    }
    case 8: {  // duplicate a slice of the header (repeated keys, nested garbage)
      if (!header_bounds(bytes, &hb, &he)) break;
      const size_t pos = hb + pick(rng, he - hb);
      const size_t len = pick(rng, std::min<size_t>(he - pos, 48) + 1);
      splice_header(bytes, pos, 0, bytes.substr(pos, len));
      break;
    }
  }
}

// Distinct rejections, so the test can check that mutations reach past the JSON parser.
// Most specific first: a message counts for the first kind it contains.
const char* const kRejectionKinds[] = {
    "shorter than", "cap",  "bytes follow",  "duplicate key", "invalid JSON",    "not a JSON object",
    "__metadata__", "shape entry",   "overflows",     "begin > end",     "beyond the data section",
    "overlapping",  "hole", "after the last tensor", "need",   "unknown dtype", "does not load", "is BOOL but",
    "data_offsets", "no string 'dtype'", "not an object"};

// Opens and loads everything; true on success, false on ltxmps::Error (counted by kind in `kinds`);
// anything else propagates.
bool exercise(const fs::path& file, std::map<std::string, long>* kinds = nullptr) {
  try {
    const auto st = SafetensorsFile::open(file);
    for (const auto& t : st.tensors()) {
      st.load(t.name);
      st.load(t.name, at::TensorOptions().dtype(at::kFloat));
    }
    (void)st.metadata();
    return true;
  } catch (const ltxmps::Error& e) {
    const std::string msg = e.what();
    for (const char* kind : kRejectionKinds) {
      if (kinds && msg.find(kind) != std::string::npos) {
        ++(*kinds)[kind];
        break;
      }
    }
    return false;
  }
}

std::vector<std::string> make_seeds(const fs::path& dir) {
  std::vector<std::string> seeds;
  const auto seed_file = dir / "seed.safetensors";
  save_safetensors(seed_file,
                   {{"w", at::arange(12, at::kFloat).reshape({3, 4})},
                    {"b", at::arange(4, at::kBFloat16)},
                    {"h", at::arange(6, at::kHalf).reshape({1, 2, 3})},
                    {"ids", at::arange(3, at::kLong)},
                    {"mask", at::arange(5, at::kLong).remainder(2).to(at::kBool)},
                    {"u8", at::arange(3, at::kLong).to(at::kByte)},
                    {"scalar", at::ones({}, at::kDouble)},
                    {"empty", at::ones({0, 3}, at::kFloat)}},
                   {{"format", "pt"}, {"note", "seed"}});
  seeds.push_back(st_test::read_bytes(seed_file));
  save_safetensors(seed_file, {{"only", at::arange(2, at::kInt)}});
  seeds.push_back(st_test::read_bytes(seed_file));
  seeds.push_back(st_test::raw_file("{}", ""));
  // Misaligned and unpadded.
  seeds.push_back(st_test::raw_file(R"({"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                    R"("f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},)"
                                    R"("__metadata__":{"a":"b"}})",
                                    std::string(9, '\x01'), /*pad=*/false));
  return seeds;
}

long iterations() {
  const char* env = std::getenv("LTXMPS_FUZZ_ITERATIONS");
  return env && *env ? std::strtol(env, nullptr, 10) : 4000;
}

}  // namespace

TEST_CASE("safetensors: random corruption never crashes, only throws ltxmps::Error", "[pipeline][safetensors][fuzz]") {
  const auto dir = st_test::test_dir("fuzz");
  const auto seeds = make_seeds(dir);
  for (const auto& s : seeds) {
    st_test::write_bytes(dir / "case.safetensors", s);
    REQUIRE(exercise(dir / "case.safetensors"));
  }
  Rng rng(0x5AFE7E45u);
  const long n = iterations();
  long ok = 0, rejected = 0;
  std::map<std::string, long> kinds;
  for (long i = 0; i < n; ++i) {
    std::string bytes = seeds[pick(rng, seeds.size())];
    const size_t mutations = 1 + pick(rng, 3);
    for (size_t m = 0; m < mutations; ++m) mutate(bytes, rng);
    const auto file = dir / "case.safetensors";
    st_test::write_bytes(file, bytes);
    try {
      (exercise(file, &kinds) ? ok : rejected) += 1;
    } catch (const std::exception& e) {
      const auto kept = dir / ("failure_" + std::to_string(i) + ".safetensors");
      st_test::write_bytes(kept, bytes);
      FAIL("case " << i << " (kept as " << kept.string() << ") threw a non-ltxmps exception: " << e.what());
    }
  }
  std::string seen;
  for (const auto& [kind, count] : kinds) seen += c10::str("\n  ", kind, ": ", count);
  INFO(ok << " mutated files loaded, " << rejected << " rejected:" << seen);
  CHECK(ok > 0);
  CHECK(rejected > 0);
  if (n >= 2000) CHECK(kinds.size() >= 14);
}

TEST_CASE("WeightStore: random corruption of a sharded index only throws ltxmps::Error", "[pipeline][checkpoint][fuzz]") {
  const auto dir = st_test::test_dir("fuzz_index");
  save_safetensors(dir / "s1.safetensors", {{"a", at::ones({2})}});
  save_safetensors(dir / "s2.safetensors", {{"b", at::ones({3})}, {"c", at::ones({1})}});
  const std::string valid =
      R"({"metadata": {"total_size": 24}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"}})";
  Rng rng(0x1DE7u);
  long ok = 0;
  for (long i = 0; i < iterations() / 8; ++i) {
    std::string text = valid;
    for (size_t m = 0, k = 1 + pick(rng, 3); m < k; ++m) {
      const size_t pos = pick(rng, text.size());
      switch (pick(rng, 3)) {
        case 0: text.erase(pos, 1); break;
        case 1: text.insert(pos, 1, kJsonChars[pick(rng, sizeof(kJsonChars) - 1)]); break;
        default: text.insert(pos, pick(rng, 2) ? "../" : "s1.safetensors"); break;
      }
    }
    const auto file = dir / "model.safetensors.index.json";
    st_test::write_bytes(file, text);
    try {
      const auto store = WeightStore::open_file(file);
      StrictLoader loader(store, at::TensorOptions().dtype(at::kFloat));
      for (const auto& name : store.names()) loader.take(name, store.info(name).shape);
      ++ok;
    } catch (const ltxmps::Error&) {
    }
  }
  CHECK(ok > 0);
}
