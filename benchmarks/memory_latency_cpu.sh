#!/usr/bin/env bash
# Read once, ask many, on the CPU (docs/BENCHMARKS.md section 7): a fresh `freqkv qa` on a long text
# against `freqkv read` once and then `freqkv qa` on the memory file, in the same run, end to end
# (each command a new process: model load included). Usage: bash benchmarks/memory_latency_cpu.sh [TEXT]
set -euo pipefail
cd "$(dirname "$0")/.."
TEXT=${1:-benchmarks/texts/paradise-lost.txt}
FREQKV=${FREQKV:-.venv/bin/freqkv}
Q1="Who is cast out of Heaven at the start of the poem?"
Q2="What does Satan build in Hell?"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc; }
$FREQKV info --json > /dev/null 2>&1  # the model converted before any timing
uname -m; nproc; grep -m1 "model name" /proc/cpuinfo || true
$FREQKV count "$TEXT" --json
t=$(now); $FREQKV qa "$TEXT" "$Q1" --json -q > "$work/fresh.json"; fresh=$(elapsed "$t")
echo "fresh qa: $fresh s  $(python3 -c "import json,sys;d=json.load(open('$work/fresh.json'));print(d['tokens_in'],'tokens in;',repr(d['answer'][:80]))")"
t=$(now); $FREQKV read "$TEXT" -o "$work/m.fkv" --json -q > "$work/read.json"; read=$(elapsed "$t")
echo "read -o m.fkv: $read s, $(stat -c %s "$work/m.fkv") bytes"
for q in "$Q1" "$Q2" "$Q1"; do
  t=$(now); $FREQKV qa "$work/m.fkv" "$q" --json -q > "$work/later.json"; later=$(elapsed "$t")
  echo "qa m.fkv: $later s  ($(echo "$fresh / $later" | bc -l | cut -c1-5)x faster than the fresh qa)  $(python3 -c "import json;d=json.load(open('$work/later.json'));print('load',d['load_seconds'],'s;',repr(d['answer'][:80]))")"
done
