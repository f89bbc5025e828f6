#!/usr/bin/env bash
# Builds flexvqa on the GPU machine against the CUDA LibTorch inside its Python torch (see
# ../shared/gpu.md): unpacks .devdeps/*.deb into /opt/deps (never into /), then configures with both
# prefixes. Source this file's exports with `. scripts/gpu/env.sh` in later commands of the same run.
#   BUILD_DIR (default build-gpu), TARGETS (default: all), PYTHON (default python3); extra
#   arguments go to cmake. Tests are not built there (no gmock among the .debs; CI runs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build-gpu}
mkdir -p /opt/deps
for f in .devdeps/*.deb; do dpkg -x "$f" /opt/deps; done
# A link may be absolute (zlib1g-dev: libz.so -> /lib/x86_64-linux-gnu/libz.so.1.2.13, which the
# GPU machine does not have): point such links at their target inside /opt/deps.
find /opt/deps -type l -lname '/*' | while read -r link; do
  target=$(readlink "$link")
  if [ -e "/opt/deps$target" ]; then ln -sfn "/opt/deps$target" "$link"; fi
done
TORCH_PREFIX=$(LD_LIBRARY_PATH=${ORIG_LD_LIBRARY_PATH:-${LD_LIBRARY_PATH:-}} "${PYTHON:-python3}" -c \
  'import torch; print(torch.utils.cmake_prefix_path)')
. scripts/gpu/env.sh
# The Debian .pc files say prefix=/usr; their files are under /opt/deps/usr.
export PKG_CONFIG_SYSROOT_DIR=/opt/deps
export PKG_CONFIG_PATH=/opt/deps/usr/lib/x86_64-linux-gnu/pkgconfig:/opt/deps/usr/share/pkgconfig
# CMAKE_POLICY_VERSION_MINIMUM: CMake 4 (the venv's) refuses package configs that still declare
# compatibility with CMake < 3.5; older CMake ignores the variable.
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLEXVQA_CUDA=ON \
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
  -DFLEXVQA_BUILD_TESTS=OFF -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;/opt/deps/usr" \
  -DTORCH_CUDA_ARCH_LIST=9.0a "$@"
# -k 0: build every target that can be built, so one failure does not stop the others.
cmake --build "$BUILD_DIR" -j "$(nproc)" -- -k 0 ${TARGETS:-}
