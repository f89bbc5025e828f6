// Writes tensors to safetensors files: one file, or a sharded checkpoint with
// model.safetensors.index.json as Hugging Face saves it. Used by the tiny checkpoint generator and
// by tests that craft checkpoints. Tensors are written contiguous, from the CPU, in their own
// dtype. Errors (I/O, duplicate names, an unsupported dtype) are statuses naming the file; a failed
// write leaves no partial file behind.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/status.h"

namespace flexvqa {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Data is laid out in the order given; the header is padded with spaces to a multiple of 8 bytes.
Status WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// Splits `tensors` in order into `num_shards` files named model-0000i-of-0000n.safetensors in `dir`
// (which must exist) and writes model.safetensors.index.json mapping every name to its shard.
// INVALID_ARGUMENT when there are fewer tensors than shards.
Status WriteShardedSafetensors(const std::string& dir, const NamedTensors& tensors, int num_shards);

// The safetensors dtype string for an ATen type ("F32", ...); UNIMPLEMENTED for the others.
StatusOr<std::string> SafetensorsDtypeName(at::ScalarType type);

}  // namespace flexvqa
