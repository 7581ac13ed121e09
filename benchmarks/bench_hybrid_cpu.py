"""Streaming speed of the hybrid policy against plain FreqKV on the CPU, same run, same text.

Feeds the first ``--tokens`` tokens of a text through the default model with each policy,
alternating the policies ``--repeats`` times (so drift on a shared machine hits both), and
prints tokens per second and the hybrid/freqkv ratio of the medians.

    python benchmarks/bench_hybrid_cpu.py --tokens 4096 --repeats 2
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

from freqkv_cli.cache.policy import CachePolicy  # noqa: E402
from freqkv_cli.engine.streaming import StreamingEngine  # noqa: E402
from freqkv_cli.models.loading import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--text", default=str(ROOT / "samples" / "botchan.txt"))
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("default", device="cpu")
    settings = loaded.settings
    ids = loaded.tokenizer(Path(args.text).read_text(), add_special_tokens=False)["input_ids"][: args.tokens]
    base = dict(window=settings.window, sink=settings.sink, recent=settings.recent, ratio=settings.ratio)
    policies = {
        "freqkv": CachePolicy("freqkv", **base),
        "hybrid-attention": CachePolicy("hybrid", **base),
        "hybrid-surprise": CachePolicy("hybrid", **base, selector="surprise"),
    }
    rates: dict[str, list[float]] = {name: [] for name in policies}
    compress: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(args.repeats):
        for name, policy in policies.items():
            engine = StreamingEngine(loaded.model, policy)
            started = time.perf_counter()
            engine.feed(ids)
            seconds = time.perf_counter() - started
            rates[name].append(len(ids) / seconds)
            compress[name].append(engine.stats().compress_seconds / seconds)
            print(
                f"{name:17s} {len(ids) / seconds:7.1f} tok/s  compression {compress[name][-1]:.1%}",
                flush=True,
            )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "model": loaded.name,
        "tokens": len(ids),
        "threads": args.threads,
        "policies": {name: policy.__dict__ for name, policy in policies.items()},
        "tokens_per_second": rates,
        "compression_share": compress,
        "ratio_to_freqkv": {name: medians[name] / medians["freqkv"] for name in medians},
    }
    print(json.dumps(result["ratio_to_freqkv"]))
    out = ROOT / "benchmarks" / "results" / "hybrid" / "cpu_speed.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
