#!/usr/bin/env bash
# The CI accuracy test (issue 14): the shipped demo checkpoint answers the fixed generated set
# (make_split.py --ci: 34 scenes, 102 questions, one of each kind per scene) through the engine
# (flexvqa_demo_eval: prompt template, image preprocessing, tower, selection, FlexAttention, decoder,
# sampler) with at least the accuracy its training forward scored on the same set
# (MODEL/expected_accuracy.tsv, written by evaluate.py --expect-out when the checkpoint was committed).
#   accuracy_test.sh MODEL_DIR DEMO_EVAL_BINARY [flexvqa_demo_eval flags, e.g. --chat-template llava_v1]
set -euo pipefail
MODEL=$1
EVAL=$2
shift 2
HERE="$(cd "$(dirname "$0")" && pwd)"
SPLIT=$(mktemp -d)
trap 'rm -rf "$SPLIT"' EXIT
/usr/bin/python3 "$HERE/../../../tools/demo/make_split.py" --ci --out "$SPLIT"
[ "$(wc -l <"$SPLIT/questions.tsv")" -eq 102 ] || { echo "the CI set is not 102 questions" >&2; exit 1; }
"$EVAL" --model "$MODEL" --questions "$SPLIT/questions.tsv" --expect "$MODEL/expected_accuracy.tsv" "$@"
