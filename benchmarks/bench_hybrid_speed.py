"""Streaming speed of the hybrid policy against plain FreqKV, same run, same tokens.

A question is fed first (pinned, marked as the question: what `freqkv qa` does), then
``--tokens`` document tokens stream through each policy. Policies alternate ``--repeats``
times so drift on a shared machine hits all of them; the medians and the hybrid/freqkv ratio
are printed and written as JSON.

Models: ``--model default`` (the embedded model, its text, its window and head profile) or
``--shape llama7b`` (Llama-2-7B shapes, random bf16 weights built on the GPU; random token
ids, window 4096; its "profile" is 8 random heads: the cost does not depend on which).

    python benchmarks/bench_hybrid_speed.py --tokens 4096 --repeats 2             # CPU
    python benchmarks/bench_hybrid_speed.py --shape llama7b --tokens 32768 --out x.json  # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from freqkv_cli.cache.policy import CachePolicy  # noqa: E402
from freqkv_cli.engine.streaming import StreamingEngine  # noqa: E402
from freqkv_cli.models.loading import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["default", "llama7b"], default="default")
    parser.add_argument("--text", default=str(ROOT / "samples" / "botchan.txt"))
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hybrid" / "cpu_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.shape == "default":
        loaded = load_model("default")
        model, name = loaded.model, loaded.name
        settings = loaded.settings
        base = dict(window=settings.window, sink=settings.sink, recent=settings.recent, ratio=settings.ratio)
        tok = loaded.tokenizer
        ids = tok(Path(args.text).read_text(), add_special_tokens=False)["input_ids"][: args.tokens]
        question = tok(" What is the pass key?", add_special_tokens=False)["input_ids"]
        profile = loaded.head_profile.weights() if loaded.head_profile is not None else None
    else:
        from bench_gpu import build_model, make_config, random_ids

        config = make_config(tiny=False)
        model = build_model(config, torch.device("cuda"), torch.bfloat16)
        name = "Llama-2-7B shape, random bf16 weights"
        base = dict(window=4096, sink=4, recent=128, ratio=0.5)
        ids = random_ids(args.tokens, config.vocab_size, 0)
        question = random_ids(12, config.vocab_size, 1)
        profile = torch.zeros(config.num_hidden_layers, config.num_attention_heads)
        picks = torch.randperm(profile.numel(), generator=torch.Generator().manual_seed(0))[:8]
        profile.view(-1)[picks] = 1.0
    device = model.device
    heads_all = torch.ones_like(profile) if profile is not None else None
    policies = {
        "freqkv": (CachePolicy("freqkv", **base), None),
        "hybrid (question, profile heads)": (CachePolicy("hybrid", **base), profile),
        "hybrid (question, all heads)": (CachePolicy("hybrid", **base), heads_all),
        "hybrid keynorm": (CachePolicy("hybrid", **base, selector="keynorm"), None),
    }
    if profile is None:
        del policies["hybrid (question, profile heads)"]
    rates: dict[str, list[float]] = {label: [] for label in policies}
    compress: dict[str, list[float]] = {label: [] for label in policies}
    for repeat in range(args.repeats + 1):  # the first pass warms up kernels and is not counted
        for label, (policy, weights) in policies.items():
            engine = StreamingEngine(model, policy, head_weights=weights)
            engine.feed(question, pin=True, question=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            engine.feed(ids)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
            if repeat == 0:
                continue
            rates[label].append(len(ids) / seconds)
            compress[label].append(engine.stats().compress_seconds / seconds)
            print(
                f"{label:34s} {len(ids) / seconds:9.1f} tok/s  compression {compress[label][-1]:.1%}",
                flush=True,
            )
    medians = {label: statistics.median(values) for label, values in rates.items()}
    result = {
        "model": name,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {args.threads} threads",
        "tokens": len(ids),
        "question_tokens": len(question),
        "policy": base,
        "method": "median tok/s of --repeats timed passes after one warm-up pass; policies alternate",
        "tokens_per_second": rates,
        "compression_share": compress,
        "ratio_to_freqkv": {label: medians[label] / medians["freqkv"] for label in medians},
    }
    print(json.dumps(result["ratio_to_freqkv"], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
