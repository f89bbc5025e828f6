// flexvqa_client: asks a flexvqa server one visual question and prints the answer as it streams.
//   flexvqa_client [flags] IMAGE QUESTION     (IMAGE: a JPEG or PNG file)
//   flexvqa_client [flags] QUESTION           (no image)
//   flexvqa_client --info                     (the server's ModelInfo as JSON)
// Flags: --server=host:port (default localhost:50051, env FLEXVQA_SERVER), --json (print the final
// message as JSON after the answer), sampling: --max_new_tokens --temperature --top_p --top_k
// --repetition_penalty --seed --stop (repeatable) --ignore_eos, --request_id, --timeout_ms,
// --selection_threshold (flex models), --selection_png=FILE (flex models: writes the image with the
// blocks the model selected overlaid, client/selection_overlay.h);
// TLS and tokens: --tls_ca --tls_cert --tls_key --token --token_file (client/channel_security.h).
// Exit status: 0 on OK, 1 with "CODE: message" on stderr otherwise, 2 for bad usage.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "client/channel_security.h"
#include "client/grpc_status_name.h"
#include "client/selection_overlay.h"
#include "flexvqa/v1/vqa.grpc.pb.h"

namespace {

constexpr char kUsage[] =
    "usage: flexvqa_client [--server=host:port] [--json] [--max_new_tokens=N] [--temperature=T]\n"
    "         [--top_p=P] [--top_k=K] [--repetition_penalty=R] [--seed=S] [--stop=STR]...\n"
    "         [--ignore_eos] [--request_id=ID] [--timeout_ms=MS] [--selection_threshold=T]\n"
    "         [--selection_png=FILE] [IMAGE] QUESTION\n"
    "       flexvqa_client [--server=host:port] --info\n"
    "  TLS and tokens, both forms:\n";

std::string ToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

int Fail(const grpc::Status& status) {
  std::fprintf(stderr, "\nerror: %s: %s\n", flexvqa::client::GrpcCodeName(status.error_code()),
               status.error_message().c_str());
  return 1;
}

struct Args {
  std::string server = "localhost:50051";
  bool json = false;
  bool info = false;
  int64_t timeout_ms = 0;
  std::string selection_png;  // Empty: none written.
  flexvqa::v1::GenerateRequest request;
  std::vector<std::string> positional;
  flexvqa::client::ChannelSecurity security;
};

// Parses --name=value flags into the request; false (with a message) on a bad flag.
bool Parse(int argc, char** argv, Args* args) {
  if (const char* server = std::getenv("FLEXVQA_SERVER")) args->server = server;
  flexvqa::v1::SamplingParams* s = args->request.mutable_sampling();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      args->positional.push_back(arg);
      continue;
    }
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    try {
      if (flexvqa::client::ParseSecurityFlag(name, value, &args->security))
        continue;
      else if (name == "server")
        args->server = value;
      else if (name == "json")
        args->json = true;
      else if (name == "info")
        args->info = true;
      else if (name == "timeout_ms")
        args->timeout_ms = std::stoll(value);
      else if (name == "selection_png")
        args->selection_png = value;
      else if (name == "selection_threshold")
        args->request.set_selection_threshold(static_cast<uint32_t>(std::stoul(value)));
      else if (name == "request_id")
        args->request.set_request_id(value);
      else if (name == "max_new_tokens")
        s->set_max_new_tokens(std::stoi(value));
      else if (name == "temperature")
        s->set_temperature(std::stof(value));
      else if (name == "top_p")
        s->set_top_p(std::stof(value));
      else if (name == "top_k")
        s->set_top_k(std::stoi(value));
      else if (name == "repetition_penalty")
        s->set_repetition_penalty(std::stof(value));
      else if (name == "seed")
        s->set_seed(std::stoull(value));
      else if (name == "stop")
        s->add_stop(value);
      else if (name == "ignore_eos")
        s->set_ignore_eos(true);
      else if (name == "help")
        return false;
      else {
        std::fprintf(stderr, "unknown flag --%s\n", name.c_str());
        return false;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "bad value for --%s: '%s'\n", name.c_str(), value.c_str());
      return false;
    }
  }
  if (!args->selection_png.empty() && args->positional.size() != 2) {
    std::fprintf(stderr, "--selection_png needs an IMAGE\n");
    return false;
  }
  return args->info || args->positional.size() == 1 || args->positional.size() == 2;
}

std::string MimeFromPath(const std::string& path) {
  auto ends_with = [&](const char* suffix) {
    const std::string s(suffix);
    if (path.size() < s.size()) return false;
    std::string tail = path.substr(path.size() - s.size());
    for (char& c : tail) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return tail == s;
  };
  if (ends_with(".jpg") || ends_with(".jpeg")) return "image/jpeg";
  if (ends_with(".png")) return "image/png";
  return "";  // The server detects it from the bytes.
}

// --selection_png: the request's image with the final message's selection overlaid.
int WriteSelectionPng(const Args& args, const flexvqa::v1::GenerateFinal& final_message) {
  if (!final_message.has_selection()) {
    std::fprintf(stderr,
                 "--selection_png: the final message has no selection (a flex model and "
                 "an image are needed)\n");
    return 1;
  }
  const flexvqa::v1::Image& image = args.request.images(0);
  flexvqa::ImageLimits limits;  // The client reads its own file: no server limits to apply.
  limits.max_encoded_bytes = static_cast<int64_t>(image.data().size());
  limits.max_pixels = int64_t{1} << 40;
  auto fail = [](const flexvqa::Status& status) {
    std::fprintf(stderr, "--selection_png: %s\n", status.ToString().c_str());
    return 1;
  };
  auto decoded = flexvqa::DecodeImage(image.data(), image.mime_type(), limits);
  if (!decoded.ok()) return fail(decoded.status());
  auto overlaid = flexvqa::client::OverlaySelection(*decoded, final_message.selection());
  if (!overlaid.ok()) return fail(overlaid.status());
  auto png = flexvqa::client::EncodePng(*overlaid);
  if (!png.ok()) return fail(png.status());
  std::ofstream out(args.selection_png, std::ios::binary);
  if (!(out << *png) || !out.flush()) {
    std::fprintf(stderr, "--selection_png: cannot write %s\n", args.selection_png.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!Parse(argc, argv, &args)) {
    std::fputs(kUsage, stderr);
    std::fputs(flexvqa::client::kSecurityUsage, stderr);
    return 2;
  }
  std::string error;
  auto credentials = flexvqa::client::MakeCredentials(&args.security, &error);
  if (!credentials) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxSendMessageSize(-1);
  channel_args.SetMaxReceiveMessageSize(-1);
  auto stub = flexvqa::v1::VqaService::NewStub(
      grpc::CreateCustomChannel(args.server, credentials, channel_args));
  grpc::ClientContext context;
  flexvqa::client::AddAuth(args.security, &context);
  if (args.timeout_ms > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(args.timeout_ms));
  }

  if (args.info) {
    flexvqa::v1::ModelInfoResponse info;
    grpc::Status status = stub->ModelInfo(&context, flexvqa::v1::ModelInfoRequest(), &info);
    if (!status.ok()) return Fail(status);
    std::cout << ToJson(info) << std::endl;
    return 0;
  }

  if (args.positional.size() == 2) {
    const std::string& path = args.positional[0];
    std::ifstream file(path, std::ios::binary);
    if (!file) {
      std::fprintf(stderr, "cannot read %s\n", path.c_str());
      return 2;
    }
    std::ostringstream bytes;
    bytes << file.rdbuf();
    flexvqa::v1::Image* image = args.request.add_images();
    image->set_data(bytes.str());
    image->set_mime_type(MimeFromPath(path));
  }
  args.request.set_question(args.positional.back());

  auto reader = stub->Generate(&context, args.request);
  flexvqa::v1::GenerateResponse response;
  flexvqa::v1::GenerateFinal final_message;
  while (reader->Read(&response)) {
    if (response.has_delta()) {
      std::cout << response.delta().text() << std::flush;
    } else if (response.has_final()) {
      final_message = response.final();
    }
  }
  std::cout << std::endl;
  grpc::Status status = reader->Finish();
  if (!status.ok()) return Fail(status);
  if (args.json) std::cout << ToJson(final_message) << std::endl;
  if (!args.selection_png.empty()) return WriteSelectionPng(args, final_message);
  return 0;
}
