// The server's request conversion (server/api_convert.h FromProto) on arbitrary wire bytes, as a
// client may send them: whatever parses as a GenerateRequest is either INVALID_ARGUMENT or a
// GenerationRequest that keeps the API's rules (one prompt form, at most one image, a known MIME
// type, a bounded request id). The final message of a converted request serializes.
#include <google/protobuf/stubs/logging.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "flexvqa/v1/vqa.pb.h"
#include "server/api_convert.h"
#include "tests/fuzz/fuzz_check.h"

// libprotobuf logs an ERROR line for every string field with invalid UTF-8; at thousands of inputs
// a second that is all the log would show.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  flexvqa::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  const auto converted = flexvqa::FromProto(request);
  if (!converted.ok()) {
    FUZZ_CHECK(converted.status().code() == flexvqa::StatusCode::kInvalidArgument);
    FUZZ_CHECK(!converted.status().message().empty());
    return 0;
  }
  FUZZ_CHECK(!converted->turns.empty());
  FUZZ_CHECK(request.images_size() <= flexvqa::kMaxImagesPerRequest);
  FUZZ_CHECK(request.request_id().size() <= static_cast<size_t>(flexvqa::kMaxRequestIdBytes));
  flexvqa::StreamItem final_item;
  final_item.final = true;
  flexvqa::v1::GenerateFinal out;
  flexvqa::ToProto(final_item, request.request_id(), &out);
  std::string wire;
  FUZZ_CHECK(out.SerializeToString(&wire));
  return 0;
}
