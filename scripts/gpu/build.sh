#!/usr/bin/env bash
# Builds flexvqa on the GPU machine against the CUDA LibTorch inside its Python torch (see
# ../shared/gpu.md): unpacks .devdeps/*.deb into /opt/deps (never into /), then configures with both
# prefixes. Source this file's exports with `. scripts/gpu/env.sh` in later commands of the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p /opt/deps
for f in .devdeps/*.deb; do dpkg -x "$f" /opt/deps; done
. scripts/gpu/env.sh
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLEXVQA_CUDA=ON \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;/opt/deps/usr" -DTORCH_CUDA_ARCH_LIST=9.0a "$@"
cmake --build build-gpu -j "$(nproc)"
