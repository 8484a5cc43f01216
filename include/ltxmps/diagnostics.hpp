#pragma once
/// @file diagnostics.hpp
/// @brief Diagnostics: the reasons a plan carries, and the sink that receives run-time notes.

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace ltxmps {

/// @brief How much a diagnostic matters to the user.
enum class Severity {
  /// A decision taken as requested or by a documented default.
  info,
  /// A request was changed or ignored; the result differs from what was asked for.
  warning,
};

/// @brief The name of a severity ("info", "warning").
inline const char* to_string(Severity severity) noexcept {
  return severity == Severity::warning ? "warning" : "info";
}

/// @brief One explained decision.
///
/// `topic` names what was decided ("device", "precision.vae", "offload", ...), `rule` is a short
/// stable identifier of the rule that fired (for tests and tooling) and `message` explains it to a
/// person, with its source where the rule comes from elsewhere (seed port, diffusers, ComfyUI).
///
/// `topic` and `rule` are views of strings with static storage (string literals): they name a fixed
/// vocabulary, and keeping them allocation-free keeps plan resolution well under a microsecond.
struct Diagnostic {
  /// Severity of the decision.
  Severity severity = Severity::info;
  /// What was decided (a string literal).
  std::string_view topic;
  /// Stable identifier of the rule that fired (a string literal).
  std::string_view rule;
  /// Human-readable explanation.
  std::string message;
};

/// @brief Receives diagnostics produced while work runs (offload scopes, memory release, ...).
///
/// Library code never prints; the caller decides where notes go (a log, the terminal, nowhere).
using DiagnosticSink = std::function<void(const Diagnostic&)>;

/// @brief A sink that drops everything.
inline DiagnosticSink null_sink() {
  return [](const Diagnostic&) {};
}

/// @brief A sink that appends to `out` (which must outlive the sink).
inline DiagnosticSink collect_into(std::vector<Diagnostic>& out) {
  return [&out](const Diagnostic& d) { out.push_back(d); };
}

/// @brief True when `diagnostics` holds an entry with this rule identifier.
inline bool has_rule(const std::vector<Diagnostic>& diagnostics, std::string_view rule) {
  for (const auto& d : diagnostics)
    if (d.rule == rule) return true;
  return false;
}

}  // namespace ltxmps
