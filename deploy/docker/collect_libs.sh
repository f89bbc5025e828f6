#!/usr/bin/env bash
# Copies into DEST every shared library that `ldd` resolves for the binaries (DEST searched first, so
# what is already there stays), by soname and following symlinks, except what every runtime image has
# (glibc, libstdc++, libgcc_s: BASE below) and the NVIDIA driver's libraries (the container toolkit
# mounts them at run time). Prints the libraries it copied. Fails, naming them, when a library is not
# found. With --check it copies nothing and only fails on a library not found (the runtime image's
# last step). tests/deploy/docker_build_test.py checks the list on the CPU server.
#   deploy/docker/collect_libs.sh [--check] DEST BINARY...
set -euo pipefail
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
dest=${1:?usage: collect_libs.sh [--check] DEST BINARY...}
shift
BASE='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|libgcc_s)\.so'
DRIVER='^(libcuda|libnvidia-[a-z-]+)\.so'
mkdir -p "$dest"
export LD_LIBRARY_PATH="$dest${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing=()
for binary in "$@"; do
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue  # The vDSO and the loader: no "=>".
    if [ "$path" = "not" ]; then
      [[ $name =~ $DRIVER ]] || missing+=("$name (needed by $binary)")
      continue
    fi
    [[ $name =~ $BASE || $name =~ $DRIVER ]] && continue
    [ "$check" = 1 ] || [ -e "$dest/$name" ] && continue
    cp -L "$path" "$dest/$name"
    echo "$name"
  done < <(ldd "$binary")
done
if [ ${#missing[@]} -gt 0 ]; then
  printf 'collect_libs: not found: %s\n' "${missing[@]}" >&2
  exit 1
fi
