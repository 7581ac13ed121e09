"""One markdown row of benchmarks/qa_novel.sh from `freqkv qa --json` on stdin.

Usage: ... | python3 benchmarks/qa_row.py EXPECTED DEPTH QUESTION CONFIG
"""

import json
import sys

expected, depth, question, config = sys.argv[1:5]
try:
    data = json.load(sys.stdin)
except ValueError:
    data = {"answer": "(no answer: the command failed)"}
answer = " ".join(data["answer"].split())
right = expected.lower() in answer.lower()
quoted = data.get("quoted_passages") or []
held = any(expected.lower() in " ".join(p.split()).lower() for p in quoted)
in_quotes = "yes" if held else "no" if quoted else "-"
print(
    f"| {depth} | {question} | {expected} | {config} | {answer} | {'yes' if right else 'no'} | {in_quotes} |"
)
