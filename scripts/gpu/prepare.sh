#!/usr/bin/env bash
# Prepares, on a CPU machine, everything scripts/gpu/check.sh needs on the GPU machine, in the two
# ignored folders the device tool carries (its limit: 64 MiB of ignored paths in all):
#   .devdeps/     Debian packages the GPU machine lacks (scripts/gpu/fetch_devdeps.sh), ~17 MB
#   .gpu/peers/   the peers' scripts (../shared/peer-bench)
#   .gpu/flexattn/src/  the authors' sources (llava/ and transformers/src/transformers/, pruned),
#                 when given below (or already there), ~41 MB
#
#   scripts/gpu/prepare.sh [--flexattn-mirror GIT_DIR | --flexattn-archive FILE.tar]
# (needs apt's package lists: run `apt-get update` once first on a fresh machine)
#
# The authors' FlexAttention code (UMass-Foundation-Model/FlexAttention; never committed here):
# either the git directory of a fetched mirror, or a tar of its `llava` and
# `transformers/src/transformers` folders. Without it, check.sh skips the authors' stage.
# Prints the carry list for the device tool last.
set -euo pipefail
cd "$(dirname "$0")/../.."
MIRROR="" ARCHIVE=""
while [ $# -gt 0 ]; do
  case $1 in
    --flexattn-mirror) MIRROR=$2 && shift ;;
    --flexattn-archive) ARCHIVE=$2 && shift ;;
    *) echo "prepare.sh: unknown option $1" >&2 && exit 2 ;;
  esac
  shift
done
# Always fetched afresh (3 s): the package list grows, and a stale .devdeps would lack the new ones.
scripts/gpu/fetch_devdeps.sh
SHARED=""
for d in shared ../shared /work/shared; do
  if [ -d "$d/peer-bench" ]; then SHARED=$d && break; fi
done
[ -n "$SHARED" ] || { echo "prepare.sh: no shared/peer-bench found" >&2 && exit 1; }
mkdir -p .gpu/peers
cp "$SHARED"/peer-bench/*.py .gpu/peers/
if [ -n "$MIRROR" ] || [ -n "$ARCHIVE" ]; then
  rm -rf .gpu/flexattn/src && mkdir -p .gpu/flexattn/src
  if [ -n "$MIRROR" ]; then
    git --git-dir="$MIRROR" archive HEAD llava transformers/src/transformers | tar -x -C .gpu/flexattn/src
  else
    tar -xf "$ARCHIVE" -C .gpu/flexattn/src
  fi
  # What its benchmark never imports (peer-bench/README.md): evaluation tables, demo images.
  rm -rf .gpu/flexattn/src/llava/eval/table .gpu/flexattn/src/llava/serve/examples
  find .gpu/flexattn/src -name '*.png' -o -name '*.jpg' -o -name '*.ipynb' | xargs -r rm -f
  [ -f .gpu/flexattn/src/llava/model/language_model/llava_llama.py ] ||
    { echo "prepare.sh: the authors' llava/ is not in .gpu/flexattn/src" >&2 && exit 1; }
fi
total=$(du -sbc .devdeps .gpu | tail -1 | cut -f1)
echo "prepare.sh: .devdeps $(du -sh .devdeps | cut -f1), .gpu $(du -sh .gpu | cut -f1); total $((total >> 20)) MiB"
if [ "$total" -gt $((64 << 20)) ]; then
  echo "prepare.sh: over the device tool's 64 MiB of carried paths" >&2
  exit 1
fi
[ -d .gpu/flexattn/src/llava ] || echo "prepare.sh: no authors' sources: the peer_authors stage will skip"
echo 'carry: [".devdeps", ".gpu"]'
