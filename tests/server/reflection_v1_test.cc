// grpc.reflection.v1 on the real server over loopback (issue 11, finding 7: only v1alpha was
// served, and newer tools ask v1 first): the services, the files defining a symbol with their
// dependencies, errors for what does not exist, several requests on one stream.
#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "tests/server/service_fixture.h"

namespace flexvqa {
namespace {

namespace rv1 = ::grpc::reflection::v1;

class ReflectionV1Test : public testing::ServiceTest {
 protected:
  // One request on a fresh stream.
  rv1::ServerReflectionResponse Ask(const rv1::ServerReflectionRequest& request) {
    return AskAll({request}).at(0);
  }
  // Requests in order on one stream, a response for each.
  std::vector<rv1::ServerReflectionResponse> AskAll(
      const std::vector<rv1::ServerReflectionRequest>& requests) {
    auto stub = rv1::ServerReflection::NewStub(channel_);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + testing::kWait);
    auto stream = stub->ServerReflectionInfo(&context);
    std::vector<rv1::ServerReflectionResponse> responses;
    for (const auto& request : requests) {
      EXPECT_TRUE(stream->Write(request));
      rv1::ServerReflectionResponse response;
      if (!stream->Read(&response)) break;
      responses.push_back(response);
    }
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
    EXPECT_EQ(responses.size(), requests.size());
    responses.resize(requests.size());
    return responses;
  }
  static std::vector<std::string> FileNames(const rv1::ServerReflectionResponse& response) {
    std::vector<std::string> names;
    for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      EXPECT_TRUE(file.ParseFromString(bytes));
      names.push_back(file.name());
    }
    return names;
  }
};

TEST_F(ReflectionV1Test, ListsEveryServiceTheServerServes) {
  StartServer();
  rv1::ServerReflectionRequest request;
  request.set_host("localhost");
  request.set_list_services("");
  const rv1::ServerReflectionResponse response = Ask(request);
  EXPECT_EQ(response.valid_host(), "localhost");
  EXPECT_EQ(response.original_request().message_request_case(),
            rv1::ServerReflectionRequest::kListServices);
  std::vector<std::string> names;
  for (const auto& service : response.list_services_response().service()) {
    names.push_back(service.name());
  }
  std::sort(names.begin(), names.end());
  const std::vector<std::string> expected = {"flexvqa.v1.VqaService", "grpc.health.v1.Health",
                                             "grpc.reflection.v1.ServerReflection",
                                             "grpc.reflection.v1alpha.ServerReflection"};
  EXPECT_EQ(names, expected);
}

TEST_F(ReflectionV1Test, AnswersTheFileOfASymbolWithItsMethods) {
  StartServer();
  rv1::ServerReflectionRequest request;
  request.set_file_containing_symbol("flexvqa.v1.VqaService");
  const rv1::ServerReflectionResponse response = Ask(request);
  ASSERT_TRUE(response.has_file_descriptor_response()) << response.DebugString();
  ASSERT_GE(response.file_descriptor_response().file_descriptor_proto_size(), 1);
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(response.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(file.name(), "flexvqa/v1/vqa.proto");
  EXPECT_EQ(file.package(), "flexvqa.v1");
  ASSERT_EQ(file.service_size(), 1);
  std::vector<std::string> methods;
  for (const auto& method : file.service(0).method()) methods.push_back(method.name());
  EXPECT_EQ(methods, (std::vector<std::string>{"Generate", "Answer", "ModelInfo"}));
  // Every file it imports comes along, once: a client resolves every type from this response.
  std::vector<std::string> names = FileNames(response);
  for (const std::string& dependency : file.dependency()) {
    EXPECT_EQ(std::count(names.begin(), names.end(), dependency), 1) << dependency;
  }
  // A message type and a method name lead to the same file.
  rv1::ServerReflectionRequest message;
  message.set_file_containing_symbol("flexvqa.v1.GenerateRequest");
  rv1::ServerReflectionRequest method;
  method.set_file_containing_symbol("flexvqa.v1.VqaService.Generate");
  rv1::ServerReflectionRequest by_name;
  by_name.set_file_by_filename("flexvqa/v1/vqa.proto");
  for (const auto& other : AskAll({message, method, by_name})) {
    EXPECT_EQ(FileNames(other), names) << other.original_request().DebugString();
  }
}

TEST_F(ReflectionV1Test, WhatDoesNotExistIsNotFoundAndTheStreamGoesOn) {
  StartServer();
  rv1::ServerReflectionRequest symbol;
  symbol.set_file_containing_symbol("flexvqa.v1.NoSuchService");
  rv1::ServerReflectionRequest file;
  file.set_file_by_filename("no/such.proto");
  rv1::ServerReflectionRequest extension;
  extension.mutable_file_containing_extension()->set_containing_type("flexvqa.v1.GenerateRequest");
  extension.mutable_file_containing_extension()->set_extension_number(1000);
  rv1::ServerReflectionRequest type;
  type.set_all_extension_numbers_of_type("flexvqa.v1.NoSuchMessage");
  rv1::ServerReflectionRequest empty;  // No request set at all.
  rv1::ServerReflectionRequest numbers;
  numbers.set_all_extension_numbers_of_type("flexvqa.v1.GenerateRequest");
  const auto responses = AskAll({symbol, file, extension, type, empty, numbers});
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(responses[i].error_response().error_code(), grpc::StatusCode::NOT_FOUND)
        << responses[i].DebugString();
  }
  EXPECT_EQ(responses[4].error_response().error_code(), grpc::StatusCode::UNIMPLEMENTED);
  ASSERT_TRUE(responses[5].has_all_extension_numbers_response()) << responses[5].DebugString();
  EXPECT_EQ(responses[5].all_extension_numbers_response().base_type_name(),
            "flexvqa.v1.GenerateRequest");
  EXPECT_EQ(responses[5].all_extension_numbers_response().extension_number_size(), 0);
}

}  // namespace
}  // namespace flexvqa
