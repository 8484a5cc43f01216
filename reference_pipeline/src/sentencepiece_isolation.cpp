// Loads libltxmps_spm (SentencePiece behind a C interface) into a link-map namespace of its own.

#include "sentencepiece_isolation.hpp"

#include "ltxmps_spm.h"

#include "ltxmps/error.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <utility>

namespace ltxmps::pipeline::detail {

// Note [SentencePiece isolation]
// Debian's libsentencepiece.so (there is no static library to hide inside ours) and LibTorch's libc10.so both
// export a data symbol FLAGS_minloglevel: a 32-byte absl-style flag object in SentencePiece, a 4-byte int in
// c10. ELF has one global symbol scope, and both libraries reach the symbol through their GOT, so every
// reference binds to the first definition in load order:
//   - c10's first (LibTorch linked before SentencePiece): SentencePiece's static initializer constructs its flag
//     object over c10's int and the bytes after it, one of which is FLAGS_caffe2_use_fatal_for_enforce. c10
//     then turns every enforce failure, an allocation that fails included, into a fatal log and SIGABRT
//     instead of throwing c10::Error;
//   - SentencePiece's first: c10 reads its log level from the low half of the pointer that starts the flag
//     object (a number in the billions: c10's log messages below FATAL vanish) and writes into that object
//     when the level is set.
// So no link order is right, and a version script cannot help: the libraries are prebuilt and the clash is in
// their own dynamic symbol tables. SentencePiece has to be kept out of the global scope altogether:
//   - it is linked only into libltxmps_spm, a small module with a C interface (ltxmps_spm.h); the pipeline
//     library does not link it and loads the module at the first tokenizer load;
//   - the module is opened with dlmopen(LM_ID_NEWLM): a new link-map namespace with its own copies of
//     libsentencepiece, libstdc++ and libc, where lookups never see c10 (or anything else the process loaded).
// Rejected: dlopen(RTLD_LOCAL) alone still resolves the module's references through the global scope first,
// so c10's definition wins again. RTLD_DEEPBIND searches the module's own dependencies first, but those include
// libstdc++, whose std::cerr is, in a PIE program that uses it, a copy relocated into the executable: the one
// the module then binds to is never constructed and SentencePiece's logging crashes into it; AddressSanitizer
// also refuses RTLD_DEEPBIND outright. dlmopen has neither problem and works unchanged in the ASan + UBSan build
// (the module is built without sanitizers: it runs on the namespace's own uninstrumented runtimes).
// The price of a separate namespace: no C++ object, exception or heap block may cross the interface (hence the
// C ABI with caller-owned buffers), a few MB for the second runtimes, one of glibc's 16 namespaces, and the
// module is never closed (it is loaded once per process; unloading a namespace that holds a libc is not
// reliable). tests/pipeline/test_link_isolation.cpp checks the isolation, in-process and through the CLI.
// Without glibc there is no dlmopen: the module is opened with dlopen(RTLD_LOCAL). That isolates it on macOS,
// where two-level namespaces bind each library's references to the library it was linked against; a C library
// with ELF's single scope and no dlmopen (musl) gets the layout but not the isolation.

namespace {

struct SpmLibrary {
  std::filesystem::path path;
  ltxmps_spm_load_fn load = nullptr;
  ltxmps_spm_free_fn free = nullptr;
  ltxmps_spm_piece_size_fn piece_size = nullptr;
  ltxmps_spm_piece_to_id_fn piece_to_id = nullptr;
  ltxmps_spm_id_to_piece_fn id_to_piece = nullptr;
  ltxmps_spm_encode_fn encode = nullptr;
};

template <typename Function>
Function symbol(void* handle, const char* name, const std::filesystem::path& path) {
  void* address = dlsym(handle, name);
  LTXMPS_CHECK(address != nullptr, "the SentencePiece wrapper ", path.string(), " lacks the function ", name);
  return reinterpret_cast<Function>(address);
}

SpmLibrary open_library() {
  SpmLibrary lib;
  lib.path = sentencepiece_library_path();
  LTXMPS_CHECK(std::filesystem::is_regular_file(lib.path), "the SentencePiece wrapper ", lib.path.string(),
               " does not exist (it is installed next to the ltxmps_pipeline library)");
#if defined(__GLIBC__)
  void* handle = dlmopen(LM_ID_NEWLM, lib.path.c_str(), RTLD_NOW | RTLD_LOCAL);
#else
  void* handle = dlopen(lib.path.c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
  if (handle == nullptr) {
    const char* reason = dlerror();
    throw Error(c10::str("cannot load the SentencePiece wrapper ", lib.path.string(), ": ",
                         reason != nullptr ? reason : "unknown reason"));
  }
  const int abi = symbol<ltxmps_spm_abi_version_fn>(handle, "ltxmps_spm_abi_version", lib.path)();
  LTXMPS_CHECK(abi == LTXMPS_SPM_ABI_VERSION, "the SentencePiece wrapper ", lib.path.string(), " has interface version ",
               abi, ", this ltxmps_pipeline expects ", LTXMPS_SPM_ABI_VERSION, " (a library from another build?)");
  lib.load = symbol<ltxmps_spm_load_fn>(handle, "ltxmps_spm_load", lib.path);
  lib.free = symbol<ltxmps_spm_free_fn>(handle, "ltxmps_spm_free", lib.path);
  lib.piece_size = symbol<ltxmps_spm_piece_size_fn>(handle, "ltxmps_spm_piece_size", lib.path);
  lib.piece_to_id = symbol<ltxmps_spm_piece_to_id_fn>(handle, "ltxmps_spm_piece_to_id", lib.path);
  lib.id_to_piece = symbol<ltxmps_spm_id_to_piece_fn>(handle, "ltxmps_spm_id_to_piece", lib.path);
  lib.encode = symbol<ltxmps_spm_encode_fn>(handle, "ltxmps_spm_encode", lib.path);
  return lib;
}

// Opened once per process (a failed attempt is retried by the next call).
const SpmLibrary& library() {
  static const SpmLibrary lib = open_library();
  return lib;
}

// Any object of this library: dladdr() names the file that holds it.
const char library_anchor = 0;

constexpr size_t error_capacity = 1024;

}  // namespace

std::filesystem::path sentencepiece_library_path() {
  Dl_info info{};
  LTXMPS_CHECK(dladdr(&library_anchor, &info) != 0 && info.dli_fname != nullptr,
               "cannot tell which file holds the ltxmps_pipeline library (dladdr failed), so the SentencePiece "
               "wrapper cannot be found");
  return std::filesystem::path(info.dli_fname).parent_path() / LTXMPS_SPM_LIBRARY_FILE;
}

SentencePieceModel::SentencePieceModel(const std::filesystem::path& file) : file_(file) {
  const auto& lib = library();
  char error[error_capacity] = {};
  handle_ = lib.load(file.string().c_str(), error, sizeof error);
  LTXMPS_CHECK(handle_ != nullptr, file.string(), ": not a SentencePiece model (", error, ")");
}

SentencePieceModel::SentencePieceModel(SentencePieceModel&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)), file_(std::move(other.file_)) {}

SentencePieceModel& SentencePieceModel::operator=(SentencePieceModel&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) library().free(handle_);
    handle_ = std::exchange(other.handle_, nullptr);
    file_ = std::move(other.file_);
  }
  return *this;
}

SentencePieceModel::~SentencePieceModel() {
  if (handle_ != nullptr) library().free(handle_);
}

int64_t SentencePieceModel::piece_size() const { return library().piece_size(handle_); }

int64_t SentencePieceModel::piece_to_id(const std::string& piece) const {
  const int32_t id = library().piece_to_id(handle_, piece.data(), piece.size());
  LTXMPS_CHECK(id >= 0, file_.string(), ": SentencePiece failed to look up the piece '", piece, "'");
  return id;
}

std::string SentencePieceModel::id_to_piece(int64_t id) const {
  LTXMPS_CHECK(id >= 0 && id < piece_size(), file_.string(), ": id ", id, " is not a piece of the model (",
               piece_size(), " pieces)");
  std::string piece(64, '\0');
  int64_t length = library().id_to_piece(handle_, static_cast<int32_t>(id), piece.data(), piece.size());
  if (length > static_cast<int64_t>(piece.size())) {
    piece.resize(static_cast<size_t>(length));
    length = library().id_to_piece(handle_, static_cast<int32_t>(id), piece.data(), piece.size());
  }
  piece.resize(static_cast<size_t>(std::max<int64_t>(length, 0)));
  return piece;
}

void SentencePieceModel::encode(const std::string& text, std::vector<int64_t>& out) const {
  // A piece covers at least one byte, and the dummy prefix "▁" may be one more: the first call fits.
  std::vector<int32_t> ids(text.size() + 2);
  char error[error_capacity] = {};
  int64_t count = library().encode(handle_, text.data(), text.size(), ids.data(), ids.size(), error, sizeof error);
  if (count > static_cast<int64_t>(ids.size())) {
    ids.resize(static_cast<size_t>(count));
    count = library().encode(handle_, text.data(), text.size(), ids.data(), ids.size(), error, sizeof error);
  }
  LTXMPS_CHECK(count >= 0 && count <= static_cast<int64_t>(ids.size()), file_.string(),
               ": SentencePiece could not encode the prompt: ", error);
  out.insert(out.end(), ids.begin(), ids.begin() + count);
}

}  // namespace ltxmps::pipeline::detail
