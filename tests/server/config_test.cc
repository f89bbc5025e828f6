// Flags: defaults, environment overrides, command line over environment, validation.
#include "server/config.h"

#include <gtest/gtest.h>

#include <map>

namespace flexvqa {
namespace {

struct Parsed {
  Status status;
  ServerConfig config;
};

Parsed Parse(std::vector<const char*> args, std::map<std::string, std::string> env = {}) {
  Parsed out;
  FlagSet flags(kEnvPrefix);
  AddServerFlags(&out.config, &flags);
  args.insert(args.begin(), "flexvqa_server");
  out.status = flags.Parse(static_cast<int>(args.size()), args.data(),
                           [&](const std::string& name) -> const char* {
                             auto it = env.find(name);
                             return it == env.end() ? nullptr : it->second.c_str();
                           });
  if (out.status.ok()) out.status = ValidateServerConfig(out.config);
  return out;
}

TEST(ConfigTest, DefaultsAreValid) {
  Parsed p = Parse({});
  ASSERT_TRUE(p.status.ok()) << p.status.ToString();
  EXPECT_EQ(p.config.server.max_message_bytes, 64 << 20);
  EXPECT_EQ(p.config.server.listen_address, "0.0.0.0:50051");
  EXPECT_EQ(p.config.scheduler.max_queued, 64);
}

TEST(ConfigTest, EnvironmentOverridesDefaultAndFlagOverridesEnvironment) {
  Parsed p = Parse(
      {"--max_running=3"},
      {{"FLEXVQA_MAX_RUNNING", "5"}, {"FLEXVQA_MAX_QUEUED", "7"}, {"FLEXVQA_LOG_JSON", "true"}});
  ASSERT_TRUE(p.status.ok()) << p.status.ToString();
  EXPECT_EQ(p.config.scheduler.max_running, 3);
  EXPECT_EQ(p.config.scheduler.max_queued, 7);
  EXPECT_TRUE(p.config.logging.json);
}

TEST(ConfigTest, ChatTemplateFlagAndEnvironment) {
  EXPECT_EQ(Parse({}).config.engine.chat_template, "");  // The checkpoint layout's default.
  EXPECT_EQ(Parse({}, {{"FLEXVQA_CHAT_TEMPLATE", "llava_v1"}}).config.engine.chat_template,
            "llava_v1");
  EXPECT_EQ(Parse({"--chat_template=llava_hf"}, {{"FLEXVQA_CHAT_TEMPLATE", "llava_v1"}})
                .config.engine.chat_template,
            "llava_hf");
}

TEST(ConfigTest, EncoderCacheIsOnInTheServerAndSetByFlagOrEnvironment) {
  EXPECT_EQ(EngineOptions().encoder_cache_bytes, 0);  // The engine's own default: off.
  EXPECT_EQ(Parse({}).config.engine.encoder_cache_bytes, int64_t{512} << 20);
  EXPECT_EQ(Parse({}, {{"FLEXVQA_ENCODER_CACHE_BYTES", "0"}}).config.engine.encoder_cache_bytes, 0);
  Parsed p = Parse({"--encoder_cache_bytes=1048576"}, {{"FLEXVQA_ENCODER_CACHE_BYTES", "0"}});
  ASSERT_TRUE(p.status.ok()) << p.status.ToString();
  EXPECT_EQ(p.config.engine.encoder_cache_bytes, 1 << 20);
  p = Parse({"--encoder_cache_bytes=-1"});
  EXPECT_EQ(p.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(p.status.message().find("encoder_cache_bytes"), std::string::npos);
}

TEST(ConfigTest, SpaceSeparatedValuesAndBooleans) {
  Parsed p = Parse({"--device", "cuda:1", "--log_json", "--max_queue_wait_ms=250"});
  ASSERT_TRUE(p.status.ok()) << p.status.ToString();
  EXPECT_EQ(p.config.engine.device, "cuda:1");
  EXPECT_TRUE(p.config.logging.json);
  EXPECT_EQ(p.config.scheduler.max_queue_wait.count(), 250);
  EXPECT_FALSE(Parse({"--log_json", "--nolog_json"}).config.logging.json);
}

TEST(ConfigTest, BadValuesNameTheFlag) {
  Parsed p = Parse({"--max_running=lots"});
  EXPECT_EQ(p.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(p.status.message().find("--max_running"), std::string::npos);
  p = Parse({}, {{"FLEXVQA_MAX_QUEUED", "x"}});
  EXPECT_NE(p.status.message().find("FLEXVQA_MAX_QUEUED"), std::string::npos);
  EXPECT_EQ(Parse({"--no_such_flag=1"}).status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse({"--max_running=0"}).status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse({"--max_image_bytes=100000000"}).status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse({"--malloc_arena_max=-1"}).status.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Parse({"--malloc_arena_max=0", "--release_heap_when_idle=false"}).status.ok());
}

TEST(ConfigTest, HelpListsEveryFlagWithItsEnvironmentVariable) {
  ServerConfig config;
  FlagSet flags(kEnvPrefix);
  AddServerFlags(&config, &flags);
  const std::string help = flags.Help();
  EXPECT_NE(help.find("--max_message_bytes=67108864"), std::string::npos);
  EXPECT_NE(help.find("FLEXVQA_MAX_MESSAGE_BYTES"), std::string::npos);
  EXPECT_NE(flags.Describe().find("max_running=8"), std::string::npos);
}

}  // namespace
}  // namespace flexvqa
