// SentencePiece kept out of the process's global symbol scope (Note [SentencePiece isolation] in
// reference_pipeline/src/sentencepiece_isolation.cpp). With libsentencepiece linked beside LibTorch, its static
// initializer overwrote c10's FLAGS_caffe2_use_fatal_for_enforce and every failed allocation aborted the process
// (SIGABRT) instead of throwing c10::Error. These tests load a real tokenizer through the wrapper and then make
// allocations that cannot succeed: in this process (which links the pipeline library as every consumer does) and
// in the `ltxmps` binary, whose exit status must be 1 with the allocator's message, never a signal.
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/tokenizer.hpp"

#include <ATen/ATen.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// Last: c10/util/Logging.h defines a fatal CHECK() macro; Catch2's must win.
#include "catch_compat.hpp"

// Under AddressSanitizer an impossible allocation is an ASan error unless the allocator may return null; then
// c10 sees the failure as it does without sanitizers. Unused in other builds.
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }

extern char** environ;

namespace fs = std::filesystem;
using ltxmps::pipeline::T5Tokenizer;
using ltxmps_test::Contains;

namespace link_test {

fs::path work_dir() {
  const char* env = std::getenv("LTXMPS_TEST_DATA");
  const fs::path root = env && *env ? fs::path(env) : fs::temp_directory_path() / "ltxmps_test_data";
  return root / "link_isolation";
}

// A SentencePiece unigram ModelProto written field by field (protobuf wire format: `repeated SentencePiece
// pieces = 1` with piece = 1, score = 2, type = 3; trainer and normalizer specs left at their defaults: unigram,
// no character map, "▁" prefix and whitespace escaping).
std::string varint(uint64_t v) {
  std::string out;
  for (; v >= 0x80; v >>= 7) out += static_cast<char>((v & 0x7F) | 0x80);
  return out + static_cast<char>(v);
}

std::string piece(const std::string& text, float score, int type) {
  std::string body = "\x0A" + varint(text.size()) + text + "\x15";
  char bytes[4];
  std::memcpy(bytes, &score, 4);
  body.append(bytes, 4);
  body += "\x18" + varint(static_cast<uint64_t>(type));
  return "\x0A" + varint(body.size()) + body;
}

// Ids 0 <pad>, 1 </s>, 2 <unk>, 3 "▁", 4 "a", 5 "b", 6 "▁ab".
fs::path write_model() {
  enum { normal = 1, unknown = 2, control = 3 };
  const std::string model = piece("<pad>", 0, control) + piece("</s>", 0, control) + piece("<unk>", 0, unknown) +
                            piece("\xE2\x96\x81", -2, normal) + piece("a", -2, normal) + piece("b", -2, normal) +
                            piece("\xE2\x96\x81" "ab", -1, normal);
  fs::create_directories(work_dir());
  const auto file = work_dir() / "spiece.model";
  std::ofstream(file, std::ios::binary) << model;
  return file;
}

std::string slurp(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

struct Exit {
  bool exited = false;  // false: ended by a signal
  int code = -1;        // exit code, or the signal number
  std::string err;
};

// Runs `ltxmps args...` directly (no shell, which would turn a signal into an exit code 128 + N).
Exit run_ltxmps(const std::vector<std::string>& args) {
  fs::create_directories(work_dir());
  const auto err_file = work_dir() / "stderr.txt";
  std::vector<std::string> argv_text{LTXMPS_CLI_PATH};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The child's environment: ours, with ASAN_OPTIONS extended as __asan_default_options does for this process.
  std::vector<std::string> env_text;
  std::string asan = "ASAN_OPTIONS=allocator_may_return_null=1";
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "ASAN_OPTIONS=", 13) == 0) asan += std::string(":") + (*e + 13);
    else env_text.emplace_back(*e);
  }
  env_text.push_back(asan);
  std::vector<char*> envp;
  for (auto& e : env_text) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(spawned == 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  Exit out;
  out.exited = WIFEXITED(status);
  out.code = out.exited ? WEXITSTATUS(status) : (WIFSIGNALED(status) ? WTERMSIG(status) : -1);
  out.err = slurp(err_file);
  return out;
}

// More bytes than any address space holds: the CPU allocator must fail whatever the overcommit policy.
constexpr int64_t impossible_numel = int64_t{1} << 58;

}  // namespace link_test

using namespace link_test;

TEST_CASE("the tokenizer runs SentencePiece from the wrapper, not from the global symbol scope", "[link]") {
  const auto tokenizer = T5Tokenizer::from_model_file(write_model());
  // SentencePiece really ran: the unigram path of "▁ab▁ab▁b", and an unknown character.
  CHECK(tokenizer.encode("ab ab b") == std::vector<int64_t>{6, 6, 3, 5, 1});
  CHECK(tokenizer.encode("ab c") == std::vector<int64_t>{6, 3, 2, 1});
  CHECK(tokenizer.vocab_size() == 7 + 100);

  // Neither SentencePiece's API nor its flag objects are visible to this process's symbol lookups...
  CHECK(dlsym(RTLD_DEFAULT, "_ZN13sentencepiece22SentencePieceProcessorC1Ev") == nullptr);
  CHECK(dlsym(RTLD_DEFAULT, "FLAGS_help") == nullptr);
  // ...so FLAGS_minloglevel is c10's alone, and the flag after it still says "throw".
  void* minloglevel = dlsym(RTLD_DEFAULT, "FLAGS_minloglevel");
  REQUIRE(minloglevel != nullptr);
  Dl_info info{};
  REQUIRE(dladdr(minloglevel, &info) != 0);
  CHECK_THAT(std::string(info.dli_fname), Contains("c10"));
  // Read as a byte: a clobbered bool holds values other than 0 and 1.
  const auto* fatal = static_cast<const unsigned char*>(dlsym(RTLD_DEFAULT, "FLAGS_caffe2_use_fatal_for_enforce"));
  REQUIRE(fatal != nullptr);
  CHECK(static_cast<int>(*fatal) == 0);
}

TEST_CASE("an allocation that cannot succeed throws c10::Error after the tokenizer is loaded", "[link]") {
  const auto tokenizer = T5Tokenizer::from_model_file(write_model());
  CHECK_THROWS_AS(at::empty({impossible_numel}, at::kFloat), c10::Error);
  // The tokenizer's own buffers: `max_length` ids per prompt.
  CHECK_THROWS_WITH(tokenizer({"ab"}, impossible_numel), Contains("can't allocate memory"));
}

#ifdef LTXMPS_CLI_PATH
TEST_CASE("the ltxmps binary reports an impossible allocation with exit code 1, not a signal", "[link][cli]") {
  // 2^50 x 64 pixels, 9 frames: the first latent alone is 2^52 bytes, more than any address space holds. The
  // request's memory estimate would refuse it before any allocation; --skip-memory-check lets it reach one.
  const auto run = run_ltxmps({"generate", "--height", std::to_string(int64_t{1} << 50), "--width", "64",
                               "--skip-memory-check", "--output", (work_dir() / "never").string()});
  INFO("stderr: " << run.err);
  REQUIRE(run.exited);
  CHECK(run.code == 1);
  CHECK_THAT(run.err, Contains("can't allocate memory"));
  CHECK_FALSE(fs::exists(work_dir() / "never"));
}
#endif
