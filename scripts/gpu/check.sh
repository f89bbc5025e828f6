#!/usr/bin/env bash
# The first run on the GPU machine (issue 10), in one command: build against the torch wheel's
# CUDA LibTorch, correctness on CUDA (the CPU parity fixtures, the Hugging Face tiny fixture and the
# LLaVA-1.5-7B shape against transformers), then timings beside the peers measured in the same run.
#
#   scripts/gpu/check.sh                 on the GPU machine (needs what scripts/gpu/prepare.sh
#                                        brought: .devdeps/ and .gpu/, carried as ignored paths)
#   scripts/gpu/check.sh --dry-run       on a CPU machine: the same stages on tiny checkpoints with
#                                        the system LibTorch (HF and peer stages skip themselves)
# Options: --out DIR (default: $OUT, else BUILD/gpu-check), --build-dir DIR (default build-gpu; dry
# run: build), --no-build, --only STAGE,STAGE (rerun some stages; checkpoints in BUILD/gpu-work are
# reused), --budget SECONDS (all stages together; default 470, dry run 900).
#
# Each stage runs under its own time budget (and never past the overall one), in order of value;
# everything it prints goes to OUT/log.txt and OUT/<stage>.log as it happens, its `RESULT {json}`
# lines to OUT/results.jsonl, its status and time to OUT/stages.tsv, and OUT/results.md (the table
# printed last) is rewritten after every stage, so a run killed at any point returns what it did.
# Nothing is timed while something else runs: the build overlaps only the HF fixture and checkpoint
# writing, which are not timed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SELF="$ROOT/scripts/gpu/check.sh"

# --- One stage, run in its own process by the driver below (timeout needs a program). ---
if [ "${1:-}" = "--stage" ]; then
  set -e
  cd "$ROOT"
  stage=$2
  BIN=$BUILD
  # Python must not see the Debian libraries of /opt/deps (its own zlib, protobuf, ...).
  py() { LD_LIBRARY_PATH=${ORIG_LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1 "$PYTHON" "$@"; }
  have_hf() { [ "$DRY" = 0 ] && py -c 'import transformers' 2>/dev/null; }
  skip() { echo "SKIP $*"; exit 3; }
  parity() { "$BIN/bench/device_parity" "$@"; }
  bench() { "$BIN/bench/decode_bench" --device "$DEVICE" --json "$@"; }
  model_ok() { [ -f "$1/config.json" ] && ls "$1"/*.safetensors >/dev/null 2>&1; }
  case $stage in
    build)
      targets="device_parity decode_bench graph_check flexvqa_server flexvqa_loadgen flexvqa_train_tokenizer"
      if [ "$DRY" = 0 ]; then
        BUILD_DIR=$BIN TARGETS=$targets scripts/gpu/build.sh
      else
        cmake --build "$BIN" -j "$(nproc)" -- -k 0 $targets
      fi
      ;;
    info)
      [ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
      py -c 'import json, torch; c = torch.cuda.is_available(); print("RESULT " + json.dumps(dict(
check="device", python_torch=torch.__version__, cuda=c, name=torch.cuda.get_device_name() if c else "cpu",
memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if c else 0)))' || true
      parity --info
      ;;
    parity_tiny)
      status=0
      for dtype in float32 bfloat16; do
        for fx in reference_tiny hf_tiny; do
          [ -f "tests/fixtures/$fx/fixture.json" ] || continue
          parity --fixture "tests/fixtures/$fx" --name "$fx" --device "$DEVICE" --dtype $dtype ||
            status=1
        done
        # bf16 on a CPU is slow and says little: the dry run checks the engine suite in fp32 only.
        [ "$DRY" = 0 ] || [ $dtype = float32 ] || continue
        mkdir -p "$WORK/suite_$dtype"
        parity --engine-suite --device "$DEVICE" --dtype $dtype --work "$WORK/suite_$dtype" ||
          status=1
      done
      exit $status
      ;;
    graphs)  # StepGraphs capture/replay and varlen attention per bucket (bench/graph_check.cc).
      [ -x "$BIN/bench/graph_check" ] || skip "graph_check is not built"
      "$BIN/bench/graph_check" --device "$DEVICE" --buckets "$GRAPH_BUCKETS" --steps "$GRAPH_STEPS"
      ;;
    hf_tiny_fixture)  # Python only: overlaps the build.
      have_hf || skip "transformers is not installed here"
      py tests/parity/make_hf_fixture.py --out "$OUT/hf_tiny" \
        --tokenizer tests/fixtures/reference_tiny/model/tokenizer.model
      ;;
    hf_tiny_check)
      [ -f "$OUT/hf_tiny/fixture.json" ] || skip "no fixture from hf_tiny_fixture"
      status=0
      for dd in "cpu float32" "$DEVICE float32" "$DEVICE bfloat16"; do
        set -- $dd
        parity --fixture "$OUT/hf_tiny" --name hf_tiny_new --device "$1" --dtype "$2" || status=1
      done
      exit $status
      ;;
    hf_7b_save)  # Python only: overlaps the build.
      if [ "$DRY" = 1 ]; then
        # Stand-in for the 7B: a tiny HF-layout checkpoint at 336 px, our plain-PyTorch reference.
        [ -x "$BIN/bench/device_parity" ] || skip "device_parity is not built"
        parity --write-tiny "$WORK/src" --image-size 336
        mkdir -p "$WORK/hf7b" && ln -sfn "$WORK/src" "$WORK/hf7b/model"
        # The reference needs Python torch, which scripts/install_deps.sh does not install.
        if py -c 'import torch' 2>/dev/null; then
          py scripts/gpu/hf_parity.py --backend reference --model-dir "$WORK/src" --out "$WORK/hf7b"
        else
          echo "no Python torch here: no stand-in fixture (hf_7b_check skips)"
        fi
      else
        have_hf || skip "transformers is not installed here"
        py scripts/gpu/hf_parity.py --backend hf --device cuda --out "$WORK/hf7b"
      fi
      if [ -f "$WORK/hf7b/fixture.json" ]; then cp "$WORK/hf7b/fixture.json" "$OUT/hf7b_fixture.json"; fi
      ;;
    derive)  # Python only: overlaps the build.
      model_ok "$WORK/hf7b/model" || skip "no checkpoint from hf_7b_save"
      sa=()
      [ "$DRY" = 0 ] || sa=(--num-sa-layers 1)
      py scripts/gpu/derive_checkpoints.py "$WORK/hf7b/model" --full-px "$FULL_PX" \
        "$WORK/full$FULL_PX" \
        --flex "$WORK/flex" "${sa[@]}"
      ;;
    tokenizer)
      # The engine needs a tokenizer.model; the 7B has none (random weights, no downloads). A
      # 512-piece one trained on the tiny corpus plus the vicuna_v1 system prompt
      # (model/text/prompt.h) makes the template's words single pieces, so that the peers'
      # 616-token prompt (576 image + 40 text tokens) is reachable with a one-word question.
      model_ok "$WORK/hf7b/model" || skip "no checkpoint from hf_7b_save"
      system="A chat between a curious human and an artificial intelligence assistant. The \
assistant gives helpful, detailed, and polite answers to the human's questions."
      {
        cat tools/tiny/data/tiny_corpus.txt
        for _ in $(seq 300); do
          echo "$system"
          echo "USER: $QUESTION ASSISTANT: Describe this picture in detail. and a b"
        done
      } >"$WORK/corpus.txt"
      "$BIN/tools/tiny/flexvqa_train_tokenizer" "$WORK/corpus.txt" "$WORK/tokenizer" 512
      for d in hf7b/model "full$FULL_PX" flex; do
        if [ -d "$WORK/$d" ]; then cp "$WORK/tokenizer.model" "$WORK/$d/tokenizer.model"; fi
      done
      ;;
    hf_7b_check)
      [ -f "$WORK/hf7b/fixture.json" ] || skip "no fixture from hf_7b_save"
      dtype=bfloat16
      [ "$DRY" = 0 ] || dtype=float32
      parity --fixture "$WORK/hf7b" --name hf7b --device "$DEVICE" --dtype $dtype --cosine 0.999 \
        --margin 0.1
      ;;
    decode_full)
      model_ok "$WORK/hf7b/model" || skip "no checkpoint from hf_7b_save"
      py scripts/gpu/random_png.py "$WORK/random.png" 640 480 1
      bench --model "$WORK/hf7b/model" --batch "$BATCHES" --prompt-tokens 616 --max-context 1024 \
        --steps "$STEPS" --warmup 2 --repeats "$REPEATS" --image "$WORK/random.png" \
        --question "$QUESTION" --label full336
      ;;
    peer_compiled_1)
      have_hf || skip "transformers is not installed here"
      py "$PEERS/hf_llama_compiled.py" 1
      ;;
    peer_eager_336)
      have_hf || skip "transformers is not installed here"
      py scripts/gpu/hf_eager_peer.py --px 336 --batch 1,8,32,64
      ;;
    ttft_1008)
      model_ok "$WORK/full$FULL_PX" || skip "no checkpoint from derive"
      py scripts/gpu/random_png.py "$WORK/random.png" 640 480 1
      bench --model "$WORK/full$FULL_PX" --batch "$B1008" --steps 0 --warmup 0 --repeats "$REPEATS" \
        --max-context 5400 --image "$WORK/random.png" --label "full$FULL_PX"
      ;;
    flex_1008)
      model_ok "$WORK/flex" || skip "no checkpoint from derive"
      py scripts/gpu/random_png.py "$WORK/random.png" 640 480 1
      bench --model "$WORK/flex" --batch "$B1008" --steps "$STEPS" --warmup 2 --repeats "$REPEATS" \
        --max-context 1024 --image "$WORK/random.png" --label flex1008
      ;;
    peer_eager_1008)
      have_hf || skip "transformers is not installed here"
      py scripts/gpu/hf_eager_peer.py --px 1008 --batch 1,8 --steps 0
      ;;
    peer_authors)
      have_hf || skip "transformers is not installed here"
      src="$ROOT/.gpu/flexattn/src"
      [ -d "$src/llava" ] || skip "the authors' sources are not in $src (prepare.sh)"
      FLEXATTN_SRC="$src" py "$PEERS/flexattn_reference_bench.py"
      ;;
    server_e2e)
      model_ok "$WORK/hf7b/model" || skip "no checkpoint from hf_7b_save"
      py scripts/gpu/random_png.py "$WORK/random.png" 640 480 1
      echo "Describe this picture in detail." >"$WORK/prompts.txt"
      rm -f "$WORK/ports"
      "$BIN/server/flexvqa_server" --model_dir="$WORK/hf7b/model" --device="$DEVICE" \
        --max_sequences=8 --max_running=8 --max_context=1024 --listen_address=127.0.0.1:0 \
        --metrics_listen_address=127.0.0.1:0 --port_file="$WORK/ports" >"$OUT/server.log" 2>&1 &
      server=$!
      trap 'kill $server 2>/dev/null || true' EXIT
      for _ in $(seq 1200); do  # Bounded wait (120 s) for the server's port file.
        [ -s "$WORK/ports" ] && break
        kill -0 $server 2>/dev/null || { tail -20 "$OUT/server.log"; exit 1; }
        sleep 0.1
      done
      port=$(head -1 "$WORK/ports")
      "$BIN/client/flexvqa_loadgen" --server=127.0.0.1:$port --concurrency=8 --requests=32 \
        --images="$WORK/random.png" --prompts="$WORK/prompts.txt" --max_new_tokens=32 \
        --ignore_eos --json | sed -u 's/^{"mode"/RESULT {"check":"server_e2e","mode"/'
      kill -TERM $server && wait $server || true
      trap - EXIT
      bench --model "$WORK/hf7b/model" --batch 8 --steps 31 --warmup 0 --repeats "$REPEATS" \
        --max-context 1024 --image "$WORK/random.png" --label engine_alone
      ;;
    peer_compiled_rest)
      have_hf || skip "transformers is not installed here"
      py "$PEERS/hf_llama_compiled.py" 64 8 32
      ;;
    *)
      echo "unknown stage $stage" >&2
      exit 2
      ;;
  esac
  exit 0
fi

# --- Driver. ---
DRY=0 NO_BUILD=0 ONLY="" OUT_DIR=${OUT:-} BUILD_ARG="" BUDGET=""
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --no-build) NO_BUILD=1 ;;
    --only) ONLY=",$2," && shift ;;
    --out) OUT_DIR=$2 && shift ;;
    --build-dir) BUILD_ARG=$2 && shift ;;
    --budget) BUDGET=$2 && shift ;;
    -h | --help) sed -n '2,21p' "$0" && exit 0 ;;
    *) echo "check.sh: unknown option $1" >&2 && exit 2 ;;
  esac
  shift
done
cd "$ROOT"
export DRY ROOT
if [ "$DRY" = 1 ]; then
  export BUILD=$(realpath -m "${BUILD_ARG:-build}") DEVICE=cpu PYTHON=${PYTHON:-/usr/bin/python3}
  # 504 px for the all-HR-tokens run: 1008 px on a CPU takes minutes and checks nothing more.
  export BATCHES=1,8 B1008=1 FULL_PX=504 STEPS=4 REPEATS=1 SCALE=3 GRAPH_BUCKETS=1,8 GRAPH_STEPS=3
  BUDGET=${BUDGET:-900}
else
  export BUILD=$(realpath -m "${BUILD_ARG:-build-gpu}") DEVICE=cuda PYTHON=${PYTHON:-python3}
  export BATCHES=1,8,32,64 B1008=1,8 FULL_PX=1008 STEPS=24 REPEATS=2 SCALE=1
  export GRAPH_BUCKETS=1,2,4,8,16,32,64 GRAPH_STEPS=20
  BUDGET=${BUDGET:-470}
  export ORIG_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
  . scripts/gpu/env.sh
fi
export QUESTION="Describe."
export OUT=$(realpath -m "${OUT_DIR:-$BUILD/gpu-check}") WORK="$BUILD/gpu-work" PEERS="$ROOT/.gpu/peers"
mkdir -p "$OUT" "$WORK"
# A rerun (--only) adds to the earlier run's files; a full run starts them afresh.
[ -n "$ONLY" ] || rm -f "$OUT/log.txt" "$OUT/stages.tsv" "$OUT/results.jsonl" "$OUT/results.md"
touch "$OUT/stages.tsv"
FIRST_STAGE_LINE=$(($(wc -l <"$OUT/stages.tsv") + 1))
START=$(date +%s)
DEADLINE=$((START + BUDGET))
{
  echo "check.sh $(date -u +%FT%TZ) on $(hostname): dry_run=$DRY device=$DEVICE build=$BUILD"
  echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) $(git -C "$ROOT" status --short | wc -l) local changes"
} | tee -a "$OUT/log.txt"

selected() { [ -z "$ONLY" ] || [[ $ONLY == *",$1,"* ]]; }

# Filters a stage's output: everything to OUT/log.txt and OUT/<stage>.log, result lines (ours:
# `RESULT {...}`; the peers print bare JSON objects) to OUT/results.jsonl, tagged with the stage.
collect() {
  awk -v stage="$1" -v res="$OUT/results.jsonl" -v slog="$OUT/$1.log" '
    { print; fflush(); print >> slog; fflush(slog)
      line = $0
      if (line ~ /^RESULT \{/) sub(/^RESULT \{/, "{", line)
      else if (line !~ /^\{"(peer|anchor)"/) next
      sub(/^\{/, "{\"stage\":\"" stage "\",", line)
      if (line ~ /"peer"|"anchor"/ && line !~ /"check"/) sub(/^\{/, "{\"check\":\"peer\",", line)
      print line >> res; fflush(res) }' | tee -a "$OUT/log.txt"
}

# run_stage NAME BUDGET_S [background]: runs the stage under min(budget, time left).
run_stage() {
  local name=$1 budget=$2 now left limit t0 rc status
  selected "$name" || return 0
  now=$(date +%s)
  left=$((DEADLINE - now))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped: no time left\t0\t%s\n' "$name" "$budget" >>"$OUT/stages.tsv"
    echo "=== $name: skipped, no time left" | tee -a "$OUT/log.txt"
    return 0
  fi
  budget=$((budget * SCALE))  # The dry run's CPU is slower than the GPU machine.
  limit=$((budget < left ? budget : left))
  echo "=== $name (budget ${limit} s) $(date -u +%T)" | tee -a "$OUT/log.txt"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$SELF" --stage "$name" 2>&1 | collect "$name"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=ok ;;
    3) status=skipped ;;
    124 | 137) status="timeout (${limit} s)" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$limit" >>"$OUT/stages.tsv"
  echo "=== $name: $status in $(($(date +%s) - t0)) s" | tee -a "$OUT/log.txt"
  "$PYTHON" "$ROOT/scripts/gpu/summarize.py" "$OUT" >/dev/null 2>&1 || true
}

# The build (background) overlaps the Python stages that write fixtures and checkpoints; the
# dry run writes its stand-in checkpoint with device_parity, so it builds first.
if [ "$NO_BUILD" = 0 ] && selected build; then
  if [ "$DRY" = 1 ]; then
    run_stage build 900
  else
    run_stage build 300 &
    build_job=$!
  fi
fi
run_stage hf_tiny_fixture 60
run_stage hf_7b_save 150
run_stage derive 90
[ -n "${build_job:-}" ] && wait "$build_job"
run_stage info 30
run_stage tokenizer 20
run_stage parity_tiny 60
run_stage graphs 45
run_stage hf_tiny_check 30
run_stage hf_7b_check 90
run_stage decode_full 100
run_stage peer_compiled_1 90
run_stage peer_eager_336 100
run_stage ttft_1008 60
run_stage flex_1008 90
run_stage peer_eager_1008 60
run_stage peer_authors 120
run_stage server_e2e 90
run_stage peer_compiled_rest 200
"$PYTHON" "$ROOT/scripts/gpu/summarize.py" "$OUT" | tee -a "$OUT/log.txt"
echo "check.sh: $(($(date +%s) - START)) s; results in $OUT" | tee -a "$OUT/log.txt"
# Exit status: 0 only if no stage of this run failed or ran out of time.
! tail -n +"$FIRST_STAGE_LINE" "$OUT/stages.tsv" | grep -q 'failed\|timeout'

