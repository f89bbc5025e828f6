#!/usr/bin/env bash
# Downloads (does not install) the Debian 12 packages that the GPU machine lacks into .devdeps/ (ignored
# by git), so that they travel with the working tree and scripts/gpu/build.sh can unpack them there.
# Run on a Debian 12 machine with apt access (this project's CPU machines). About 17 MB.
# libpng-dev, zlib1g-dev and pkgconf: CMake's FindPNG and pkg_check_modules need their headers, .so
# links and the pkg-config program, which the GPU machine may lack (only runtime libraries there).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .devdeps
cd .devdeps
rm -f ./*.deb  # One version of each package: dpkg -x of two would mix them.
PACKAGES=(
  libgrpc++1.51 libgrpc29 libgrpc++-dev libgrpc-dev libprotobuf32 libprotobuf-dev libprotoc32
  protobuf-compiler protobuf-compiler-grpc libabsl20220623 libabsl-dev libre2-9 libre2-dev libc-ares2
  libc-ares-dev libspdlog1.10 libspdlog-dev libfmt9 libfmt-dev libprometheus-cpp-core1.0
  libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0 prometheus-cpp-dev civetweb libcivetweb1
  libcivetweb-dev libsentencepiece0 libsentencepiece-dev nlohmann-json3-dev libgtest-dev googletest
  libturbojpeg0 libturbojpeg0-dev
  libpng-dev libpng16-16 zlib1g-dev zlib1g pkgconf pkgconf-bin libpkgconf3
  libcpp-httplib0.11 libcpp-httplib-dev libbrotli-dev libssl-dev
)
apt-get download "${PACKAGES[@]}"
ls -1 | wc -l
