"""`freqkv qa` on a whole novel: one read of the book per question and window, closed several ways.

The book is streamed once per question through the shipped default (hybrid cache, recent and
ratio from its freqkv.json; window from --windows) with the question pinned before it, exactly
as `freqkv qa` does (Session.read_document). The cache after the book does not depend on what
follows it, so it is copied and the turn is closed once per --closings entry:
``R:wide`` quotes the R best kept passages widened by the text read around them (the shipped
`--reread R`), ``R:narrow`` the kept runs alone, not widened, ``0`` quotes nothing.
Greedy decoding with the qa command's defaults (repetition penalty 1.1), 40 new tokens. Prints
a markdown table; `--json` writes the details (quoted passages, seconds, compressions while
closing).

    python benchmarks/qa_novel_closings.py samples/botchan.txt --questions 4 --json out.json  # CPU, 7 min
    python benchmarks/qa_novel_closings.py samples/botchan.txt --device cuda --windows 1024,4096
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.documents import open_document
from freqkv_cli.engine.sampling import Sampler
from freqkv_cli.models.loading import load_model
from freqkv_cli.session.session import Session

QUESTIONS = [  # (depth: share of the book's characters before the answer, expected, question)
    (0.38, "goruki", "On the fishing trip, what kind of fish does Clown say the narrator's first catch is?"),
    (0.55, "Hagino", "What was the name of the old couple the narrator went to board with?"),
    (0.65, "nine yen and fifty sen", "How much was the rent on Red Shirt's house?"),
    (0.74, "Kashin-tei", "At which restaurant was the farewell dinner party held?"),
    (
        0.89,
        "Shikoku Shimbun",
        "Which newspaper did the old lady bring the narrator the morning after the fight?",
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("book")
    parser.add_argument("--closings", default="8:wide,8:narrow,4:wide,0")
    parser.add_argument("--cache", default="hybrid")
    parser.add_argument("--windows", default="", help="comma-separated; default: the tuned window")
    parser.add_argument("--questions", default="0,1,2,3,4", help="indices into QUESTIONS")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model("default", device=args.device)
    tuned = loaded.settings
    windows = [int(w) for w in args.windows.split(",")] if args.windows else [tuned.window]
    closings = [
        (int(c.split(":")[0]), c.split(":")[1] if ":" in c else "wide") for c in args.closings.split(",")
    ]
    rows = []
    print("| depth | question | expected | window | closing | answer | right | in quoted passages |")
    print("|---|---|---|---|---|---|---|---|")
    for window, index in ((w, int(i)) for w in windows for i in args.questions.split(",")):
        policy = CachePolicy(
            args.cache, window=window, sink=tuned.sink, recent=tuned.recent, ratio=tuned.ratio
        )
        depth, expected, question = QUESTIONS[index]
        session = Session(loaded, policy)
        started = time.perf_counter()
        report = session.read_document(open_document(args.book), task="qa", question=question, finish=False)
        read_seconds = time.perf_counter() - started
        saved = session.state()
        for reread, width in closings:
            session.load_state(saved)
            margins = {"left": 0, "right": 0} if width == "narrow" else {}
            quotes = session.engine.exact_passages(reread, **margins) if reread else []
            before = session.stats().compressions
            session.finish_document("qa", question, passages=quotes)
            closing_rounds = session.stats().compressions - before
            result = session.generate(
                max_new_tokens=40, sampler=Sampler(temperature=0.0, repetition_penalty=1.1)
            )
            answer = " ".join(result.text.split())
            right = expected.lower() in answer.lower()
            held = any(expected.lower() in " ".join(p.split()).lower() for p in session.quoted)
            quoted_mark = ("yes" if held else "no") if session.quoted else "-"
            closing = f"{reread}:{width}" if reread else "0"
            print(
                f"| {depth} | {question} | {expected} | {window} | {closing} | {answer} "
                f"| {'yes' if right else 'no'} | {quoted_mark} |",
                flush=True,
            )
            rows.append(
                {
                    "depth": depth,
                    "question": question,
                    "expected": expected,
                    "cache": args.cache,
                    "window": policy.window,
                    "reread": reread,
                    "quotes": width,
                    "closing_compressions": closing_rounds,
                    "answer": answer,
                    "right": right,
                    "quoted_passages": session.quoted,
                    "answer_in_quoted": held,
                    "book_tokens": report.tokens,
                    "read_seconds": round(read_seconds, 1),
                }
            )
            if args.json_out:  # after every row: a run cut short keeps what it measured
                Path(args.json_out).write_text(json.dumps({"book": args.book, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
