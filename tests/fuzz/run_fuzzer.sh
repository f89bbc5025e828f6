#!/usr/bin/env bash
# run_fuzzer.sh FUZZER SEED_DIR [libFuzzer flags...]: runs FUZZER over a scratch copy of its seed
# corpus (libFuzzer adds what it finds to the first directory; the committed seeds stay as they are).
# Exit status is the fuzzer's: non-zero on a crash, a sanitizer report or a leak; the crashing input
# is written to ./crash-* (artifact_prefix) so that CI's log names it.
set -euo pipefail
fuzzer=$1
seeds=$2
shift 2
scratch=$(mktemp -d "${TMPDIR:-/tmp}/flexvqa_fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
"$fuzzer" "$@" -artifact_prefix="${ARTIFACT_DIR:-$PWD}/$(basename "$fuzzer")-" \
  -print_final_stats=1 "$scratch" "$seeds"
