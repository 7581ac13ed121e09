"""On a CUDA machine: is the engine right there, and what does one compression round cost?

1. Correctness: a tiny Llama streamed through a 64-slot FreqKV window on CUDA (float32 and
   bfloat16) against the independent grouped reference of tests/reference_freqkv.py run in
   float32 on the CPU. Prints relative errors of the per-token losses, and the same error
   against the sink reference as a yardstick of what a wrong cache looks like.
2. Cost: one compression round of a Llama-2-7B-shaped cache (32 layers, 32 KV heads,
   head_dim 128, window 4096, bf16) with the library's settings, median of repeats, CUDA
   synchronised; with TF32 for the DCT matmul (the default for 16-bit caches) and without.

Usage: python benchmarks/check_cuda.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import tiny_model
from reference_freqkv import ReferenceFreqKV
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

import freqkv_cli.cache.window_cache as window_cache
from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.engine.streaming import StreamingEngine


def nll(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")


def correctness() -> bool:
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    ids = torch.randint(0, 211, (400,), generator=torch.Generator().manual_seed(7)).tolist()
    want = nll(ReferenceFreqKV(model, 64, 4, 4, 0.5).run(ids), ids)
    wrong = nll(ReferenceFreqKV(model, 64, 4, 4, 0.5, kind="sink").run(ids), ids)
    ok = True
    for dtype, limit in ((torch.float32, 1e-3), (torch.bfloat16, 3e-2)):
        cuda_model = tiny_model("llama")
        with torch.no_grad():
            cuda_model.lm_head.weight.mul_(20.0)
        cuda_model = cuda_model.to("cuda", dtype)
        engine = StreamingEngine(cuda_model, CachePolicy(window=64, sink=4, recent=4))
        got = engine.score(ids).cpu()
        error = float((got - want).norm() / want.norm())
        yardstick = float((wrong - want).norm() / want.norm())
        passed = error < limit
        ok &= passed
        print(
            f"correctness {dtype!s:15s} rel. error vs reference {error:.2e} (limit {limit:.0e}) "
            f"| a wrong (sink) cache differs by {yardstick:.2e} | compressions {engine.stats().compressions} "
            f"| {'PASS' if passed else 'FAIL'}"
        )
    return ok


def compression_round(tf32: bool, repeats: int = 7) -> float:
    config = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=32,
        num_hidden_layers=32,
        max_position_embeddings=4096,
    )
    rotary = LlamaRotaryEmbedding(config).to("cuda")
    policy = CachePolicy(window=4096, sink=4)
    cache = window_cache.WindowedCache(policy, 32, rotary)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for layer in cache.layers:
        k = torch.randn(1, 32, 4096, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
        layer.lazy_initialization(k, k)
    original = window_cache.lowpass

    def forced(*args, **kwargs):
        kwargs["tf32"] = tf32
        return original(*args, **kwargs)

    window_cache.lowpass = forced
    times = []
    try:
        for _ in range(repeats + 1):
            for layer in cache.layers:
                layer.length = 4096
            torch.cuda.synchronize()
            start = time.perf_counter()
            cache.compress()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    finally:
        window_cache.lowpass = original
    return statistics.median(times[1:]) * 1000


def main() -> None:
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    ok = correctness()
    for tf32 in (False, True):
        print(
            f"7B-shaped compression round (32 layers, window 4096, bf16), TF32 {tf32}: "
            f"{compression_round(tf32):.1f} ms (median of 7)"
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
