// C++ T5 encoder, tokenizer and prompt encoding against transformers 5.17 / diffusers 0.42.1
// (tests/parity/t5_oracle.py writes the cases).

#include "catch_compat.hpp"
#include "parity_support.hpp"

#include "ltxmps_pipeline/checkpoint.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/prompt_cache.hpp"
#include "ltxmps_pipeline/safetensors.hpp"
#include "ltxmps_pipeline/t5.hpp"
#include "ltxmps_pipeline/tokenizer.hpp"

#include "ltxmps/precision.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace ltxmps::pipeline;

namespace {

fs::path data_dir() { return ltxmps_test::parity_data_dir("t5"); }

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("ltxmps_t5_" + std::to_string(::getpid()) + "_" + name);
}

at::ScalarType dtype_of(const std::string& name) {
  if (name.rfind("bf16", 0) == 0) return at::kBFloat16;
  if (name == "fp16") return at::kHalf;
  return at::kFloat;
}

using ltxmps_test::scaled_error;

T5Runtime runtime_of(const nlohmann::json& c) {
  T5Runtime rt;
  rt.dtype = dtype_of(c.at("dtype"));
  if (c.at("keep_wo_fp32").get<bool>()) rt.keep_in_fp32_modules = {"wo"};
  return rt;
}

void check_encoder_case(const nlohmann::json& c) {
  const auto name = c.at("name").get<std::string>();
  INFO(name);
  const auto rt = runtime_of(c);
  const auto model = load_t5_encoder(data_dir() / c.at("model").get<std::string>(), rt);
  if (c.at("keep_wo_fp32").get<bool>()) CHECK(model.block.at(0).wo.scalar_type() == at::kFloat);
  else CHECK(model.block.at(0).wo.scalar_type() == rt.dtype);
  const auto st = SafetensorsFile::open(data_dir() / c.at("inputs").get<std::string>());
  std::optional<at::Tensor> mask;
  if (st.find("attention_mask")) mask = st.load("attention_mask");
  CHECK(mask.has_value() == c.at("mask").get<bool>());
  const auto out = model.forward(st.load("input_ids"), mask);
  CHECK(out.scalar_type() == rt.dtype);
  const auto ref = SafetensorsFile::open(data_dir() / c.at("reference").get<std::string>()).load("last_hidden_state");
  const double err = scaled_error(out, ref);
  const double bound = c.at("bound").get<double>();
  std::cout << "t5 parity " << name << ": max abs error / max(1, max|ref|) = " << err << " (bound " << bound << ")\n";
  CHECK(err <= bound);
}

void check_prompt_embeddings(const PromptEmbeddings& got, const fs::path& reference, double bound,
                             const std::string& what) {
  const auto ref = load_prompt_cache(reference);
  INFO(what);
  CHECK(got.prompt_embeds.scalar_type() == ref.prompt_embeds.scalar_type());
  CHECK(got.prompt_attention_mask.scalar_type() == at::kBool);
  CHECK(at::equal(got.prompt_attention_mask.cpu(), ref.prompt_attention_mask));
  CHECK(at::equal(got.negative_prompt_attention_mask.cpu(), ref.negative_prompt_attention_mask));
  const double e1 = scaled_error(got.prompt_embeds.cpu(), ref.prompt_embeds);
  const double e2 = scaled_error(got.negative_prompt_embeds.cpu(), ref.negative_prompt_embeds);
  std::cout << "t5 encode_prompt " << what << ": prompt " << e1 << ", negative " << e2 << " (bound " << bound << ")\n";
  CHECK(e1 <= bound);
  CHECK(e2 <= bound);
}

}  // namespace

TEST_CASE("t5 parity: bounds are the documented ones", "[parity][t5]") {
  for (const auto& c : read_json_file(data_dir() / "cases.json")) {
    const auto dtype = c.at("dtype").get<std::string>();
    INFO(c.at("name").get<std::string>());
    CHECK(c.at("bound").get<double>() == (dtype == "fp32" ? 1e-4 : dtype == "fp16" ? 2e-3 : 1.6e-2));
  }
}

TEST_CASE("t5 parity: encoder against transformers (gated-gelu and relu, masks, fp32/bf16/fp16)", "[parity][t5]") {
  const auto cases = read_json_file(data_dir() / "cases.json");
  CHECK(cases.size() == 16);
  for (const auto& c : cases) check_encoder_case(c);
}

TEST_CASE("t5: transformers 5.17 keeps wo in float32 for fp16 only", "[t5]") {
  CHECK(ltxmps::t5_fp32_modules(at::kHalf) == std::vector<std::string>{"wo"});
  CHECK(ltxmps::t5_fp32_modules(at::kBFloat16).empty());
  CHECK(ltxmps::t5_fp32_modules(at::kFloat).empty());
}

TEST_CASE("t5: tied embedding stored as encoder.embed_tokens.weight", "[parity][t5]") {
  const auto tied = load_t5_encoder(data_dir() / "tied_model", {});
  const auto shared = load_t5_encoder(data_dir() / "gated_model", {});
  CHECK(at::equal(tied.shared, shared.shared));
  const auto ids = at::randint(0, tied.config.vocab_size, {2, 9}, at::kLong);
  CHECK(at::equal(tied.forward(ids), shared.forward(ids)));
}

TEST_CASE("t5: release drops the weights", "[t5]") {
  auto model = load_t5_encoder(data_dir() / "gated_model", {});
  REQUIRE(model.loaded());
  const auto ids = at::randint(0, model.config.vocab_size, {1, 5}, at::kLong);
  model.forward(ids);
  // Only the model holds its tensors: after release() nothing references their storage.
  c10::weak_intrusive_ptr<c10::StorageImpl> shared_storage(model.shared.storage().getWeakStorageImpl());
  c10::weak_intrusive_ptr<c10::StorageImpl> wo_storage(model.block.at(1).wo.storage().getWeakStorageImpl());
  CHECK(model.shared.use_count() == 1);
  model.release();
  CHECK_FALSE(model.loaded());
  CHECK_FALSE(model.shared.defined());
  CHECK(model.block.empty());
  CHECK(shared_storage.expired());
  CHECK(wo_storage.expired());
  CHECK_THROWS_WITH(model.forward(ids), ltxmps_test::Contains("released"));
}

TEST_CASE("t5: config.json and strict loading errors", "[t5]") {
  const auto src = data_dir() / "gated_model";
  const auto dir = temp_path("config");
  remove_tree(dir);
  fs::create_directories(dir);
  auto config = read_json_file(src / "config.json");
  auto weights = load_all(src / "model.safetensors");
  auto write = [&](const nlohmann::json& cfg, const std::vector<std::pair<std::string, at::Tensor>>& w) {
    std::ofstream(dir / "config.json") << cfg.dump();
    save_safetensors(dir / "model.safetensors", w);
  };
  SECTION("the saved config parses, with transformers' derived fields") {
    const auto c = T5Config::from_json(config);
    CHECK(c.is_gated_act);
    CHECK(c.dense_act_fn == "gelu_new");
    CHECK(c.relative_attention_max_distance == 20);
    const auto relu = T5Config::from_json({{"feed_forward_proj", "relu"}});
    CHECK_FALSE(relu.is_gated_act);
    CHECK(relu.dense_act_fn == "relu");
  }
  SECTION("unknown field") {
    auto cfg = config;
    cfg["d_modle"] = 2;
    write(cfg, weights);
    CHECK_THROWS_WITH(load_t5_encoder(dir, {}), ltxmps_test::ContainsAll({"unknown field 'd_modle'", "config.json"}));
  }
  SECTION("bad feed_forward_proj") {
    CHECK_THROWS_WITH(T5Config::from_json({{"feed_forward_proj", "gated-gelu-x"}}), ltxmps_test::Contains("feed_forward_proj"));
    CHECK_THROWS_WITH(T5Config::from_json({{"feed_forward_proj", "mish"}}), ltxmps_test::Contains("activation 'mish'"));
  }
  SECTION("decoder config") {
    CHECK_THROWS_WITH(T5Config::from_json({{"is_decoder", true}}), ltxmps_test::Contains("only the T5 encoder"));
  }
  SECTION("missing tensor") {
    auto w = weights;
    w.erase(std::remove_if(w.begin(), w.end(), [](const auto& p) { return p.first == "encoder.block.1.layer.1.DenseReluDense.wo.weight"; }),
            w.end());
    write(config, w);
    CHECK_THROWS_WITH(load_t5_encoder(dir, {}), ltxmps_test::Contains("encoder.block.1.layer.1.DenseReluDense.wo.weight"));
  }
  SECTION("no embedding at all") {
    auto w = weights;
    w.erase(std::remove_if(w.begin(), w.end(), [](const auto& p) { return p.first == "shared.weight"; }), w.end());
    write(config, w);
    CHECK_THROWS_WITH(load_t5_encoder(dir, {}), ltxmps_test::Contains("encoder.embed_tokens.weight"));
  }
  SECTION("unexpected tensor") {
    auto w = weights;
    w.emplace_back("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight", at::zeros({32, 4}));
    write(config, w);
    CHECK_THROWS_WITH(load_t5_encoder(dir, {}), ltxmps_test::Contains("encoder.block.1.layer.0.SelfAttention.relative_attention_bias"));
  }
  SECTION("shape mismatch") {
    auto cfg = config;
    cfg["d_ff"] = 38;
    write(cfg, weights);
    CHECK_THROWS_WITH(load_t5_encoder(dir, {}), ltxmps_test::Contains("DenseReluDense.wi_0.weight"));
  }
  SECTION("token ids out of range") {
    const auto model = load_t5_encoder(src, {});
    CHECK_THROWS_WITH(model.forward(at::full({1, 3}, model.config.vocab_size, at::kLong)), ltxmps_test::Contains("token ids"));
    CHECK_THROWS_WITH(model.forward(at::zeros({1, 3}, at::kLong), at::ones({1, 4})), ltxmps_test::Contains("attention_mask must be [1, 3]"));
  }
  remove_tree(dir);
}

TEST_CASE("t5 tokenizer: ids and masks equal transformers' AutoTokenizer", "[parity][t5][tokenizer]") {
  const auto data = read_json_file(data_dir() / "tokenizer_cases.json");
  CHECK(data.at("class") == "T5Tokenizer");
  const auto tok = T5Tokenizer::load(data_dir() / "tokenizer");
  CHECK(tok.vocab_size() == data.at("vocab_size").get<int64_t>());
  CHECK(tok.model_max_length() == data.at("model_max_length").get<int64_t>());
  int64_t compared = 0, mismatched = 0;
  for (const auto& c : data.at("cases")) {
    const auto prompts = c.at("prompts").get<std::vector<std::string>>();
    std::optional<int64_t> max_length;
    if (!c.at("max_length").is_null()) max_length = c.at("max_length").get<int64_t>();
    const auto out = tok(prompts, max_length);
    const auto ids = c.at("input_ids").get<std::vector<std::vector<int64_t>>>();
    const auto masks = c.at("attention_mask").get<std::vector<std::vector<int64_t>>>();
    REQUIRE(out.input_ids.size(0) == static_cast<int64_t>(prompts.size()));
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto row = out.input_ids[static_cast<int64_t>(i)];
      const auto mrow = out.attention_mask[static_cast<int64_t>(i)];
      const std::vector<int64_t> got(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
      const std::vector<int64_t> got_mask(mrow.data_ptr<int64_t>(), mrow.data_ptr<int64_t>() + mrow.numel());
      ++compared;
      if (got != ids[i] || got_mask != masks[i]) {
        ++mismatched;
        UNSCOPED_INFO("prompt " << i << ": " << nlohmann::json(prompts[i]).dump() << " max_length "
                                << c.at("max_length").dump() << "\n  got      " << nlohmann::json(got).dump()
                                << "\n  expected " << nlohmann::json(ids[i]).dump());
      }
    }
  }
  std::cout << "t5 tokenizer: " << compared - mismatched << " / " << compared << " prompts equal\n";
  CHECK(compared >= 150);
  CHECK(mismatched == 0);
}

TEST_CASE("t5 tokenizer: errors", "[t5][tokenizer]") {
  CHECK_THROWS_WITH(T5Tokenizer::load(data_dir() / "nope"), ltxmps_test::Contains("nope"));
  const auto not_model = temp_path("bad.model");
  std::ofstream(not_model) << "not a model";
  CHECK_THROWS_WITH(T5Tokenizer::from_model_file(not_model), ltxmps_test::Contains("not a SentencePiece model"));
  fs::remove(not_model);
  const auto tok = T5Tokenizer::from_model_file(data_dir() / "tokenizer" / "spiece.model");
  CHECK_FALSE(tok.model_max_length().has_value());
  CHECK_THROWS_WITH(tok({"a"}), ltxmps_test::Contains("no max_length"));
  const auto one = tok({"a cat walks"}, 1);
  CHECK(one.input_ids.equal(at::full({1, 1}, 1, at::kLong)));
}

TEST_CASE("t5 encode_prompt: diffusers LTXPipeline / LTXConditionPipeline", "[parity][t5]") {
  const auto ltx = data_dir() / "ltx";
  const auto tok = T5Tokenizer::load(ltx / "tokenizer");
  for (const auto& c : read_json_file(data_dir() / "prompt_cases.json")) {
    T5Runtime rt;
    rt.dtype = dtype_of(c.at("dtype"));
    rt.keep_in_fp32_modules = ltxmps::t5_fp32_modules(rt.dtype);
    auto encoder = load_t5_encoder(ltx / "text_encoder", rt);
    EncodePromptOptions o;
    o.prompts = c.at("prompts").get<std::vector<std::string>>();
    o.negative_prompts = c.at("negative_prompts").get<std::vector<std::string>>();
    o.max_sequence_length = c.at("max_sequence_length").get<int64_t>();
    o.encoder_attention_mask = c.at("encoder_attention_mask").get<bool>();
    const auto name = c.at("name").get<std::string>();
    const auto got = encode_prompt(tok, encoder, o);
    encoder.release();
    const auto reference = data_dir() / "prompt_cases" / (name + ".safetensors");
    check_prompt_embeddings(got, reference, c.at("bound").get<double>(), name);
    // The cache round-trips.
    const auto file = temp_path(name + ".safetensors");
    save_prompt_cache(file, got, {{"case", name}});
    const auto back = load_prompt_cache(file);
    CHECK(at::equal(back.prompt_embeds, got.prompt_embeds));
    CHECK(at::equal(back.negative_prompt_attention_mask, got.negative_prompt_attention_mask));
    fs::remove(file);
  }
  // Without the mask, T5 attends to the pad tokens: the option changes the result.
  auto encoder = load_t5_encoder(ltx / "text_encoder", {});
  EncodePromptOptions o;
  o.prompts = {"a cat walks"};
  o.max_sequence_length = 12;
  const auto without = encode_prompt(tok, encoder, o);
  o.encoder_attention_mask = true;
  const auto with = encode_prompt(tok, encoder, o);
  CHECK_FALSE(at::allclose(without.prompt_embeds, with.prompt_embeds));
  o.negative_prompts = {"x", "y"};
  CHECK_THROWS_WITH(encode_prompt(tok, encoder, o), ltxmps_test::Contains("2 negative prompts for 1 prompts"));
}

TEST_CASE("t5 prompt cache: validation names the file and tensor", "[t5]") {
  const auto file = temp_path("partial.safetensors");
  save_safetensors(file, {{"prompt_embeds", at::zeros({1, 4, 8})}, {"prompt_attention_mask", at::ones({1, 4}, at::kBool)}});
  CHECK_THROWS_WITH(load_prompt_cache(file), ltxmps_test::ContainsAll({file.string(), "no tensor 'negative_prompt_embeds'"}));
  save_safetensors(file, {{"prompt_embeds", at::zeros({1, 4, 8})},
                          {"prompt_attention_mask", at::ones({1, 5}, at::kBool)},
                          {"negative_prompt_embeds", at::zeros({1, 4, 8})},
                          {"negative_prompt_attention_mask", at::ones({1, 4}, at::kBool)}});
  CHECK_THROWS_WITH(load_prompt_cache(file), ltxmps_test::Contains("'prompt_attention_mask' must be [1, 4]"));
  fs::remove(file);
}

#ifdef LTXMPS_CLI_PATH
namespace {
int run_cli(const std::string& args) {
  const std::string command = std::string("\"") + LTXMPS_CLI_PATH + "\" " + args;
  INFO(command);
  const int rc = std::system(command.c_str());
  REQUIRE(WIFEXITED(rc));
  return WEXITSTATUS(rc);
}
}  // namespace

TEST_CASE("ltxmps forward t5 and encode-prompt CLI match transformers / diffusers", "[parity][t5][cli]") {
  const auto root = data_dir();
  {
    const auto out = temp_path("forward.safetensors");
    REQUIRE(run_cli("forward t5 --model-dir \"" + (root / "gated_model").string() + "\" --inputs \"" +
                    (root / "gated_fp32_mask" / "inputs.safetensors").string() + "\" --output \"" + out.string() +
                    "\" --device cpu --precision fp32") == 0);
    const auto got = SafetensorsFile::open(out).load("last_hidden_state");
    const auto ref = SafetensorsFile::open(root / "gated_fp32_mask" / "reference.safetensors").load("last_hidden_state");
    const double err = scaled_error(got, ref);
    std::cout << "t5 parity CLI gated_fp32_mask: " << err << " (bound 1e-4)\n";
    CHECK(err <= 1e-4);
    fs::remove(out);
  }
  for (const auto& c : read_json_file(root / "prompt_cases.json")) {
    const auto name = c.at("name").get<std::string>();
    if (c.at("pipeline") != "LTXPipeline") continue;
    const auto out = temp_path("cache_" + name + ".safetensors");
    std::string args = "encode-prompt --model-dir \"" + (root / "ltx").string() + "\" --output \"" + out.string() +
                       "\" --device cpu --precision " + (c.at("dtype") == "bf16" ? "bf16" : "fp32") +
                       " --max-sequence-length " + std::to_string(c.at("max_sequence_length").get<int>());
    for (const auto& p : c.at("prompts")) args += " --prompt " + nlohmann::json(p).dump();
    for (const auto& p : c.at("negative_prompts")) args += " --negative-prompt " + nlohmann::json(p).dump();
    REQUIRE(run_cli(args) == 0);
    const auto cached = load_prompt_cache(out);
    check_prompt_embeddings(cached, root / "prompt_cases" / (name + ".safetensors"), c.at("bound").get<double>(),
                            "CLI " + name);
    fs::remove(out);
  }
  CHECK(run_cli("encode-prompt --model-dir x --output y 2>/dev/null") == 2);  // no --prompt
  CHECK(run_cli("forward t5 --model-dir x --inputs y --output z --precision fp64 2>/dev/null") == 2);
}
#endif
