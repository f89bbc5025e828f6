// server/heap.h: a trim hands freed heap pages back (resident memory falls), which is what keeps
// the soak's RSS at its idle level between bursts; the heap count sees live allocations only (the
// soak's leak check).
#include "server/heap.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace flexvqa {
namespace {

// The sanitizers replace malloc: glibc's arenas, and so the trim, are not in use there.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kGlibcMalloc = false;
#else
constexpr bool kGlibcMalloc = true;
#endif

// Anonymous resident memory of this process (heap and stacks, not mapped files), bytes.
long RssAnonBytes() {
  std::ifstream status("/proc/self/status");
  for (std::string key; status >> key;) {
    long kb = 0;
    if (key == "RssAnon:" && status >> kb) return kb * 1024;
  }
  return -1;
}

TEST(HeapTest, ReleaseFreeHeapReturnsWhatAThreadFreed) {
  if (!kGlibcMalloc) GTEST_SKIP() << "sanitizer allocator";
  constexpr size_t kBlock = 2048, kBlocks = 32 * 1024;  // 64 MiB in blocks below mmap's threshold.
  std::vector<char*> kept;
  // In its own thread, as a gRPC or preprocessing thread would: the blocks land in that thread's
  // arena. The last block stays allocated, so the arena cannot shrink from its top by itself.
  std::thread([&] {
    std::vector<char*> blocks;
    for (size_t i = 0; i < kBlocks; ++i) {
      blocks.push_back(new char[kBlock]);
      std::fill(blocks.back(), blocks.back() + kBlock, 1);  // Resident.
    }
    for (size_t i = 0; i + 1 < kBlocks; ++i) delete[] blocks[i];
    kept.push_back(blocks.back());
  }).join();
  const long before = RssAnonBytes();
  ASSERT_GT(before, 0);
  EXPECT_TRUE(ReleaseFreeHeap());
  const long after = RssAnonBytes();
  // Most of the 64 MiB freed (whatever glibc's bins keep) comes back.
  EXPECT_LT(after, before - 32L * 1024 * 1024) << "before " << before << " after " << after;
  for (char* block : kept) delete[] block;
}

TEST(HeapTest, HeapInUseCountsLiveAllocationsOnly) {
  if (!kGlibcMalloc) GTEST_SKIP() << "sanitizer allocator";
  constexpr size_t kBytes = 16 << 20;
  const double before = HeapInUseBytes();
  std::vector<char> live(kBytes, 1);
  const double with = HeapInUseBytes();
  EXPECT_GE(with - before, kBytes);
  live = std::vector<char>();  // Freed: no longer counted, whether or not it stays resident.
  EXPECT_LT(HeapInUseBytes(), with - kBytes / 2);
}

}  // namespace
}  // namespace flexvqa
