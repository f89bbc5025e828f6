#include "server/reflection_v1.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/impl/server_initializer.h>

#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "grpc/reflection/v1/reflection.grpc.pb.h"

namespace flexvqa {

namespace {

namespace pb = ::google::protobuf;
namespace rv1 = ::grpc::reflection::v1;

// Adds `file` and, once each, the files it depends on (clients need them to resolve its types).
void AddFile(const pb::FileDescriptor* file, std::unordered_set<std::string>* sent,
             rv1::FileDescriptorResponse* out) {
  if (!sent->insert(file->name()).second) return;
  pb::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(out->add_file_descriptor_proto());
  for (int i = 0; i < file->dependency_count(); ++i) AddFile(file->dependency(i), sent, out);
}

void SetError(grpc::StatusCode code, const std::string& message,
              rv1::ServerReflectionResponse* response) {
  response->mutable_error_response()->set_error_code(static_cast<int32_t>(code));
  response->mutable_error_response()->set_error_message(message);
}

class ReflectionV1Service final : public rv1::ServerReflection::Service {
 public:
  // `services` is the server's own list: it lives as long as the server and gRPC completes it
  // (the health service last) before the first call.
  void SetServiceList(const std::vector<std::string>* services) { services_ = services; }

  grpc::Status ServerReflectionInfo(
      grpc::ServerContext* /*context*/,
      grpc::ServerReaderWriter<rv1::ServerReflectionResponse, rv1::ServerReflectionRequest>* stream)
      override {
    rv1::ServerReflectionRequest request;
    while (stream->Read(&request)) {
      rv1::ServerReflectionResponse response;
      response.set_valid_host(request.host());
      *response.mutable_original_request() = request;
      Answer(request, &response);
      if (!stream->Write(response)) break;
    }
    return grpc::Status::OK;
  }

 private:
  void Answer(const rv1::ServerReflectionRequest& request,
              rv1::ServerReflectionResponse* response) const {
    const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool();
    const pb::FileDescriptor* file = nullptr;
    using Request = rv1::ServerReflectionRequest;
    switch (request.message_request_case()) {
      case Request::kListServices:
        response->mutable_list_services_response();  // Present even when empty.
        if (services_ == nullptr) return;
        for (const std::string& name : *services_) {
          response->mutable_list_services_response()->add_service()->set_name(name);
        }
        return;
      case Request::kFileByFilename:
        file = pool->FindFileByName(request.file_by_filename());
        break;
      case Request::kFileContainingSymbol:
        file = pool->FindFileContainingSymbol(request.file_containing_symbol());
        break;
      case Request::kFileContainingExtension: {
        const rv1::ExtensionRequest& extension = request.file_containing_extension();
        const pb::Descriptor* type = pool->FindMessageTypeByName(extension.containing_type());
        const pb::FieldDescriptor* field =
            type == nullptr ? nullptr
                            : pool->FindExtensionByNumber(type, extension.extension_number());
        if (field != nullptr) file = field->file();
        break;
      }
      case Request::kAllExtensionNumbersOfType: {
        const pb::Descriptor* type =
            pool->FindMessageTypeByName(request.all_extension_numbers_of_type());
        if (type == nullptr) {
          SetError(grpc::StatusCode::NOT_FOUND, "Type not found.", response);
          return;
        }
        std::vector<const pb::FieldDescriptor*> extensions;
        pool->FindAllExtensions(type, &extensions);
        rv1::ExtensionNumberResponse* numbers = response->mutable_all_extension_numbers_response();
        numbers->set_base_type_name(type->full_name());
        for (const pb::FieldDescriptor* extension : extensions) {
          numbers->add_extension_number(extension->number());
        }
        return;
      }
      default:
        SetError(grpc::StatusCode::UNIMPLEMENTED, "Unknown reflection request.", response);
        return;
    }
    if (file == nullptr) {
      SetError(grpc::StatusCode::NOT_FOUND, "Not found.", response);
      return;
    }
    std::unordered_set<std::string> sent;
    AddFile(file, &sent, response->mutable_file_descriptor_response());
  }

  const std::vector<std::string>* services_ = nullptr;
};

// The way into BuildAndStart: a plugin registers the service once the server exists and hands it
// the server's list of services (what gRPC's v1alpha plugin does).
class ReflectionV1Plugin final : public grpc::ServerBuilderPlugin {
 public:
  std::string name() override { return "flexvqa_reflection_v1"; }
  void InitServer(grpc::ServerInitializer* initializer) override {
    initializer->RegisterService(service_);
    service_->SetServiceList(initializer->GetServiceList());
  }
  void Finish(grpc::ServerInitializer* /*initializer*/) override {}
  void ChangeArguments(const std::string& /*name*/, void* /*value*/) override {}
  bool has_sync_methods() const override { return true; }

 private:
  std::shared_ptr<ReflectionV1Service> service_ = std::make_shared<ReflectionV1Service>();
};

class ReflectionV1Option final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->push_back(std::make_unique<ReflectionV1Plugin>());
  }
};

}  // namespace

void AddReflectionV1(grpc::ServerBuilder* builder) {
  builder->SetOption(std::make_unique<ReflectionV1Option>());
}

}  // namespace flexvqa
