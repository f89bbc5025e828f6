// SafetensorsFile::Open on an arbitrary file (an in-memory memfd): a hostile header is DATA_LOSS
// (or another status), never a crash or a huge allocation; every tensor of an accepted file lies
// inside the data buffer with a byte span that matches its shape and dtype, and loads.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "model/weights/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("safetensors_fuzz", 0);
  FUZZ_CHECK(fd >= 0);
  FUZZ_CHECK(write(fd, data, size) == static_cast<ssize_t>(size));
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  auto file = flexvqa::SafetensorsFile::Open(path);
  if (file.ok()) {
    const uint64_t data_size = size;  // The data buffer is a suffix of the file.
    for (const std::string& name : (*file)->Names()) {
      const flexvqa::SafetensorsTensorInfo* info = (*file)->Find(name);
      FUZZ_CHECK(info != nullptr);
      FUZZ_CHECK(info->data_begin <= info->data_end && info->data_end <= data_size);
      FUZZ_CHECK(info->itemsize == flexvqa::SafetensorsItemSize(info->dtype));
      FUZZ_CHECK(info->data_end - info->data_begin == info->numel * info->itemsize);
      if (flexvqa::SafetensorsToScalarType(info->dtype).ok()) {
        auto tensor = (*file)->Load(name);
        FUZZ_CHECK(tensor.ok());
        FUZZ_CHECK(static_cast<uint64_t>(tensor->numel()) == info->numel);
      }
    }
  }
  close(fd);
  return 0;
}
