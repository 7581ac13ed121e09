"""How well span scores find the answer to a question about a novel (the hybrid's exact slots).

One pass streams BOOK through the default model's hybrid cache (window/recent from the shipped
freqkv.json) with the first question pinned, as `freqkv qa` does. At every compression round,
every candidate token is scored for EVERY question (each question's queries are captured in
its own prompt first), under several scoring variants. Afterwards, for each variant, the
hybrid's selection (select_spans + the pool of held spans) is replayed on those scores, and
the script prints whether the answer's first token ends in the exact slots, and the rank of the
answer among all spans of the book.

    python benchmarks/trace_selection.py samples/botchan.txt --out trace.json
    python benchmarks/trace_selection.py --ranks trace.json   # span ranks per variant

The cache contents (and so keys) follow the first question's selection; the other questions are
scored on the same keys, which is what lets one pass serve five questions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from freqkv_cli.cache import window_cache as wc
from freqkv_cli.cache.compress_round import HybridState, plan_hybrid_round
from freqkv_cli.documents import open_document
from freqkv_cli.models.loading import load_model
from freqkv_cli.session.session import Session

QUESTIONS = [  # (answer text as in the book, question)
    ("goruki", "On the fishing trip, what kind of fish does Clown say the narrator's first catch is?"),
    ("Hagino", "What was the name of the old couple the narrator went to board with?"),
    ("nine yen and fifty sen", "How much was the rent on Red Shirt's house?"),
    ("Kashin-tei", "At which restaurant was the farewell dinner party held?"),
    ("Shikoku Shimbun", "Which newspaper did the old lady bring the narrator the morning after the fight?"),
]


def question_queries(loaded, policy, question: str) -> list[torch.Tensor]:
    session = Session(loaded, policy)
    from freqkv_cli.session.prompts import document_prompt
    from freqkv_cli.session.session import _around

    before, _ = document_prompt("qa", question)
    parts = [session.encode(t) for t in _around(session._turn_opening() + before, question)]
    for index, part in enumerate(parts):
        session.engine.feed(part, pin=True, question=index == 1)
    return session.engine.cache.queries


RUNNING: dict = {}  # (question, layer) -> [count, sum, sum of squares] per (q head, q token)


def variants(cache: wc.WindowedCache, queries: list[torch.Tensor], tail: int, n: int, qi: int = 0) -> dict:
    """Per-token scores (n,) of the candidates for one question, under each variant."""
    weights = cache.head_weights
    out: dict[str, torch.Tensor] = {}
    z_total = torch.zeros(n)
    raw_total = torch.zeros(n)
    logit_total = torch.zeros(n)
    last_total = torch.zeros(n)
    wsum = 0.0
    all_logit = torch.zeros(n)
    all_tokz = torch.zeros(n)
    tokz_total = torch.zeros(n)
    top2_total = torch.zeros(n)
    heads_all = 0
    for index, layer in enumerate(cache.layers):
        w = weights[index]
        q = cache.rotation.rotate(
            queries[index].float(), torch.full((queries[index].shape[2],), cache.policy.window - 1)
        )
        cand_k = layer.keys[:, :, tail : tail + n].float()
        lg = wc.question_logits(q, cand_k)[0]  # (h, tq, n), what the cache scores with
        h = lg.shape[0]
        stats = RUNNING.setdefault((qi, index), [0, torch.zeros(h, lg.shape[1]), torch.zeros(h, lg.shape[1])])
        stats[0] += n
        stats[1] += lg.sum(-1)
        stats[2] += (lg * lg).sum(-1)
        mean = stats[1] / stats[0]
        std = (stats[2] / stats[0] - mean * mean).clamp(min=1e-6).sqrt()
        tz = (lg - mean[..., None]) / std[..., None]  # (h, tq, n)
        tzmax = tz.max(dim=1).values  # (h, n)
        top2 = tz.topk(min(2, lg.shape[1]), dim=1).values.mean(dim=1)
        all_logit += lg.max(dim=1).values.sum(0)
        all_tokz += tzmax.sum(0)
        heads_all += h
        tokz_total += torch.einsum("hn,h->n", tzmax, w)
        top2_total += torch.einsum("hn,h->n", top2, w)
        if not bool((w > 0).any()):
            continue
        attn = torch.softmax(lg, dim=-1)  # (h, tq, n)
        mean_attn = attn.mean(dim=1)  # (Hq, n)
        z = wc._standardize(mean_attn)
        z_total += torch.einsum("hn,h->n", z, w)
        raw_total += torch.einsum("hn,h->n", mean_attn * n, w)
        logit_total += torch.einsum("hn,h->n", lg.max(dim=1).values, w)
        last_total += torch.einsum("hn,h->n", attn[:, -8:].mean(dim=1) * n, w)
        wsum += float(w.sum())
    out["z"] = z_total / wsum
    out["attn_x_n"] = raw_total / wsum
    out["maxlogit"] = logit_total / wsum
    out["last8_x_n"] = last_total / wsum
    out["tokz"] = tokz_total / wsum
    out["tokz_top2"] = top2_total / wsum
    out["maxlogit_all"] = all_logit / heads_all
    out["tokz_all"] = all_tokz / heads_all
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("book")
    parser.add_argument("--out", required=True)
    parser.add_argument("--window", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model("default", device="cpu")
    s = loaded.settings
    from freqkv_cli.cache.policy import CachePolicy

    policy = CachePolicy(
        kind="hybrid", window=args.window or s.window, sink=s.sink, recent=s.recent, ratio=s.ratio
    )
    all_queries = [question_queries(loaded, policy, q) for _, q in QUESTIONS]

    rounds: list[dict] = []  # per round: first stream index, {question: {variant: [scores]}}
    original = wc.WindowedCache._compress_hybrid

    def traced(self, head: int, recent: int) -> None:
        tail = head + self.hybrid.e + self.hybrid.c
        n = self.policy.window - recent - tail
        first = self.tokens_seen - (self.policy.window - tail)
        record = {"first": first, "n": n, "scores": []}
        with torch.inference_mode():
            for qi, queries in enumerate(all_queries):
                scored = variants(self, queries, tail, n, qi)
                record["scores"].append({k: [round(x, 4) for x in v.tolist()] for k, v in scored.items()})
        rounds.append(record)
        original(self, head, recent)

    wc.WindowedCache._compress_hybrid = traced
    fed: list[int] = []
    session = Session(loaded, policy)
    consume = session.engine._consume

    def logged(ids, on_progress):
        fed.extend(ids)
        return consume(ids, on_progress)

    session.engine._consume = logged
    started = time.perf_counter()
    session.read_document(open_document(args.book), task="qa", question=QUESTIONS[0][1])
    seconds = time.perf_counter() - started
    answers = []
    for answer, _ in QUESTIONS:
        # The answer's first token: after a space, or at a line start.
        found = [
            i
            for ids in (session.encode(" " + answer), session.encode(answer))
            for i in range(len(fed))
            if fed[i : i + len(ids)] == ids
        ]
        at, ids = min(found), session.encode(answer)
        answers.append({"answer": answer, "token": at, "ids": ids})
    summary = {
        "tokens": len(fed),
        "seconds": seconds,
        "policy": vars(policy),
        "answers": answers,
        "rounds": rounds,
    }
    Path(args.out).write_text(json.dumps(summary))
    print(f"{len(fed)} tokens, {len(rounds)} rounds, {seconds:.0f} s")
    replay(args.out, policy)


def replay(path: str, policy=None) -> None:
    data = json.loads(Path(path).read_text())
    from freqkv_cli.cache.policy import CachePolicy

    policy = policy or CachePolicy(**data["policy"])
    for qi, answer in enumerate(data["answers"]):
        for variant in data["rounds"][0]["scores"][0]:
            state = HybridState()
            tokens_all, scores_all = [], []
            for rnd in data["rounds"]:
                sc = torch.tensor(rnd["scores"][qi][variant])[None]
                tokens_all.append(torch.arange(rnd["first"], rnd["first"] + rnd["n"]))
                scores_all.append(sc[0])
                head = policy.sink  # the slot layout does not change which stream tokens win
                window = head + state.e + state.c + rnd["n"] + policy.recent
                _, state = plan_hybrid_round(
                    state,
                    sc,
                    wc.select_spans,
                    head=head,
                    recent=policy.recent,
                    window=window,
                    quota=policy.quota(),
                    exact_slots=policy.exact_slots(),
                    ratio=policy.ratio,
                    tokens_seen=rnd["first"] + rnd["n"] + policy.recent,
                )
            kept = set(state.tokens[0].tolist())
            at = answer["token"]
            last = data["rounds"][-1]
            hit = at in kept or at >= last["first"] + last["n"]  # or never compressed at all
            tok = torch.cat(tokens_all)
            sco = torch.cat(scores_all)
            where = (tok >= at - 11) & (tok <= at + 3)  # spans that would cover the answer's first token
            best = float(sco[where].max()) if bool(where.any()) else float("nan")
            rank = int((sco > best).sum())
            print(f"{answer['answer']:>24} {variant:>10}: kept={hit!s:5} token rank {rank:6d} of {len(sco)}")


def span_ranks(path: str) -> None:
    """For each variant and neighbourhood width, the rank of the answer's span among all spans of
    the book when spans are taken greedily by score (each token's score standardized over the
    whole book; a width w sums the excess over ``threshold`` standard deviations of the w tokens
    from SPAN_LEFT before it, as the cache's match density does with w = 8, threshold 1)."""
    data = json.loads(Path(path).read_text())
    rounds = data["rounds"]
    tokens = torch.cat([torch.arange(r["first"], r["first"] + r["n"]) for r in rounds])
    where = {int(t): i for i, t in enumerate(tokens)}

    def rank(score: torch.Tensor, at: int, limit: int = 400) -> int:
        score, index = score.clone(), where[at]
        for picks in range(limit):
            centre = int(score.argmax())
            low, high = max(0, centre - wc.SPAN_LEFT), centre + wc.SPAN_RIGHT + 1
            if low <= index < high:
                return picks
            score[low:high] = float("-inf")
        return limit

    for variant in rounds[0]["scores"][0]:
        for width, threshold in ((1, 0.0), (4, 0.0), (8, 0.0), (8, 1.0), (12, 0.0), (16, 0.0)):
            ranks = []
            for qi, answer in enumerate(data["answers"]):
                raw = torch.cat([torch.tensor(r["scores"][qi][variant]) for r in rounds])
                z = (raw - raw.mean()) / raw.std()
                if width > 1:
                    left = min(wc.SPAN_LEFT, width // 4)
                    excess = torch.nn.functional.pad((z - threshold).clamp(min=0), (left, width - 1 - left))
                    z = excess.unfold(-1, width, 1).sum(-1)
                ranks.append(rank(z, answer["token"]))
            print(f"{variant:>13} width {width:2d} over {threshold:.0f} sd: span ranks {ranks}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ranks":
        span_ranks(sys.argv[2])
    else:
        main()
