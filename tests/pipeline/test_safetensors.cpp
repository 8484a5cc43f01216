// Safetensors reading/writing and checkpoint loading: round trips, Python-written references,
// C++-written files read back by Python, every validation error, WeightStore and StrictLoader.
#include "catch_compat.hpp"

#include "ltxmps/error.hpp"
#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/safetensors.hpp"

#include <ATen/ATen.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;
using ltxmps_test::Contains;

namespace st_test {

// LTXMPS_TEST_DATA (set by CTest; the Python fixture writes there) or a folder in the temp folder.
fs::path data_root() {
  const char* env = std::getenv("LTXMPS_TEST_DATA");
  return env && *env ? fs::path(env) : fs::temp_directory_path() / "ltxmps_test_data";
}

// A folder for this suite's own files.
fs::path test_dir(const std::string& sub) {
  const fs::path dir = data_root() / "safetensors_cpp" / sub;
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const fs::path& file, const std::string& bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// 8-byte little-endian length + header (+ space padding to 8 like the Python writer) + data.
std::string raw_file(std::string header, const std::string& data, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((static_cast<uint64_t>(header.size()) >> (8 * i)) & 0xff);
  return out + header + data;
}

}  // namespace st_test

namespace {

using st_test::raw_file;
using st_test::read_bytes;
using st_test::test_dir;
using st_test::write_bytes;

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const ltxmps::Error& e) {
    return e.what();
  }
  return "<no ltxmps::Error thrown>";
}

// Mirrors ref() in make_safetensors_reference.py op for op, so values match bit for bit.
at::Tensor reference_values(const std::vector<int64_t>& shape, at::ScalarType dtype, int64_t k) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  at::Tensor x;
  if (at::isFloatingType(dtype)) {
    x = at::arange(n, at::kDouble).mul(0.37).sub(3.0).add(k);
  } else if (dtype == at::kBool) {
    x = at::arange(n, at::kLong).add(k).remainder(3).eq(0);
  } else if (dtype == at::kByte) {
    x = at::arange(n, at::kLong).mul(3).add(k);
  } else {
    x = at::arange(n, at::kLong).mul(3).sub(11).add(k);
  }
  return x.reshape(shape).to(dtype);
}

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  return at::equal(a.contiguous().reshape(-1).view(at::kByte), b.contiguous().reshape(-1).view(at::kByte));
}

struct Spec {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  int64_t k;
};

const std::vector<std::pair<const char*, at::ScalarType>> kDtypes = {
    {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"F64", at::kDouble}, {"I64", at::kLong},
    {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},      {"U8", at::kByte},    {"BOOL", at::kBool}};

// MIXED in make_safetensors_reference.py.
std::vector<Spec> mixed_spec() {
  std::vector<Spec> out;
  int64_t k = 0;
  for (const auto& [name, dtype] : kDtypes) {
    std::string lower = name;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out.push_back({lower, dtype, {2, 3}, k++});
  }
  out.push_back({"scalar", at::kFloat, {}, 11});
  out.push_back({"empty", at::kBFloat16, {0, 4}, 12});
  out.push_back({"big", at::kHalf, {3, 4, 5}, 13});
  return out;
}

fs::path reference_dir() { return st_test::data_root() / "safetensors_ref"; }

const char* python() {
  const char* p = std::getenv("PYTHON");
  return p && *p ? p : nullptr;
}

int run_python(const std::string& args) {
  const std::string cmd = std::string("\"") + python() + "\" \"" + LTXMPS_SAFETENSORS_SCRIPT + "\" " + args;
  return std::system(cmd.c_str());
}

std::string quoted(const fs::path& p) { return "\"" + p.string() + "\""; }

}  // namespace

TEST_CASE("safetensors: C++ write then C++ read, every dtype", "[pipeline][safetensors]") {
  auto dir = test_dir("roundtrip");
  REQUIRE_FALSE(remove_tree(dir));  // empty, so that the listing at the end sees only this run's files
  dir = test_dir("roundtrip");
  for (const auto& [dname, dtype] : kDtypes) {
    CAPTURE(dname);
    const auto file = dir / (std::string(dname) + ".safetensors");
    const at::Tensor x = reference_values({2, 3}, dtype, 1);
    const at::Tensor nc = reference_values({4, 3}, dtype, 2).t();  // non-contiguous source
    const at::Tensor scalar = reference_values({}, dtype, 3);
    const at::Tensor empty = reference_values({0, 4}, dtype, 4);
    save_safetensors(file, {{"x", x}, {"nc", nc}, {"scalar", scalar}, {"empty", empty}}, {{"k", "v"}});

    const auto st = SafetensorsFile::open(file);
    CHECK(st.path().string() == file.string());
    CHECK(st.metadata() == std::map<std::string, std::string>{{"k", "v"}});
    REQUIRE(st.tensors().size() == 4);
    CHECK((fs::file_size(file) - st.data_size()) % 8 == 0);  // header padded to 8 bytes
    for (const auto& t : st.tensors()) {
      CHECK(t.dtype == dtype);
      CHECK(t.begin % c10::elementSize(dtype) == 0);
    }
    REQUIRE(st.find("nc") != nullptr);
    CHECK(st.find("nc")->shape == std::vector<int64_t>{3, 4});
    CHECK(st.find("absent") == nullptr);
    CHECK(bit_equal(st.load("x"), x));
    CHECK(bit_equal(st.load("nc"), nc));
    CHECK(bit_equal(st.load("scalar"), scalar));
    CHECK(bit_equal(st.load("empty"), empty));
    const auto all = load_all(file);
    REQUIRE(all.size() == 4);
    for (const auto& [name, t] : all) CHECK(bit_equal(t, st.load(name)));
  }
  // Only the finished files: each was written as "<file>.partial-<pid>-<n>" (unique_temporary_path) and renamed.
  std::set<std::string> expected, found;
  for (const auto& [dname, dtype] : kDtypes) expected.insert(std::string(dname) + ".safetensors");
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto name = entry.path().filename().string();
    CHECK(name.find(".partial-") == std::string::npos);
    found.insert(name);
  }
  CHECK(found == expected);
}

TEST_CASE("safetensors: load converts dtype and never aliases the mapping", "[pipeline][safetensors]") {
  const auto file = test_dir("convert") / "bf16.safetensors";
  const at::Tensor w = reference_values({3, 4}, at::kBFloat16, 0);
  save_safetensors(file, {{"w", w}});
  const auto st = SafetensorsFile::open(file);
  const at::Tensor f = st.load("w", at::TensorOptions().dtype(at::kFloat));
  CHECK(f.scalar_type() == at::kFloat);
  CHECK(bit_equal(f, w.to(at::kFloat)));
  at::Tensor same = st.load("w");
  same.fill_(7);  // writable: a copy, not a view of the read-only mapping
  CHECK(bit_equal(st.load("w"), w));
  CHECK(bit_equal(st.load("w", at::TensorOptions().dtype(at::kDouble)), w.to(at::kDouble)));
}

TEST_CASE("safetensors: misaligned tensors load correctly", "[pipeline][safetensors]") {
  // U8 [1] then F32 [2] at byte 1: the float data is misaligned in the mapping.
  const float values[2] = {1.5f, -2.25f};
  std::string data(1, '\x07');
  data.append(reinterpret_cast<const char*>(values), sizeof(values));
  const auto file = test_dir("misaligned") / "m.safetensors";
  write_bytes(file, raw_file(R"({"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                             R"("f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})",
                             data));
  const auto st = SafetensorsFile::open(file);
  const at::Tensor f = st.load("f");
  CHECK(f[0].item<float>() == 1.5f);
  CHECK(f[1].item<float>() == -2.25f);
  CHECK(st.load("f", at::TensorOptions().dtype(at::kHalf))[1].item<float>() == -2.25f);
  CHECK(st.load("u").item<uint8_t>() == 7);
}

TEST_CASE("safetensors: files written by the Python library load bit-exactly", "[pipeline][safetensors][python]") {
  const auto root = reference_dir();
  if (!fs::exists(root / "mixed.safetensors")) {
    WARN("no Python reference files in " << root << " (run through CTest for the fixture)");
    return;
  }
  for (const auto& [dname, dtype] : std::vector<std::pair<std::string, at::ScalarType>>{
           {"f32", at::kFloat}, {"f16", at::kHalf}, {"bf16", at::kBFloat16}}) {
    CAPTURE(dname);
    const auto st = SafetensorsFile::open(root / (dname + ".safetensors"));
    CHECK(st.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"source", "python"}});
    CHECK(st.tensors().size() == 4);
    CHECK(bit_equal(st.load("a"), reference_values({3, 5}, dtype, 0)));
    CHECK(bit_equal(st.load("b.weight"), reference_values({7}, dtype, 1)));
    CHECK(bit_equal(st.load("c"), reference_values({}, dtype, 2)));
    CHECK(bit_equal(st.load("empty"), reference_values({0, 4}, dtype, 3)));
  }
  const auto mixed = SafetensorsFile::open(root / "mixed.safetensors");
  CHECK(mixed.tensors().size() == mixed_spec().size());
  for (const auto& s : mixed_spec()) {
    CAPTURE(s.name);
    REQUIRE(mixed.find(s.name) != nullptr);
    CHECK(mixed.find(s.name)->dtype == s.dtype);
    CHECK(bit_equal(mixed.load(s.name), reference_values(s.shape, s.dtype, s.k)));
  }
}

TEST_CASE("safetensors: files written by C++ load in the Python library", "[pipeline][safetensors][python]") {
  if (!python()) {
    WARN("PYTHON is not set (run through CTest): skipped");
    return;
  }
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& s : mixed_spec()) {
    at::Tensor t = reference_values(s.shape, s.dtype, s.k);
    if (s.name == "f32") t = t.t().contiguous().t();  // non-contiguous, same values
    tensors.emplace_back(s.name, t);
  }
  const auto file = test_dir("to_python") / "cpp_written.safetensors";
  save_safetensors(file, tensors, {{"writer", "ltxmps"}, {"format", "pt"}});
  CHECK(run_python("--verify " + quoted(file)) == 0);
}

TEST_CASE("safetensors: every malformed file is rejected with a message naming file and tensor",
          "[pipeline][safetensors][errors]") {
  const auto dir = test_dir("errors");
  std::vector<fs::path> python_must_reject;
  // Writes `bytes`, expects open()+load of every tensor to throw a message containing `file` and
  // each of `parts`.
  const auto expect = [&](const std::string& name, const std::string& bytes, std::vector<std::string> parts,
                          bool python_rejects = true) {
    const auto file = dir / (name + ".safetensors");
    write_bytes(file, bytes);
    if (python_rejects) python_must_reject.push_back(file);
    const std::string msg = error_of([&] {
      const auto st = SafetensorsFile::open(file);
      for (const auto& t : st.tensors()) st.load(t.name);
    });
    CAPTURE(name);
    CHECK_THAT(msg, Contains(file.string()));
    for (const auto& p : parts) CHECK_THAT(msg, Contains(p));
  };
  const std::string f8(8, '\0');
  const auto one = [](const std::string& entry) { return std::string(R"({"t":)") + entry + "}"; };

  expect("short", "abc", {"shorter than the 8-byte header length"});
  expect("header_cap", std::string("\x00\x00\x00\x06\x00\x00\x00\x00", 8) + "{}", {"cap"});  // 0x0600_0000 > 100 MB
  expect("header_past_end", std::string("\x40\x00\x00\x00\x00\x00\x00\x00", 8) + "{}", {"only 2 bytes follow"});
  expect("invalid_json", raw_file("{\"t\": ", ""), {"invalid JSON in the header", "parse error"});
  expect("not_object", raw_file("[1, 2]", ""), {"not a JSON object"});
  expect("unknown_dtype", raw_file(one(R"({"dtype":"F33","shape":[2],"data_offsets":[0,8]})"), f8),
         {"'t'", "unknown dtype 'F33'", "supported: F32"});
  expect("unsupported_dtype", raw_file(one(R"({"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]})"), f8),
         {"'t'", "dtype 'F8_E4M3', which ltxmps does not load"}, /*python_rejects=*/false);
  expect("no_dtype", raw_file(one(R"({"shape":[2],"data_offsets":[0,8]})"), f8), {"'t'", "no string 'dtype'"});
  expect("negative_shape", raw_file(one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), f8),
         {"'t'", "shape entry -2", "non-negative integer"});
  expect("float_shape", raw_file(one(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), f8),
         {"'t'", "shape entry 2.0"});
  expect("shape_overflow",
         raw_file(one(R"({"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]})"), f8),
         {"'t'", "overflows"});
  expect("zero_numel_stride_overflow",
         raw_file(one(R"({"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]})"), ""),
         {"'t'", "overflows"}, /*python_rejects=*/false);
  expect("offsets_one", raw_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), f8),
         {"'t'", "two non-negative integers"});
  expect("offsets_negative", raw_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":[-1,7]})"), f8),
         {"'t'", "data_offsets [-1,7], expected two non-negative integers"});
  expect("offsets_strings", raw_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":["0","8"]})"), f8),
         {"'t'", "two non-negative integers"});
  expect("begin_after_end", raw_file(one(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})"), f8),
         {"'t'", "begin > end"});
  expect("past_data", raw_file(one(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})"), f8),
         {"'t'", "beyond the data section of 8 bytes"});
  expect("size_mismatch", raw_file(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), f8),
         {"'t'", "(8 bytes)", "need 12 bytes"});
  expect("overlap",
         raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                  std::string(12, '\0')),
         {"'b'", "overlapping tensor 'a'"});
  expect("hole",
         raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                  std::string(16, '\0')),
         {"'b'", "hole of 4 bytes after tensor 'a'"});
  expect("trailing", raw_file(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), f8 + "xx"),
         {"2 bytes after the last tensor"});
  expect("duplicate",
         raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                  std::string(16, '\0')),
         {"duplicate key 't'"});
  expect("metadata_int", raw_file(R"({"__metadata__":{"k":1}})", ""), {"__metadata__ entry 'k'", "expected a string"});
  expect("metadata_list", raw_file(R"({"__metadata__":[1]})", ""), {"__metadata__", "not an object of strings"});
  expect("entry_not_object", raw_file(R"({"t":"x"})", ""), {"'t'", "not an object"});
  expect("bool_byte", raw_file(one(R"({"dtype":"BOOL","shape":[2],"data_offsets":[0,2]})"), std::string("\x01\x02", 2)),
         {"'t'", "BOOL", "byte 2"}, /*python_rejects=*/false);

  // Not-a-file and absent-tensor errors.
  CHECK_THAT(error_of([&] { SafetensorsFile::open(dir / "absent.safetensors"); }), Contains("cannot open"));
  CHECK_THAT(error_of([&] { SafetensorsFile::open(dir); }), Contains("not a regular file"));
  const auto good = dir / "good.safetensors";
  save_safetensors(good, {{"w", at::ones({2})}});
  const std::string missing = error_of([&] { SafetensorsFile::open(good).load("nope"); });
  CHECK_THAT(missing, Contains("no tensor 'nope'"));
  CHECK_THAT(missing, Contains(good.string()));

  // Writer errors.
  CHECK_THAT(error_of([&] { save_safetensors(dir / "w.safetensors", {{"a", at::ones({1})}, {"a", at::ones({1})}}); }),
             Contains("tensor 'a' is given twice"));
  CHECK_THAT(error_of([&] { save_safetensors(dir / "w.safetensors", {{"c", at::ones({1}, at::kComplexFloat)}}); }),
             Contains("tensor 'c'"));
  CHECK_THAT(error_of([&] { save_safetensors(dir / "no_such_dir" / "w.safetensors", {{"a", at::ones({1})}}); }),
             Contains("cannot write"));

  // Layout rules agree with the Python library: it rejects the same files.
  if (python()) {
    std::string args = "--expect-reject";
    for (const auto& f : python_must_reject) args += " " + quoted(f);
    CHECK(run_python(args) == 0);
  }
}

TEST_CASE("WeightStore: component folders, variants, shards, Lightricks names", "[pipeline][checkpoint]") {
  const auto root = reference_dir();
  if (!fs::exists(root / "component")) {
    WARN("no Python reference files in " << root << " (run through CTest for the fixture)");
    return;
  }
  SECTION("single file and variant") {
    const auto store = WeightStore::open_component(root / "component");
    CHECK(store.path().string() == (root / "component" / "diffusion_pytorch_model.safetensors").string());
    CHECK(store.names() == std::vector<std::string>{"proj.bias", "proj.weight"});
    CHECK(bit_equal(store.load("proj.weight"), reference_values({4, 3}, at::kFloat, 0)));
    const auto bf16 = WeightStore::open_component(root / "component", "bf16");
    CHECK(bf16.info("proj.bias").dtype == at::kBFloat16);
    CHECK(bit_equal(bf16.load("proj.bias"), reference_values({4}, at::kBFloat16, 1)));
    const std::string msg = error_of([&] { WeightStore::open_component(root / "component", "fp8"); });
    CHECK_THAT(msg, Contains((root / "component").string()));
    CHECK_THAT(msg, Contains("diffusion_pytorch_model.fp8.safetensors"));
    CHECK_THAT(msg, Contains("diffusion_pytorch_model.safetensors.index.fp8.json"));
    CHECK_THAT(msg, Contains("model.fp8.safetensors"));
    const auto cfg = read_json_file(root / "component" / "config.json");
    CHECK(cfg.at("hidden_size").get<int>() == 4);
  }
  SECTION("sharded, with and without variant") {
    const auto store = WeightStore::open_component(root / "sharded");
    CHECK(store.path().filename().string() == "diffusion_pytorch_model.safetensors.index.json");
    CHECK(store.names() == std::vector<std::string>{"norm.weight", "proj.bias", "proj.weight"});
    CHECK(store.file_of("proj.weight").filename().string() == "diffusion_pytorch_model-00001-of-00002.safetensors");
    CHECK(store.file_of("norm.weight").filename().string() == "diffusion_pytorch_model-00002-of-00002.safetensors");
    CHECK(bit_equal(store.load("norm.weight"), reference_values({4}, at::kFloat, 2)));
    CHECK(store.unlisted().empty());
    const auto fp16 = WeightStore::open_component(root / "sharded", "fp16");
    CHECK(fp16.file_of("proj.bias").filename().string() == "diffusion_pytorch_model.fp16-00002-of-00002.safetensors");
    CHECK(bit_equal(fp16.load("proj.bias"), reference_values({4}, at::kHalf, 1)));
    const auto direct = WeightStore::open_file(root / "sharded" / "diffusion_pytorch_model.safetensors.index.json");
    CHECK(direct.names().size() == 3);
  }
  SECTION("transformers-style model.safetensors, by fallback and by stem") {
    CHECK(WeightStore::open_component(root / "t5").contains("shared.weight"));
    const auto store = WeightStore::open_component(root / "t5", std::nullopt, "model");
    CHECK(bit_equal(store.load("shared.weight"), reference_values({5, 4}, at::kFloat, 0)));
    CHECK_THAT(error_of([&] { WeightStore::open_component(root / "t5", std::nullopt, "text_encoder"); }),
               Contains("text_encoder.safetensors"));
  }
  SECTION("original Lightricks checkpoint") {
    const auto store = WeightStore::open_lightricks_transformer(root / "lightricks.safetensors");
    CHECK(store.names() == std::vector<std::string>{"proj_in.weight", "scale_shift_table", "time_embed.linear.bias",
                                                    "transformer_blocks.0.attn1.norm_k.weight",
                                                    "transformer_blocks.0.attn1.norm_q.weight"});
    CHECK(store.info("proj_in.weight").name == "proj_in.weight");
    CHECK(bit_equal(store.load("transformer_blocks.0.attn1.norm_k.weight"), reference_values({4}, at::kBFloat16, 3)));
    CHECK(lightricks_transformer_key("vae.encoder.x") == std::nullopt);
    CHECK(lightricks_transformer_key("model.diffusion_model.block_norm.q_norm") == "block_norm.norm_q");
    StrictLoader loader(store, at::TensorOptions().dtype(at::kFloat));
    CHECK(loader.take("proj_in.weight", {4, 3}).scalar_type() == at::kFloat);
    CHECK_THAT(error_of([&] { loader.finish(); }), Contains("scale_shift_table"));
  }
  SECTION("missing names in errors") {
    const auto store = WeightStore::open_component(root / "component");
    const std::string msg = error_of([&] { store.info("nope"); });
    CHECK_THAT(msg, Contains("'nope'"));
    CHECK_THAT(msg, Contains(store.path().string()));
    CHECK_THAT(error_of([&] { WeightStore::open_component(root / "no_such_folder"); }), Contains("no_such_folder"));
  }
}

TEST_CASE("WeightStore: broken sharded indexes", "[pipeline][checkpoint][errors]") {
  const auto dir = test_dir("index");
  save_safetensors(dir / "s1.safetensors", {{"a", at::ones({2})}, {"extra", at::ones({1})}});
  save_safetensors(dir / "s2.safetensors", {{"b", at::ones({3})}});
  const auto index = [&](const std::string& name, const std::string& text) {
    write_bytes(dir / name, text);
    return dir / name;
  };
  const auto ok = index("ok.index.json", R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  const auto store = WeightStore::open_file(ok);
  CHECK(store.names() == std::vector<std::string>{"a", "b"});
  REQUIRE(store.unlisted().size() == 1);
  CHECK_THAT(store.unlisted()[0], Contains("extra (in shard"));
  StrictLoader loader(store, {});
  loader.take("a", {2});
  loader.take("b", {3});
  const std::string unexpected = error_of([&] { loader.finish(); });
  CHECK_THAT(unexpected, Contains("unexpected keys: extra"));
  CHECK_THAT(unexpected, Contains(ok.string()));

  const auto missing_shard = index("missing_shard.index.json", R"({"weight_map": {"a": "s9.safetensors"}})");
  const std::string m1 = error_of([&] { WeightStore::open_file(missing_shard); });
  CHECK_THAT(m1, Contains("s9.safetensors"));
  CHECK_THAT(m1, Contains("'a'"));
  CHECK_THAT(m1, Contains("does not exist"));
  const auto absent = index("absent.index.json", R"({"weight_map": {"zz": "s1.safetensors"}})");
  const std::string m2 = error_of([&] { WeightStore::open_file(absent); });
  CHECK_THAT(m2, Contains("'zz'"));
  CHECK_THAT(m2, Contains("has no such tensor"));
  const auto escape = index("escape.index.json", R"({"weight_map": {"a": "../index/s1.safetensors"}})");
  CHECK_THAT(error_of([&] { WeightStore::open_file(escape); }), Contains("not a plain file name"));
  const auto absolute = index("absolute.index.json", R"({"weight_map": {"a": "/etc/passwd"}})");
  CHECK_THAT(error_of([&] { WeightStore::open_file(absolute); }), Contains("not a plain file name"));
  const auto no_map = index("no_map.index.json", R"({"metadata": {}})");
  CHECK_THAT(error_of([&] { WeightStore::open_file(no_map); }), Contains("no 'weight_map'"));
  const auto not_string = index("not_string.index.json", R"({"weight_map": {"a": 3}})");
  CHECK_THAT(error_of([&] { WeightStore::open_file(not_string); }), Contains("expected a shard file name"));
  const auto dup = index("dup.index.json", R"({"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}})");
  CHECK_THAT(error_of([&] { WeightStore::open_file(dup); }), Contains("duplicate key 'a'"));
}

TEST_CASE("StrictLoader: missing, unexpected, shape, dtype rules", "[pipeline][checkpoint][errors]") {
  const auto file = test_dir("strict") / "model.safetensors";
  save_safetensors(file, {{"enc.w", reference_values({4, 3}, at::kBFloat16, 0)},
                          {"enc.b", reference_values({4}, at::kFloat, 1)},
                          {"enc.ids", reference_values({5}, at::kLong, 2)},
                          {"enc.f64", reference_values({2}, at::kDouble, 3)},
                          {"other.x", reference_values({1}, at::kFloat, 4)}});
  const auto store = WeightStore::open_file(file);
  StrictLoader loader(store, at::TensorOptions().dtype(at::kHalf), "enc.");
  CHECK(loader.has("w"));
  CHECK_FALSE(loader.has("x"));

  const at::Tensor w = loader.take("w", {4, 3});
  CHECK(w.scalar_type() == at::kHalf);
  CHECK(bit_equal(w, reference_values({4, 3}, at::kBFloat16, 0).to(at::kHalf)));
  const at::Tensor b = loader.take("b", {4}, at::kFloat);  // keep-in-fp32 override
  CHECK(b.scalar_type() == at::kFloat);
  CHECK(bit_equal(b, reference_values({4}, at::kFloat, 1)));

  const std::string missing = error_of([&] { loader.take("nope", {1}); });
  CHECK_THAT(missing, Contains("missing tensor 'enc.nope' in " + file.string()));
  const std::string shape = error_of([&] { loader.take("w", {3, 4}); });
  CHECK_THAT(shape, Contains("tensor 'enc.w' in " + file.string() + " has shape [4, 3], expected [3, 4]"));
  const std::string f64 = error_of([&] { loader.take("f64", {2}); });
  CHECK_THAT(f64, Contains("'enc.f64'"));
  CHECK_THAT(f64, Contains("stored as F64, expected a float weight stored as F32, F16 or BF16"));
  CHECK_THAT(error_of([&] { loader.take("ids", {5}); }), Contains("stored as I64, expected a float weight"));
  CHECK_THAT(error_of([&] { loader.take("ids", {5}, at::kInt); }), Contains("stored as I64, expected I32"));
  CHECK(bit_equal(loader.take("ids", {5}, at::kLong), reference_values({5}, at::kLong, 2)));

  const std::string unexpected = error_of([&] { loader.finish(); });
  CHECK_THAT(unexpected, Contains("unexpected keys: enc.f64 in " + file.string()));
  CHECK_THAT(unexpected, !Contains("other.x"));  // outside the prefix
  loader.skip("f64");
  loader.skip("not_there");  // no-op
  CHECK_NOTHROW(loader.finish());

  StrictLoader whole(store, {});
  CHECK(whole.take("enc.b", {4}).scalar_type() == at::kFloat);  // stored dtype when options have none
  CHECK_THAT(error_of([&] { whole.finish(); }), Contains("enc.f64, enc.ids, enc.w, other.x"));
}

TEST_CASE("read_json_file names the file and the parse position", "[pipeline][checkpoint][errors]") {
  const auto dir = test_dir("json");
  write_bytes(dir / "good.json", R"({"a": [1, 2], "b": "x"})");
  CHECK(read_json_file(dir / "good.json").at("b") == "x");
  write_bytes(dir / "bad.json", "{\n  \"a\": 1,\n  \"b\": ]\n}");
  const std::string msg = error_of([&] { read_json_file(dir / "bad.json"); });
  CHECK_THAT(msg, Contains((dir / "bad.json").string()));
  CHECK_THAT(msg, Contains("line 3"));
  CHECK_THAT(error_of([&] { read_json_file(dir / "absent.json"); }), Contains("cannot read JSON file"));
}
