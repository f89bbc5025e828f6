#!/usr/bin/env bash
# The README's test command (CI runs exactly this): installs what is missing, checks the format,
# builds, and runs every test but the GPU ones, in stages, each logged with its time; the first
# failing stage fails the whole run.
#   build   Release build, every test but gpu and soak (build/)
#   soak    the soak test (label soak, bench/soak), in build/
#   asan    every unit and e2e test, the LibTorch engine's included, under ASan + UBSan
#           (ASAN_SCOPE=all scripts/sanitize.sh address, build-asan/; ~26 min on the 2-core dev
#           machine; ASAN_SCOPE=torch-free for the service-only scope, ~5 min)
#   tsan    the scheduler and service tests under TSan (scripts/sanitize.sh thread, build-tsan/)
#   fuzz    each libFuzzer target for a fixed number of inputs (scripts/fuzz.sh, build-fuzz/)
# STAGES="build soak" runs a subset (default: all, in this order).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGES=${STAGES:-build soak asan tsan fuzz}
JOBS=${JOBS:-$(nproc)}
export JOBS
# Every stage's build tree shares ccache's objects, wherever the checkout lies (CI clones afresh).
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
started=$SECONDS

stage() {
  local name=$1
  shift
  case " $STAGES " in *" $name "*) ;; *) echo "=== stage $name: skipped (STAGES)"; return ;; esac
  echo "=== stage $name: start"
  local t0=$SECONDS
  if ! "$@"; then
    echo "=== stage $name: FAILED after $((SECONDS - t0)) s (total $((SECONDS - started)) s)"
    exit 1
  fi
  echo "=== stage $name: passed in $((SECONDS - t0)) s (total $((SECONDS - started)) s)"
}

# Called under `if !`, where set -e does not apply: each step is chained with &&.
build_and_test() {
  scripts/build.sh && (cd "${BUILD_DIR:-build}" && ctest -N | tail -n 1 &&
    ctest --output-on-failure --label-exclude 'gpu|soak' -j "$JOBS" --timeout 600)
}

soak() {
  (cd "${BUILD_DIR:-build}" && ctest --output-on-failure -L soak)
}

STAGES="deps format $STAGES"  # Always: what is installed, and the format check.
stage deps scripts/install_deps.sh
stage format scripts/check_format.sh
stage build build_and_test
stage soak soak
stage asan env ASAN_SCOPE="${ASAN_SCOPE:-all}" scripts/sanitize.sh address
stage tsan scripts/sanitize.sh thread
stage fuzz scripts/fuzz.sh
echo "=== all stages passed in $((SECONDS - started)) s"
