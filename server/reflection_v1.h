// grpc.reflection.v1 beside gRPC's own v1alpha (Debian's gRPC 1.51 serves only v1alpha, and
// newer tools such as grpcurl ask v1 first): the same answers from the same sources, the generated
// descriptor pool and the server's own list of services. Protocol: server/proto/grpc/reflection/
// v1/reflection.proto. Synchronous, as gRPC's v1alpha service: an open stream holds one of the
// sync server's threads. Call AddReflectionV1 on main's thread before BuildAndStart.
#pragma once

#include <grpcpp/server_builder.h>

namespace flexvqa {

// The server `builder` builds will serve grpc.reflection.v1.ServerReflection.
void AddReflectionV1(grpc::ServerBuilder* builder);

}  // namespace flexvqa
