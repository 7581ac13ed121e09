"""Read once, ask many: what a saved memory costs and what it answers (docs/BENCHMARKS.md section 7).

Subcommands (each prints a table and, with --json, writes its rows):

  needle   pass key at several lengths, read first and asked later from a memory file (one read,
           then one ask per recall method), beside the question-first hybrid and FreqKV on the
           same prompts: the embedded default model.
  sizes    the embedded default reads 10k / 100k / 1M tokens of real text; the memory file's size,
           save time, load time in a new process, and the time from a loaded memory to the first
           answer token.
  big      a Llama-3-8B-shaped model (random bf16 weights, seeded so a second process builds the
           same ones) and a word-level tokenizer of its vocabulary size read TOKENS random words;
           a new process loads the memory and answers its first token.

Usage:
  python benchmarks/bench_memory.py needle --lengths 4096,16384 --seeds 3 --device cuda --json out.json
  python benchmarks/bench_memory.py sizes --text benchmarks/texts/paradise-lost.txt --device cuda
  python benchmarks/bench_memory.py big --tokens 1000000 --window 4096
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from freqkv_cli.cache.policy import CachePolicy, CacheSettings
from freqkv_cli.evaluation.needle import (
    build_document,
    default_haystack,
    make_key,
    prompt_overhead,
    run_needle_trial,
    run_read_first_trials,
    text_document,
)
from freqkv_cli.memory.recall import DEFAULT_RECALL, RECALL_METHODS, recall
from freqkv_cli.memory.saved import load_session, save_session
from freqkv_cli.models.loading import LoadedModel, load_model
from freqkv_cli.session.session import Session

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_new_process(*argv: str) -> dict:
    """Run this script with ``argv`` in a new process; its last stdout line as JSON."""
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def needle(args: argparse.Namespace) -> list[dict]:
    loaded = load_model("default", device=args.device)
    tuned = loaded.cache_policy(CacheSettings(kind="hybrid"))
    policies = {"hybrid": tuned, "freqkv": tuned.with_(kind="freqkv")}
    encode = lambda text: list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        for depth in (float(x) for x in args.depths.split(",")):
            for seed in range(args.seeds):
                key = make_key(seed, length, depth)
                probe = Session(loaded, tuned)
                doc = build_document(
                    encode,
                    loaded.tokenizer.decode,
                    default_haystack(),
                    length - prompt_overhead(probe),
                    depth,
                    key,
                )
                trials = []
                for name, policy in policies.items():
                    if not args.later_only:
                        first = run_needle_trial(Session(loaded, policy), doc, length=length, seed=seed)
                        trials.append(first)
                    methods = RECALL_METHODS if name == "hybrid" else ("tokens", "words", "none")
                    if args.methods:
                        methods = [m for m in args.methods.split(",") if name == "hybrid" or m != "held"]
                    trials += run_read_first_trials(
                        Session(loaded, policy), doc, methods, length=length, seed=seed
                    )
                for trial in trials:
                    rows.append({**trial.__dict__})
                    print(f"{length:>6} {depth:4.2f} {seed} {trial.cache:<22} {trial.correct!s:<5} "
                          f"{trial.answer[:40]!r} {trial.seconds:.1f}s", flush=True)  # fmt: skip
                if args.json:
                    Path(args.json).write_text(json.dumps({"window": tuned.window, "rows": rows}, indent=1))
    cells: dict[tuple, list[bool]] = {}
    for row in rows:
        cells.setdefault((row["cache"], row["length"]), []).append(row["correct"])
    print("\n| cache | " + " | ".join(str(n) for n in sorted({k[1] for k in cells})) + " |")
    for cache in dict.fromkeys(k[0] for k in cells):
        marks = [cells.get((cache, n), []) for n in sorted({k[1] for k in cells})]
        print(f"| {cache} | " + " | ".join(f"{sum(m)}/{len(m)}" for m in marks) + " |")
    return rows


def sizes(args: argparse.Namespace) -> list[dict]:
    loaded = load_model("default", device=args.device)
    policy = loaded.cache_policy(CacheSettings(kind=args.cache))
    text = Path(args.text).read_text(encoding="utf-8")
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for tokens in (int(float(x)) for x in args.tokens.split(",")):
            repeats = -(-tokens // len(ids))
            body = loaded.tokenizer.decode((ids * repeats)[:tokens])
            session = Session(loaded, policy)
            started = time.perf_counter()
            session.read_document(text_document(body), task="read", finish=False)
            sync(loaded.device)
            read_seconds = time.perf_counter() - started
            path = Path(folder) / f"m{tokens}.fkv"
            started = time.perf_counter()
            save_session(session, path)
            save_seconds = time.perf_counter() - started
            asked = in_new_process("ask", str(path), "--device", args.device, "--model", "default")
            row = {
                "tokens": session.stats().tokens_seen,
                "read_tok_s": round(session.stats().tokens_seen / read_seconds),
                "file_bytes": path.stat().st_size,
                "save_s": round(save_seconds, 3),
                **asked,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def ask(args: argparse.Namespace) -> None:
    """In a new process: load the model, then the memory, and answer (prints one JSON line)."""
    started = time.perf_counter()
    import bm25s  # noqa: F401 - the program's start-up, as the CLI's: a few seconds where numba is installed

    import_seconds = time.perf_counter() - started
    if args.model in ("big", "smoke"):
        loaded = big_model(torch.device(args.device), smoke=args.model == "smoke")
    else:
        loaded = load_model(args.model, device=args.device)
    sync(loaded.device)
    started = time.perf_counter()
    memory = load_session(loaded, args.path)
    sync(loaded.device)
    load_seconds = time.perf_counter() - started
    session = memory.session
    question = args.question
    started = time.perf_counter()
    passages = recall(session, question, 8, args.recall)
    recall_seconds = time.perf_counter() - started
    session.finish_document("qa", question, passages=passages)
    first = session.generate(max_new_tokens=1)
    sync(loaded.device)
    first_token_seconds = time.perf_counter() - started
    started = time.perf_counter()
    more = session.generate(max_new_tokens=args.decode)
    sync(loaded.device)
    decode_ms = (time.perf_counter() - started) * 1000 / max(len(more.token_ids), 1)
    print(
        json.dumps(
            {
                "import_bm25s_s": round(import_seconds, 3),
                "load_s": round(load_seconds, 3),
                "recall_s": round(recall_seconds, 3),
                "recall": args.recall,
                "first_token_after_load_s": round(first_token_seconds, 3),
                "decode_ms_per_token": round(decode_ms, 2),
                "first_token": first.token_ids,
            }
        )
    )


LLAMA3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
)  # fmt: skip


SMOKE = dict(
    hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def big_model(device: torch.device, smoke: bool = False) -> LoadedModel:
    """Random Llama-3-8B-shaped weights (seed 0) with a word-level tokenizer of its vocabulary;
    ``smoke``: 2 small layers instead, to try the script on a CPU."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(**{**LLAMA3_8B, **(SMOKE if smoke else {})}, attn_implementation="sdpa")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    vocab = {f"w{i}": i for i in range(config.vocab_size - 2)}
    vocab.update({"[UNK]": config.vocab_size - 2, "</s>": config.vocab_size - 1})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return LoadedModel(model, tokenizer, "llama-3-8b-shape (random)", "llama", None)


def big(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    loaded = big_model(device, smoke=args.smoke)
    policy = CachePolicy(
        kind=args.cache, window=args.window, sink=4, recent=128 if args.cache == "hybrid" else 0
    )
    generator = torch.Generator().manual_seed(1)
    words = torch.randint(0, loaded.model.config.vocab_size - 2, (args.tokens,), generator=generator).tolist()
    lines = [" ".join(f"w{w}" for w in words[i : i + 1000]) for i in range(0, len(words), 1000)]
    session = Session(loaded, policy, max_chunk=4096)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    session.read_document(text_document("\n".join(lines)), task="read", finish=False)
    sync(device)
    read_seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    path = Path(args.out_dir) / "big.fkv"
    started = time.perf_counter()
    save_session(session, path)
    save_seconds = time.perf_counter() - started
    del session, loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    question = f"What follows w{words[len(words) // 2]} w{words[len(words) // 2 + 1]}?"
    model = "smoke" if args.smoke else "big"
    asked = in_new_process(
        "ask", str(path), "--device", args.device, "--model", model, "--question", question
    )
    row = {
        "tokens": args.tokens,
        "window": args.window,
        "cache": args.cache,
        "read_tok_s": round(args.tokens / read_seconds),
        "peak_gib": round(peak, 2),
        "file_bytes": path.stat().st_size,
        "save_s": round(save_seconds, 2),
        **asked,
    }
    print(json.dumps(row), flush=True)
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("needle")
    p.add_argument("--lengths", default="4096,16384")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--depths", default=",".join(str(d) for d in DEPTHS))
    p.add_argument("--methods", default="", help="recall methods to ask with (default: all)")
    p.add_argument("--later-only", action="store_true", help="no question-first trials")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json")
    p = sub.add_parser("sizes")
    p.add_argument("--text", default="benchmarks/texts/paradise-lost.txt")
    p.add_argument("--tokens", default="1e4,1e5,1e6")
    p.add_argument("--cache", default="hybrid")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json")
    p = sub.add_parser("ask")
    p.add_argument("path")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--question", default="Who is the first speaker?")
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--recall", default=DEFAULT_RECALL, choices=RECALL_METHODS)
    p = sub.add_parser("big")
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--window", type=int, default=4096)
    p.add_argument("--cache", default="hybrid")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out-dir", default=os.environ.get("TMPDIR", "/tmp"))
    p.add_argument("--smoke", action="store_true", help="2 small layers: try the script on a CPU")
    p.add_argument("--json")
    args = parser.parse_args()
    if args.what == "ask":
        ask(args)
        return
    rows = {"needle": needle, "sizes": sizes, "big": big}[args.what](args)
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps({"what": args.what, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
