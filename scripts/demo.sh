#!/usr/bin/env bash
# The README's main command: installs what is missing, builds, starts the gRPC server on the embedded
# default (tiny) model, answers a visual question about a shipped picture through the client (streamed),
# then stops the server with SIGTERM (it drains and exits 0).
#   scripts/demo.sh ["question" [image.jpg|png]]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
MODEL_DIR=${MODEL_DIR:-$BUILD_DIR/models/tiny-llava}
ADDRESS=${ADDRESS:-127.0.0.1:${PORT:-50051}}
QUESTION=${1:-What is in this picture?}
IMAGE=${2:-client/examples/shapes.jpg}
[ -f "$MODEL_DIR/config.json" ] || "$BUILD_DIR/tools/make_tiny_llava" --out "$MODEL_DIR"

SERVER_LOG="$BUILD_DIR/demo-server.log"
# The server's log goes to a file so that it does not interleave with the streamed answer.
"$BUILD_DIR/server/flexvqa_server" --model_dir="$MODEL_DIR" --listen_address="$ADDRESS" \
  >"$SERVER_LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
# Wait until the server answers (model load takes a moment), at most 60 s.
for _ in $(seq 1 120); do
  if "$BUILD_DIR/client/flexvqa_client" --server="$ADDRESS" --info >/dev/null 2>&1; then break; fi
  kill -0 $SERVER 2>/dev/null || { echo "demo: the server exited; see $SERVER_LOG" >&2; exit 1; }
  sleep 0.5
done
echo "Q: $QUESTION  (image: $IMAGE; the tiny model has random weights, so the answer is noise)"
printf 'A: '
"$BUILD_DIR/client/flexvqa_client" --server="$ADDRESS" --max_new_tokens=32 "$IMAGE" "$QUESTION"
echo
kill -TERM $SERVER
wait $SERVER
trap - EXIT
echo "(server log: $SERVER_LOG)"
