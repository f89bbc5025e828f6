#!/usr/bin/env bash
# The README's main command: installs what is missing, builds, writes the embedded default (tiny)
# model, and answers a visual question about a shipped picture, streaming the answer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
MODEL_DIR=${MODEL_DIR:-$BUILD_DIR/models/tiny-llava}
[ -f "$MODEL_DIR/config.json" ] || "$BUILD_DIR/tools/make_tiny_llava" --out "$MODEL_DIR"
QUESTION=${1:-What is in this picture?}
IMAGE=${2:-client/examples/shapes.jpg}
echo "Q: $QUESTION  (image: $IMAGE, model: $MODEL_DIR — random weights, so the answer is noise)"
printf 'A: '
"$BUILD_DIR/tools/flexvqa_run" --model "$MODEL_DIR" --image "$IMAGE" --question "$QUESTION" \
  --max-new-tokens 32
