#!/usr/bin/env bash
# scripts/sanitize.sh address|thread: the sanitizer stages of scripts/test.sh, each in its own
# build tree (gcc, Release flags plus the sanitizer; cmake/FlexvqaSanitize.cmake).
#   address  ASan + UBSan (a UBSan report aborts): every test but gpu, soak and the GPU check's
#            dry run (label dryrun: minutes of the same engine code the other tests run), in
#            build-asan/.
#   thread   TSan: the service's threaded tests over the fake engine that do not go through gRPC
#            (scheduler, metrics, fake engine), in build-tsan/. LibTorch with its OpenMP pool and
#            Debian's gRPC are not TSan-instrumented, and TSan reports races inside them on every
#            call (tests/sanitizers/tsan.supp says why they are not suppressed), so the engine's
#            tests and the gRPC service tests run under ASan + UBSan only.
# Suppressions, each with its reason: tests/sanitizers/{lsan,tsan,ubsan}.supp.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:?usage: scripts/sanitize.sh address|thread}
supp=$root/tests/sanitizers
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1:strict_init_order=1"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export TSAN_OPTIONS="suppressions=$supp/tsan.supp:halt_on_error=1:second_deadlock_stack=1"
LAUNCHER=()
if command -v ccache >/dev/null; then LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
JOBS=${JOBS:-$(nproc)}
case "$mode" in
  address)
    BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
    cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLEXVQA_SANITIZE=address \
      "${LAUNCHER[@]}" >/dev/null
    cmake --build "$BUILD_DIR" -j "$JOBS"
    cd "$BUILD_DIR"
    ctest -N | tail -n 1
    ctest --output-on-failure --label-exclude 'gpu|soak|dryrun' -j "$JOBS" --timeout 1200
    ;;
  thread)
    BUILD_DIR=${TSAN_BUILD_DIR:-build-tsan}
    tests=(server_scheduler_test server_metrics_test server_fake_engine_test)
    cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLEXVQA_SANITIZE=thread \
      "${LAUNCHER[@]}" >/dev/null
    cmake --build "$BUILD_DIR" -j "$JOBS" --target "${tests[@]}"
    # The gtest binaries directly: only these targets are built in this tree, so ctest (which
    # lists every test of the tree) is not used here.
    for t in "${tests[@]}"; do
      echo "--- TSan: $t"
      "$BUILD_DIR/tests/server/$t" --gtest_brief=1
    done
    ;;
  *)
    echo "scripts/sanitize.sh: unknown mode '$mode' (address or thread)" >&2
    exit 2
    ;;
esac
