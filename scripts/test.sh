#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, and runs every test but the GPU ones.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/check_format.sh
scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest -N | tail -n 1
ctest --output-on-failure --label-exclude gpu -j "${JOBS:-$(nproc)}" --timeout 600
