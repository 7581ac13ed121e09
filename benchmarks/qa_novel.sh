#!/usr/bin/env bash
# `freqkv qa` on a whole novel (Botchan, ~60k tokens, public domain): questions whose answers
# sit once, deep inside the text (their depth is the share of the file's characters before the
# answer). Each question is asked with the hybrid cache and with plain freqkv, at the tuned
# window (1024) and at WINDOWS (default "1024 4096"). Prints a markdown table of answers;
# the command is `freqkv qa BOOK QUESTION --cache C --window W -n 40`.
set -uo pipefail
FREQKV=${FREQKV:-"python3 -m freqkv_cli.cli.entry"}
BOOK=${BOOK:-samples/botchan.txt}
ask() {  # depth expected question
  local depth=$1 expected=$2 question=$3
  for window in ${WINDOWS:-1024 4096}; do
    for cache in hybrid freqkv; do
      local started=$SECONDS
      answer=$($FREQKV qa "$BOOK" "$question" --cache "$cache" --window "$window" -n 40 --quiet 2>/dev/null \
        | tr '\n' ' ')
      echo "| $depth | $question | $expected | $cache | $window | ${answer} | $((SECONDS - started)) s |"
    done
  done
}
echo "| depth | question | expected | cache | window | answer | seconds |"
echo "|---|---|---|---|---|---|---|"
ask 0.38 "goruki" "On the fishing trip, what kind of fish does Clown say the narrator's first catch is?"
ask 0.55 "Hagino" "What was the name of the old couple the narrator went to board with?"
ask 0.65 "nine yen and fifty sen" "How much was the rent on Red Shirt's house?"
ask 0.74 "Kashin-tei" "At which restaurant was the farewell dinner party held?"
ask 0.89 "Shikoku Shimbun" "Which newspaper did the old lady bring the narrator the morning after the fight?"
