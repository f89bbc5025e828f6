// flexvqa_client --selection_png end to end: the real binary against the real server (loopback) on
// the tiny FlexAttention checkpoint. The PNG decodes to the image's size; pixels of the blocks the
// final message reports selected differ from the image, pixels of the others do not. Without a flex
// model's selection (a text-only question) the flag fails with a message.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "flexvqa/v1/vqa.grpc.pb.h"
#include "model/engine.h"
#include "model/image/image_decode.h"
#include "server/vqa_server.h"
#include "tests/server/stream_reader.h"
#include "tests/server/test_images.h"
#include "tests/support/tiny_model.h"

namespace flexvqa {
namespace {

struct ClientRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr.
};

ClientRun RunClient(const std::string& args) {
  ClientRun run;
  const std::string command = std::string(FLEXVQA_CLIENT_PATH) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return run;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) run.output.append(buffer, n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(FlexvqaClientTest, SelectionPngMarksExactlyTheSelectedBlocks) {
  EngineOptions options;
  options.model_dir = testing::TinyFlexModelDir();
  options.max_sequences = 2;
  auto engine = CreateLlavaEngine(options);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  ServerOptions server_options;
  server_options.listen_address = "127.0.0.1:0";
  auto server = VqaServer::Start(engine->get(), server_options, SchedulerConfig());
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const std::string address = "127.0.0.1:" + std::to_string((*server)->port());

  const std::string image_bytes = testing::MakePng(300, 200);
  const std::string dir = ::testing::TempDir();
  const std::string image_path = dir + "flexvqa_client_test_image.png";
  const std::string png_path = dir + "flexvqa_client_test_selection.png";
  std::ofstream(image_path, std::ios::binary) << image_bytes;
  std::remove(png_path.c_str());

  // The same greedy request through the API, for the summary the client drew. The random model
  // selects every block somewhere over its layers at the checkpoint's threshold: raise it until
  // some visible blocks are left out, so that both halves of the check have blocks to look at.
  auto stub =
      v1::VqaService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  auto visible_unselected = [](const v1::SelectionSummary& summary) {
    int count = 0;
    for (int block = 9; block < 72; ++block) {  // Rows 1-7: inside the image (bands: rows 0, 8).
      uint32_t steps = 0;
      for (const v1::FaLayerSelection& layer : summary.layers()) steps += layer.block_steps(block);
      count += steps == 0;
    }
    return count;
  };
  v1::GenerateRequest request;
  request.set_question("What is in the picture?");
  request.mutable_sampling()->set_max_new_tokens(1);
  request.add_images()->set_data(image_bytes);
  std::optional<v1::GenerateFinal> final;
  std::string answer;
  int threshold = 0;
  for (int t : {48, 100, 150, 200, 230}) {
    request.set_selection_threshold(t);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    testing::StreamResult api = testing::ReadGenerateStream(*stub, &context, request);
    ASSERT_TRUE(api.status.ok()) << api.status.error_message();
    ASSERT_TRUE(api.final.has_value() && api.final->has_selection());
    final = api.final;
    answer = api.text;
    threshold = t;
    if (visible_unselected(final->selection()) > 0) break;
  }
  const v1::SelectionSummary& summary = final->selection();

  const ClientRun run =
      RunClient("--server=" + address +
                " --max_new_tokens=1 --selection_threshold=" + std::to_string(threshold) +
                " --selection_png=" + png_path + " " + image_path + " 'What is in the picture?'");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.output, answer + "\n");
  auto png = DecodeImage(ReadFile(png_path), "image/png", ImageLimits());
  ASSERT_TRUE(png.ok()) << png.status().ToString();
  auto plain = DecodeImage(image_bytes, "", ImageLimits());
  ASSERT_TRUE(plain.ok());
  ASSERT_EQ(png->width, 300);
  ASSERT_EQ(png->height, 200);
  // Block (row, col): 300 / 9 px squares from (0, -50) (bands of 50 px above and below).
  ASSERT_EQ(summary.region_side(), 300);
  ASSERT_EQ(summary.region_y(), -50);
  int selected_blocks = 0, unselected_blocks = 0;
  for (int row = 0; row < 9; ++row) {
    for (int col = 0; col < 9; ++col) {
      uint32_t steps = 0;
      for (const v1::FaLayerSelection& layer : summary.layers()) {
        steps += layer.block_steps(row * 9 + col);
      }
      const int top = std::max(0, -50 + row * 300 / 9),
                bottom = std::min(200, -50 + (row + 1) * 300 / 9);
      if (top >= bottom) continue;  // In a padding band.
      int differing = 0, pixels = 0;
      for (int y = top; y < bottom; ++y) {
        for (int x = col * 300 / 9; x < (col + 1) * 300 / 9; ++x, ++pixels) {
          const size_t at = (static_cast<size_t>(y) * 300 + x) * 3;
          differing += !std::equal(plain->pixels.begin() + at, plain->pixels.begin() + at + 3,
                                   png->pixels.begin() + at);
        }
      }
      if (steps > 0) {
        ++selected_blocks;
        EXPECT_GT(differing, pixels / 2) << row << "," << col;
      } else {
        ++unselected_blocks;
        EXPECT_EQ(differing, 0) << row << "," << col;
      }
    }
  }
  EXPECT_GT(selected_blocks, 0);
  EXPECT_GT(unselected_blocks, 0);

  const ClientRun text_only =
      RunClient("--server=" + address + " --max_new_tokens=2 --selection_png=" + png_path +
                " 'What is a box?'");
  EXPECT_EQ(text_only.exit_code, 2) << text_only.output;  // Usage: the flag needs an image.
  EXPECT_NE(text_only.output.find("--selection_png needs an IMAGE"), std::string::npos);
}

}  // namespace
}  // namespace flexvqa
