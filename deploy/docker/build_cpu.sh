#!/usr/bin/env bash
# The CPU image's build stage (Dockerfile, stage build-cpu), run from the build context's root; also run
# by tests/deploy/docker_build_test.py in a copy of a checkout filtered through .dockerignore. Installs
# the Debian packages (not the deploy checks' tools), builds the server, clients and tools without tests
# into ./build, and writes the tiny demo checkpoint to OUT/models/tiny-llava.
#   deploy/docker/build_cpu.sh OUT
set -euo pipefail
out=${1:?usage: deploy/docker/build_cpu.sh OUT}
FLEXVQA_SKIP_TEST_DEPS=1 scripts/install_deps.sh
BUILD_DIR="$PWD/build" scripts/build.sh -DFLEXVQA_BUILD_TESTS=OFF
build/tools/make_tiny_llava --out "$out/models/tiny-llava"
