#!/usr/bin/env bash
# `freqkv qa` on a whole novel (Botchan, ~60k tokens, public domain): questions whose answers
# sit once, deep inside the text (their depth is the share of the file's characters before the
# answer). Each question is asked under every CONFIGS entry "cache:window:reread" (default:
# the hybrid with and without quoting its passages, at the tuned window 1024 and at 4096).
# Prints a markdown table: the answer, whether it holds the expected words, and whether the
# quoted passages held them. The command is
#   freqkv qa BOOK QUESTION --cache C --window W --reread R -n 40 --json
set -uo pipefail
FREQKV=${FREQKV:-"python3 -m freqkv_cli.cli.entry"}
BOOK=${BOOK:-samples/botchan.txt}
CONFIGS=${CONFIGS:-"hybrid:1024:8 hybrid:1024:0 hybrid:4096:8 hybrid:4096:0"}
ask() {  # depth expected question
  local depth=$1 expected=$2 question=$3
  for config in $CONFIGS; do
    IFS=: read -r cache window reread <<< "$config"
    $FREQKV qa "$BOOK" "$question" --cache "$cache" --window "$window" --reread "$reread" -n 40 --json \
      2>/dev/null | python3 "$(dirname "$0")/qa_row.py" "$expected" "$depth" "$question" "$config"
  done
}
echo "| depth | question | expected | cache:window:reread | answer | right | in quoted passages |"
echo "|---|---|---|---|---|---|---|"
ask 0.38 "goruki" "On the fishing trip, what kind of fish does Clown say the narrator's first catch is?"
ask 0.55 "Hagino" "What was the name of the old couple the narrator went to board with?"
ask 0.65 "nine yen and fifty sen" "How much was the rent on Red Shirt's house?"
ask 0.74 "Kashin-tei" "At which restaurant was the farewell dinner party held?"
ask 0.89 "Shikoku Shimbun" "Which newspaper did the old lady bring the narrator the morning after the fight?"
