#!/usr/bin/env bash
# The CPU image's build stage (Dockerfile, stage build-cpu), run from the build context's root; also run
# by tests/deploy/docker_build_test.py in a copy of a checkout filtered through .dockerignore. Installs
# the Debian packages (not the deploy checks' tools), builds the server, clients and tools without tests
# into ./build, and copies the demo checkpoint (models/demo-flex, the server's default model) to
# OUT/models/demo-flex.
#   deploy/docker/build_cpu.sh OUT
set -euo pipefail
out=${1:?usage: deploy/docker/build_cpu.sh OUT}
FLEXVQA_SKIP_TEST_DEPS=1 scripts/install_deps.sh
BUILD_DIR="$PWD/build" scripts/build.sh -DFLEXVQA_BUILD_TESTS=OFF
mkdir -p "$out/models"
cp -r models/demo-flex "$out/models/demo-flex"
