// ltxmps::randn against Python torch.randn with the same seeds, bit for bit.
#include "catch_compat.hpp"

#include <ltxmps/random.hpp>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<int64_t> parse_ints(const std::string& csv) {
  std::vector<int64_t> out;
  std::stringstream ss(csv);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

}  // namespace

TEST_CASE("noise equals torch.randn(shape, generator=torch.Generator().manual_seed(seed)) bit for bit", "[random][parity]") {
  const char* dir = std::getenv("LTXMPS_TEST_DATA");
  REQUIRE(dir != nullptr);
  std::ifstream in(std::string(dir) + "/randn_reference.txt");
  REQUIRE(in.good());
  std::string line;
  int cases = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string seed_text, shape_text, seeds_text;
    ls >> seed_text >> shape_text >> seeds_text;
    const auto shape = parse_ints(shape_text);
    std::vector<float> expected;
    std::string hex;
    while (ls >> hex) expected.push_back(std::strtof(hex.c_str(), nullptr));
    at::Tensor got;
    if (seeds_text == "-") {
      auto g = ltxmps::make_cpu_generator(std::stoull(seed_text));
      got = ltxmps::randn(shape, g);
    } else {
      std::vector<uint64_t> seeds;
      for (auto s : parse_ints(seeds_text)) seeds.push_back(static_cast<uint64_t>(s));
      auto gens = ltxmps::make_cpu_generators(seeds);
      got = ltxmps::randn(shape, gens);
    }
    INFO("seed " << seed_text << " shape " << shape_text);
    REQUIRE(got.numel() == static_cast<int64_t>(expected.size()));
    const auto flat = got.contiguous().view(-1);
    const float* data = flat.data_ptr<float>();
    int64_t mismatches = 0;
    for (size_t i = 0; i < expected.size(); ++i) mismatches += data[i] != expected[i];
    CHECK(mismatches == 0);
    ++cases;
  }
  CHECK(cases == 5);
}
