// The one map from the engine's Status to gRPC's status. Every code has a gRPC twin (model/status.h
// follows absl's numbering), so the map is one-to-one and keeps the message. Pure; any thread.
#pragma once

#include <grpcpp/support/status.h>

#include "model/status.h"

namespace flexvqa {

grpc::Status ToGrpcStatus(const Status& status);

}  // namespace flexvqa
