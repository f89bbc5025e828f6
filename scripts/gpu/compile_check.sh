#!/usr/bin/env bash
# Compile-checks the CUDA-only code of model/nn/cuda on a CPU machine, as far as it can be: the
# graph path of step_graph.cc against this machine's LibTorch (Debian's 1.13 ships the ATen/cuda
# and c10/cuda headers, not the generated cuda_cmake_macros.h: a stub stands in) and the CUDA
# toolkit's headers, with the LibTorch-2 gate lowered. varlen_attention.cc's call needs
# at::_flash_attention_forward (LibTorch >= 2.5): only the GPU machine's build compiles it.
#   scripts/gpu/compile_check.sh      exit 0: compiled; 3: skipped (no headers); else failed
set -euo pipefail
cd "$(dirname "$0")/../.."
CUDA_INCLUDE=${CUDA_INCLUDE:-/usr/local/cuda/include}
TORCH_INCLUDE=${TORCH_INCLUDE:-/usr/include}
if [ ! -f "$CUDA_INCLUDE/cuda_runtime_api.h" ] || [ ! -f "$TORCH_INCLUDE/ATen/cuda/CUDAGraph.h" ]; then
  echo "SKIP: no CUDA toolkit headers in $CUDA_INCLUDE or no ATen/cuda headers in $TORCH_INCLUDE"
  exit 3
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/stub/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' >"$work/stub/c10/cuda/impl/cuda_cmake_macros.h"
sed 's/TORCH_VERSION_MAJOR >= 2/TORCH_VERSION_MAJOR >= 1/' model/nn/cuda/step_graph.cc >"$work/step_graph.cc"
grep -q 'define FLEXVQA_STEP_GRAPHS' "$work/step_graph.cc"
${CXX:-g++} -std=c++17 -fsyntax-only -Wall -Wextra -Werror -DFLEXVQA_CUDA=1 -I. -I"$work/stub" \
  -I"$TORCH_INCLUDE" -I"$TORCH_INCLUDE/torch/csrc/api/include" -I"$CUDA_INCLUDE" "$work/step_graph.cc"
v=$(awk '/define TORCH_VERSION_(MAJOR|MINOR|PATCH)/ {printf "%s%s", sep, $3; sep="."}' \
  "$TORCH_INCLUDE/torch/csrc/api/include/torch/version.h")
echo "compile_check: model/nn/cuda/step_graph.cc (graph path) compiles against LibTorch $v's CUDA" \
  "headers and $CUDA_INCLUDE"
