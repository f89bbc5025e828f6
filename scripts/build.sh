#!/usr/bin/env bash
# Configures and builds flexvqa into ${BUILD_DIR:-build} (Release, Ninja). Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
LAUNCHER=()
# ccache (when installed) shares objects between build trees and CI runs on the same machine.
# base_dir: paths relative to the checkout, so that a copy of it elsewhere (the Dockerfile's build stage
# checked by tests/deploy/docker_build_test.py) hits the same objects.
if command -v ccache >/dev/null; then
  LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "${LAUNCHER[@]}" "$@"
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}"
