# Sanitizer and fuzzing builds (scripts/sanitize.sh and scripts/fuzz.sh build each into its own tree).
#   FLEXVQA_SANITIZE=address (or ON)  ASan + UBSan on every target; a UBSan report aborts the test.
#   FLEXVQA_SANITIZE=thread           TSan; meant for the torch-free server tests over the fake engine
#                                     (LibTorch and its OpenMP pool are not TSan-instrumented).
#   FLEXVQA_FUZZ=ON                   libFuzzer targets of tests/fuzz (clang only): every library is
#                                     built with -fsanitize=fuzzer-no-link,address,undefined and each
#                                     target links -fsanitize=fuzzer.
# Uninstrumented system libraries (LibTorch, gRPC, protobuf) stay as Debian ships them; what they
# report is suppressed, with the reason, in tests/sanitizers/*.supp.
set(FLEXVQA_SANITIZE OFF CACHE STRING "Sanitizers: OFF, address (ASan+UBSan; ON is the same), thread")
set_property(CACHE FLEXVQA_SANITIZE PROPERTY STRINGS OFF ON address thread)
option(FLEXVQA_FUZZ "Build the libFuzzer targets of tests/fuzz (clang)" OFF)

string(TOLOWER "${FLEXVQA_SANITIZE}" flexvqa_sanitize)
# vptr is left out everywhere: LibTorch's and gRPC's classes come from uninstrumented libraries, and
# their type info would be reported as a mismatch on virtual calls across the boundary.
set(flexvqa_ubsan -fsanitize=undefined -fno-sanitize=vptr -fno-sanitize-recover=undefined)
if(flexvqa_sanitize STREQUAL "on" OR flexvqa_sanitize STREQUAL "address")
  set(flexvqa_compile_sanitizers -fsanitize=address ${flexvqa_ubsan})
  set(flexvqa_link_sanitizers ${flexvqa_compile_sanitizers})
elseif(flexvqa_sanitize STREQUAL "thread")
  set(flexvqa_compile_sanitizers -fsanitize=thread)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    # gRPC's, abseil's and protobuf's header code stays uninstrumented like their libraries
    # (tests/sanitizers/tsan_ignorelist.txt says why): the gRPC service tests run under TSan.
    list(APPEND flexvqa_compile_sanitizers
         -fsanitize-ignorelist=${PROJECT_SOURCE_DIR}/tests/sanitizers/tsan_ignorelist.txt)
  endif()
  set(flexvqa_link_sanitizers ${flexvqa_compile_sanitizers})
elseif(NOT flexvqa_sanitize STREQUAL "off")
  message(FATAL_ERROR "FLEXVQA_SANITIZE=${FLEXVQA_SANITIZE}: expected OFF, address or thread")
endif()

if(FLEXVQA_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "FLEXVQA_FUZZ needs clang (libFuzzer): -DCMAKE_CXX_COMPILER=clang++-14")
  endif()
  if(flexvqa_compile_sanitizers)
    message(FATAL_ERROR "FLEXVQA_FUZZ brings its own sanitizers: leave FLEXVQA_SANITIZE OFF")
  endif()
  # Coverage instrumentation everywhere; libFuzzer's main is linked into the fuzz targets only
  # (flexvqa_add_fuzzer in tests/fuzz), so other executables of the tree still link.
  set(flexvqa_compile_sanitizers -fsanitize=fuzzer-no-link -fsanitize=address ${flexvqa_ubsan})
  set(flexvqa_link_sanitizers -fsanitize=address ${flexvqa_ubsan})
endif()

if(flexvqa_compile_sanitizers)
  add_compile_options(${flexvqa_compile_sanitizers} -fno-omit-frame-pointer -g1)
  add_link_options(${flexvqa_link_sanitizers})
endif()
