// The T5 tokenizer of LTX pipelines (transformers 5.17 models/t5/tokenization_t5.py, tokenizers-backed)
// on top of the SentencePiece library (loaded in isolation: Note [SentencePiece isolation] in
// sentencepiece_isolation.cpp).

#include "ltxmps_pipeline/tokenizer.hpp"

#include "sentencepiece_isolation.hpp"

#include "ltxmps_pipeline/json_file.hpp"
#include "ltxmps_pipeline/output_files.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <limits>

namespace ltxmps::pipeline {

// Note [T5 tokenizer rules]
// transformers 5.17 has a single T5 tokenizer class, `T5Tokenizer(TokenizersBackend)`, which is what
// `AutoTokenizer` (and so diffusers' `T5TokenizerFast` attribute) gives. Built from `spiece.model` it is a
// tokenizers pipeline:
//   added tokens (`<pad>`, `</s>`, `<unk>`, `<extra_id_0..99>`) are cut out of the raw text first
//     (leftmost-longest match, before normalization) and map to their ids;
//   each remaining segment: Precompiled normalizer (the model's nmt_nfkc charsmap) -> WhitespaceSplit ->
//     Metaspace("▁", prepend always) -> Unigram Viterbi with consecutive unknowns fused into one `<unk>`;
//   post-processor `$A </s>`.
// SentencePiece's own Encode() of a segment gives the same ids as that pipeline (checked on tens of
// thousands of random strings, see tests/parity/t5_oracle.py), except for:
//   1. the added tokens: raw SentencePiece spells `<extra_id_3>` out character by character. We cut them
//      out as tokenizers does and encode the text between them separately (each piece gets its own "▁").
//   2. U+0085 (NEL): Rust's `char::is_whitespace` splits words at it; SentencePiece's normalizer keeps it as
//      an unknown character inside the word. We split segments at U+0085.
// Known remaining difference (documented, not reproduced): a combining mark or U+200D that follows a
// character the charsmap rewrites (NBSP, halfwidth/fullwidth forms) at a word start; tokenizers normalizes
// per grapheme cluster and SentencePiece per character, so the two disagree on such clusters.
// Padding/truncation (`padding="max_length", truncation=True`): at most max_length-1 text ids, `</s>`,
// then `<pad>` (0) up to max_length; the mask is 1 for the text and `</s>`.

struct T5Tokenizer::State {
  explicit State(const std::filesystem::path& model_file) : sp(model_file), file(model_file) {}

  detail::SentencePieceModel sp;
  std::filesystem::path file;
  int64_t pieces = 0;
  int64_t extra_ids = 100;
  std::string pad_token = "<pad>", eos_token = "</s>", unk_token = "<unk>";
  int64_t pad = 0, eos = 1, unk = 2;
  std::optional<int64_t> model_max_length;

  // The id of the added token that starts at `text[pos]` and its length, longest first; {-1, 0} if none.
  std::pair<int64_t, size_t> special_at(const std::string& text, size_t pos) const {
    std::pair<int64_t, size_t> best{-1, 0};
    const std::pair<const std::string*, int64_t> named[] = {{&pad_token, pad}, {&eos_token, eos}, {&unk_token, unk}};
    for (const auto& [token, id] : named)
      if (!token->empty() && text.compare(pos, token->size(), *token) == 0 && token->size() > best.second)
        best = {id, token->size()};
    static const std::string prefix = "<extra_id_";
    if (text.compare(pos, prefix.size(), prefix) == 0) {
      size_t end = pos + prefix.size();
      int64_t n = 0;
      while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end])) && end - pos - prefix.size() < 9)
        n = n * 10 + (text[end++] - '0');
      const size_t digits = end - pos - prefix.size();
      const bool canonical = digits > 0 && (digits == 1 || text[pos + prefix.size()] != '0');
      if (canonical && end < text.size() && text[end] == '>' && n < extra_ids && end + 1 - pos > best.second)
        best = {pieces + extra_ids - 1 - n, end + 1 - pos};
    }
    return best;
  }

  static std::unique_ptr<State> open(const std::filesystem::path& file, int64_t extra_ids, const std::string& pad_token,
                                       const std::string& eos_token, const std::string& unk_token) {
    // SentencePiece opens the path itself, blocking: a FIFO would hang it (Note [Opening inputs without blocking]
    // in output_files.cpp), so the type is checked here first.
    (void)open_regular_file(file, "tokenizer model");
    LTXMPS_CHECK(extra_ids >= 0, file.string(), ": extra_ids must be >= 0, got ", extra_ids);
    auto s = std::make_unique<State>(file);
    s->pieces = s->sp.piece_size();
    s->extra_ids = extra_ids;
    s->pad_token = pad_token;
    s->eos_token = eos_token;
    s->unk_token = unk_token;
    auto id_of = [&](const std::string& token, const char* what) {
      const int64_t id = s->sp.piece_to_id(token);
      LTXMPS_CHECK(s->sp.id_to_piece(id) == token, file.string(), ": the ", what, " token '", token,
                   "' is not a piece of the model");
      return id;
    };
    s->pad = id_of(pad_token, "pad");
    s->eos = id_of(eos_token, "eos");
    s->unk = id_of(unk_token, "unk");
    return s;
  }

  void encode_segment(const std::string& segment, std::vector<int64_t>& out) const {
    static const std::string nel = "\xC2\x85";
    size_t begin = 0;
    while (true) {
      const size_t end = segment.find(nel, begin);
      const auto word = segment.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
      if (!word.empty()) sp.encode(word, out);
      if (end == std::string::npos) break;
      begin = end + nel.size();
    }
  }
};

T5Tokenizer::T5Tokenizer(std::unique_ptr<State> state) : state_(std::move(state)) {}
T5Tokenizer::T5Tokenizer(T5Tokenizer&&) noexcept = default;
T5Tokenizer& T5Tokenizer::operator=(T5Tokenizer&&) noexcept = default;
T5Tokenizer::~T5Tokenizer() = default;

T5Tokenizer T5Tokenizer::from_model_file(const std::filesystem::path& file, int64_t extra_ids) {
  return T5Tokenizer(State::open(file, extra_ids, "<pad>", "</s>", "<unk>"));
}

T5Tokenizer T5Tokenizer::load(const std::filesystem::path& dir) {
  LTXMPS_CHECK(std::filesystem::is_directory(dir), "tokenizer folder ", dir.string(), " does not exist or is not a folder");
  int64_t extra_ids = 100;
  std::string tokens[3] = {"<pad>", "</s>", "<unk>"};
  std::optional<int64_t> max_length;
  const auto config_file = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_file)) {
    const auto config = read_json_file(config_file);
    LTXMPS_CHECK(config.is_object(), config_file.string(), ": expected a JSON object");
    auto get_int = [&](const char* key) -> std::optional<int64_t> {
      if (!config.contains(key) || config.at(key).is_null()) return std::nullopt;
      const auto& v = config.at(key);
      LTXMPS_CHECK(v.is_number(), config_file.string(), ": field '", key, "' must be a number");
      // transformers writes VERY_LARGE_INTEGER (1e30) for "no limit".
      if (v.is_number_float() && v.get<double>() >= 1e18) return std::numeric_limits<int64_t>::max();
      return v.get<int64_t>();
    };
    if (auto e = get_int("extra_ids")) extra_ids = *e;
    if (auto m = get_int("model_max_length"); m && *m > 0 && *m < (int64_t{1} << 40)) max_length = m;
    const char* keys[3] = {"pad_token", "eos_token", "unk_token"};
    for (int i = 0; i < 3; ++i) {
      if (!config.contains(keys[i]) || config.at(keys[i]).is_null()) continue;
      const auto& v = config.at(keys[i]);
      // A plain string, or an AddedToken dict {"content": ...}.
      if (v.is_string()) tokens[i] = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v.at("content").is_string()) tokens[i] = v.at("content").get<std::string>();
      else throw Error(c10::str(config_file.string(), ": field '", keys[i], "' must be a string or an AddedToken"));
    }
  }
  auto state = State::open(dir / "spiece.model", extra_ids, tokens[0], tokens[1], tokens[2]);
  state->model_max_length = max_length;
  return T5Tokenizer(std::move(state));
}

std::vector<int64_t> T5Tokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids;
  size_t segment_begin = 0, pos = 0;
  while (pos < text.size()) {
    const auto [id, length] = state_->special_at(text, pos);
    if (id < 0) {
      ++pos;
      continue;
    }
    state_->encode_segment(text.substr(segment_begin, pos - segment_begin), ids);
    ids.push_back(id);
    pos += length;
    segment_begin = pos;
  }
  state_->encode_segment(text.substr(segment_begin), ids);
  ids.push_back(state_->eos);
  return ids;
}

TokenizedPrompts T5Tokenizer::operator()(const std::vector<std::string>& prompts, std::optional<int64_t> max_length) const {
  if (!max_length) max_length = state_->model_max_length;
  LTXMPS_CHECK(max_length.has_value(), state_->file.string(),
               ": no max_length given and the tokenizer has no model_max_length");
  const int64_t n = *max_length;
  LTXMPS_CHECK(n >= 1, "T5Tokenizer: max_length must be >= 1, got ", n);
  const int64_t batch = static_cast<int64_t>(prompts.size());
  TokenizedPrompts out;
  out.input_ids = at::full({batch, n}, state_->pad, at::kLong);
  out.attention_mask = at::zeros({batch, n}, at::kLong);
  auto ids_acc = out.input_ids.accessor<int64_t, 2>();
  auto mask_acc = out.attention_mask.accessor<int64_t, 2>();
  for (int64_t b = 0; b < batch; ++b) {
    auto ids = encode(prompts[static_cast<size_t>(b)]);
    ids.pop_back();  // </s>, re-appended after truncation
    const int64_t text = std::min<int64_t>(static_cast<int64_t>(ids.size()), n - 1);
    for (int64_t i = 0; i < text; ++i) ids_acc[b][i] = ids[static_cast<size_t>(i)];
    ids_acc[b][text] = state_->eos;
    for (int64_t i = 0; i <= text; ++i) mask_acc[b][i] = 1;
  }
  return out;
}

int64_t T5Tokenizer::vocab_size() const { return state_->pieces + state_->extra_ids; }
int64_t T5Tokenizer::pad_id() const { return state_->pad; }
int64_t T5Tokenizer::eos_id() const { return state_->eos; }
int64_t T5Tokenizer::unk_id() const { return state_->unk; }
std::optional<int64_t> T5Tokenizer::model_max_length() const { return state_->model_max_length; }

}  // namespace ltxmps::pipeline
