# flexvqa_add_test(<name> LIBS <targets...> LABEL <unit|e2e|gpu>)
# Builds tests/<dir>/<name>.cc into one gtest binary and registers each test case with
# CTest (gtest_discover_tests), so `ctest -N` lists every test by name. CI runs every label but gpu.
find_package(GTest REQUIRED)
include(GoogleTest)
function(flexvqa_add_test name)
  cmake_parse_arguments(ARG "" "LABEL" "LIBS;SOURCES" ${ARGN})
  set(src ${CMAKE_CURRENT_SOURCE_DIR}/${name}.cc)
  if(NOT EXISTS ${src})
    message(FATAL_ERROR "flexvqa_add_test(${name}): ${src} does not exist")
  endif()
  get_filename_component(dir ${CMAKE_CURRENT_SOURCE_DIR} NAME)
  set(target ${dir}_${name})
  add_executable(${target} ${src} ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_compile_definitions(${target} PRIVATE
    FLEXVQA_SOURCE_DIR="${PROJECT_SOURCE_DIR}" FLEXVQA_BINARY_DIR="${PROJECT_BINARY_DIR}")
  if(NOT ARG_LABEL)
    set(ARG_LABEL unit)
  endif()
  # A GTEST_SKIP (e.g. a fixture only the GPU machine can produce) shows as skipped, not passed.
  gtest_discover_tests(${target} PROPERTIES LABELS ${ARG_LABEL} DISCOVERY_TIMEOUT 120
                       SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]"
                       WORKING_DIRECTORY ${PROJECT_BINARY_DIR})
endfunction()
