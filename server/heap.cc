#include "server/heap.h"

#include <malloc.h>

namespace flexvqa {

bool LimitMallocArenas(int max_arenas) {
  return max_arenas == 0 || mallopt(M_ARENA_MAX, max_arenas) == 1;
}

bool ReleaseFreeHeap() { return malloc_trim(0) == 1; }

double HeapInUseBytes() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<double>(info.uordblks + info.hblkhd);
}

}  // namespace flexvqa
