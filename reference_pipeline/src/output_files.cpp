// Inputs opened without blocking, output paths checked up front, atomic outputs and cancellation
// (output_files.hpp).

#include "ltxmps_pipeline/output_files.hpp"

#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/video_io.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <system_error>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

namespace fs = std::filesystem;

namespace ltxmps::pipeline {

// ---------------------------------------------------------------------------------------------------
// Inputs

namespace {

const char* kind_of_mode(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

std::string prefix(const std::string& what, const fs::path& file) {
  return what.empty() ? file.string() : what + " " + file.string();
}

}  // namespace

std::string describe_file_type(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return errno == ENOENT || errno == ENOTDIR ? "nothing (no such file or folder)" : std::strerror(errno);
  return kind_of_mode(st.st_mode);
}

ReadOnlyFd& ReadOnlyFd::operator=(ReadOnlyFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

ReadOnlyFd::~ReadOnlyFd() {
  if (fd_ >= 0) ::close(fd_);
}

// Note [Opening inputs without blocking]
// open(2) on a FIFO blocks until a writer appears, and reading a device can block forever, so the type is
// checked before any open where possible (a clear message for the common case) and the open itself uses
// O_NONBLOCK with the type checked again on the descriptor (a file swapped in between is still refused). The
// flag is cleared afterwards: it has no effect on regular files, but readers should see a plain descriptor.
ReadOnlyFd open_regular_file(const fs::path& file, const std::string& what) {
  LTXMPS_CHECK(!file.empty(), what.empty() ? std::string("input") : what, ": the path is empty");
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    const int err = errno;
    LTXMPS_CHECK(err != ENOENT && err != ENOTDIR, prefix(what, file), ": no such file");
    LTXMPS_CHECK(false, prefix(what, file), ": cannot read it (", std::strerror(err), ")");
  }
  LTXMPS_CHECK(S_ISREG(st.st_mode), prefix(what, file), ": is ", kind_of_mode(st.st_mode),
               S_ISDIR(st.st_mode) ? ", not a file" : ", not a regular file");
  ReadOnlyFd fd(::open(file.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  LTXMPS_CHECK(fd.get() >= 0, prefix(what, file), ": cannot open it (", std::strerror(errno), ")");
  LTXMPS_CHECK(::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode), prefix(what, file),
               ": is not a regular file (it changed while being opened)");
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags >= 0) (void)::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

std::string read_regular_file(const fs::path& file, const std::string& what, uint64_t max_bytes) {
  const auto fd = open_regular_file(file, what);
  struct stat st {};
  LTXMPS_CHECK(::fstat(fd.get(), &st) == 0, prefix(what, file), ": cannot stat it (", std::strerror(errno), ")");
  const auto size = static_cast<uint64_t>(st.st_size);
  LTXMPS_CHECK(size <= max_bytes, prefix(what, file), ": is ", size, " bytes, more than the ", max_bytes,
               " bytes such a file may have");
  std::string text(static_cast<size_t>(size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    LTXMPS_CHECK(n >= 0, prefix(what, file), ": read failed (", std::strerror(errno), ")");
    if (n == 0) break;  // shrank while being read: parse what is there
    done += static_cast<size_t>(n);
  }
  text.resize(done);
  return text;
}

// ---------------------------------------------------------------------------------------------------
// Output paths

namespace {

// Device and inode of an existing path (symlinks followed), to catch hard links and bind mounts.
bool same_inode(const fs::path& a, const fs::path& b) {
  struct stat sa {}, sb {};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

fs::path resolved(const fs::path& p) {
  std::error_code ec;
  auto out = fs::weakly_canonical(fs::absolute(p, ec), ec);
  return ec ? fs::absolute(p).lexically_normal() : out;
}

bool is_inside(const fs::path& inner, const fs::path& folder) {
  const auto [f, i] = std::mismatch(folder.begin(), folder.end(), inner.begin(), inner.end());
  return f == folder.end() && i != inner.end();
}

// Creates and removes a probe file in `folder`: the one reliable test that a new file can be made there
// (permissions, read-only mounts, /proc, full quotas on some filesystems).
void probe_writable(const OutputPath& o, const fs::path& folder) {
  const auto probe = unique_temporary_path(folder / ".ltxmps-probe");
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NONBLOCK, 0600);
  LTXMPS_CHECK(fd >= 0, o.option, " ", o.path.string(), ": cannot create files in the folder '", folder.string(), "' (",
               std::strerror(errno), ")");
  ::close(fd);
  ::unlink(probe.c_str());
}

void check_one_output(const OutputPath& o) {
  const std::string name = o.option + " " + o.path.string();
  LTXMPS_CHECK(!o.path.empty(), o.option, " '': the path is empty");
  const bool folder_output = o.kind == OutputKind::video && !is_video_file_path(o.path);
  LTXMPS_CHECK(folder_output || o.kind != OutputKind::video || video_io_has_ffmpeg(), name,
               ": this ltxmps was built without FFmpeg and cannot write video files; give a folder name to get PNG "
               "frames (for example ", o.option, " ", fs::path(o.path).replace_extension().string(), ")");
  LTXMPS_CHECK(o.path.filename() != "." && o.path.filename() != ".." && !o.path.filename().empty(), name,
               ": names a folder itself, not a ", folder_output ? "folder to create" : "file");
  const fs::path parent = o.path.parent_path().empty() ? fs::path(".") : o.path.parent_path();
  struct stat st {};
  LTXMPS_CHECK(::stat(parent.c_str(), &st) == 0, name, ": the folder '", parent.string(), "' does not exist");
  LTXMPS_CHECK(S_ISDIR(st.st_mode), name, ": '", parent.string(), "' is ", kind_of_mode(st.st_mode), ", not a folder");
  if (::stat(o.path.c_str(), &st) == 0) {
    if (folder_output) {
      LTXMPS_CHECK(S_ISDIR(st.st_mode), name, ": exists and is ", kind_of_mode(st.st_mode),
                   "; not replacing it with a folder of PNG frames");
      check_frame_folder_target(o.path, name);
    } else {
      LTXMPS_CHECK(S_ISREG(st.st_mode), name, ": exists and is ", kind_of_mode(st.st_mode),
                   "; only a regular file is replaced by an output");
    }
  }
  probe_writable(o, parent);
}

}  // namespace

void check_output_paths(const std::vector<OutputPath>& outputs, const std::vector<InputPath>& inputs) {
  // Two outputs naming one file is the first thing to say: whatever is there now, one would replace the other.
  for (size_t i = 0; i < outputs.size(); ++i)
    for (size_t j = 0; j < i; ++j) {
      const auto& o = outputs[i];
      const auto& other = outputs[j];
      LTXMPS_CHECK(resolved(other.path) != resolved(o.path) && !same_inode(other.path, o.path), o.option, " ",
                   o.path.string(), ": is the same file as ", other.option, " ", other.path.string(),
                   "; one output would replace the other");
    }
  for (const auto& o : outputs) check_one_output(o);
  for (const auto& o : outputs) {
    const auto out = resolved(o.path);
    const bool folder_output = o.kind == OutputKind::video && !is_video_file_path(o.path);
    for (const auto& in : inputs) {
      if (in.path.empty()) continue;
      const auto p = resolved(in.path);
      LTXMPS_CHECK(p != out && !same_inode(in.path, o.path), o.option, " ", o.path.string(), ": is the same file as ",
                   in.option, " ", in.path.string(), "; writing it would destroy the input");
      LTXMPS_CHECK(!folder_output || !is_inside(p, out), o.option, " ", o.path.string(), ": the folder holds ",
                   in.option, " ", in.path.string(), ", which replacing it would destroy");
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Registry of temporaries and the signal handlers

namespace {

// Note [Temporaries and signals]
// The second-signal path runs inside a signal handler, so it may only use async-signal-safe calls on data
// that is never half-updated: a fixed table of slots, each a lock-free state and a path copied in before the
// state says "registered". A slot is registered before its temporary is created and released after the
// temporary is renamed or removed, so the handler at worst unlinks a name that no longer exists. Folders are
// emptied with getdents64 + unlinkat on Linux; elsewhere the handler can only rmdir an empty folder.
constexpr int kSlots = 64;
constexpr size_t kMaxPath = 4096;

struct Slot {
  std::atomic<int> state{0};  // 0 free, 1 being changed, 2 registered
  char path[kMaxPath];
};

Slot g_slots[kSlots];
std::atomic<int> g_signal{0};
std::atomic<uint64_t> g_counter{0};

static_assert(std::atomic<int>::is_always_lock_free, "signal handlers need lock-free atomics");

int register_temporary(const fs::path& path) {
  const std::string text = path.string();
  LTXMPS_CHECK(text.size() < kMaxPath, "temporary path ", text, " is too long (", kMaxPath, " bytes at most)");
  for (int i = 0; i < kSlots; ++i) {
    int expected = 0;
    if (!g_slots[i].state.compare_exchange_strong(expected, 1)) continue;
    std::memcpy(g_slots[i].path, text.c_str(), text.size() + 1);
    g_slots[i].state.store(2);
    return i;
  }
  LTXMPS_CHECK(false, "more than ", kSlots, " outputs are being written at once; cannot register ", text);
  return -1;
}

void release_temporary(int slot) {
  if (slot < 0) return;
  g_slots[slot].state.store(1);
  g_slots[slot].state.store(0);
}

// Async-signal-safe removal of a file or of a folder of files (Note [Temporaries and signals]).
void remove_in_handler(const char* path) {
  if (::unlink(path) == 0 || (errno != EISDIR && errno != EPERM)) return;
#if defined(__linux__)
  const int dir = ::open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dir >= 0) {
    alignas(8) char buffer[4096];
    for (;;) {
      const long n = ::syscall(SYS_getdents64, dir, buffer, sizeof buffer);
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        // struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
        unsigned short reclen = 0;
        std::memcpy(&reclen, buffer + off + 16, sizeof reclen);
        const char* name = buffer + off + 19;
        if (!(name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))) ::unlinkat(dir, name, 0);
        off += reclen;
      }
    }
    ::close(dir);
  }
#endif
  ::rmdir(path);
}

extern "C" void ltxmps_on_cancel_signal(int sig) {
  int expected = 0;
  if (g_signal.compare_exchange_strong(expected, sig)) return;  // first signal: stop at the next safe point
  for (auto& slot : g_slots)
    if (slot.state.load() == 2) remove_in_handler(slot.path);
  ::_exit(128 + sig);
}

}  // namespace

fs::path unique_temporary_path(const fs::path& target) {
  auto tmp = target;
  tmp += ".partial-" + std::to_string(::getpid()) + "-" + std::to_string(g_counter.fetch_add(1));
  return tmp;
}

Cancelled::Cancelled(int signal)
    : ::ltxmps::Error(std::string("interrupted by ") + (signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "a signal") +
                      ": stopped at a safe point; no partial output was left"),
      signal_(signal) {}

void install_cancellation_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_handler = ltxmps_on_cancel_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;  // a write interrupted by the first signal resumes; the run stops later
    ::sigaction(SIGINT, &action, nullptr);
    ::sigaction(SIGTERM, &action, nullptr);
  });
}

bool cancellation_requested() noexcept { return g_signal.load() != 0; }

void throw_if_cancelled() {
  const int sig = g_signal.load();
  if (sig != 0) throw Cancelled(sig);
}

void request_cancellation(int signal) noexcept {
  int expected = 0;
  g_signal.compare_exchange_strong(expected, signal);
}

void clear_cancellation() noexcept { g_signal.store(0); }

// ---------------------------------------------------------------------------------------------------
// AtomicOutput

AtomicOutput::AtomicOutput(fs::path target, Kind kind)
    : target_(std::move(target)), temporary_(unique_temporary_path(target_)), kind_(kind) {
  LTXMPS_CHECK(!target_.empty(), "cannot write an output with an empty path");
  slot_ = register_temporary(temporary_);
  if (kind_ == Kind::folder && ::mkdir(temporary_.c_str(), 0777) != 0) {
    const int err = errno;
    release_temporary(slot_);
    LTXMPS_CHECK(false, target_.string(), ": cannot create the folder ", temporary_.string(), " (", std::strerror(err), ")");
  }
}

AtomicOutput::~AtomicOutput() {
  if (!committed_) (void)remove_tree(temporary_);  // Note [No std::filesystem::remove_all]
  release_temporary(slot_);
}

namespace {

// Exchanges two existing paths atomically; false when the system or filesystem cannot.
bool exchange_paths(const fs::path& a, const fs::path& b) {
#if defined(__linux__) && defined(SYS_renameat2)
  constexpr unsigned kRenameExchange = 2;  // RENAME_EXCHANGE of <linux/fs.h>
  return ::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), kRenameExchange) == 0;
#elif defined(__APPLE__) && defined(RENAME_SWAP)
  return ::renamex_np(a.c_str(), b.c_str(), RENAME_SWAP) == 0;
#else
  (void)a;
  (void)b;
  return false;
#endif
}

void replace_folder(const fs::path& temporary, const fs::path& target) {
  if (::rename(temporary.c_str(), target.c_str()) == 0) return;  // no folder there (or an empty one)
  const int err = errno;
  LTXMPS_CHECK(err == ENOTEMPTY || err == EEXIST, target.string(), ": cannot rename ", temporary.string(), " to it (",
               std::strerror(err), ")");
  if (exchange_paths(temporary, target)) {
    (void)remove_tree(temporary);  // now the old folder
    return;
  }
  const auto aside = unique_temporary_path(target);
  LTXMPS_CHECK(::rename(target.c_str(), aside.c_str()) == 0, target.string(), ": cannot move the existing folder aside (",
               std::strerror(errno), ")");
  if (::rename(temporary.c_str(), target.c_str()) != 0) {
    const int e = errno;
    (void)::rename(aside.c_str(), target.c_str());
    LTXMPS_CHECK(false, target.string(), ": cannot rename ", temporary.string(), " to it (", std::strerror(e), ")");
  }
  (void)remove_tree(aside);
}

}  // namespace

void AtomicOutput::commit() {
  LTXMPS_CHECK(!committed_, target_.string(), ": the output was already committed");
  throw_if_cancelled();
  if (kind_ == Kind::folder) {
    replace_folder(temporary_, target_);
  } else {
    LTXMPS_CHECK(::rename(temporary_.c_str(), target_.c_str()) == 0, target_.string(), ": cannot rename ",
                 temporary_.string(), " to it (", std::strerror(errno), ")");
  }
  committed_ = true;
}

}  // namespace ltxmps::pipeline
