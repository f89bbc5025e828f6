// glibc heap policy for a long-running server: how many malloc arenas threads share, and handing
// freed heap pages back to the kernel once the worker goes idle. Without both, memory a burst of
// requests freed stays resident in per-thread arenas (bench/RESULTS.md, "Soak": 63 MB in use, 337
// MB held). Thread-safe (glibc locks each arena); LimitMallocArenas belongs in main, before
// threads.
#pragma once

namespace flexvqa {

// Caps glibc's malloc arenas at `max_arenas` (0: glibc's default, 8 per core). Only arenas created
// afterwards obey it. False if malloc refused the setting.
bool LimitMallocArenas(int max_arenas);

// Returns the free pages of every arena to the kernel (malloc_trim(0)). Walks every arena: call it
// when idle, not per request. True if some memory was released.
bool ReleaseFreeHeap();

// Bytes malloc has handed out and not had back (live allocations, mmapped ones included); its gap
// to resident memory is what the allocator keeps. Walks every arena, as a scrape may.
double HeapInUseBytes();

}  // namespace flexvqa
