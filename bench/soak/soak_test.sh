#!/usr/bin/env bash
# soak_test.sh SOAK SERVER MAKE_TINY FIXTURES: the CI soak (CTest soak.Server). Writes a tiny flex
# checkpoint (so the high-resolution caches are in use), then runs SOAK against SERVER on it for
# ${SOAK_DURATION_S:-90} s with a JPEG and two PNGs from FIXTURES. Exit status: the soak's.
set -euo pipefail
soak=$1 server=$2 make_tiny=$3 fixtures=$4
dir=$(mktemp -d "${TMPDIR:-/tmp}/flexvqa_soak_model.XXXXXX")
trap 'rm -rf "$dir"' EXIT
"$make_tiny" --out "$dir/model" --mode flex >/dev/null
# Small limits so that queueing, slot reuse and admission all happen at this load: 4 KV slots for
# 8 closed-loop calls plus the killed clients' streams.
exec "$soak" --server_bin="$server" --server_arg=--model_dir="$dir/model" \
  --server_arg=--max_sequences=4 --server_arg=--max_queued=64 --server_arg=--max_queue_wait_ms=120000 \
  --server_arg=--log_level=warn \
  --duration_s="${SOAK_DURATION_S:-90}" --concurrency="${SOAK_CONCURRENCY:-8}" \
  --killed_clients_every_s=10 --max_rss_growth_mb="${SOAK_MAX_RSS_GROWTH_MB:-96}" \
  --images="$fixtures/photo_64x48.jpg,$fixtures/landscape_37x23.png,$fixtures/portrait_21x44.png"
