#!/usr/bin/env bash
# Installs the Debian 12 packages flexvqa builds, tests and runs with; installs only what is missing.
# Needs root (or sudo). Safe to run again. Ends with deploy/install_test_deps.sh (the deploy checks).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git clang-format ccache
  libtorch-dev libopenblas0-pthread          # LibTorch 1.13 (CPU) and a fast BLAS under it
  libsentencepiece-dev                       # tokenizer trainer for the tiny model
  nlohmann-json3-dev libturbojpeg0-dev libpng-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev prometheus-cpp-dev
  libcpp-httplib-dev openssl libssl-dev      # HTTP endpoints (server/http_server.h); test certificates
  libgtest-dev libgmock-dev
  clang-14 libclang-rt-14-dev                # libFuzzer and TSan (runtimes in libclang-rt-14-dev)
  libcpp-httplib-dev                         # the soak's /metrics scrapes
  zlib1g-dev python3 python3-grpcio python3-protobuf
  python3-torch python3-numpy python3-pil python3-sentencepiece fonts-dejavu-core  # tools/demo
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
else
  echo "install_deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# What the deploy/ checks need: Prometheus and promtool, python3-yaml, pinned npm schema packages.
"$(dirname "$0")/../deploy/install_test_deps.sh"
