// Mirrors safetensors' serialize(): sorted JSON header, data in the given order, header padded to 8
// bytes so that every tensor of an 8-byte-multiple size stays aligned when the file is
// memory-mapped.
#include "model/weights/safetensors_writer.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

namespace flexvqa {
namespace {

using json = nlohmann::json;

std::string ShardName(int index, int count) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05d-of-%05d.safetensors", index + 1, count);
  return buf;
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

// Writes the length prefix, header and tensor bytes via a temporary file and a rename, so a failure
// leaves nothing at `path`.
Status WriteAtomically(const std::string& path, const std::string& header,
                       const std::vector<at::Tensor>& blobs) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return FailedPreconditionError("cannot create " + tmp);
    const uint64_t n = header.size();  // Little-endian hosts only, as the reader.
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const at::Tensor& t : blobs) {
      out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
    }
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      return InternalError("error writing " + tmp);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return InternalError("cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::string> SafetensorsDtypeName(at::ScalarType type) {
  switch (type) {
    case at::kDouble:
      return std::string("F64");
    case at::kFloat:
      return std::string("F32");
    case at::kHalf:
      return std::string("F16");
    case at::kBFloat16:
      return std::string("BF16");
    case at::kLong:
      return std::string("I64");
    case at::kInt:
      return std::string("I32");
    case at::kShort:
      return std::string("I16");
    case at::kChar:
      return std::string("I8");
    case at::kByte:
      return std::string("U8");
    case at::kBool:
      return std::string("BOOL");
    default:
      return UnimplementedError(std::string("no safetensors dtype for ") + c10::toString(type));
  }
}

Status WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                        const std::map<std::string, std::string>& metadata) {
  try {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<at::Tensor> blobs;
    std::set<std::string> seen;
    uint64_t offset = 0;
    for (const auto& [name, tensor] : tensors) {
      if (name == "__metadata__" || !seen.insert(name).second) {
        return InvalidArgumentError(path + ": duplicate or reserved tensor name '" + name + "'");
      }
      if (!tensor.defined())
        return InvalidArgumentError(path + ": tensor '" + name + "' is undefined");
      auto dtype = SafetensorsDtypeName(tensor.scalar_type());
      if (!dtype.ok()) return dtype.status().WithContext(path + ": tensor '" + name + "'");
      at::Tensor cpu = tensor.to(at::kCPU).contiguous();
      const uint64_t bytes = cpu.nbytes();
      header[name] = {{"dtype", *dtype},
                      {"shape", cpu.sizes().vec()},
                      {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
      blobs.push_back(std::move(cpu));
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    return WriteAtomically(path, text, blobs);
  } catch (const c10::Error& e) {
    return InternalError("writing " + path + ": " + e.what_without_backtrace());
  }
}

Status WriteShardedSafetensors(const std::string& dir, const NamedTensors& tensors,
                               int num_shards) {
  if (num_shards <= 0 || static_cast<size_t>(num_shards) > tensors.size()) {
    return InvalidArgumentError("cannot split " + std::to_string(tensors.size()) +
                                " tensors into " + std::to_string(num_shards) + " shards");
  }
  json weight_map = json::object();
  uint64_t total_size = 0;
  const size_t n = tensors.size();
  for (int s = 0; s < num_shards; ++s) {
    // Shard s takes tensors [s*n/k, (s+1)*n/k): every shard non-empty, order kept.
    const size_t begin = s * n / num_shards;
    const size_t end = (s + 1) * n / num_shards;
    const NamedTensors shard(tensors.begin() + begin, tensors.begin() + end);
    const std::string name = ShardName(s, num_shards);
    FLEXVQA_RETURN_IF_ERROR(WriteSafetensors(JoinPath(dir, name), shard, {{"format", "pt"}}));
    for (const auto& [tensor_name, tensor] : shard) {
      weight_map[tensor_name] = name;
      total_size += tensor.nbytes();
    }
  }
  const json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  const std::string path = JoinPath(dir, "model.safetensors.index.json");
  std::ofstream out(path, std::ios::trunc);
  out << index.dump(2) << "\n";
  out.flush();
  if (!out) return InternalError("error writing " + path);
  return Status::Ok();
}

}  // namespace flexvqa
