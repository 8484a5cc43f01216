#pragma once
/// @file output_files.hpp
/// @brief Files on disk as untrusted and precious: inputs opened without ever blocking on a FIFO or a device,
///        output paths validated before any work, outputs written under a unique temporary name and renamed
///        over the target only when complete, and cooperative cancellation on SIGINT/SIGTERM.
///
/// A failed, interrupted or concurrent run therefore never leaves a half-written file under the requested name
/// and never destroys an existing output before a complete replacement exists; two runs writing the same output
/// each write their own temporary, and the last rename wins with a complete file.

#include "ltxmps/error.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

// ---------------------------------------------------------------------------------------------------
// Inputs

/// @brief What is at `path`, for messages: "a regular file", "a folder", "a FIFO (named pipe)", "a character
///        device", "a block device", "a socket", "nothing (no such file or folder)" (symlinks are followed).
std::string describe_file_type(const std::filesystem::path& path);

/// @brief A read-only file descriptor that is closed on destruction.
class ReadOnlyFd {
 public:
  ReadOnlyFd() = default;
  /// @brief Takes ownership of `fd` (-1: none).
  explicit ReadOnlyFd(int fd) : fd_(fd) {}
  ///@{
  /// Moves ownership; the moved-from object holds no descriptor.
  ReadOnlyFd(ReadOnlyFd&& other) noexcept : fd_(other.release()) {}
  ReadOnlyFd& operator=(ReadOnlyFd&& other) noexcept;
  ///@}
  ReadOnlyFd(const ReadOnlyFd&) = delete;
  ReadOnlyFd& operator=(const ReadOnlyFd&) = delete;
  ~ReadOnlyFd();
  int get() const { return fd_; }  ///< the descriptor, still owned (-1: none)
  /// @brief Gives up ownership (the caller closes the descriptor).
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

/// @brief Opens `file` for reading and checks that it is a regular file, without blocking: a FIFO, a device, a
///        socket or a folder is refused before anything is read. Errors read "<what> <file>: is a FIFO (named
///        pipe), not a regular file" (or "<file>: ..." when `what` is empty); a missing file says "no such file".
ReadOnlyFd open_regular_file(const std::filesystem::path& file, const std::string& what = "");

/// @brief The whole content of a regular file opened with open_regular_file(); a file larger than `max_bytes`
///        is an error naming it (the size is known before anything is allocated).
std::string read_regular_file(const std::filesystem::path& file, const std::string& what, uint64_t max_bytes);

// ---------------------------------------------------------------------------------------------------
// Output paths

/// @brief What an output path will receive.
enum class OutputKind {
  file,   ///< one file (safetensors, a prompt cache): an existing regular file is replaced
  video,  ///< write_video()'s target: a video file by extension (is_video_file_path()), else a folder of PNG frames
};

/// @brief An output option and its value, e.g. {"--output", "x.mp4", OutputKind::video}.
struct OutputPath {
  std::string option;                  ///< the option's name, for messages
  std::filesystem::path path;          ///< its value
  OutputKind kind = OutputKind::file;  ///< what will be written there
};

/// @brief An input option and its value, e.g. {"--video", "x.mp4"}; empty paths (options not given) are skipped.
struct InputPath {
  std::string option;          ///< the option's name, for messages
  std::filesystem::path path;  ///< its value
};

/// @brief Validates every output before work starts; throws ltxmps::Error naming the option at fault.
///
/// Each output must be non-empty; its folder must exist, be a folder and accept a new file (checked by creating
/// and removing a probe); an existing target must be what the output replaces (a regular file for a file; for a
/// PNG-frame folder, a folder holding only `frame_*.png`); a video file needs FFmpeg in this build. No output may
/// be the same file as an input or another output (after resolving symlinks and `..`, and by device and inode
/// for hard links), e.g. "--output x.mp4: is the same file as --video x.mp4", and a frame folder may not contain
/// an input.
void check_output_paths(const std::vector<OutputPath>& outputs, const std::vector<InputPath>& inputs = {});

// ---------------------------------------------------------------------------------------------------
// Atomic outputs

/// @brief A unique temporary name next to `target`: `<target>.partial-<pid>-<n>`, n counting per process.
std::filesystem::path unique_temporary_path(const std::filesystem::path& target);

/// @brief An output written under a unique temporary name and renamed over its target by commit().
///
/// The temporary is registered with the cancellation handlers (install_cancellation_handlers()) from
/// construction until commit or destruction, so that a second signal removes it before the process exits. The
/// destructor removes an uncommitted temporary: an exception or a cancellation leaves the target as it was.
class AtomicOutput {
 public:
  /// @brief What the temporary is.
  enum class Kind {
    file,   ///< the writer creates the file at temporary()
    folder  ///< the constructor creates an empty folder at temporary(); the writer fills it
  };
  /// @brief Reserves (and for a folder, creates) the temporary for `target`; throws ltxmps::Error naming the
  ///        target when that is impossible.
  AtomicOutput(std::filesystem::path target, Kind kind);
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;
  ~AtomicOutput();

  const std::filesystem::path& target() const { return target_; }        ///< the final name
  const std::filesystem::path& temporary() const { return temporary_; }  ///< where the writer writes

  /// @brief Checks cancellation (throw_if_cancelled()), then renames the temporary over the target in one step.
  ///
  /// A file replaces an existing file atomically (rename(2)). A folder replaces an existing folder by an atomic
  /// exchange where the system has one (Linux renameat2, macOS renamex_np), the old folder then removed; elsewhere
  /// the old folder is moved aside first and restored when the second rename fails. Throws ltxmps::Error on
  /// failure (the temporary is then removed and the target is unchanged).
  void commit();

 private:
  std::filesystem::path target_;
  std::filesystem::path temporary_;
  Kind kind_;
  int slot_ = -1;
  bool committed_ = false;
};

// ---------------------------------------------------------------------------------------------------
// Cancellation

/// @brief Thrown by throw_if_cancelled() once SIGINT or SIGTERM arrived; `signal()` says which.
class Cancelled : public ::ltxmps::Error {
 public:
  /// @brief The error for `signal` (SIGINT or SIGTERM), with a message naming it.
  explicit Cancelled(int signal);
  int signal() const { return signal_; }  ///< the signal that arrived

 private:
  int signal_;
};

/// @brief Installs SIGINT and SIGTERM handlers for this process (idempotent).
///
/// The first signal only records a cancellation request, which the run honours at its next safe point
/// (throw_if_cancelled()): the exception unwinds, temporaries are removed and nothing half-written remains. A
/// second signal removes every registered temporary (async-signal-safe: unlink/rmdir only) and exits at once
/// with status 128 + signal.
void install_cancellation_handlers();

/// @brief Whether a cancellation was requested (by a handled signal or request_cancellation()).
bool cancellation_requested() noexcept;

/// @brief Throws Cancelled when a cancellation was requested. Call it at safe points: between denoising steps,
///        frames, tensors, components.
void throw_if_cancelled();

/// @brief Requests cancellation as a signal `signal` would (for callers that cancel without a signal).
void request_cancellation(int signal) noexcept;

/// @brief Forgets a cancellation request (for a program that handled one and goes on, e.g. a test).
void clear_cancellation() noexcept;

}  // namespace ltxmps::pipeline
