// Fuzz-target support: FUZZ_CHECK aborts with the failed condition, so libFuzzer records the input
// as a crash (a broken invariant is a finding, like a sanitizer report). Header-only.
#pragma once

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(condition)                                                                 \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)
