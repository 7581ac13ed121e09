#!/usr/bin/env bash
# Before/after instruction following: the same short summarize/qa prompts, greedy, for the
# untuned default and each tuned adapter. Usage: instruction_check.sh OUTDIR RUN...
# (RUN folders under /root/freqkv-train, as made by gpu_train.sh). Writes OUTDIR/instruct.jsonl.
set -uo pipefail
out=$1; shift
WORK=/root/freqkv-train
FREQKV="python3 -m freqkv_cli.cli.entry"
doc=freqkv_cli/data/haystack.txt            # Botchan chapters I-III, ~15k tokens
long=benchmarks/texts/kjv-genesis-exodus.txt  # ~96k tokens
ask() {  # label model window recent command args...
  local label=$1 model=$2 window=$3 recent=$4; shift 4
  local extra=(); [ "$model" = default ] && extra=(--untuned)
  $FREQKV "$@" --model "$model" "${extra[@]}" --window "$window" --recent "$recent" --temperature 0 \
    --max-new-tokens 120 --json 2>/dev/null \
    | python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'model': '$label', 'prompt': sys.argv[1:], 'answer': d['answer']}))" "$@"
}
treaty=$out/treaty.txt  # the slow test's document (tests/test_embedded.py)
printf '%s\n' "The treaty of Lindenfeld was signed on 14 March 1847 by Count Aurel Vasko and the merchant Ilse Brandt. It settled the dispute over the river toll at Oberhaven. The toll was reduced from nine silver pieces to four. The signing took place in the town hall of Lindenfeld, and a great feast followed." > "$treaty"
prompts() {  # label model window recent
  ask "$@" qa "$treaty" "Who signed the treaty of Lindenfeld?"
  ask "$@" qa "$doc" "What is the name of the old servant who loves the narrator?"
  ask "$@" qa "$doc" "What subject does the narrator go to teach, and in what kind of school?"
  ask "$@" summarize "$doc"
  ask "$@" qa "$long" "Who led the Israelites out of Egypt?"
}
: > "$out/instruct.jsonl"
for run in "$@"; do
  flags=$(bash "$(dirname "$0")/gpu_train.sh" flags "$run")
  w=$(echo "$flags" | sed -E 's/.*--window ([0-9]+).*/\1/'); r=$(echo "$flags" | sed -E 's/.*--recent ([0-9]+).*/\1/')
  prompts "untuned-w$w-r$r" default "$w" "$r" >> "$out/instruct.jsonl" &
  [ -f "$WORK/$run/adapter/adapter_config.json" ] && prompts "$run" "$WORK/$run/adapter" "$w" "$r" >> "$out/instruct.jsonl" &
done
wait
wc -l "$out/instruct.jsonl"
