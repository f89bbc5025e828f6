// safetensors reader and writer: round trips in every float dtype, sharded checkpoints, and hostile
// files that must fail with a clean status naming the problem.
#include "model/weights/safetensors.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "model/weights/safetensors_writer.h"

namespace flexvqa {
namespace {

using ::testing::HasSubstr;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/safetensors_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // A file with the given header JSON (length prefix computed unless `header_len` is given) and
  // data.
  std::string WriteRaw(const std::string& name, const std::string& header, const std::string& data,
                       std::optional<uint64_t> header_len = std::nullopt) {
    const std::string path = Path(name);
    std::ofstream out(path, std::ios::binary);
    const uint64_t n = header_len.value_or(header.size());
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << data;
    return path;
  }

  Status OpenStatus(const std::string& path) { return SafetensorsFile::Open(path).status(); }

  std::string dir_;
};

TEST_F(SafetensorsTest, RoundTripsFloatDtypes) {
  const at::Tensor f32 = at::arange(12, at::kFloat).reshape({3, 4}) * 0.5;
  const at::Tensor f16 = (at::arange(6, at::kFloat) - 2.5).to(at::kHalf).reshape({2, 3});
  const at::Tensor bf16 = at::linspace(-1, 1, 5).to(at::kBFloat16);
  const at::Tensor i64 = at::tensor({int64_t{7}, int64_t{-3}});
  const std::string path = Path("round.safetensors");
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"a.f32", f32}, {"b.f16", f16}, {"c.bf16", bf16}, {"d.i64", i64}},
                               {{"format", "pt"}})
                  .ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->Names(), (std::vector<std::string>{"a.f32", "b.f16", "c.bf16", "d.i64"}));
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  const SafetensorsTensorInfo* info = (*file)->Find("b.f16");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dtype, "F16");
  EXPECT_EQ(info->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(info->data_end - info->data_begin, 12u);
  EXPECT_EQ((*file)->Find("missing"), nullptr);

  for (const auto& [name, expected] : std::vector<std::pair<std::string, at::Tensor>>{
           {"a.f32", f32}, {"b.f16", f16}, {"c.bf16", bf16}, {"d.i64", i64}}) {
    auto loaded = (*file)->Load(name);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    EXPECT_EQ(loaded->scalar_type(), expected.scalar_type()) << name;
    EXPECT_TRUE(at::equal(*loaded, expected)) << name;
  }
  // Conversion on load: F16 -> F32 and BF16 -> F32 are exact.
  auto as_f32 = (*file)->Load("b.f16", at::kFloat, at::kCPU);
  ASSERT_TRUE(as_f32.ok());
  EXPECT_EQ(as_f32->scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(*as_f32, f16.to(at::kFloat)));
  auto bf = (*file)->Load("c.bf16", at::kFloat, at::kCPU);
  ASSERT_TRUE(bf.ok());
  EXPECT_TRUE(at::equal(*bf, bf16.to(at::kFloat)));

  auto missing = (*file)->Load("nope");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope"));
}

TEST_F(SafetensorsTest, LoadedTensorOutlivesTheFile) {
  const std::string path = Path("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", at::ones({4, 4})}}).ok());
  at::Tensor t;
  {
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok());
    t = (*file)->Load("x").value();
  }
  EXPECT_EQ(t.sum().item<float>(), 16.0f);
}

TEST_F(SafetensorsTest, HandlesUnalignedDataAndEmptyTensors) {
  // Header of odd length: the F32 data starts at an address that is not 4-byte aligned.
  const float values[2] = {1.5f, -2.0f};
  const std::string data(reinterpret_cast<const char*>(values), 8);
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("e":{"dtype":"F16","shape":[0,3],"data_offsets":[8,8]}})";
  while (header.size() % 4 != 1) header += ' ';  // Data at a mapping offset of 8 + 4k + 1.
  const std::string path = WriteRaw("odd.safetensors", header, data);
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_TRUE(at::equal((*file)->Load("x").value(), at::tensor({1.5f, -2.0f})));
  auto empty = (*file)->Load("e");
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_EQ(empty->sizes().vec(), (std::vector<int64_t>{0, 3}));
}

TEST_F(SafetensorsTest, ShardedCheckpointUsesIndex) {
  NamedTensors tensors;
  for (int i = 0; i < 5; ++i)
    tensors.emplace_back("w" + std::to_string(i), at::full({2}, float(i)));
  ASSERT_TRUE(WriteShardedSafetensors(dir_, tensors, 2).ok());
  EXPECT_TRUE(std::filesystem::exists(Path("model-00001-of-00002.safetensors")));
  EXPECT_TRUE(std::filesystem::exists(Path("model-00002-of-00002.safetensors")));

  auto ckpt = SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_EQ((*ckpt)->files().size(), 2u);
  EXPECT_EQ((*ckpt)->Names().size(), 5u);
  EXPECT_THAT((*ckpt)->FileFor("w0")->path(), HasSubstr("model-00001-of-00002"));
  EXPECT_THAT((*ckpt)->FileFor("w4")->path(), HasSubstr("model-00002-of-00002"));
  auto w3 = (*ckpt)->Load("w3", at::kFloat, at::kCPU);
  ASSERT_TRUE(w3.ok());
  EXPECT_TRUE(at::equal(*w3, at::full({2}, 3.0f)));
  EXPECT_EQ((*ckpt)->Load("w9", at::kFloat, at::kCPU).status().code(), StatusCode::kNotFound);

  EXPECT_EQ(WriteShardedSafetensors(dir_, tensors, 6).code(), StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsTest, IndexPointingAtWrongShardIsAnError) {
  ASSERT_TRUE(WriteSafetensors(Path("a.safetensors"), {{"x", at::ones({1})}}).ok());
  ASSERT_TRUE(WriteSafetensors(Path("b.safetensors"), {{"y", at::ones({1})}}).ok());
  std::ofstream(Path("model.safetensors.index.json"))
      << R"({"weight_map": {"x": "b.safetensors", "y": "b.safetensors"}})";
  auto ckpt = SafetensorsCheckpoint::Open(dir_);
  EXPECT_EQ(ckpt.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(ckpt.status().message(), HasSubstr("'x'"));

  std::ofstream(Path("model.safetensors.index.json"))
      << R"({"weight_map": {"x": "../a.safetensors"}})";
  EXPECT_EQ(SafetensorsCheckpoint::Open(dir_).status().code(), StatusCode::kDataLoss);
}

TEST_F(SafetensorsTest, CheckpointFallsBackToSingleFileThenGlob) {
  ASSERT_TRUE(WriteSafetensors(Path("b.safetensors"), {{"y", at::ones({1})}}).ok());
  ASSERT_TRUE(WriteSafetensors(Path("a.safetensors"), {{"x", at::ones({1})}}).ok());
  auto glob = SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(glob.ok()) << glob.status().ToString();
  EXPECT_EQ((*glob)->Names(), (std::vector<std::string>{"x", "y"}));

  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"), {{"z", at::ones({1})}}).ok());
  auto single = SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ((*single)->Names(), (std::vector<std::string>{"z"}));
}

TEST_F(SafetensorsTest, DuplicateNamesAcrossFilesAreAnError) {
  ASSERT_TRUE(WriteSafetensors(Path("a.safetensors"), {{"x", at::ones({1})}}).ok());
  ASSERT_TRUE(WriteSafetensors(Path("b.safetensors"), {{"x", at::ones({1})}}).ok());
  auto ckpt = SafetensorsCheckpoint::Open(dir_);
  EXPECT_EQ(ckpt.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(ckpt.status().message(), HasSubstr("'x'"));
}

TEST_F(SafetensorsTest, EmptyOrMissingDirectoryIsNotFound) {
  EXPECT_EQ(SafetensorsCheckpoint::Open(dir_).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(SafetensorsCheckpoint::Open(Path("nope")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(SafetensorsFile::Open(Path("nope.safetensors")).status().code(), StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, WriterRejectsDuplicateNames) {
  Status s = WriteSafetensors(Path("d.safetensors"), {{"x", at::ones({1})}, {"x", at::ones({1})}});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(Path("d.safetensors")));
}

TEST_F(SafetensorsTest, TruncatedFile) {
  const std::string path = Path("short.safetensors");
  std::ofstream(path, std::ios::binary) << "abc";
  Status s = OpenStatus(path);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(path));
  EXPECT_THAT(s.message(), HasSubstr("shorter than"));

  std::ofstream(Path("empty.safetensors"), std::ios::binary);
  EXPECT_EQ(OpenStatus(Path("empty.safetensors")).code(), StatusCode::kDataLoss);
}

TEST_F(SafetensorsTest, EveryTruncationFailsCleanly) {
  const std::string path = Path("full.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(path, {{"a", at::ones({3, 5})}, {"b", at::ones({7}, at::kHalf)}}).ok());
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(SafetensorsFile::Open(path).ok());
  for (size_t len = 0; len < bytes.size(); ++len) {
    const std::string cut = Path("cut.safetensors");
    std::ofstream(cut, std::ios::binary | std::ios::trunc).write(bytes.data(), len);
    Status s = OpenStatus(cut);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << "prefix of " << len << " bytes: " << s.ToString();
  }
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFileOrAbsurd) {
  Status beyond = OpenStatus(WriteRaw("beyond.safetensors", "{}", "", 1000));
  EXPECT_EQ(beyond.code(), StatusCode::kDataLoss);
  EXPECT_THAT(beyond.message(), HasSubstr("beyond the end of the file"));

  Status absurd = OpenStatus(WriteRaw("absurd.safetensors", "{}", "", uint64_t{1} << 62));
  EXPECT_EQ(absurd.code(), StatusCode::kDataLoss);
  EXPECT_THAT(absurd.message(), HasSubstr("exceeds"));
  // The all-ones length, which would wrap 8 + N around.
  Status wrap = OpenStatus(WriteRaw("wrap.safetensors", "{}", "", UINT64_MAX - 1));
  EXPECT_EQ(wrap.code(), StatusCode::kDataLoss);
}

TEST_F(SafetensorsTest, HeaderNotJsonOrNotObject) {
  Status not_json = OpenStatus(WriteRaw("nj.safetensors", "{\"x\": [1, 2", ""));
  EXPECT_EQ(not_json.code(), StatusCode::kDataLoss);
  EXPECT_THAT(not_json.message(), HasSubstr("not valid JSON"));
  Status array = OpenStatus(WriteRaw("arr.safetensors", "[1, 2]", ""));
  EXPECT_EQ(array.code(), StatusCode::kDataLoss);
  EXPECT_THAT(array.message(), HasSubstr("not a JSON object"));
  Status entry = OpenStatus(WriteRaw("entry.safetensors", R"({"x": 3})", ""));
  EXPECT_THAT(entry.message(), HasSubstr("tensor 'x' is not an object"));
}

TEST_F(SafetensorsTest, MissingFields) {
  Status no_dtype = OpenStatus(WriteRaw(
      "a.safetensors", R"({"x":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')));
  EXPECT_THAT(no_dtype.message(), HasSubstr("'dtype'"));
  Status no_shape = OpenStatus(WriteRaw(
      "b.safetensors", R"({"x":{"dtype":"F32","data_offsets":[0,4]}})", std::string(4, '\0')));
  EXPECT_THAT(no_shape.message(), HasSubstr("'shape'"));
  Status no_offsets = OpenStatus(
      WriteRaw("c.safetensors", R"({"x":{"dtype":"F32","shape":[1]}})", std::string(4, '\0')));
  EXPECT_THAT(no_offsets.message(), HasSubstr("'data_offsets'"));
  Status negative_offset = OpenStatus(
      WriteRaw("d.safetensors", R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})",
               std::string(4, '\0')));
  EXPECT_EQ(negative_offset.code(), StatusCode::kDataLoss);
}

TEST_F(SafetensorsTest, UnknownDtype) {
  Status s = OpenStatus(WriteRaw("u.safetensors",
                                 R"({"w":{"dtype":"F42","shape":[1],"data_offsets":[0,4]}})",
                                 std::string(4, '\0')));
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("unknown dtype 'F42'"));
  EXPECT_THAT(s.message(), HasSubstr("'w'"));
}

TEST_F(SafetensorsTest, OffsetsOutOfRange) {
  const std::string data(8, '\0');
  Status past_end = OpenStatus(WriteRaw(
      "a.safetensors", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", data));
  EXPECT_EQ(past_end.code(), StatusCode::kDataLoss);
  EXPECT_THAT(past_end.message(), HasSubstr("outside the data buffer"));
  Status reversed = OpenStatus(
      WriteRaw("b.safetensors", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", data));
  EXPECT_THAT(reversed.message(), HasSubstr("outside the data buffer"));
  Status huge =
      OpenStatus(WriteRaw("c.safetensors",
                          R"({"w":{"dtype":"U8","shape":[0],)"
                          R"("data_offsets":[18446744073709551615,18446744073709551615]}})",
                          data));
  EXPECT_EQ(huge.code(), StatusCode::kDataLoss);
}

TEST_F(SafetensorsTest, WrongByteSize) {
  Status s = OpenStatus(WriteRaw("w.safetensors",
                                 R"({"w":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})",
                                 std::string(8, '\0')));
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("spans 8 bytes"));
  EXPECT_THAT(s.message(), HasSubstr("needs 6"));
}

TEST_F(SafetensorsTest, AbsurdShapes) {
  const std::string data(8, '\0');
  // Element count overflows 64 bits.
  Status overflow = OpenStatus(WriteRaw(
      "o.safetensors",
      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", data));
  EXPECT_EQ(overflow.code(), StatusCode::kDataLoss);
  EXPECT_THAT(overflow.message(), HasSubstr("larger than the data buffer"));
  Status negative = OpenStatus(WriteRaw(
      "n.safetensors", R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data));
  EXPECT_THAT(negative.message(), HasSubstr("invalid dimension"));
  Status fractional = OpenStatus(WriteRaw(
      "f.safetensors", R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", data));
  EXPECT_THAT(fractional.message(), HasSubstr("invalid dimension"));
  Status too_big_dim = OpenStatus(WriteRaw(
      "b.safetensors",
      R"({"w":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,8]}})", data));
  EXPECT_EQ(too_big_dim.code(), StatusCode::kDataLoss);
  std::string deep = R"({"w":{"dtype":"U8","shape":[)";
  for (int i = 0; i < 40; ++i) deep += i ? ",1" : "1";
  Status rank = OpenStatus(WriteRaw("r.safetensors", deep + R"(],"data_offsets":[0,1]}})", data));
  EXPECT_THAT(rank.message(), HasSubstr("rank 40"));
}

TEST_F(SafetensorsTest, MetadataWithNonStringValuesIsTolerated) {
  auto file =
      SafetensorsFile::Open(WriteRaw("m.safetensors",
                                     R"({"__metadata__":{"format":"pt","n":3},)"
                                     R"("w":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})",
                                     std::string("\x01\x00", 2)));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->metadata().size(), 1u);
  const at::Tensor w = (*file)->Load("w").value();
  EXPECT_EQ(w.scalar_type(), at::kBool);
  EXPECT_TRUE(w[0].item<bool>());
  EXPECT_FALSE(w[1].item<bool>());
}

}  // namespace
}  // namespace flexvqa
