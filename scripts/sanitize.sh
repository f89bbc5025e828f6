#!/usr/bin/env bash
# scripts/sanitize.sh address|thread: the sanitizer stages of scripts/test.sh, each in its own
# build tree (Release flags plus the sanitizer, cmake/FlexvqaSanitize.cmake; gcc for ASan, clang-14
# for TSan).
#   address  ASan + UBSan (a UBSan report aborts), in build-asan/: by default the torch-free
#            tests (the service over the fake engine, gRPC, TLS, HTTP, validation, tokenizer,
#            images). ASAN_SCOPE=all: every unit and e2e test (the gtest binaries, the LibTorch
#            engine's included, and the Python client tests against the ASan-built servers) but
#            gpu, soak, the GPU check's dry run (label dryrun) and the deploy/ and tools/ checks of
#            configuration and Python (no code of ours under ASan there; the Release stage runs
#            them); only the test targets and the programs they start are built. CI's scope
#            (scripts/test.sh sets it): 148 build steps and 417 tests in 26.4 min on the 2-core dev
#            machine, clean with leak checking (bench/RESULTS.md, "Sanitizers").
#   thread   TSan (clang-14, gRPC's, abseil's and protobuf's header code left uninstrumented:
#            tests/sanitizers/tsan_ignorelist.txt), in build-tsan/: the service's threaded tests
#            over the fake engine that do not go through gRPC (scheduler, metrics, fake engine).
#            TSAN_SCOPE=grpc adds the gRPC service tests (vqa_service, hardening, transport):
#            they pass, but TSan still reports races whose ordering happens inside Debian's
#            uninstrumented libgrpc (tests/sanitizers/tsan.supp says which and why), so they are
#            not CI's default yet. LibTorch with its OpenMP pool is not TSan-instrumented: the
#            engine's tests run under ASan + UBSan only.
# Suppressions, each with its reason: tests/sanitizers/{lsan,tsan,ubsan}.supp.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:?usage: scripts/sanitize.sh address|thread}
supp=$root/tests/sanitizers
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1:strict_init_order=1"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
# ignore_noninstrumented_modules: what Debian's uninstrumented libraries (gRPC, abseil, protobuf)
# do through TSan's interceptors (malloc, free, memcpy) is not an access of ours.
export TSAN_OPTIONS="suppressions=$supp/tsan.supp:halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1"
LAUNCHER=()
if command -v ccache >/dev/null; then LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
JOBS=${JOBS:-$(nproc)}
case "$mode" in
  address)
    BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
    cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLEXVQA_SANITIZE=address \
      "${LAUNCHER[@]}" >/dev/null
    if [ "${ASAN_SCOPE:-torch-free}" = all ]; then
      # Every gtest target (names *_test) and what the tests start (servers, the tiny checkpoint
      # writer, the Python stubs); not the benchmarks and tools nothing tests.
      mapfile -t targets < <(ninja -C "$BUILD_DIR" -t targets all |
        sed -n 's/^\([a-z0-9_]*_test\): phony$/\1/p' | grep -v '^cmake_object_order')
      cmake --build "$BUILD_DIR" -j "$JOBS" --target "${targets[@]}" flexvqa_server \
        flexvqa_fake_server make_tiny_llava flexvqa_python_stubs
      cd "$BUILD_DIR"
      ctest -N --label-exclude 'gpu|soak|dryrun' -E '^(deploy|tools)\.' | tail -n 1
      ctest --output-on-failure --label-exclude 'gpu|soak|dryrun' -E '^(deploy|tools)\.' \
        -j "$JOBS" --timeout 1200
    else
      # Default scope: the tests that need no LibTorch (the whole service over the fake engine,
      # gRPC, TLS, HTTP, request validation, tokenizer, images).
      targets=(model_request_validation_test
               text_tokenizer_test text_prompt_test text_detokenizer_test
               image_image_decode_test image_image_preprocess_test
               server_batch_policy_test server_config_test server_api_convert_test server_auth_test
               server_client_limiter_test server_liveness_test server_http_server_test
               server_fake_engine_test server_scheduler_test server_metrics_test
               server_vqa_service_test server_vqa_service_hardening_test server_server_process_test
               server_tls_test server_openai_api_test server_openai_endpoint_test)
      cmake --build "$BUILD_DIR" -j "$JOBS" --target "${targets[@]}" flexvqa_fake_server
      cd "$BUILD_DIR"
      for t in "${targets[@]}"; do
        bin=$(find tests -type f -name "$t" -perm -u+x | head -n 1)
        echo "--- ASan + UBSan: $t"
        "$bin" --gtest_brief=1
      done
    fi
    ;;
  thread)
    # clang: its -fsanitize-ignorelist keeps gRPC's, abseil's and protobuf's header code as
    # uninstrumented as their Debian libraries (tests/sanitizers/tsan_ignorelist.txt), so the gRPC
    # service tests run here with our code instrumented.
    BUILD_DIR=${TSAN_BUILD_DIR:-build-tsan}
    tests=(server_scheduler_test server_metrics_test server_fake_engine_test)
    # TSAN_SCOPE=grpc: the gRPC service tests as well; not yet clean (tests/sanitizers/tsan.supp).
    if [ "${TSAN_SCOPE:-}" = grpc ]; then
      tests+=(server_vqa_service_test server_vqa_service_hardening_test server_transport_test)
    fi
    if [ -f "$BUILD_DIR/CMakeCache.txt" ] &&
       ! grep -q '^CMAKE_CXX_COMPILER:.*clang++-14' "$BUILD_DIR/CMakeCache.txt"; then
      rm -rf "$BUILD_DIR"  # An older gcc tree: cmake cannot switch compilers in place.
    fi
    cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLEXVQA_SANITIZE=thread \
      -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_C_COMPILER=clang-14 "${LAUNCHER[@]}" >/dev/null
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
