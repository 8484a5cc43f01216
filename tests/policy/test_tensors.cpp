// Tensor-level policies on the CPU: noise, attention kernels, dtype mapping, memory and offload scopes.
#include "catch_compat.hpp"

#include <ltxmps/ltxmps.hpp>

#include <vector>

TEST_CASE("noise: same seed, same values; moved and cast to the target", "[random]") {
  auto g1 = ltxmps::make_cpu_generator(42);
  auto g2 = ltxmps::make_cpu_generator(42);
  const auto a = ltxmps::randn({2, 3, 4}, g1);
  const auto b = ltxmps::randn({2, 3, 4}, g2, at::TensorOptions().dtype(at::kBFloat16));
  CHECK(a.scalar_type() == at::kFloat);
  CHECK(b.scalar_type() == at::kBFloat16);
  CHECK(at::equal(a.to(at::kBFloat16), b));
  // The generator's state advances: a second draw differs.
  CHECK_FALSE(at::equal(a, ltxmps::randn({2, 3, 4}, g1)));
}

TEST_CASE("noise: one generator per batch item equals drawing each item alone", "[random]") {
  auto gens = ltxmps::make_cpu_generators({1, 2, 3});
  const auto batch = ltxmps::randn({3, 2, 5}, gens);
  for (uint64_t i = 0; i < 3; ++i) {
    auto g = ltxmps::make_cpu_generator(i + 1);
    CHECK(at::equal(batch[static_cast<int64_t>(i)], ltxmps::randn({1, 2, 5}, g)[0]));
  }
  auto two = ltxmps::make_cpu_generators({1, 2});
  CHECK_THROWS_AS(ltxmps::randn({3, 2}, two), ltxmps::Error);
  CHECK_THROWS_AS(ltxmps::randn({3}, two, at::TensorOptions().dtype(at::kLong)), ltxmps::Error);
}

TEST_CASE("float64 and int64 never reach MPS", "[precision]") {
  const c10::Device mps(c10::DeviceType::MPS);
  const c10::Device cpu(c10::DeviceType::CPU);
  CHECK(ltxmps::device_dtype(at::kDouble, mps) == at::kFloat);
  CHECK(ltxmps::device_dtype(at::kLong, mps) == at::kInt);
  CHECK(ltxmps::device_dtype(at::kHalf, mps) == at::kHalf);
  CHECK(ltxmps::device_dtype(at::kDouble, cpu) == at::kDouble);
  CHECK(ltxmps::to_device(at::ones({2}, at::kDouble), cpu).scalar_type() == at::kDouble);
}

namespace {

struct Qkv {
  at::Tensor q, k, v;
};

Qkv random_qkv(int64_t tokens, at::ScalarType dtype, double magnitude, uint64_t seed) {
  auto g = ltxmps::make_cpu_generator(seed);
  auto q = ltxmps::randn({1, 2, tokens, 16}, g) * magnitude;
  auto k = ltxmps::randn({1, 2, tokens, 16}, g) * magnitude;
  auto v = ltxmps::randn({1, 2, tokens, 16}, g);
  return {q.to(dtype), k.to(dtype), v.to(dtype)};
}

at::Tensor reference_attention(const Qkv& x, const std::optional<at::Tensor>& mask = std::nullopt) {
  auto q = x.q.to(at::kDouble), k = x.k.to(at::kDouble), v = x.v.to(at::kDouble);
  auto scores = at::matmul(q, k.transpose(-2, -1)) / 4.0;
  if (mask) scores = scores + mask->to(at::kDouble);
  return at::matmul(at::softmax(scores, -1), v);
}

}  // namespace

TEST_CASE("attention: SDPA, math and upcast agree on ordinary inputs", "[attention]") {
  const auto x = random_qkv(64, at::kFloat, 1.0, 7);
  const auto expected = reference_attention(x);
  for (auto kernel : {ltxmps::AttentionKernel::sdpa, ltxmps::AttentionKernel::math, ltxmps::AttentionKernel::upcast}) {
    for (int64_t chunk : {0, 5, 64}) {
      const auto out = ltxmps::attention(x.q, x.k, x.v, std::nullopt, {kernel, std::nullopt, chunk});
      CHECK((out.to(at::kDouble) - expected).abs().max().item<double>() < 1e-5);
    }
  }
  // Additive mask (per key) and its bool equivalent.
  auto bias = at::zeros({1, 1, 1, 64});
  bias.narrow(-1, 40, 24).fill_(-10000.0);
  const auto masked_expected = reference_attention(x, bias);
  const auto keep = at::arange(64).lt(40).view({1, 1, 1, 64});
  for (auto kernel : {ltxmps::AttentionKernel::sdpa, ltxmps::AttentionKernel::upcast}) {
    CHECK((ltxmps::attention(x.q, x.k, x.v, bias, {kernel}).to(at::kDouble) - masked_expected).abs().max().item<double>() < 1e-5);
    CHECK((ltxmps::attention(x.q, x.k, x.v, keep, {kernel}).to(at::kDouble) - masked_expected).abs().max().item<double>() < 1e-5);
  }
  // Half precision: SDPA and upcast agree within half-precision rounding.
  const auto h = random_qkv(64, at::kHalf, 1.0, 8);
  const auto sdpa = ltxmps::attention(h.q, h.k, h.v, std::nullopt, {ltxmps::AttentionKernel::sdpa});
  const auto upcast = ltxmps::attention(h.q, h.k, h.v, std::nullopt, {ltxmps::AttentionKernel::upcast});
  CHECK(upcast.scalar_type() == at::kHalf);
  CHECK((sdpa.to(at::kFloat) - upcast.to(at::kFloat)).abs().max().item<float>() < 5e-3f);
}

TEST_CASE("attention: half-precision softmax without upcast overflows; the upcast path is right", "[attention]") {
  // With |q|, |k| ~ 100 per channel, q·kᵀ over 16 channels reaches ~1e5, past fp16's 65504: the
  // half-precision scores overflow to inf and the softmax gives inf - inf = NaN. The upcast path
  // computes the scores in float32.
  const auto x = random_qkv(32, at::kHalf, 100.0, 9);
  const auto naive = ltxmps::attention(x.q, x.k, x.v, std::nullopt, {ltxmps::AttentionKernel::math});
  CHECK(naive.isnan().any().item<bool>());
  const auto upcast = ltxmps::attention(x.q, x.k, x.v, std::nullopt, {ltxmps::AttentionKernel::upcast});
  CHECK_FALSE(upcast.isnan().any().item<bool>());
  const auto expected = reference_attention(x);
  CHECK((upcast.to(at::kDouble) - expected).abs().max().item<double>() < 1e-2);
}

TEST_CASE("attention_probs: float32, rows sum to one, chunking changes nothing", "[attention]") {
  const auto x = random_qkv(50, at::kHalf, 1.0, 10);
  const auto whole = ltxmps::attention_probs(x.q, x.k, std::nullopt, 0);
  const auto chunked = ltxmps::attention_probs(x.q, x.k, std::nullopt, 7);
  CHECK(whole.scalar_type() == at::kFloat);
  CHECK(whole.sizes() == at::IntArrayRef({1, 2, 50, 50}));
  // Chunks run other matmul blockings: equal up to float32 rounding.
  CHECK((whole - chunked).abs().max().item<float>() < 1e-6f);
  CHECK((whole.sum(-1) - 1).abs().max().item<float>() < 1e-5f);
  int64_t rows = 0;
  ltxmps::visit_attention_probs(x.q, x.k, std::nullopt, 16, [&](int64_t begin, const at::Tensor& p) {
    CHECK(begin == rows);
    CHECK(p.size(2) <= 16);
    rows += p.size(2);
  });
  CHECK(rows == 50);
}

TEST_CASE("attention: bad shapes are errors naming the shapes", "[attention]") {
  auto q = at::zeros({1, 2, 4, 8});
  auto k = at::zeros({1, 2, 5, 4});
  try {
    ltxmps::attention(q, k, k);
    FAIL("no error");
  } catch (const ltxmps::Error& e) {
    CHECK_THAT(std::string(e.what()), ltxmps_test::Contains("incompatible shapes"));
  }
  CHECK_THROWS_AS(ltxmps::attention(at::zeros({2, 4, 8}), k, k), ltxmps::Error);
  CHECK_THROWS_AS(ltxmps::attention(q, q, q, at::zeros({1, 1, 4, 3})), ltxmps::Error);
  CHECK_THROWS_AS(ltxmps::attention(q, q, q, std::nullopt, {ltxmps::AttentionKernel::upcast, std::nullopt, -1}),
                  ltxmps::Error);
}

TEST_CASE("memory on the CPU: no-ops and no statistics", "[memory]") {
  const c10::Device cpu(c10::DeviceType::CPU);
  CHECK_NOTHROW(ltxmps::synchronize(cpu));
  CHECK_NOTHROW(ltxmps::empty_cache(cpu));
  const auto stats = ltxmps::memory_stats(cpu);
  CHECK_FALSE(stats.allocated.has_value());
  CHECK_FALSE(stats.peak_allocated.has_value());
  std::vector<ltxmps::Diagnostic> notes;
  { ltxmps::ReleaseMemoryScope scope(cpu, "test", ltxmps::collect_into(notes)); }
  CHECK(notes.empty());
  if (!torch::mps::is_available()) {
    CHECK_THROWS_AS(ltxmps::empty_cache(c10::Device(c10::DeviceType::MPS)), ltxmps::Error);
    CHECK_THROWS_AS(ltxmps::synchronize(c10::Device(c10::DeviceType::MPS)), ltxmps::Error);
    CHECK_FALSE(ltxmps::can_empty_cache(c10::Device(c10::DeviceType::MPS)));
    // A scope on an absent device reports, never throws from its destructor.
    { ltxmps::ReleaseMemoryScope scope(c10::Device(c10::DeviceType::MPS), "decode", ltxmps::collect_into(notes)); }
    REQUIRE(notes.size() == 1);
    CHECK(notes[0].rule == "memory.release_failed");
  }
}

TEST_CASE("offload scope moves in and out only when enabled", "[offload]") {
  std::vector<std::string> moves;
  auto mover = [&](const c10::Device& d) { moves.push_back(d.str()); };
  const auto off = ltxmps::decide_offload(true, c10::Device("cpu"));
  { ltxmps::OffloadScope scope(off, mover, "transformer"); }
  CHECK(moves.empty());
  // An enabled decision whose execution device is the CPU exercises the moves without a GPU.
  ltxmps::OffloadDecision on;
  on.enabled = true;
  std::vector<ltxmps::Diagnostic> notes;
  {
    ltxmps::OffloadScope scope(on, mover, "vae", ltxmps::collect_into(notes));
    CHECK(moves == std::vector<std::string>{"cpu"});
  }
  CHECK(moves.size() == 2);
  REQUIRE(notes.size() == 2);
  CHECK(notes[0].rule == "offload.onload");
  CHECK(notes[1].rule == "offload.offload");
}
