#pragma once
// Catch2 v2 (Debian 12) and v3 (Debian 13, the GPU machine) behind one include.
// Use ltxmps_test::Contains(text) for substring matchers: v3 renamed Contains to ContainsSubstring.
//
// c10/util/Logging.h defines its own CHECK(condition) (glog style: aborts on failure, counts nothing). Whichever
// of it and Catch2's CHECK comes last wins, silently (both are system headers). Include c10's first and drop its
// CHECK so that Catch2's is the one every test uses; its include guard keeps later ATen includes from bringing
// it back.
#include <c10/util/Logging.h>
#ifdef CHECK
#undef CHECK
#endif
#include <string>
#include <utility>
#include <vector>
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#define LTXMPS_CATCH_V3 1
namespace ltxmps_test {
inline auto Contains(const std::string& text) { return Catch::Matchers::ContainsSubstring(text); }
}  // namespace ltxmps_test
#else
#include <catch2/catch.hpp>
#define LTXMPS_CATCH_V3 0
namespace ltxmps_test {
inline auto Contains(const std::string& text) { return Catch::Matchers::Contains(text); }
}  // namespace ltxmps_test
#endif

namespace ltxmps_test {
#if LTXMPS_CATCH_V3
using StringMatcherBase = Catch::Matchers::MatcherBase<std::string>;
#else
using StringMatcherBase = Catch::MatcherBase<std::string>;
#endif

// Matches a string that contains every part. Use it instead of `Contains(a) && Contains(b)`: Catch2's
// combined matchers keep references to their operands, which dangle when the operands are temporaries
// (a crash with Catch2 v3).
class ContainsAllMatcher : public StringMatcherBase {
 public:
  explicit ContainsAllMatcher(std::vector<std::string> parts) : parts_(std::move(parts)) {}
  bool match(const std::string& text) const override {
    for (const auto& p : parts_)
      if (text.find(p) == std::string::npos) return false;
    return true;
  }
  std::string describe() const override {
    std::string out = "contains all of:";
    for (const auto& p : parts_) out += " \"" + p + "\"";
    return out;
  }

 private:
  std::vector<std::string> parts_;
};

inline ContainsAllMatcher ContainsAll(std::vector<std::string> parts) { return ContainsAllMatcher(std::move(parts)); }
}  // namespace ltxmps_test
