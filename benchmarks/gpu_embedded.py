"""The embedded default on a GPU, as a user runs it, and its GPU path against the plain one.

Sections (``--sections``):

- ``cli``: ``freqkv qa TEXT QUESTION --json`` in a fresh process per run, as typed, for each
  cache in ``--caches``: the JSON's timings (read tok/s, decode ms/token) and wall time.
  The first run of the machine also converts the GGUF and merges the adapter (reported apart).
- ``greedy``: the real weights (GGUF + shipped adapter), a text read through a 1,024 window
  with compression rounds during decode: greedy tokens and teacher-forced logits of the GPU
  path (replayed decode and rounds, lower-right prefill attention, fused rounds) against the
  plain eager path, per cache.

    python benchmarks/gpu_embedded.py --text benchmarks/texts/paradise-lost.txt --out out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT: dict = {}


def log(message: str) -> None:
    print(message, flush=True)


def cli(args: argparse.Namespace) -> dict:
    rows = {}
    env = {**os.environ, "FREQKV_NO_LOG": "1"}
    for run in range(args.runs):
        for cache in args.caches:
            command = [sys.executable, "-m", "freqkv_cli", "qa", str(args.text), args.question, "--json"]
            command += ["--cache", cache, "-n", str(args.new_tokens)]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                rows[f"{cache}/{run}"] = {"rc": done.returncode, "stderr": done.stderr[-2000:]}
                log(f"cli {cache} run {run}: rc {done.returncode}: {done.stderr[-600:]}")
                continue
            data = json.loads(done.stdout)
            keep = ("tokens_in", "tokens_out", "compressions", "seconds", "peak_gpu_bytes", "device")
            keep += ("timings",)
            row = {key: data.get(key) for key in keep} | {"wall_s": round(wall, 2), "command": command[2:]}
            rows[f"{cache}/{run}"] = row
            log(f"cli {cache} run {run}: {json.dumps(row)}")
    return rows


def greedy(args: argparse.Namespace) -> dict:
    import torch

    from freqkv_cli.cache.policy import CachePolicy
    from freqkv_cli.engine.sampling import Sampler
    from freqkv_cli.engine.streaming import StreamingEngine
    from freqkv_cli.models.loading import load_model

    torch.backends.cuda.matmul.allow_tf32 = False
    loaded = load_model("default")
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = tokenizer(args.text.read_text()[: args.chars])["input_ids"]
    rows = {}
    for kind in args.caches:
        exact = 0.25 if kind == "hybrid" else 0.0
        policy = CachePolicy(kind=kind, window=1024, sink=4, recent=128, exact=exact)
        runs = {}
        for name, options in (
            ("plain", {"decode_graphs": False, "chunk_attention": False, "fuse_rounds": False}),
            ("gpu", {}),
        ):
            engine = StreamingEngine(model, policy, tokenizer, **options)
            engine.feed(ids)
            saved = engine.state()
            tokens = engine.generate(args.decode, Sampler(), stop_token_ids=()).token_ids
            rounds = engine.stats().compressions
            engine.load_state(saved)
            logits = [engine.next_logits()[0]]
            forced = runs["plain"][0] if runs else tokens
            for token in forced:
                logits.append(engine.advance(token).clone())
            runs[name] = (tokens, torch.stack(logits), rounds)
        (want, want_logits, rounds), (got, got_logits, rounds_gpu) = runs["plain"], runs["gpu"]
        same = next((i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b), len(want))
        rows[kind] = {
            "read_tokens": len(ids),
            "decoded": len(want),
            "greedy_same_prefix": same,
            "rounds_plain": rounds,
            "rounds_gpu": rounds_gpu,
            "max_abs_logit_diff": (got_logits - want_logits).abs().max().item(),
            "logit_scale": want_logits.abs().max().item(),
            "argmax_agree": (got_logits.argmax(-1) == want_logits.argmax(-1)).float().mean().item(),
            "text_plain": tokenizer.decode(want)[:300],
            "text_gpu": tokenizer.decode(got)[:300],
        }
        log(f"greedy {kind}: {json.dumps(rows[kind])}")
    return rows


def probe(args: argparse.Namespace) -> dict:
    """Where a CLI read's time goes: the text read as ``freqkv qa`` reads it (a session), and the
    same token ids through the engine alone (no session, no tokenizing in the loop), under the
    CLI's policy and with a shorter recent window (bench_speed's), two fresh engines each."""
    import torch

    from freqkv_cli.cache.policy import CacheSettings
    from freqkv_cli.documents import open_document
    from freqkv_cli.engine.streaming import StreamingEngine
    from freqkv_cli.models.loading import load_model
    from freqkv_cli.session.session import Session

    loaded = load_model("default", device=args.device)
    device = loaded.device
    text = args.text.read_text(encoding="utf-8")[: args.probe_chars]
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    question = loaded.tokenizer(args.question, add_special_tokens=False)["input_ids"]
    profile = loaded.head_profile
    weights = profile.weights() if profile is not None else None

    def timed(run) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    rows: dict = {}
    for kind in args.caches:
        policy = loaded.cache_policy(CacheSettings(kind=kind))
        for name, chosen in {f"recent {policy.recent}": policy, "recent 0": policy.with_(recent=0)}.items():
            for run in range(2):
                engine = StreamingEngine(
                    loaded.model, chosen, tokenizer=loaded.tokenizer, head_weights=weights
                )
                engine.feed(question, pin=True, question=kind == "hybrid")
                seconds = timed(lambda engine=engine: engine.feed(ids))
                row = {"tokens": len(ids), "tok_s": round(len(ids) / seconds, 1)}
                row["compressions"] = engine.stats().compressions
                row["chunk_graphs"] = len(engine.replays.chunks.graphs) if engine.replays.chunks else None
                rows[f"engine {kind} {name} run {run}"] = row
                log(f"probe engine {kind} {name} run {run}: {json.dumps(row)}")
        for run in range(2):
            session = Session(loaded, policy)
            document = open_document(args.text)
            seconds = timed(
                lambda s=session, d=document: s.read_document(d, task="qa", question=args.question)
            )
            row = {"seconds": round(seconds, 3), **session.engine.timings.as_dict()}
            rows[f"session {kind} run {run}"] = row
            log(f"probe session {kind} run {run}: {json.dumps(row)}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", nargs="+", default=["cli", "greedy"])
    parser.add_argument("--text", type=Path, default=ROOT / "benchmarks" / "texts" / "paradise-lost.txt")
    parser.add_argument("--question", default="Who speaks first in this poem?")
    parser.add_argument("--caches", nargs="+", default=["hybrid", "freqkv"])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--chars", type=int, default=40000, help="text read in the greedy section")
    parser.add_argument("--decode", type=int, default=200, help="greedy tokens (rounds happen in decode)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="probe: where the model runs")
    parser.add_argument("--probe-chars", type=int, default=10**9, help="probe: text read by the engine")
    args = parser.parse_args()
    for section in args.sections:
        started = time.perf_counter()
        OUT[section] = {"cli": cli, "greedy": greedy, "probe": probe}[section](args)
        OUT[section + "_seconds"] = round(time.perf_counter() - started, 1)
        if args.out:
            args.out.write_text(json.dumps(OUT, indent=1, default=str))


if __name__ == "__main__":
    main()
