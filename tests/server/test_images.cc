#include "tests/server/test_images.h"

#include <openssl/evp.h>
#include <turbojpeg.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace flexvqa::testing {

namespace {

void Put32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out->push_back(static_cast<char>((v >> shift) & 0xff));
}

void Chunk(std::string* png, const char* type, const std::string& data) {
  Put32(png, static_cast<uint32_t>(data.size()));
  const std::string body = std::string(type, 4) + data;
  png->append(body);
  Put32(png,
        static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
}

std::string Png(int header_width, int header_height, int width, int height) {
  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  Put32(&ihdr, header_width);
  Put32(&ihdr, header_height);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB, no interlace.
  Chunk(&png, "IHDR", ihdr);
  std::string raw;
  for (int y = 0; y < height; ++y) {
    raw.push_back('\0');  // Filter: none.
    for (int x = 0; x < width; ++x) {
      raw.push_back(static_cast<char>(x * 255 / std::max(1, width - 1)));
      raw.push_back(static_cast<char>(y * 255 / std::max(1, height - 1)));
      raw.push_back(static_cast<char>(128));
    }
  }
  uLongf size = compressBound(raw.size());
  std::string compressed(size, '\0');
  compress(reinterpret_cast<Bytef*>(compressed.data()), &size,
           reinterpret_cast<const Bytef*>(raw.data()), raw.size());
  compressed.resize(size);
  Chunk(&png, "IDAT", compressed);
  Chunk(&png, "IEND", "");
  return png;
}

}  // namespace

std::string MakePng(int width, int height) { return Png(width, height, width, height); }

std::string PngClaiming(int width, int height) { return Png(width, height, 4, 4); }

std::string MakeJpeg(int width, int height) {
  std::vector<unsigned char> rgb(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      unsigned char* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<unsigned char>(x * 255 / std::max(1, width - 1));
      p[1] = static_cast<unsigned char>(y * 255 / std::max(1, height - 1));
      p[2] = 128;
    }
  }
  tjhandle handle = tjInitCompress();
  unsigned char* jpeg = nullptr;
  unsigned long size = 0;
  tjCompress2(handle, rgb.data(), width, 0, height, TJPF_RGB, &jpeg, &size, TJSAMP_420, 90, 0);
  std::string out(reinterpret_cast<char*>(jpeg), size);
  tjFree(jpeg);
  tjDestroy(handle);
  return out;
}

std::string DataUrl(const std::string& bytes, const std::string& mime_type) {
  std::string base64(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(base64.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  base64.resize(static_cast<size_t>(n));
  return "data:" + mime_type + ";base64," + base64;
}

}  // namespace flexvqa::testing
