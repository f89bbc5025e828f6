// Encoded test images, real files any decoder accepts (PNG through zlib, JPEG through
// libturbojpeg), and the broken variants the service must reject. Pure; any thread.
#pragma once

#include <string>

namespace flexvqa::testing {

// A w x h RGB gradient.
std::string MakePng(int width, int height);
std::string MakeJpeg(int width, int height);
// A small, well-formed PNG whose header claims width x height pixels (a decompression bomb's
// header).
std::string PngClaiming(int width, int height);
// A data: URL holding `bytes` in base64 (OpenSSL's encoder), as OpenAI clients send images.
std::string DataUrl(const std::string& bytes, const std::string& mime_type);

}  // namespace flexvqa::testing
