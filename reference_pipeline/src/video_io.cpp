// Video and image files as [F, 3, H, W] float tensors (FFmpeg's libraries for video files, libpng for PNG),
// written under a unique temporary name and renamed; and fitting inputs to a model's size rules (video_io.hpp).

#include "ltxmps_pipeline/video_io.hpp"
#include "ltxmps_pipeline/file_tree.hpp"
#include "ltxmps_pipeline/output_files.hpp"

#include "ltxmps/error.hpp"

#include <png.h>

#if LTXMPS_WITH_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}
#endif

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <system_error>
#include <utility>

#include <sys/stat.h>

namespace fs = std::filesystem;

namespace ltxmps::pipeline {

namespace {

std::string lower_extension(const fs::path& path) {
  auto ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

bool is_png_path(const fs::path& path) { return lower_extension(path) == ".png"; }

// [F, 3, H, W] (or, with `alpha`, [F, 4, H, W]) floating in [0, 1] -> [F, H, W, 3 or 4] uint8 on the CPU, contiguous.
at::Tensor to_rgb24(const at::Tensor& frames, const std::string& what, bool alpha = false) {
  LTXMPS_CHECK(frames.defined() && frames.dim() == 4 && (frames.size(1) == 3 || (alpha && frames.size(1) == 4)), what,
               ": frames must be [F, 3, H, W]", alpha ? " or RGBA [F, 4, H, W]" : " (RGBA [F, 4, H, W] only as PNG frames)",
               ", got ", frames.defined() ? frames.sizes() : at::IntArrayRef{});
  LTXMPS_CHECK(at::isFloatingType(frames.scalar_type()), what, ": frames must be floating point in [0, 1], got ",
               frames.scalar_type());
  LTXMPS_CHECK(frames.size(0) >= 1 && frames.size(2) >= 1 && frames.size(3) >= 1, what, ": no pixels in frames of shape ",
               frames.sizes());
  const auto f = frames.detach().to(at::kCPU).to(at::kFloat);
  LTXMPS_CHECK(at::isfinite(f).all().item<bool>(), what, ": frames contain NaN or Inf");
  return f.clamp(0.0, 1.0).mul(255.0).round().to(at::kByte).permute({0, 2, 3, 1}).contiguous();
}

// [F, H, W, 3] uint8 -> [F, 3, H, W] float32 in [0, 1].
at::Tensor from_rgb24(const at::Tensor& rgb) { return rgb.permute({0, 3, 1, 2}).to(at::kFloat).div(255.0).contiguous(); }

std::string frame_name(int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "frame_%05lld.png", static_cast<long long>(i));
  return buf;
}

bool is_frame_file(const fs::path& p) {
  const auto name = p.filename().string();
  return name.rfind("frame_", 0) == 0 && is_png_path(p);
}

// Note [Decoded size bounds]
// Sizes in file headers are untrusted: a 68-byte PNG can declare 100000 x 100000 pixels. Each side is bounded
// (kMaxVideoSide) before a buffer is allocated, and so is the pixel count of a whole video as frames accumulate
// (kMaxVideoPixels); within the bounds every size product fits in int64 and the allocation is the size of the
// real request, which the memory plan judges.
void check_frame_size(const fs::path& file, int64_t width, int64_t height, const char* what) {
  LTXMPS_CHECK(width >= 1 && height >= 1 && width <= kMaxVideoSide && height <= kMaxVideoSide, file.string(), ": ",
               what, " ", width, "x", height, " pixels; this reader accepts 1 to ", kMaxVideoSide,
               " pixels on each side (corrupt, or too large to process)");
}

void check_total_pixels(const fs::path& file, int64_t frames, int64_t width, int64_t height) {
  LTXMPS_CHECK(frames * width * height <= kMaxVideoPixels, file.string(), ": frame ", frames, " of ", width, "x",
               height, " pixels passes the limit of ", kMaxVideoPixels, " pixels in one video");
}

// Writes [H, W, channels] uint8 at `data` (3: RGB, 4: RGBA) with libpng's simplified API.
void write_png_8bit(const fs::path& file, const uint8_t* data, int64_t height, int64_t width, int64_t channels) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = channels == 4 ? PNG_FORMAT_RGBA : PNG_FORMAT_RGB;
  const int ok =
      png_image_write_to_file(&image, file.string().c_str(), 0, data, static_cast<png_int_32>(width * channels), nullptr);
  const std::string message = image.message;
  png_image_free(&image);
  LTXMPS_CHECK(ok != 0, file.string(), ": cannot write the PNG (libpng: ", message, ")");
}

struct StdioCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

// Reads one PNG as [1, H, W, 3] uint8. The file is opened as in Note [Opening inputs without blocking] and its
// header read before the pixel buffer is sized (Note [Decoded size bounds]).
at::Tensor read_png_rgb24(const fs::path& file) {
  auto fd = open_regular_file(file);
  std::unique_ptr<FILE, StdioCloser> stream(::fdopen(fd.get(), "rb"));
  LTXMPS_CHECK(stream != nullptr, file.string(), ": cannot read it (", std::strerror(errno), ")");
  fd.release();  // owned by `stream` now
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (png_image_begin_read_from_stdio(&image, stream.get()) == 0) {
    const std::string message = image.message;
    png_image_free(&image);
    throw ltxmps::Error(file.string() + ": not a readable PNG image (libpng: " + message + ")");
  }
  try {
    check_frame_size(file, image.width, image.height, "the PNG header declares");
  } catch (...) {
    png_image_free(&image);
    throw;
  }
  image.format = PNG_FORMAT_RGB;
  auto out = at::empty({1, static_cast<int64_t>(image.height), static_cast<int64_t>(image.width), 3}, at::kByte);
  const png_color black{0, 0, 0};
  const int ok = png_image_finish_read(&image, &black, out.data_ptr<uint8_t>(), 0, nullptr);
  const std::string message = image.message;
  png_image_free(&image);
  LTXMPS_CHECK(ok != 0, file.string(), ": corrupt PNG image (libpng: ", message, ")");
  return out;
}

VideoWriteResult written(const fs::path& out, const at::Tensor& rgb, std::string format, std::string encoder,
                         std::string codec) {
  VideoWriteResult result;
  result.path = out;
  result.frames = rgb.size(0);
  result.height = rgb.size(1);
  result.width = rgb.size(2);
  result.format = std::move(format);
  result.encoder = std::move(encoder);
  result.codec = std::move(codec);
  return result;
}

// A folder of frame_*.png written into a unique temporary folder and renamed over `out`.
VideoWriteResult write_png_folder(const fs::path& out, const at::Tensor& rgb, const VideoWriteOptions& options) {
  check_frame_folder_target(out, out.string());
  const int64_t F = rgb.size(0), H = rgb.size(1), W = rgb.size(2);
  AtomicOutput output(out, AtomicOutput::Kind::folder);
  for (int64_t i = 0; i < F; ++i) {
    throw_if_cancelled();
    write_png_8bit(output.temporary() / frame_name(i), rgb[i].data_ptr<uint8_t>(), H, W, rgb.size(3));
    if (options.on_frame) options.on_frame(i + 1, F);
  }
  output.commit();
  return written(out, rgb, "png", "png", "PNG");
}

#if LTXMPS_WITH_FFMPEG

// FFmpeg's log: errors are kept (per thread) for the exception messages, nothing is printed.
thread_local std::string ffmpeg_log;

void capture_ffmpeg_log(void* avcl, int level, const char* fmt, va_list args) {
  if (level > AV_LOG_ERROR) return;
  char line[1024];
  int print_prefix = 1;
  av_log_format_line(avcl, level, fmt, args, line, sizeof line, &print_prefix);
  ffmpeg_log += line;
  if (ffmpeg_log.size() > 2000) ffmpeg_log.erase(0, ffmpeg_log.size() - 2000);
}

void begin_ffmpeg_call() {
  static std::once_flag once;
  std::call_once(once, [] { av_log_set_callback(capture_ffmpeg_log); });
  ffmpeg_log.clear();
}

std::string av_message(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, buf, sizeof buf);
  std::string out = buf;
  auto log = ffmpeg_log;
  while (!log.empty() && std::isspace(static_cast<unsigned char>(log.back()))) log.pop_back();
  if (!log.empty()) out += "; FFmpeg: " + log;
  return out;
}

#define LTXMPS_AV_CHECK(expr, ...)                                                    \
  do {                                                                                \
    const int ltxmps_av_rc_ = (expr);                                                 \
    if (ltxmps_av_rc_ < 0) throw ::ltxmps::Error(c10::str(__VA_ARGS__, " (", av_message(ltxmps_av_rc_), ")")); \
  } while (false)

struct CodecContextDeleter {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameDeleter {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketDeleter {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsDeleter {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};
struct OutputContextDeleter {
  void operator()(AVFormatContext* ctx) const {
    if (ctx->pb) avio_closep(&ctx->pb);
    avformat_free_context(ctx);
  }
};
struct InputContextDeleter {
  void operator()(AVFormatContext* ctx) const { avformat_close_input(&ctx); }
};
using CodecContextPtr = std::unique_ptr<AVCodecContext, CodecContextDeleter>;
using FramePtr = std::unique_ptr<AVFrame, FrameDeleter>;
using PacketPtr = std::unique_ptr<AVPacket, PacketDeleter>;
using SwsPtr = std::unique_ptr<SwsContext, SwsDeleter>;

std::string describe_encoder(const AVCodec* codec) {
  const std::string name = codec->name;
  if (name == "libx264") return "H.264 (libx264)";
  if (name == "mpeg4") return "MPEG-4 Part 2 (mpeg4)";
  return std::string(codec->long_name ? codec->long_name : codec->name) + " (" + name + ")";
}

std::string join_names(const std::vector<std::string>& names) {
  std::string list;
  for (const auto& m : names) list += (list.empty() ? "" : ", ") + m;
  return list;
}

// The first of `options.encoders` that this FFmpeg has and the container of `ctx` allows; those passed over go to
// `missing` with the reason.
const AVCodec* choose_encoder(const fs::path& out, const AVFormatContext& ctx, const VideoWriteOptions& options,
                              std::vector<std::string>& missing) {
  for (const auto& name : options.encoders) {
    const AVCodec* c = avcodec_find_encoder_by_name(name.c_str());
    if (c && avformat_query_codec(ctx.oformat, c->id, FF_COMPLIANCE_NORMAL) == 1) return c;
    missing.push_back(name + (c ? " (not allowed in " + std::string(ctx.oformat->name) + ")" : " (not in this FFmpeg)"));
  }
  throw ltxmps::Error(out.string() + ": no usable video encoder: " + join_names(missing));
}

// Adds a video stream to `ctx` (returned in `stream`) and opens `codec` for W x H yuv420p at the options' rate.
CodecContextPtr open_encoder(const fs::path& out, AVFormatContext* ctx, const AVCodec* codec, int64_t H, int64_t W,
                             const VideoWriteOptions& options, AVStream*& stream) {
  stream = avformat_new_stream(ctx, nullptr);
  LTXMPS_CHECK(stream != nullptr, out.string(), ": FFmpeg cannot add a video stream");
  CodecContextPtr enc(avcodec_alloc_context3(codec));
  LTXMPS_CHECK(enc != nullptr, out.string(), ": FFmpeg cannot allocate the ", codec->name, " encoder");
  const AVRational rate = av_d2q(options.frame_rate, 100000);
  enc->width = static_cast<int>(W);
  enc->height = static_cast<int>(H);
  enc->pix_fmt = AV_PIX_FMT_YUV420P;
  enc->time_base = av_inv_q(rate);
  enc->framerate = rate;
  enc->color_range = AVCOL_RANGE_MPEG;
  enc->colorspace = AVCOL_SPC_SMPTE170M;  // swscale's default RGB <-> YUV matrix (BT.601)
  if (ctx->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  if (std::string(codec->name) == "libx264") {
    av_opt_set(enc->priv_data, "crf", std::to_string(options.x264_crf).c_str(), 0);
    av_opt_set(enc->priv_data, "preset", "medium", 0);
  } else {
    enc->flags |= AV_CODEC_FLAG_QSCALE;  // constant quality, as ffmpeg's -q:v 2
    enc->global_quality = FF_QP2LAMBDA * 2;
  }
  LTXMPS_AV_CHECK(avcodec_open2(enc.get(), codec, nullptr), out.string(), ": cannot open the ", codec->name, " encoder");
  LTXMPS_AV_CHECK(avcodec_parameters_from_context(stream->codecpar, enc.get()), out.string(),
                  ": cannot set the stream parameters");
  stream->time_base = enc->time_base;
  stream->avg_frame_rate = rate;
  return enc;
}

// Opens `partial` as the output of `ctx`, encodes every frame of `rgb` [F, H, W, 3] and finishes the container.
// Errors name `out`, the name the caller will give the file.
void encode_frames(const fs::path& out, const fs::path& partial, AVFormatContext* ctx, AVCodecContext* enc,
                   const AVStream* stream, const at::Tensor& rgb, const VideoWriteOptions& options) {
  const int64_t F = rgb.size(0), W = rgb.size(2);
  LTXMPS_AV_CHECK(avio_open(&ctx->pb, ("file:" + partial.string()).c_str(), AVIO_FLAG_WRITE), partial.string(),
                  ": cannot open for writing");
  LTXMPS_AV_CHECK(avformat_write_header(ctx, nullptr), out.string(), ": cannot write the container header");

  FramePtr frame(av_frame_alloc());
  PacketPtr packet(av_packet_alloc());
  LTXMPS_CHECK(frame && packet, out.string(), ": out of memory");
  frame->format = enc->pix_fmt;
  frame->width = enc->width;
  frame->height = enc->height;
  LTXMPS_AV_CHECK(av_frame_get_buffer(frame.get(), 0), out.string(), ": cannot allocate a frame");
  SwsPtr sws(sws_getContext(enc->width, enc->height, AV_PIX_FMT_RGB24, enc->width, enc->height, enc->pix_fmt,
                            SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP, nullptr, nullptr, nullptr));
  LTXMPS_CHECK(sws != nullptr, out.string(), ": swscale cannot convert RGB24 to yuv420p");

  auto drain = [&] {
    while (true) {
      const int rc = avcodec_receive_packet(enc, packet.get());
      if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
      LTXMPS_AV_CHECK(rc, out.string(), ": encoding failed");
      av_packet_rescale_ts(packet.get(), enc->time_base, stream->time_base);
      packet->stream_index = stream->index;
      LTXMPS_AV_CHECK(av_interleaved_write_frame(ctx, packet.get()), out.string(), ": cannot write a packet");
    }
  };
  for (int64_t i = 0; i < F; ++i) {
    throw_if_cancelled();
    LTXMPS_AV_CHECK(av_frame_make_writable(frame.get()), out.string(), ": frame buffer not writable");
    const uint8_t* src[1] = {rgb[i].data_ptr<uint8_t>()};
    const int src_stride[1] = {static_cast<int>(3 * W)};
    sws_scale(sws.get(), src, src_stride, 0, enc->height, frame->data, frame->linesize);
    frame->pts = i;
    frame->quality = enc->global_quality;
    LTXMPS_AV_CHECK(avcodec_send_frame(enc, frame.get()), out.string(), ": encoding frame ", i, " failed");
    drain();
    if (options.on_frame) options.on_frame(i + 1, F);
  }
  LTXMPS_AV_CHECK(avcodec_send_frame(enc, nullptr), out.string(), ": flushing the encoder failed");
  drain();
  LTXMPS_AV_CHECK(av_write_trailer(ctx), out.string(), ": cannot finish the container");
  LTXMPS_AV_CHECK(avio_closep(&ctx->pb), partial.string(), ": cannot close");
}

VideoWriteResult write_ffmpeg_file(const fs::path& out, const at::Tensor& rgb, const VideoWriteOptions& options) {
  begin_ffmpeg_call();
  const int64_t H = rgb.size(1), W = rgb.size(2);
  LTXMPS_CHECK(H % 2 == 0 && W % 2 == 0, out.string(), ": yuv420p video needs an even width and height, got ", W, "x", H);
  LTXMPS_CHECK(options.frame_rate > 0 && std::isfinite(options.frame_rate), out.string(),
               ": the frame rate must be positive, got ", options.frame_rate);
  const auto parent = out.parent_path();
  LTXMPS_CHECK(parent.empty() || fs::is_directory(parent), out.string(), ": the folder '", parent.string(),
               "' does not exist");

  AVFormatContext* raw = nullptr;
  LTXMPS_AV_CHECK(avformat_alloc_output_context2(&raw, nullptr, nullptr, out.string().c_str()), out.string(),
                  ": FFmpeg has no container for this file name");
  std::unique_ptr<AVFormatContext, OutputContextDeleter> ctx(raw);
  std::vector<std::string> missing;
  const AVCodec* codec = choose_encoder(out, *ctx, options, missing);
  AVStream* stream = nullptr;
  const CodecContextPtr enc = open_encoder(out, ctx.get(), codec, H, W, options, stream);

  AtomicOutput output(out, AtomicOutput::Kind::file);
  try {
    encode_frames(out, output.temporary(), ctx.get(), enc.get(), stream, rgb, options);
    output.commit();
  } catch (...) {
    if (ctx->pb) avio_closep(&ctx->pb);
    throw;  // `output` removes the temporary
  }

  auto result = written(out, rgb, ctx->oformat->name, codec->name, describe_encoder(codec));
  if (!missing.empty())
    result.notes.push_back({ltxmps::Severity::warning, "video", "video.encoder_fallback",
                            "encoder " + join_names(missing) + "; wrote " + result.codec + " instead"});
  return result;
}

// Every frame of the best video stream of `in`, as [F, H, W, 3] uint8.
at::Tensor read_ffmpeg_rgb24(const fs::path& in) {
  (void)open_regular_file(in);  // Note [Opening inputs without blocking]: FFmpeg would block on a FIFO
  begin_ffmpeg_call();
  AVFormatContext* raw = nullptr;
  // "file:" keeps a name such as "pipe:0" or "http://x" a local file name; only local files may be opened.
  AVDictionary* open_options = nullptr;
  av_dict_set(&open_options, "protocol_whitelist", "file", 0);
  const int opened = avformat_open_input(&raw, ("file:" + in.string()).c_str(), nullptr, &open_options);
  av_dict_free(&open_options);
  LTXMPS_AV_CHECK(opened, in.string(), ": FFmpeg cannot read it as a video or image");
  std::unique_ptr<AVFormatContext, InputContextDeleter> ctx(raw);
  LTXMPS_AV_CHECK(avformat_find_stream_info(ctx.get(), nullptr), in.string(), ": cannot read the stream information");
  const int index = av_find_best_stream(ctx.get(), AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  LTXMPS_CHECK(index >= 0, in.string(), ": has no video stream");
  const AVStream* stream = ctx->streams[index];
  check_frame_size(in, stream->codecpar->width, stream->codecpar->height, "the stream header declares");
  const AVCodec* codec = avcodec_find_decoder(stream->codecpar->codec_id);
  LTXMPS_CHECK(codec != nullptr, in.string(), ": this FFmpeg has no decoder for its codec '",
               avcodec_get_name(stream->codecpar->codec_id), "'");
  CodecContextPtr dec(avcodec_alloc_context3(codec));
  LTXMPS_CHECK(dec != nullptr, in.string(), ": cannot allocate the ", codec->name, " decoder");
  LTXMPS_AV_CHECK(avcodec_parameters_to_context(dec.get(), stream->codecpar), in.string(), ": bad stream parameters");
  LTXMPS_AV_CHECK(avcodec_open2(dec.get(), codec, nullptr), in.string(), ": cannot open the ", codec->name, " decoder");

  FramePtr frame(av_frame_alloc());
  PacketPtr packet(av_packet_alloc());
  LTXMPS_CHECK(frame && packet, in.string(), ": out of memory");
  SwsContext* sws = nullptr;
  SwsPtr sws_owner;
  std::vector<at::Tensor> frames;
  auto receive = [&] {
    while (true) {
      const int rc = avcodec_receive_frame(dec.get(), frame.get());
      if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
      LTXMPS_AV_CHECK(rc, in.string(), ": decoding frame ", frames.size(), " failed");
      const int w = frame->width, h = frame->height;
      check_frame_size(in, w, h, c10::str("frame ", frames.size(), " is").c_str());
      check_total_pixels(in, static_cast<int64_t>(frames.size()) + 1, w, h);
      if (!frames.empty())
        LTXMPS_CHECK(frames.front().size(0) == h && frames.front().size(1) == w, in.string(), ": frame ", frames.size(),
                     " is ", w, "x", h, ", the first frame ", frames.front().size(1), "x", frames.front().size(0));
      sws = sws_getCachedContext(sws, w, h, static_cast<AVPixelFormat>(frame->format), w, h, AV_PIX_FMT_RGB24,
                                 SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, nullptr, nullptr, nullptr);
      sws_owner.release();
      sws_owner.reset(sws);
      LTXMPS_CHECK(sws != nullptr, in.string(), ": swscale cannot convert pixel format '",
                   av_get_pix_fmt_name(static_cast<AVPixelFormat>(frame->format)), "' to RGB24");
      auto rgb = at::empty({h, w, 3}, at::kByte);
      uint8_t* dst[1] = {rgb.data_ptr<uint8_t>()};
      const int dst_stride[1] = {3 * w};
      sws_scale(sws, frame->data, frame->linesize, 0, h, dst, dst_stride);
      frames.push_back(rgb);
      av_frame_unref(frame.get());
    }
  };
  while (true) {
    const int rc = av_read_frame(ctx.get(), packet.get());
    if (rc == AVERROR_EOF) break;
    LTXMPS_AV_CHECK(rc, in.string(), ": cannot read a packet after ", frames.size(), " frames");
    if (packet->stream_index == index) {
      const int sent = avcodec_send_packet(dec.get(), packet.get());
      av_packet_unref(packet.get());
      LTXMPS_AV_CHECK(sent, in.string(), ": corrupt data after ", frames.size(), " frames");
      receive();
    } else {
      av_packet_unref(packet.get());
    }
  }
  LTXMPS_AV_CHECK(avcodec_send_packet(dec.get(), nullptr), in.string(), ": flushing the decoder failed");
  receive();
  LTXMPS_CHECK(!frames.empty(), in.string(), ": no frame could be decoded");
  return at::stack(frames);
}

#endif  // LTXMPS_WITH_FFMPEG

#if !LTXMPS_WITH_FFMPEG
[[noreturn]] void no_ffmpeg(const fs::path& path, const char* what) {
  throw ltxmps::Error(path.string() + ": " + what +
                      " needs FFmpeg, and this ltxmps was built without it (PNG only); use a folder of PNG frames or a "
                      "PNG image, or rebuild with the FFmpeg development libraries");
}
#endif

at::Tensor read_video_rgb24(const fs::path& in) {
  struct stat st {};
  LTXMPS_CHECK(::stat(in.c_str(), &st) == 0, in.string(), ": no such file or folder");
  if (S_ISDIR(st.st_mode)) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(in)) {
      if (!is_png_path(entry.path())) continue;
      LTXMPS_CHECK(entry.is_regular_file(), entry.path().string(), ": is ", describe_file_type(entry.path()),
                   ", not a PNG frame file");
      files.push_back(entry.path());
    }
    LTXMPS_CHECK(!files.empty(), in.string(), ": the folder has no .png frames");
    std::sort(files.begin(), files.end());
    std::vector<at::Tensor> frames;
    for (const auto& f : files) {
      frames.push_back(read_png_rgb24(f)[0]);
      LTXMPS_CHECK(frames.back().sizes() == frames.front().sizes(), f.string(), ": size ", frames.back().size(1), "x",
                   frames.back().size(0), " differs from the first frame's ", frames.front().size(1), "x",
                   frames.front().size(0));
      check_total_pixels(in, static_cast<int64_t>(frames.size()), frames.front().size(1), frames.front().size(0));
    }
    return at::stack(frames);
  }
  LTXMPS_CHECK(S_ISREG(st.st_mode), in.string(), ": is ", describe_file_type(in), ", not a video or image file");
  if (is_png_path(in)) return read_png_rgb24(in);
#if LTXMPS_WITH_FFMPEG
  return read_ffmpeg_rgb24(in);
#else
  no_ffmpeg(in, "reading this file");
#endif
}

int64_t round_to_multiple(int64_t value, int64_t multiple) {
  return std::max<int64_t>(multiple, (value + multiple / 2) / multiple * multiple);
}

at::Tensor center_crop(const at::Tensor& frames, int64_t height, int64_t width) {
  const int64_t top = (frames.size(2) - height) / 2, left = (frames.size(3) - width) / 2;
  return frames.narrow(2, top, height).narrow(3, left, width);
}

at::Tensor bilinear(const at::Tensor& frames, int64_t height, int64_t width) {
  if (frames.size(2) == height && frames.size(3) == width) return frames;
  return at::upsample_bilinear2d(frames, {height, width}, /*align_corners=*/false).clamp(0.0, 1.0);
}

}  // namespace

bool video_io_has_ffmpeg() {
#if LTXMPS_WITH_FFMPEG
  return true;
#else
  return false;
#endif
}

bool is_video_file_path(const fs::path& path) {
  const auto ext = lower_extension(path);
  return ext == ".mp4" || ext == ".mov" || ext == ".mkv" || ext == ".webm" || ext == ".avi";
}

VideoWriteResult write_video(const fs::path& out, const at::Tensor& frames, const VideoWriteOptions& options) {
  LTXMPS_CHECK(!out.empty(), "write_video: empty output path");
  const auto rgb = to_rgb24(frames, out.string(), /*alpha=*/!is_video_file_path(out));
  if (!is_video_file_path(out)) {
    const auto parent = out.parent_path();
    LTXMPS_CHECK(parent.empty() || fs::is_directory(parent), out.string(), ": the folder '", parent.string(),
                 "' does not exist");
    return write_png_folder(out, rgb, options);
  }
#if LTXMPS_WITH_FFMPEG
  return write_ffmpeg_file(out, rgb, options);
#else
  no_ffmpeg(out, "writing a video file");
#endif
}

at::Tensor read_video(const fs::path& in) { return from_rgb24(read_video_rgb24(in)); }

at::Tensor read_image(const fs::path& in) {
  LTXMPS_CHECK(!fs::is_directory(in), in.string(), ": is a folder; an image file is expected");
  return from_rgb24(read_video_rgb24(in).narrow(0, 0, 1))[0];
}

void write_png(const fs::path& file, const at::Tensor& image) {
  LTXMPS_CHECK(image.defined() && image.dim() == 3, file.string(), ": an image must be [3 or 4, H, W], got ",
               image.defined() ? image.sizes() : at::IntArrayRef{});
  const auto rgb = to_rgb24(image.unsqueeze(0), file.string(), /*alpha=*/true);
  AtomicOutput output(file, AtomicOutput::Kind::file);
  write_png_8bit(output.temporary(), rgb.data_ptr<uint8_t>(), rgb.size(1), rgb.size(2), rgb.size(3));
  output.commit();
}

void check_frame_folder_target(const fs::path& out, const std::string& what) {
  struct stat st {};
  if (::stat(out.c_str(), &st) != 0) return;
  LTXMPS_CHECK(S_ISDIR(st.st_mode), what, ": exists and is ", describe_file_type(out),
               "; not replacing it with a folder of PNG frames");
  for (const auto& entry : fs::directory_iterator(out))
    LTXMPS_CHECK(is_frame_file(entry.path()) && entry.is_regular_file(), what, ": the folder holds '",
                 entry.path().filename().string(),
                 "', which is not a frame_*.png file; not replacing it (choose another output)");
}

at::Tensor read_png(const fs::path& file) { return from_rgb24(read_png_rgb24(file))[0]; }

// ---------------------------------------------------------------------------------------------------
// Fitting

const char* to_string(FitMode mode) noexcept {
  switch (mode) {
    case FitMode::none: return "none";
    case FitMode::crop: return "crop";
    case FitMode::resize: return "resize";
    case FitMode::trim: return "trim";
  }
  return "?";
}

FitMode parse_fit_mode(const std::string& text) {
  for (auto mode : {FitMode::none, FitMode::crop, FitMode::resize, FitMode::trim})
    if (text == to_string(mode)) return mode;
  throw ltxmps::Error("fit mode '" + text + "' is not one of none, crop, resize, trim");
}

std::string nearest_multiples(int64_t value, int64_t multiple) {
  LTXMPS_CHECK(multiple > 0, "nearest_multiples: multiple must be > 0, got ", multiple);
  const int64_t lo = value / multiple * multiple;
  if (value > 0 && lo == value) return std::to_string(value);
  if (lo <= 0) return std::to_string(multiple);
  return std::to_string(lo) + " or " + std::to_string(lo + multiple);
}

std::string nearest_frame_counts(int64_t frames, int64_t multiple) {
  LTXMPS_CHECK(multiple > 0, "nearest_frame_counts: multiple must be > 0, got ", multiple);
  if (frames < 1) return "1";
  const int64_t lo = (frames - 1) / multiple * multiple + 1;
  if (lo == frames) return std::to_string(frames);
  return std::to_string(lo) + " or " + std::to_string(lo + multiple);
}

at::Tensor fit_video(const at::Tensor& frames_in, const FitRules& rules, FitMode mode, const FitTarget& target,
                     const std::string& source) {
  LTXMPS_CHECK(frames_in.defined() && frames_in.dim() == 4 && frames_in.size(1) == 3 && frames_in.size(0) >= 1, source,
               ": frames must be [F, 3, H, W], got ", frames_in.defined() ? frames_in.sizes() : at::IntArrayRef{});
  LTXMPS_CHECK(rules.spatial_multiple > 0 && rules.temporal_multiple > 0, source, ": bad fit rules");
  const int64_t s = rules.spatial_multiple, t = rules.temporal_multiple;
  auto frames = frames_in.to(at::kFloat);

  // Frames: at most target.num_frames, then 8k+1 (every fit mode trims).
  int64_t F = frames.size(0);
  if (target.num_frames && F > *target.num_frames) {
    LTXMPS_CHECK(mode != FitMode::none, source, ": has ", F, " frames, more than the ", *target.num_frames,
                 " asked for (--num-frames): pass --fit trim (or crop/resize) to keep the first ", *target.num_frames,
                 ", or ask for more frames");
    F = *target.num_frames;
  }
  if ((F - 1) % t != 0) {
    const int64_t kept = (F - 1) / t * t + 1;
    LTXMPS_CHECK(mode != FitMode::none, source, ": has ", F, " frames; the model takes ", t, "k+1 frames (",
                 nearest_frame_counts(F, t), "): pass --fit trim (or crop/resize) to drop the trailing frames (", F,
                 " -> ", kept, ")");
    F = kept;
  }
  frames = frames.narrow(0, 0, F);

  // Height and width.
  const int64_t H = frames.size(2), W = frames.size(3);
  const bool sized = target.height || target.width;
  if (sized) {
    const int64_t th = target.height.value_or(H), tw = target.width.value_or(W);
    LTXMPS_CHECK(th > 0 && tw > 0 && th % s == 0 && tw % s == 0, source, ": the size asked for (height ", th,
                 ", width ", tw, ") is not made of multiples of ", s, " (height ", nearest_multiples(th, s), ", width ",
                 nearest_multiples(tw, s), ")");
    if (th == H && tw == W) return frames.contiguous();
    if (mode == FitMode::resize) return bilinear(frames, th, tw).contiguous();
    if (mode == FitMode::crop) {
      const double scale = std::max(static_cast<double>(th) / H, static_cast<double>(tw) / W);
      const int64_t nh = std::max(th, static_cast<int64_t>(std::ceil(H * scale - 1e-9)));
      const int64_t nw = std::max(tw, static_cast<int64_t>(std::ceil(W * scale - 1e-9)));
      return center_crop(bilinear(frames, nh, nw), th, tw).contiguous();
    }
    throw ltxmps::Error(c10::str(source, ": is height ", H, ", width ", W, " but height ", th, ", width ", tw,
                                 " is asked for (--height/--width): pass --fit crop (scale to cover, center crop) or "
                                 "--fit resize (bilinear, stretches), or leave --height/--width out to use its own size"
                                 " where it fits"));
  }
  if (H % s == 0 && W % s == 0) return frames.contiguous();
  const int64_t ch = H / s * s, cw = W / s * s;
  const int64_t rh = round_to_multiple(H, s), rw = round_to_multiple(W, s);
  if (mode == FitMode::resize) return bilinear(frames, rh, rw).contiguous();
  if (mode == FitMode::crop) {
    LTXMPS_CHECK(ch > 0 && cw > 0, source, ": height ", H, ", width ", W, " is smaller than ", s,
                 " pixels, too small to crop: pass --fit resize");
    return center_crop(frames, ch, cw).contiguous();
  }
  std::string crop_hint = ch > 0 && cw > 0 ? c10::str("--fit crop (center crop to height ", ch, ", width ", cw, ") or ")
                                           : std::string();
  throw ltxmps::Error(c10::str(source, ": height ", H, " and width ", W, " do not fit the model, which takes multiples of ",
                               s, " (height ", nearest_multiples(H, s), ", width ", nearest_multiples(W, s), "): pass ",
                               crop_hint, "--fit resize (bilinear resize to height ", rh, ", width ", rw,
                               "), or give --height/--width with --fit"));
}

}  // namespace ltxmps::pipeline
