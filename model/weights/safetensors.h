// Read-only, memory-mapped safetensors files (one file, or a checkpoint directory of shards).
// Open() validates the whole header against the file size, so a hostile or truncated file is a
// DATA_LOSS status naming the file and tensor, never a crash or a huge allocation. Load() copies a
// tensor out of the mapping. Immutable after Open(): const methods are safe to call from several
// threads.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/status.h"

namespace flexvqa {

// Header limit: real checkpoints have headers of a few hundred KB.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

struct SafetensorsTensorInfo {
  std::string dtype;    // As stored: "F32", "F16", "BF16", "I64", ...
  size_t itemsize = 0;  // Bytes per element.
  std::vector<int64_t> shape;
  uint64_t numel = 0;
  uint64_t data_begin = 0;  // Byte span relative to the data buffer (after the header).
  uint64_t data_end = 0;
};

// Bytes per element of a safetensors dtype string; 0 when unknown.
size_t SafetensorsItemSize(const std::string& dtype);
// The ATen type of a safetensors dtype string (F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL);
// UNIMPLEMENTED for the others.
StatusOr<at::ScalarType> SafetensorsToScalarType(const std::string& dtype);
// "[2, 3]"
std::string ShapeString(const std::vector<int64_t>& shape);

class SafetensorsFile {
 public:
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // nullptr when absent.
  const SafetensorsTensorInfo* Find(const std::string& name) const;
  bool Has(const std::string& name) const { return Find(name) != nullptr; }
  std::vector<std::string> Names() const;  // Sorted.
  // String entries of "__metadata__".
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor as a fresh contiguous copy in `dtype` on `device`.
  StatusOr<at::Tensor> Load(const std::string& name, at::ScalarType dtype, at::Device device) const;
  // The tensor in its stored dtype on the CPU (a copy).
  StatusOr<at::Tensor> Load(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  Status ParseHeader(const char* header, uint64_t header_len);

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // Start of the data buffer inside the mapping.
  uint64_t data_size_ = 0;
  std::unordered_map<std::string, SafetensorsTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Every tensor of a checkpoint directory, from (first match) model.safetensors.index.json's
// weight_map, model.safetensors, or all *.safetensors files in the directory. A name stored twice
// is DATA_LOSS.
class SafetensorsCheckpoint {
 public:
  static StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // The file holding `name`, or nullptr.
  const SafetensorsFile* FileFor(const std::string& name) const;
  bool Has(const std::string& name) const { return FileFor(name) != nullptr; }
  std::vector<std::string> Names() const;  // Sorted.
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  StatusOr<at::Tensor> Load(const std::string& name, at::ScalarType dtype, at::Device device) const;

 private:
  SafetensorsCheckpoint() = default;
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, const SafetensorsFile*> by_name_;
};

}  // namespace flexvqa
