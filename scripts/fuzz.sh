#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang-14 (ASan + UBSan + coverage) into
# ${FUZZ_BUILD_DIR:-build-fuzz} and runs each for its fixed number of inputs (CTest label fuzz).
# FLEXVQA_FUZZ_RUNS=K multiplies every target's -runs. A long run of one target (bench/RESULTS.md):
#   build-fuzz/tests/fuzz/tokenizer_fuzzer -max_total_time=3600 -max_len=1024 DIR tests/fuzz/corpus/tokenizer
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
LAUNCHER=()
if command -v ccache >/dev/null; then LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
# -O1 with assertions: what libFuzzer's documentation recommends for finding bugs quickly.
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O1 \
  -DCMAKE_CXX_COMPILER=clang++-14 -DFLEXVQA_FUZZ=ON -DFLEXVQA_BUILD_TESTS=OFF \
  -DFLEXVQA_FUZZ_RUNS="${FLEXVQA_FUZZ_RUNS:-1}" "${LAUNCHER[@]}" >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}" --target flexvqa_fuzzers
cd "$BUILD_DIR"
# One at a time: each fuzzer is single-threaded and their logs stay readable.
ctest --output-on-failure -L fuzz
