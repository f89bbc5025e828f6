#!/usr/bin/env bash
# Installs what the deploy/ checks need (tests/deploy/CMakeLists.txt): Debian's prometheus (the server
# and promtool) and python3-yaml, and the pinned npm packages of tests/deploy/package-lock.json
# (kubernetes-models and the KEDA / Prometheus Operator models, yaml) into tests/deploy/node_modules,
# and the official OpenAI client of tests/openai_sdk/package-lock.json into tests/openai_sdk/node_modules.
# Needs root (or sudo) for apt; safe to run again: installs only what is missing.
# FLEXVQA_SKIP_TEST_DEPS=1 skips it all (image builds: deploy/docker/build_cpu.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${FLEXVQA_SKIP_TEST_DEPS:-0}" = 1 ]; then
  echo "install_test_deps: skipped (FLEXVQA_SKIP_TEST_DEPS=1)"
  exit 0
fi

PACKAGES=(prometheus python3-yaml nodejs npm)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm may come from elsewhere than Debian: only install them when absent.
command -v node >/dev/null && missing=("${missing[@]/nodejs}")
command -v npm >/dev/null && missing=("${missing[@]/npm}")
read -r -a missing <<< "${missing[*]:-}"
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_test_deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The package starts a Prometheus service on :9090; the tests run their own on loopback.
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus || true
  fi
fi

# The lock file npm ci last installed, kept beside the packages: reinstall when it changed.
for dir in tests/deploy tests/openai_sdk; do
  stamp=$dir/node_modules/.flexvqa-installed-lock.json
  if ! cmp -s $dir/package-lock.json "$stamp"; then
    echo "install_test_deps: npm ci in $dir"
    npm ci --prefix $dir --no-audit --no-fund --loglevel=error
    cp $dir/package-lock.json "$stamp"
  else
    echo "install_test_deps: npm packages of $dir present"
  fi
done
