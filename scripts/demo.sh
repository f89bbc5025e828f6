#!/usr/bin/env bash
# The README's main command: installs what is missing, builds, starts the gRPC server on its default
# model (the demo FlexAttention checkpoint in models/demo-flex, trained on generated scenes:
# docs/demo_model.md), asks it a high-resolution question about a shipped generated scene through the
# client (streamed), then stops the server with SIGTERM (it drains and exits 0).
#   scripts/demo.sh ["question" [image.jpg|png]]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
MODEL_DIR=${MODEL_DIR:-models/demo-flex}
ADDRESS=${ADDRESS:-127.0.0.1:${PORT:-50051}}
# The shipped scene (tools/demo/scene.py, held-out seed 9,100,000) and one of its digit questions: the
# digit is 13 px tall in the 1008 px view the selection reads and a 4 px blob at 336 px.
QUESTION=${1:-}
IMAGE=${2:-client/examples/scene_9100000.png}
EXPECTED=""
if [ $# -eq 0 ]; then
  QUESTION=$(cut -f3 client/examples/scene_9100000.txt)
  EXPECTED=$(cut -f4 client/examples/scene_9100000.txt)
fi

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
echo "Q: $QUESTION  (image: $IMAGE)"
printf 'A: '
"$BUILD_DIR/client/flexvqa_client" --server="$ADDRESS" --max_new_tokens=32 "$IMAGE" "$QUESTION"
echo
[ -z "$EXPECTED" ] || echo "(the scene's generator says: $EXPECTED)"
kill -TERM $SERVER
wait $SERVER
trap - EXIT
echo "(server log: $SERVER_LOG)"
