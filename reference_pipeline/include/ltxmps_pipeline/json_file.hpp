#pragma once
/// @file json_file.hpp
/// @brief Strict JSON parsing of untrusted text and files: the safetensors header, sharded indexes and every
///        config.json go through here, so duplicate keys, oversized files and FIFOs are refused the same way.

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <string_view>

namespace ltxmps::pipeline {

/// @brief Reads and parses a JSON file (config.json, model_index.json, an index); the error names
/// the file and the parse position. Duplicate keys are rejected. Only a regular file is read: a FIFO,
/// a device or a folder is an error before anything is opened blocking (open_regular_file()), and a
/// file above 256 MiB is refused before it is read.
nlohmann::json read_json_file(const std::filesystem::path& file);

namespace detail {
/// @brief Parses `text` as JSON and rejects duplicate object keys; errors name `file` and `what`
/// ("the header of", "") and the parse position. Shared by the safetensors header and JSON files.
nlohmann::json parse_json_strict(std::string_view text, const std::filesystem::path& file, std::string_view what);
/// @brief A short description of an untrusted JSON value for an error message: scalars and short
/// flat arrays as JSON (cut to 64 characters), other containers by kind (never dumped: they may be
/// deeply nested).
std::string describe_json(const nlohmann::json& value);
}  // namespace detail

}  // namespace ltxmps::pipeline
