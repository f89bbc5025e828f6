#!/usr/bin/env bash
# The CUDA image's build stage (Dockerfile, stage build-cuda), run from the build context's root with
# the torch wheel installed in the active Python and .devdeps/ fetched (scripts/gpu/fetch_devdeps.sh).
# Builds with scripts/gpu/build.sh (the GPU machine's recipe) into ./build-gpu, then gathers into OUT/lib
# every shared library the runtime image lacks: torch/lib and all of the wheel's nvidia-* libraries
# (cuDNN, cuBLAS, NCCL... several are loaded with dlopen, which ldd cannot see), then whatever else ldd
# resolves for the binaries (collect_libs.sh: gRPC and the other Debian packages from /opt/deps, system
# libraries), and fails if one is not found.
#   deploy/docker/build_cuda.sh OUT
set -euo pipefail
out=${1:?usage: deploy/docker/build_cuda.sh OUT}
scripts/gpu/build.sh -DFLEXVQA_BUILD_TESTS=OFF -DTORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
site=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
mkdir -p "$out/lib"
cp -a "$site"/torch/lib/*.so* "$out/lib/"
find "$site"/nvidia -path '*/lib/*.so*' \( -type f -o -type l \) -exec cp -a {} "$out/lib/" \;
. scripts/gpu/env.sh
deploy/docker/collect_libs.sh "$out/lib" build-gpu/server/flexvqa_server build-gpu/client/flexvqa_client
