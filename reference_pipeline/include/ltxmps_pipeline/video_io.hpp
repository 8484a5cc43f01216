#pragma once
/// @file video_io.hpp
/// @brief Videos and images as float tensors `[F, 3, H, W]` in [0, 1], and the size rules of the LTX models.
///
/// Formats:
/// - video files (`.mp4`, `.mov`, `.mkv`, `.webm`, `.avi`) through FFmpeg's libraries (libavformat, libavcodec,
///   libswscale). Writing encodes H.264 with libx264 where FFmpeg has it, else MPEG-4 Part 2 (`mpeg4`), in
///   yuv420p; the encoder used is returned. Reading accepts any container and codec FFmpeg decodes, converted to
///   RGB24 with swscale. Built without FFmpeg (`video_io_has_ffmpeg()` false) these are errors that say so.
/// - folders of PNG frames (`frame_00000.png`, `frame_00001.png`, ...) and single PNG images through libpng
///   (8-bit RGB; alpha is composited onto black, 16-bit input is reduced to 8 bits). Other image files (JPEG, ...)
///   are read through FFmpeg's image2 demuxer where FFmpeg is present. Four-channel frames `[F, 4, H, W]` are
///   written as 8-bit RGBA PNG (straight alpha), for layers that editors composite; video files take RGB only.
///
/// Writes never leave a partial result under the requested name: a file or a folder is written under a unique
/// temporary name next to it (AtomicOutput, output_files.hpp), then renamed over it; on any error or cancellation
/// the temporary is removed and an existing output is left as it was.
///
/// Inputs are opened without blocking (a FIFO or a device is an error, never a hang) and sizes from file headers
/// are bounded before anything is allocated (kMaxVideoSide, kMaxVideoPixels).
///
/// FFmpeg logs through a process-wide callback; the first call into FFmpeg here installs one that keeps the
/// last error lines for the exception messages and prints nothing (library code never prints).

#include "ltxmps/diagnostics.hpp"

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ltxmps::pipeline {

/// @brief The largest width or height a reader accepts (16K): larger header values are corrupt or hostile.
constexpr int64_t kMaxVideoSide = 16384;
/// @brief The most pixels (frames x height x width) one read video may have.
constexpr int64_t kMaxVideoPixels = int64_t{1} << 31;

/// @brief True when this build reads and writes video files through FFmpeg.
bool video_io_has_ffmpeg();

/// @brief True when `path` names a video file by its extension (.mp4, .mov, .mkv, .webm, .avi; any case);
///        anything else is written as a folder of PNG frames.
bool is_video_file_path(const std::filesystem::path& path);

/// @brief Options of write_video().
struct VideoWriteOptions {
  double frame_rate = 25.0;  ///< frames per second of a video file (PNG folders have none)
  /// FFmpeg encoders to try, in order; the first one this FFmpeg has is used.
  std::vector<std::string> encoders{"libx264", "mpeg4"};
  /// libx264's constant rate factor (0 lossless luma, 18 visually near-lossless, 23 its default).
  int x264_crf = 18;
  /// Called after each frame is written (1-based) with the total; an exception thrown here aborts the write
  /// like any other error (the partial output is removed).
  std::function<void(int64_t frame, int64_t total)> on_frame;
};

/// @brief What write_video() wrote.
struct VideoWriteResult {
  std::filesystem::path path;  ///< the final name
  ///@{
  /// The frame count and the frame size written.
  int64_t frames = 0, height = 0, width = 0;
  ///@}
  std::string format;   ///< "png" (a folder of frames) or FFmpeg's container name ("mp4", "mov", ...)
  std::string encoder;  ///< "png", "libx264", "mpeg4", ...
  std::string codec;    ///< human-readable codec, e.g. "H.264 (libx264)", "MPEG-4 Part 2 (mpeg4)", "PNG"
  /// Notes for the log, e.g. that libx264 was missing and another encoder was used.
  std::vector<ltxmps::Diagnostic> notes;
};

/// @brief Writes `frames` `[F, 3, H, W]` (floating, values clamped to [0, 1] and rounded to 8 bits) as a video file
///        (is_video_file_path(), needs FFmpeg; H and W must be even for yuv420p) or as a folder of PNG frames;
///        a folder also takes RGBA frames `[F, 4, H, W]`.
///        An existing folder is replaced only when it holds nothing but `frame_*.png` files. Cancellation
///        (throw_if_cancelled()) is checked before each frame.
VideoWriteResult write_video(const std::filesystem::path& out, const at::Tensor& frames,
                             const VideoWriteOptions& options = {});

/// @brief Reads a video file (FFmpeg), a folder of PNG frames (sorted by name) or a single image as
///        `[F, 3, H, W]` float32 in [0, 1] on the CPU. Errors name the file and what is wrong with it.
at::Tensor read_video(const std::filesystem::path& in);

/// @brief Reads one image (PNG through libpng; other formats through FFmpeg's image2 demuxer) as `[3, H, W]`
///        float32 in [0, 1]. A video file gives its first frame.
at::Tensor read_image(const std::filesystem::path& in);

/// @brief Writes one `[3, H, W]` (RGB) or `[4, H, W]` (RGBA) image in [0, 1] as an 8-bit PNG.
void write_png(const std::filesystem::path& file, const at::Tensor& image);

/// @brief Throws unless `out` may be replaced by a folder of PNG frames: absent, or a folder holding nothing but
///        `frame_*.png` files. `what` starts the message (e.g. "--output clip").
void check_frame_folder_target(const std::filesystem::path& out, const std::string& what);

/// @brief Reads one PNG as `[3, H, W]` float32 in [0, 1].
at::Tensor read_png(const std::filesystem::path& file);

// ---------------------------------------------------------------------------------------------------
// Fitting inputs to the model

/// @brief How an input that does not fit the model is made to fit (`--fit`).
enum class FitMode {
  none,    ///< no change: a size or frame count that does not fit is an error saying how to fit it
  crop,    ///< center crop H and W to the largest multiples (scale to cover first when a size is asked for); trim frames
  resize,  ///< bilinear resize H and W to the nearest multiples (or to the size asked for); trim frames
  trim,    ///< only drop trailing frames to 8k+1 (sizes must already fit)
};

/// @brief "none", "crop", "resize", "trim".
const char* to_string(FitMode mode) noexcept;
/// @brief Parses "none", "crop", "resize", "trim"; throws ltxmps::Error otherwise.
FitMode parse_fit_mode(const std::string& text);

/// @brief What the model accepts: H and W multiples of `spatial_multiple`, frame counts k·temporal_multiple + 1.
///        fit_rules() (latent_grid.hpp) gives those of a model.
struct FitRules {
  int64_t spatial_multiple = 32;  ///< height and width must be multiples of this
  int64_t temporal_multiple = 8;  ///< frame counts must be k · this + 1
};

/// @brief The valid values next to `value` (multiples of `multiple`, at least one multiple), e.g. "480 or 512",
///        or just "512" when `value` is valid.
std::string nearest_multiples(int64_t value, int64_t multiple);
/// @brief The valid frame counts (k·multiple + 1) next to `frames`, e.g. "9 or 17".
std::string nearest_frame_counts(int64_t frames, int64_t multiple);

/// @brief The size an input should get; empty fields follow the input.
struct FitTarget {
  ///@{
  /// The output frame size in pixels; empty: the input's.
  std::optional<int64_t> height, width;
  ///@}
  std::optional<int64_t> num_frames;  ///< at most this many frames are kept (more is an error without a fit mode)
};

/// @brief Makes `frames` `[F, 3, H, W]` fit `rules` (and `target`) with `mode`. Without a mode that covers the
///        mismatch, throws ltxmps::Error naming `source`, the nearest valid sizes and the `--fit` options.
///        Frames come back float32 in [0, 1].
at::Tensor fit_video(const at::Tensor& frames, const FitRules& rules, FitMode mode, const FitTarget& target,
                     const std::string& source);

}  // namespace ltxmps::pipeline
