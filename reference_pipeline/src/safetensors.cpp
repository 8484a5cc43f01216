#include "ltxmps_pipeline/safetensors.hpp"

#include "ltxmps_pipeline/json_file.hpp"
#include "ltxmps_pipeline/output_files.hpp"

#include "ltxmps/error.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <tuple>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// Note [Untrusted input]
// A safetensors file is untrusted input: open() validates everything before any byte of the data
// section is touched, with checked arithmetic throughout (no size from the file is used in a
// multiplication or an addition before it is bounded). After open() succeeds, every tensor lies
// inside the mapping, its byte size is numel * itemsize, and its shape can be given to ATen without
// stride overflow. The one hazard left is outside our control: a file truncated by another process
// while mapped raises SIGBUS on access, as with any mmap reader (the Python library included).
//
// Note [Byte order]
// The format is little-endian; so are all hosts ltxmps targets (x86-64, arm64). The header length
// is assembled byte by byte; the data is used as is.
static_assert(sizeof(void*) == 8, "ltxmps_pipeline needs a 64-bit host");

namespace ltxmps::pipeline {
namespace {

// The Python library's MAX_HEADER_SIZE.
constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct DtypeName {
  const char* name;
  c10::ScalarType dtype;
};

constexpr DtypeName kSupportedDtypes[] = {
    {"F32", c10::ScalarType::Float}, {"F16", c10::ScalarType::Half},  {"BF16", c10::ScalarType::BFloat16},
    {"F64", c10::ScalarType::Double}, {"I64", c10::ScalarType::Long}, {"I32", c10::ScalarType::Int},
    {"I16", c10::ScalarType::Short},  {"I8", c10::ScalarType::Char},  {"U8", c10::ScalarType::Byte},
    {"BOOL", c10::ScalarType::Bool},
};

// Dtypes the format defines (safetensors 0.8) that ltxmps does not load; named apart from unknown
// strings so that the error says which case it is.
constexpr const char* kKnownUnsupportedDtypes[] = {"F4",          "F6_E2M3",     "F6_E3M2", "F8_E5M2", "F8_E4M3",
                                                   "F8_E8M0",     "F8_E4M3FNUZ", "F8_E5M2FNUZ", "U16", "U32",
                                                   "U64",         "C64"};

std::string supported_dtype_list() {
  std::string out;
  for (const auto& d : kSupportedDtypes) out += (out.empty() ? "" : ", ") + std::string(d.name);
  return out;
}

// a * b, or false on uint64 overflow.
bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

// Owns a read-only mapping of a whole file.
struct Mapping {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data != nullptr) ::munmap(const_cast<uint8_t*>(data), size);
  }
};

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void map_file(const std::filesystem::path& file, Mapping& mapping) {
  // O_NONBLOCK: opening a FIFO must not hang; it is then rejected as not a regular file.
  Fd fd;
  fd.fd = ::open(file.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  LTXMPS_CHECK(fd.fd >= 0, "cannot open safetensors file ", file.string(), ": ", std::strerror(errno));
  struct stat st {};
  LTXMPS_CHECK(::fstat(fd.fd, &st) == 0, "cannot stat safetensors file ", file.string(), ": ", std::strerror(errno));
  LTXMPS_CHECK(S_ISREG(st.st_mode), "safetensors file ", file.string(), " is ", describe_file_type(file),
               ", not a regular file");
  const auto size = static_cast<uint64_t>(st.st_size);
  LTXMPS_CHECK(size >= 8, "safetensors file ", file.string(), " is ", size,
               " bytes long, shorter than the 8-byte header length that starts the format");
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  LTXMPS_CHECK(p != MAP_FAILED, "cannot map safetensors file ", file.string(), ": ", std::strerror(errno));
  mapping.data = static_cast<const uint8_t*>(p);
  mapping.size = size;
}

// Parses one header entry; `value` is untrusted JSON.
TensorInfo parse_tensor_entry(const std::string& name, const nlohmann::json& value, const std::filesystem::path& file) {
  const auto where = [&] { return c10::str("tensor '", name, "' in ", file.string()); };
  LTXMPS_CHECK(value.is_object(), where(), ": header entry is not an object with dtype, shape and data_offsets");
  TensorInfo info;
  info.name = name;

  const auto dtype_it = value.find("dtype");
  LTXMPS_CHECK(dtype_it != value.end() && dtype_it->is_string(), where(), ": header entry has no string 'dtype'");
  const auto& dtype = dtype_it->get_ref<const std::string&>();
  bool found = false;
  for (const auto& d : kSupportedDtypes) {
    if (dtype == d.name) {
      info.dtype = d.dtype;
      found = true;
    }
  }
  if (!found) {
    const bool known = std::any_of(std::begin(kKnownUnsupportedDtypes), std::end(kKnownUnsupportedDtypes),
                                   [&](const char* n) { return dtype == n; });
    LTXMPS_CHECK(false, where(), " has ", known ? "dtype " : "unknown dtype ", "'", dtype, "'",
                 known ? ", which ltxmps does not load" : "", " (supported: ", supported_dtype_list(), ")");
  }

  const auto shape_it = value.find("shape");
  LTXMPS_CHECK(shape_it != value.end() && shape_it->is_array(), where(), ": header entry has no 'shape' array");
  // numel for the byte size; `strided` (the product of max(size, 1)) bounds the strides ATen computes
  // for a contiguous tensor, so that even a zero-element shape like [0, 2^62, 2^62] cannot overflow.
  uint64_t numel = 1;
  uint64_t strided = 1;
  for (const auto& dim : *shape_it) {
    LTXMPS_CHECK(dim.is_number_unsigned(), where(), " has shape entry ", detail::describe_json(dim),
                 ", expected a non-negative integer");
    const auto d = dim.get<uint64_t>();
    LTXMPS_CHECK(checked_mul(numel, d, &numel) && checked_mul(strided, std::max<uint64_t>(d, 1), &strided) &&
                     strided <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                 where(), " has a shape starting ", c10::IntArrayRef(info.shape), " then ", d, " whose element count overflows");
    info.shape.push_back(static_cast<int64_t>(d));
  }
  uint64_t nbytes = 0;
  LTXMPS_CHECK(checked_mul(numel, c10::elementSize(info.dtype), &nbytes), where(), " has shape ", c10::IntArrayRef(info.shape),
               " whose byte size overflows");

  const auto offsets_it = value.find("data_offsets");
  LTXMPS_CHECK(offsets_it != value.end() && offsets_it->is_array() && offsets_it->size() == 2 &&
                   (*offsets_it)[0].is_number_unsigned() && (*offsets_it)[1].is_number_unsigned(),
               where(), " has data_offsets ", offsets_it == value.end() ? std::string("(none)") : detail::describe_json(*offsets_it),
               ", expected two non-negative integers [begin, end]");
  info.begin = (*offsets_it)[0].get<uint64_t>();
  info.end = (*offsets_it)[1].get<uint64_t>();
  LTXMPS_CHECK(info.begin <= info.end, where(), " has data_offsets [", info.begin, ", ", info.end, "] with begin > end");
  LTXMPS_CHECK(info.end - info.begin == nbytes, where(), " has data_offsets [", info.begin, ", ", info.end, "] (",
               info.end - info.begin, " bytes), but dtype ", dtype, " and shape ", c10::IntArrayRef(info.shape), " need ",
               nbytes, " bytes");
  return info;
}

}  // namespace

const char* safetensors_dtype_name(c10::ScalarType dtype) {
  for (const auto& d : kSupportedDtypes)
    if (d.dtype == dtype) return d.name;
  LTXMPS_CHECK(false, "dtype ", c10::toString(dtype), " cannot be stored in a safetensors file by ltxmps (supported: ",
               supported_dtype_list(), ")");
  return nullptr;  // unreachable
}

struct SafetensorsFile::State {
  std::filesystem::path path;
  Mapping mapping;
  uint64_t data_start = 0;  // 8 + header length
  uint64_t data_size = 0;
  std::vector<TensorInfo> tensors;
  std::map<std::string, size_t, std::less<>> index;
  std::map<std::string, std::string> metadata;
};

SafetensorsFile::SafetensorsFile(std::shared_ptr<const State> state) : state_(std::move(state)) {}

// Note [Tensor order]
// tensors() lists tensors by data_offsets (ties, which only zero-byte tensors can have, by name):
// the order the bytes lie in, which lets a caller stream a file front to back, and which does not
// depend on the JSON key order (the Python writer sorts by dtype then name; other writers differ).
//
// Note [Layout rules]
// Matched to safetensors 0.8 (checked against the Python library): after sorting by data_offsets,
// the first tensor starts at 0, each next one where the previous ends, and the last ends exactly at
// the end of the file. So overlaps, holes and trailing bytes are all errors. Like the Python
// library we accept leading/trailing whitespace around the JSON, an unpadded header, a null
// "__metadata__" and unknown fields in an entry; unlike it we reject duplicate keys (serde keeps the
// last one), which no writer produces and which would otherwise make the layout ambiguous.
SafetensorsFile SafetensorsFile::open(const std::filesystem::path& file) {
  auto state = std::make_shared<State>();
  state->path = file;
  map_file(file, state->mapping);
  const uint8_t* bytes = state->mapping.data;
  const uint64_t size = state->mapping.size;

  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];
  LTXMPS_CHECK(header_size <= kMaxHeaderSize, "safetensors file ", file.string(), " declares a header of ", header_size,
               " bytes, more than the ", kMaxHeaderSize, "-byte cap (corrupt or not a safetensors file)");
  LTXMPS_CHECK(header_size <= size - 8, "safetensors file ", file.string(), " declares a header of ", header_size,
               " bytes, but only ", size - 8, " bytes follow the header length");
  state->data_start = 8 + header_size;
  state->data_size = size - state->data_start;

  const nlohmann::json header = detail::parse_json_strict(
      std::string_view(reinterpret_cast<const char*>(bytes + 8), header_size), file, "the header of safetensors file ");
  LTXMPS_CHECK(header.is_object(), "the header of safetensors file ", file.string(), " is not a JSON object");

  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      LTXMPS_CHECK(value.is_object(), "__metadata__ in ", file.string(), " is not an object of strings");
      for (const auto& [mkey, mvalue] : value.items()) {
        LTXMPS_CHECK(mvalue.is_string(), "__metadata__ entry '", mkey, "' in ", file.string(), " is ", detail::describe_json(mvalue),
                     ", expected a string");
        state->metadata.emplace(mkey, mvalue.get<std::string>());
      }
      continue;
    }
    state->tensors.push_back(parse_tensor_entry(key, value, file));
  }

  auto& tensors = state->tensors;
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  uint64_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const auto& t : tensors) {
    LTXMPS_CHECK(t.end <= state->data_size, "tensor '", t.name, "' in ", file.string(), " has data_offsets [", t.begin,
                 ", ", t.end, "] beyond the data section of ", state->data_size, " bytes");
    LTXMPS_CHECK(t.begin >= covered, "tensor '", t.name, "' in ", file.string(), " has data_offsets [", t.begin, ", ",
                 t.end, "] overlapping tensor '", previous ? previous->name : "", "' (which ends at ", covered, ")");
    LTXMPS_CHECK(t.begin == covered, "tensor '", t.name, "' in ", file.string(), " starts at ", t.begin,
                 ", leaving a hole of ", t.begin - covered, " bytes after ",
                 previous ? "tensor '" + previous->name + "'" : std::string("the start of the data section"),
                 " (the format requires tensors to cover the data section contiguously)");
    covered = t.end;
    previous = &t;
  }
  LTXMPS_CHECK(covered == state->data_size, "safetensors file ", file.string(), " has ", state->data_size - covered,
               " bytes after the last tensor that no tensor covers (truncated header or trailing data)");
  for (size_t i = 0; i < tensors.size(); ++i) state->index.emplace(tensors[i].name, i);
  return SafetensorsFile(std::move(state));
}

const std::filesystem::path& SafetensorsFile::path() const { return state_->path; }
const std::vector<TensorInfo>& SafetensorsFile::tensors() const { return state_->tensors; }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return state_->metadata; }
uint64_t SafetensorsFile::data_size() const { return state_->data_size; }

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  const auto it = state_->index.find(name);
  return it == state_->index.end() ? nullptr : &state_->tensors[it->second];
}

at::Tensor SafetensorsFile::load(std::string_view name, const at::TensorOptions& options) const {
  const TensorInfo* info = find(name);
  LTXMPS_CHECK(info != nullptr, "no tensor '", name, "' in ", state_->path.string());
  const at::ScalarType target = options.has_dtype() ? c10::typeMetaToScalarType(options.dtype()) : info->dtype;
  const at::Device device = options.device();
  if (info->begin == info->end) return at::empty(info->shape, at::TensorOptions().dtype(target).device(device));

  const uint8_t* src = state_->mapping.data + state_->data_start + info->begin;
  const uint64_t nbytes = info->end - info->begin;
  const auto itemsize = c10::elementSize(info->dtype);
  const auto numel = static_cast<int64_t>(nbytes / itemsize);
  if (info->dtype == at::kBool) {
    // A byte other than 0/1 read as C++ bool is undefined behaviour; the Python library passes it on.
    const auto* bad = std::find_if(src, src + nbytes, [](uint8_t b) { return b > 1; });
    LTXMPS_CHECK(bad == src + nbytes, "tensor '", name, "' in ", state_->path.string(), " is BOOL but element ",
                 bad - src, " holds byte ", static_cast<int>(*bad), " (expected 0 or 1)");
  }
  // Work on the flat tensor: the conversion then never meets ATen's limits on dimensions, and the
  // result is reshaped for free.
  at::Tensor flat;
  // Page-locked host memory (streamed weights, Note [Streamed weights]) is filled straight from the mapping.
  const bool pinned = options.pinned_memory() && device.is_cpu();
  if (reinterpret_cast<uintptr_t>(src) % itemsize == 0) {
    // from_blob over read-only memory is safe here because the copy below only reads it.
    flat = at::from_blob(const_cast<uint8_t*>(src), {numel}, at::TensorOptions().dtype(info->dtype));
    flat = pinned ? at::empty({numel}, at::TensorOptions().dtype(target).pinned_memory(true)).copy_(flat)
                  : flat.to(device, target, /*non_blocking=*/false, /*copy=*/true);
  } else {
    // Note [Misaligned tensors]
    // Python writers align every tensor, but other writers need not; reading a float through a
    // misaligned pointer is undefined behaviour, so the bytes are first copied to aligned memory.
    flat = at::empty({numel}, at::TensorOptions().dtype(info->dtype));
    std::memcpy(flat.data_ptr(), src, nbytes);
    flat = pinned ? at::empty({numel}, at::TensorOptions().dtype(target).pinned_memory(true)).copy_(flat)
                  : flat.to(device, target);
  }
  return flat.view(info->shape);
}

void save_safetensors(const std::filesystem::path& file, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> names;
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    LTXMPS_CHECK(name != "__metadata__", "cannot write ", file.string(), ": '__metadata__' is reserved, not a tensor name");
    LTXMPS_CHECK(names.insert(name).second, "cannot write ", file.string(), ": tensor '", name, "' is given twice");
    LTXMPS_CHECK(t.defined(), "cannot write ", file.string(), ": tensor '", name, "' is undefined");
    LTXMPS_CHECK(t.layout() == at::kStrided, "cannot write ", file.string(), ": tensor '", name,
                 "' is not a dense (strided) tensor");
    try {
      safetensors_dtype_name(t.scalar_type());
    } catch (const Error& e) {
      throw Error(c10::str("cannot write ", file.string(), ": tensor '", name, "': ", e.what()));
    }
    order[i] = i;
  }
  // Largest itemsize first (then by name), as the Python writer does: with the 8-byte padded header
  // every tensor then starts aligned for its dtype.
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const auto sa = tensors[a].second.element_size();
    const auto sb = tensors[b].second.element_size();
    return sa != sb ? sa > sb : tensors[a].first < tensors[b].first;
  });

  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    const auto nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // a name or metadata that is not valid UTF-8
    throw Error(c10::str("cannot write ", file.string(), ": the header cannot be encoded as JSON: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  AtomicOutput output(file, AtomicOutput::Kind::file);
  const auto& tmp = output.temporary();
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  LTXMPS_CHECK(out.is_open(), "cannot write ", file.string(), ": cannot create ", tmp.string(), ": ", std::strerror(errno));
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  out.write(reinterpret_cast<const char*>(length), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  // Written in chunks with a cancellation check between them, so that SIGINT during a multi-gigabyte write
  // stops within one chunk.
  constexpr uint64_t kChunk = uint64_t{64} << 20;
  for (size_t i : order) {
    throw_if_cancelled();
    // One host copy at a time keeps host memory near the largest tensor.
    const at::Tensor host = tensors[i].second.detach().to(at::kCPU).contiguous();
    const auto* bytes = static_cast<const char*>(host.data_ptr());
    for (uint64_t done = 0; done < host.nbytes(); done += kChunk) {
      if (done > 0) throw_if_cancelled();
      out.write(bytes + done, static_cast<std::streamsize>(std::min<uint64_t>(kChunk, host.nbytes() - done)));
      LTXMPS_CHECK(out.good(), "cannot write ", file.string(), ": writing tensor '", tensors[i].first, "' to ",
                   tmp.string(), " failed: ", std::strerror(errno));
    }
  }
  out.close();
  LTXMPS_CHECK(!out.fail(), "cannot write ", file.string(), ": closing ", tmp.string(), " failed: ", std::strerror(errno));
  output.commit();
}

std::vector<std::pair<std::string, at::Tensor>> load_all(const std::filesystem::path& file, const at::TensorOptions& options) {
  const auto st = SafetensorsFile::open(file);
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.reserve(st.tensors().size());
  for (const auto& t : st.tensors()) out.emplace_back(t.name, st.load(t.name, options));
  return out;
}

}  // namespace ltxmps::pipeline
