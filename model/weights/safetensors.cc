// safetensors format: https://github.com/huggingface/safetensors#format. An 8-byte little-endian
// header length N, N bytes of JSON, then the data buffer that data_offsets index into. Every number
// in the header is checked against the file size before it is used, so nothing here trusts the
// file.
#include "model/weights/safetensors.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace flexvqa {
namespace {

using json = nlohmann::json;

// Far above any real tensor's rank; bounds the work done on a hostile shape.
constexpr size_t kMaxRank = 16;

Status Corrupt(const std::string& path, const std::string& what) {
  return DataLossError("safetensors file " + path + ": " + what);
}

bool IsHostLittleEndian() {
  const uint16_t probe = 1;
  uint8_t first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

std::string Basename(const std::string& path) {
  return std::filesystem::path(path).filename().string();
}

}  // namespace

size_t SafetensorsItemSize(const std::string& dtype) {
  static const std::map<std::string, size_t> kSizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2},    {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},      {"BOOL", 1},
      {"U64", 8}, {"U32", 4}, {"U16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

StatusOr<at::ScalarType> SafetensorsToScalarType(const std::string& dtype) {
  static const std::map<std::string, at::ScalarType> kTypes = {
      {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16},
      {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
      {"U8", at::kByte},    {"BOOL", at::kBool}};
  auto it = kTypes.find(dtype);
  if (it == kTypes.end())
    return UnimplementedError("safetensors dtype " + dtype + " is not supported");
  return it->second;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  if (!IsHostLittleEndian()) return UnimplementedError("safetensors needs a little-endian host");
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return NotFoundError("safetensors file " + path + " does not exist");
    return FailedPreconditionError("cannot open " + path + ": " + std::strerror(err));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return FailedPreconditionError(path + " is not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Corrupt(
        path, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // The mapping keeps the file alive.
  if (map == MAP_FAILED) return InternalError("mmap " + path + ": " + std::strerror(map_err));
  file->map_ = map;
  file->map_size_ = size;

  const auto* bytes = static_cast<const uint8_t*>(map);
  uint64_t header_len;
  std::memcpy(&header_len, bytes, 8);  // Little-endian host checked above.
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return Corrupt(path, "header length " + std::to_string(header_len) + " exceeds the " +
                             std::to_string(kMaxSafetensorsHeaderBytes) + "-byte limit");
  }
  if (header_len > size - 8) {
    return Corrupt(path, "header length " + std::to_string(header_len) +
                             " extends beyond the end of the file (" + std::to_string(size) +
                             " bytes)");
  }
  file->data_ = bytes + 8 + header_len;
  file->data_size_ = size - 8 - header_len;
  FLEXVQA_RETURN_IF_ERROR(file->ParseHeader(reinterpret_cast<const char*>(bytes + 8), header_len));
  return file;
}

Status SafetensorsFile::ParseHeader(const char* header, uint64_t header_len) {
  json j = json::parse(header, header + header_len, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Corrupt(path_, "header is not valid JSON");
  if (!j.is_object()) return Corrupt(path_, "header is not a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return Corrupt(path_, "__metadata__ is not an object");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object()) return Corrupt(path_, where + " is not an object");
    auto dtype_it = entry.find("dtype");
    auto shape_it = entry.find("shape");
    auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return Corrupt(path_, where + " has no string 'dtype'");
    }
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return Corrupt(path_, where + " has no 'shape' list");
    }
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
      return Corrupt(path_, where + " has no 'data_offsets' pair of non-negative integers");
    }
    SafetensorsTensorInfo info;
    info.dtype = dtype_it->get<std::string>();
    info.itemsize = SafetensorsItemSize(info.dtype);
    if (info.itemsize == 0)
      return Corrupt(path_, where + " has unknown dtype '" + info.dtype + "'");
    if (shape_it->size() > kMaxRank) {
      return Corrupt(path_, where + " has rank " + std::to_string(shape_it->size()) + " (limit " +
                                std::to_string(kMaxRank) + ")");
    }
    // numel * itemsize must fit in the data buffer; checked with overflow-safe arithmetic per
    // dimension.
    uint64_t bytes = info.itemsize;
    bool too_big = false;
    for (const json& d : *shape_it) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return Corrupt(path_, where + " has an invalid dimension " + d.dump() + " in shape " +
                                  shape_it->dump());
      }
      const uint64_t dim = d.get<uint64_t>();
      info.shape.push_back(static_cast<int64_t>(dim));
      if (__builtin_mul_overflow(bytes, dim, &bytes)) too_big = true;
    }
    if (too_big || bytes > data_size_) {
      return Corrupt(path_, where + " with shape " + shape_it->dump() + " and dtype " + info.dtype +
                                " is larger than the data buffer (" + std::to_string(data_size_) +
                                " bytes)");
    }
    info.numel = bytes / info.itemsize;
    info.data_begin = (*offsets_it)[0].get<uint64_t>();
    info.data_end = (*offsets_it)[1].get<uint64_t>();
    if (info.data_begin > info.data_end || info.data_end > data_size_) {
      return Corrupt(path_, where + " has data_offsets [" + std::to_string(info.data_begin) + ", " +
                                std::to_string(info.data_end) + "] outside the data buffer of " +
                                std::to_string(data_size_) + " bytes");
    }
    if (info.data_end - info.data_begin != bytes) {
      return Corrupt(path_, where + " spans " + std::to_string(info.data_end - info.data_begin) +
                                " bytes but shape " + ShapeString(info.shape) + " of " +
                                info.dtype + " needs " + std::to_string(bytes));
    }
    tensors_.emplace(name, std::move(info));
  }
  return Status::Ok();
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

const SafetensorsTensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, info] : tensors_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

StatusOr<at::Tensor> SafetensorsFile::Load(const std::string& name) const {
  const SafetensorsTensorInfo* info = Find(name);
  if (info == nullptr) return NotFoundError("tensor '" + name + "' not found in " + path_);
  FLEXVQA_ASSIGN_OR_RETURN(at::ScalarType stored, SafetensorsToScalarType(info->dtype));
  return Load(name, stored, at::kCPU);
}

StatusOr<at::Tensor> SafetensorsFile::Load(const std::string& name, at::ScalarType dtype,
                                           at::Device device) const {
  const SafetensorsTensorInfo* info = Find(name);
  if (info == nullptr) return NotFoundError("tensor '" + name + "' not found in " + path_);
  auto stored = SafetensorsToScalarType(info->dtype);
  if (!stored.ok()) return stored.status().WithContext("tensor '" + name + "' in " + path_);
  try {
    const auto options = at::TensorOptions().dtype(*stored).device(at::kCPU);
    const uint8_t* src = data_ + info->data_begin;
    at::Tensor cpu;
    if (info->numel == 0 || reinterpret_cast<uintptr_t>(src) % info->itemsize != 0) {
      // Spans need not be aligned (the header length is arbitrary); kernels may assume alignment.
      cpu = at::empty(info->shape, options);
      if (info->numel != 0) std::memcpy(cpu.data_ptr(), src, info->data_end - info->data_begin);
    } else {
      // The mapping is read-only: the blob is only ever read by the copy below.
      cpu = at::from_blob(const_cast<uint8_t*>(src), info->shape, options);
    }
    return cpu.to(device, dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
  } catch (const c10::Error& e) {
    return InternalError("loading tensor '" + name + "' from " + path_ + ": " +
                         e.what_without_backtrace());
  }
}

StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(
    const std::string& dir) {
  namespace fs = std::filesystem;
  std::unique_ptr<SafetensorsCheckpoint> ckpt(new SafetensorsCheckpoint());
  ckpt->dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return NotFoundError("checkpoint directory " + dir + " does not exist");

  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> filenames;
  json weight_map;
  if (fs::is_regular_file(index_path, ec)) {
    std::ifstream in(index_path);
    std::ostringstream text;
    text << in.rdbuf();
    json index = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
        !index["weight_map"].is_object()) {
      return DataLossError(index_path.string() + " is not JSON with a 'weight_map' object");
    }
    weight_map = index["weight_map"];
    for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
      if (!it.value().is_string()) {
        return DataLossError(index_path.string() + ": weight_map entry '" + it.key() +
                             "' is not a string");
      }
      const std::string f = it.value().get<std::string>();
      // Shards are siblings of the index; anything else could read outside the checkpoint.
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
        return DataLossError(index_path.string() + ": shard name '" + f + "' for '" + it.key() +
                             "' is not a file name in " + dir);
      }
      if (std::find(filenames.begin(), filenames.end(), f) == filenames.end())
        filenames.push_back(f);
    }
  } else if (fs::is_regular_file(fs::path(dir) / "model.safetensors", ec)) {
    filenames.push_back("model.safetensors");
  } else {
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".safetensors")
        filenames.push_back(it->path().filename().string());
    }
    std::sort(filenames.begin(), filenames.end());
  }
  if (filenames.empty()) return NotFoundError("no safetensors files in " + dir);

  for (const std::string& f : filenames) {
    FLEXVQA_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((fs::path(dir) / f).string()));
    ckpt->files_.push_back(std::move(file));
  }
  if (!weight_map.is_null()) {
    for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
      const std::string f = it.value().get<std::string>();
      const SafetensorsFile* file = nullptr;
      for (const auto& candidate : ckpt->files_) {
        if (Basename(candidate->path()) == f) file = candidate.get();
      }
      if (file == nullptr || !file->Has(it.key())) {
        return DataLossError(index_path.string() + " maps '" + it.key() + "' to " + f +
                             ", which does not contain it");
      }
      ckpt->by_name_[it.key()] = file;
    }
    return ckpt;
  }
  for (const auto& file : ckpt->files_) {
    for (const std::string& name : file->Names()) {
      auto [it, inserted] = ckpt->by_name_.emplace(name, file.get());
      if (!inserted) {
        return DataLossError("tensor '" + name + "' is stored in both " + it->second->path() +
                             " and " + file->path());
      }
    }
  }
  return ckpt;
}

const SafetensorsFile* SafetensorsCheckpoint::FileFor(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::vector<std::string> SafetensorsCheckpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(by_name_.size());
  for (const auto& [name, file] : by_name_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

StatusOr<at::Tensor> SafetensorsCheckpoint::Load(const std::string& name, at::ScalarType dtype,
                                                 at::Device device) const {
  const SafetensorsFile* file = FileFor(name);
  if (file == nullptr)
    return NotFoundError("tensor '" + name + "' not found in checkpoint " + dir_);
  return file->Load(name, dtype, device);
}

}  // namespace flexvqa
