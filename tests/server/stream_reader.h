// Test support: reads one Generate stream to its end, collecting the streamed text and token ids,
// the final message and the call's status (shared by the service tests on the fake and the real
// engine).
#pragma once

#include <grpcpp/grpcpp.h>

#include <optional>
#include <string>
#include <vector>

#include "flexvqa/v1/vqa.grpc.pb.h"

namespace flexvqa::testing {

struct StreamResult {
  grpc::Status status;
  std::string text;
  std::vector<int32_t> ids;
  std::optional<v1::GenerateFinal> final;
  int messages = 0;
};

inline StreamResult ReadGenerateStream(v1::VqaService::Stub& stub, grpc::ClientContext* context,
                                       const v1::GenerateRequest& request) {
  StreamResult result;
  auto reader = stub.Generate(context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    ++result.messages;
    if (response.has_delta()) {
      result.text += response.delta().text();
      result.ids.insert(result.ids.end(), response.delta().token_ids().begin(),
                        response.delta().token_ids().end());
    } else if (response.has_final()) {
      result.final = response.final();
    }
  }
  result.status = reader->Finish();
  return result;
}

}  // namespace flexvqa::testing
