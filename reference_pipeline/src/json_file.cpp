// Strict JSON parsing shared by the safetensors reader and the config/index readers (json_file.hpp).

#include "ltxmps_pipeline/json_file.hpp"

#include "ltxmps_pipeline/output_files.hpp"

#include "ltxmps/error.hpp"

#include <algorithm>
#include <cstdint>
#include <set>
#include <vector>

namespace ltxmps::pipeline {

namespace detail {

nlohmann::json parse_json_strict(std::string_view text, const std::filesystem::path& file, std::string_view what) {
  // nlohmann keeps the last of duplicate keys silently; a duplicate in a header or an index means a
  // broken writer, and which value wins would be an accident, so the callback records the first one.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  bool has_duplicate = false;
  const auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == Event::key && !open_objects.empty()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second && !has_duplicate) {
        duplicate = key;
        has_duplicate = true;
      }
    }
    return true;
  };
  nlohmann::json out;
  try {
    out = nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {
    throw Error(c10::str("invalid JSON in ", what, file.string(), ": ", e.what()));
  }
  LTXMPS_CHECK(!has_duplicate, "invalid JSON in ", what, file.string(), ": duplicate key '", duplicate, "'");
  return out;
}

std::string describe_json(const nlohmann::json& value) {
  if (value.is_object()) return "an object";
  if (value.is_array()) {
    // Short flat arrays ([0], [-1, 7]) are shown; dumping is safe once nesting is ruled out.
    const bool flat = value.size() <= 8 && std::none_of(value.begin(), value.end(),
                                                        [](const nlohmann::json& v) { return v.is_structured(); });
    if (!flat) return "an array";
  }
  std::string text = value.dump();
  if (text.size() > 64) text = text.substr(0, 61) + "...";
  return text;
}

}  // namespace detail

nlohmann::json read_json_file(const std::filesystem::path& file) {
  constexpr uint64_t kMaxJsonBytes = uint64_t{256} << 20;
  const auto text = read_regular_file(file, "cannot read JSON file", kMaxJsonBytes);
  return detail::parse_json_strict(text, file, "");
}

}  // namespace ltxmps::pipeline
