"""GPU streaming benchmark: a Llama-2-7B-shaped model (random bf16 weights) through full /
sink / freqkv caches, against stock transformers (DynamicCache) measured in the same run.

What it does, in order (everything in one process, one GPU):

1. builds the model directly on the GPU in bf16 (LlamaConfig: hidden 4096, 32 layers,
   32 heads, 32 KV heads, intermediate 11008, vocab 32000, 4096 positions; sdpa attention);
2. correctness checks: freqkv vs full vs stock logits with a window larger than the input
   (no compression: must agree to bf16 rounding), the GPU's batched compression (4 layers
   per call) vs one layer at a time, and freqkv past the window (finite logits);
3. the bf16 matmul ceiling: 8192^3 ``torch.matmul``, CUDA events, median of 20;
4. streaming: for each policy (window 4096, sink 4, recent 0, ratio 0.5, max_chunk 2048)
   and length (8k, 32k, 128k random token ids): prefill tokens/s, peak GPU memory
   (``max_memory_allocated``, reset per config), share of prefill time spent in
   ``compress()``, decode ms/token (median of 32 single-token ``feed`` steps, and
   ``generate(32)`` mean), model-FLOP utilisation against the measured ceiling;
   an out-of-memory error is caught, reported, and the run goes on;
5. stock baseline: ``model.model`` with a ``DynamicCache``, prefill in 2048-token chunks at
   8k and 32k, decode ms/token (median of 32).

Usage (see docs/GPU_NOTES.md for the device-machine recipe)::

    python benchmarks/bench_gpu.py --out-dir $OUT
    python benchmarks/bench_gpu.py --tiny --device cpu --lengths 600 1500   # smoke test, any machine
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import transformers  # noqa: E402
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

from freqkv_cli.cache.policy import CachePolicy  # noqa: E402
from freqkv_cli.engine.streaming import StreamingEngine  # noqa: E402

LOG: list[str] = []


def log(message: str = "") -> None:
    print(message, flush=True)
    LOG.append(message)


# -- setup ---------------------------------------------------------------------------------
def make_config(tiny: bool) -> LlamaConfig:
    if tiny:
        return LlamaConfig(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=688,
            vocab_size=32000,
            max_position_embeddings=4096,
        )
    return LlamaConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
        max_position_embeddings=4096,
    )


def build_model(config: LlamaConfig, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    config = LlamaConfig(**{**config.to_dict(), "attn_implementation": "sdpa"})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in bf16 directly: no fp32 copy of 7B
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(dtype).eval()
    model.requires_grad_(False)
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def random_ids(count: int, vocab: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count,), generator=gen).tolist()


# -- FLOP model -----------------------------------------------------------------------------
def schedule(policy: CachePolicy, tokens: int, max_chunk: int) -> list[tuple[int, int]]:
    """(past, chunk) of every forward call the engine makes for a prefill of ``tokens``."""
    calls, length, fed = [], 0, 0
    while fed < tokens:
        if policy.kind == "full":
            room = None
        else:
            room = policy.window - length
            if room == 0:
                length = policy.sink + policy.kept()
                room = policy.window - length
        size = min(tokens - fed, max_chunk, room if room is not None else tokens)
        calls.append((length, size))
        length += size
        fed += size
    return calls


def attention_flops(calls: list[tuple[int, int]], config: LlamaConfig) -> float:
    """QK^T and PV, causal (each query sees its past plus itself)."""
    width = config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    total = 0.0
    for past, q in calls:
        total += 4 * width * q * (past + (q + 1) / 2)
    return total * config.num_hidden_layers


def dense_params(model: LlamaForCausalLM) -> int:
    """Parameters a token's forward multiplies with (not the embedding lookup, not lm_head)."""
    skip = {id(model.model.embed_tokens.weight), id(model.lm_head.weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


# -- measurements ---------------------------------------------------------------------------
def matmul_ceiling(device: torch.device, size: int = 8192, reps: int = 20) -> float:
    if device.type != "cuda":
        return float("nan")
    gen = torch.Generator(device=device).manual_seed(1)
    mats = [torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=gen) for _ in range(4)]
    for _ in range(3):
        mats[0] @ mats[1]
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        mats[i % 2] @ mats[2 + i % 2]
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del mats
    torch.cuda.empty_cache()
    return 2 * size**3 / statistics.median(times) / 1e12


def decode_steps(step, first_token: int, count: int, device: torch.device) -> tuple[list[float], list[int]]:
    """Greedy single-token steps; ``step(token) -> logits (1, vocab)``; seconds per step."""
    times, tokens, token = [], [], first_token
    for _ in range(count):
        sync(device)
        t0 = time.perf_counter()
        logits = step(token)
        token = int(torch.argmax(logits[-1] if logits.dim() > 1 else logits))
        times.append(time.perf_counter() - t0)  # the argmax .item() synchronises
        tokens.append(token)
    return times, tokens


def run_engine(model, policy: CachePolicy, tokens: int, args, dense: int, ceiling: float) -> dict:
    device = model.device
    row: dict = {
        "impl": "freqkv_cli",
        "kind": policy.kind,
        "window": None if policy.kind == "full" else policy.window,
        "tokens": tokens,
    }
    ids = random_ids(tokens + 1, model.config.vocab_size, seed=tokens)
    engine = None
    try:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        engine = StreamingEngine(model, policy, max_chunk=args.max_chunk, lowpass_method=args.lowpass)
        sync(device)
        t0 = time.perf_counter()
        logits = engine.feed(ids[:tokens])
        sync(device)
        prefill_s = time.perf_counter() - t0
        stats = engine.stats()
        row.update(
            prefill_s=prefill_s,
            prefill_tok_s=tokens / prefill_s,
            entries=stats.entries,
            compressions=stats.compressions,
            compress_s=stats.compress_seconds,
            compress_share=stats.compress_seconds / prefill_s,
            kv_bytes=stats.kv_bytes,
            kv_reserved_bytes=stats.kv_reserved_bytes,
        )
        if device.type == "cuda":
            row["peak_prefill_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            row["peak_over_weights_gib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        calls = schedule(policy, tokens, args.max_chunk)
        flops_dense = 2 * dense * tokens
        flops_attn = attention_flops(calls, model.config)
        row["forward_calls"] = len(calls)
        row["tflop"] = (flops_dense + flops_attn) / 1e12
        row["attn_share_of_flop"] = flops_attn / (flops_dense + flops_attn)
        row["achieved_tflop_s"] = row["tflop"] / prefill_s
        row["mfu"] = row["achieved_tflop_s"] / ceiling if ceiling == ceiling else float("nan")
        row["mfu_excl_compress"] = (
            row["tflop"] / max(prefill_s - stats.compress_seconds, 1e-9) / ceiling
            if ceiling == ceiling
            else float("nan")
        )
        # decode: single-token feeds (public API), median; then generate() for the mean
        first = int(torch.argmax(logits[-1]))
        times, _ = decode_steps(lambda t: engine.feed([t]), first, args.decode, device)
        row["decode_ms_median"] = 1000 * statistics.median(times)
        row["decode_ms_max"] = 1000 * max(times)
        row["decode_ms_all"] = [round(1000 * t, 2) for t in times]
        if args.profile_decode and tokens in args.profile_decode:
            row["decode_profile"] = profile_decode(
                lambda t: engine.feed([t]), first, device, f"{policy.kind} {tokens}"
            )
        sync(device)
        t0 = time.perf_counter()
        result = engine.generate(max_new_tokens=args.decode)
        sync(device)
        row["generate_ms_mean"] = 1000 * (time.perf_counter() - t0) / max(len(result.token_ids), 1)
        row["decode_compressions"] = engine.stats().compressions - stats.compressions
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.OutOfMemoryError as exc:
        row["error"] = "OutOfMemoryError: " + str(exc).splitlines()[0][:160]
    finally:
        engine = None
        logits = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


@torch.inference_mode()
def run_stock(model, tokens: int, args, dense: int, ceiling: float) -> dict:
    device = model.device
    row: dict = {"impl": "stock", "kind": "DynamicCache", "window": None, "tokens": tokens}
    ids = torch.tensor([random_ids(tokens, model.config.vocab_size, seed=tokens)], device=device)
    cache = None
    try:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        cache = DynamicCache(config=model.config)
        sync(device)
        t0 = time.perf_counter()
        hidden = None
        for start in range(0, tokens, args.max_chunk):
            chunk = ids[:, start : start + args.max_chunk]
            hidden = model.model(input_ids=chunk, past_key_values=cache, use_cache=True).last_hidden_state
        logits = model.lm_head(hidden[:, -1]).float()
        sync(device)
        prefill_s = time.perf_counter() - t0
        row.update(prefill_s=prefill_s, prefill_tok_s=tokens / prefill_s, entries=cache.get_seq_length())
        if device.type == "cuda":
            row["peak_prefill_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        calls = [(s, min(args.max_chunk, tokens - s)) for s in range(0, tokens, args.max_chunk)]
        flops = 2 * dense * tokens + attention_flops(calls, model.config)
        row["tflop"] = flops / 1e12
        row["achieved_tflop_s"] = row["tflop"] / prefill_s
        row["mfu"] = row["achieved_tflop_s"] / ceiling if ceiling == ceiling else float("nan")

        def step(token: int) -> torch.Tensor:
            x = torch.tensor([[token]], device=device)
            h = model.model(input_ids=x, past_key_values=cache, use_cache=True).last_hidden_state
            return model.lm_head(h[:, -1]).float()

        times, _ = decode_steps(step, int(torch.argmax(logits[-1])), args.decode, device)
        row["decode_ms_median"] = 1000 * statistics.median(times)
        row["decode_ms_max"] = 1000 * max(times)
        row["decode_ms_all"] = [round(1000 * t, 2) for t in times]
        if args.profile_decode and tokens in args.profile_decode:
            row["decode_profile"] = profile_decode(
                step, int(torch.argmax(logits[-1])), device, f"stock {tokens}"
            )
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.OutOfMemoryError as exc:
        row["error"] = "OutOfMemoryError: " + str(exc).splitlines()[0][:160]
    finally:
        cache = None
        hidden = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def profile_decode(step, first_token: int, device: torch.device, label: str, steps: int = 4) -> dict:
    """Wall time vs GPU kernel time of a few decode steps (torch.profiler); top ops to the log."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        decode_steps(step, first_token, steps, device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    from torch.autograd import DeviceType

    # kernels only (operator rows also carry their kernels' time: summing all would count it twice)
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    out = {
        "steps": steps,
        "wall_ms_per_step": 1000 * wall / steps,
        "gpu_kernel_ms_per_step": gpu_us / 1000 / steps,
    }
    PROFILES.append(f"== decode profile: {label}: {out}")
    PROFILES.append(events.table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
    if device.type == "cuda":
        PROFILES.append(events.table(sort_by="self_cuda_time_total", row_limit=8, max_name_column_width=60))
    log(
        f"decode profile {label}: {out['wall_ms_per_step']:.1f} ms wall per step (profiled), "
        f"{out['gpu_kernel_ms_per_step']:.1f} ms of GPU kernels per step"
    )
    return out


PROFILES: list[str] = []


def install_lowpass_variant(name: str):
    """Swap the matrix path of the operator for a variant; returns an undo function.

    ``matrix``: the library as it is (TF32 for 16-bit caches on CUDA); ``matrix_fp32``: a plain
    float32 matmul; ``matrix_tf32``: TF32 allowed around this matmul only; ``matrix_bf16``: bf16
    operands on the tensor cores, float32 accumulation. (``fft`` needs no patch: pass
    lowpass_method='fft'.)
    """
    from freqkv_cli.cache import dct

    original = dct.lowpass_matmul
    if name in ("matrix", "fft"):
        return lambda: None

    def plain(x: torch.Tensor, kept: int, dim: int = -2, **_: object) -> torch.Tensor:
        return original(x, kept, dim, tf32=False)

    def tf32(x: torch.Tensor, kept: int, dim: int = -2, **_: object) -> torch.Tensor:
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return plain(x, kept, dim)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous

    def bf16(x: torch.Tensor, kept: int, dim: int = -2, **_: object) -> torch.Tensor:
        n = x.shape[dim]
        matrix = dct.lowpass_matrix(n, kept, x.device).to(torch.bfloat16)
        xb = x.to(torch.bfloat16).movedim(dim, -2)
        return (matrix @ xb).float().movedim(-2, dim).to(x.dtype)

    dct.lowpass_matmul = {"matrix_fp32": plain, "matrix_tf32": tf32, "matrix_bf16": bf16}[name]

    def undo() -> None:
        dct.lowpass_matmul = original

    return undo


@torch.inference_mode()
def compression_accuracy(model, args, method: str) -> float:
    """Layer-0 keys after one compression round vs a float64 evaluation of the same round."""
    from freqkv_cli.cache import dct
    from freqkv_cli.cache.rotary import KeyRotation

    policy = CachePolicy(kind="freqkv", window=args.window, sink=4, ratio=0.5)
    engine = StreamingEngine(model, policy, max_chunk=args.max_chunk, lowpass_method=method)
    engine.feed(random_ids(args.window, model.config.vocab_size, seed=8))
    cache = engine.cache
    head, span, kept = cache.head, policy.span(cache.head), policy.kept(cache.head)
    before = cache.entries(0)[0][:, :, head : head + span].double().cpu()
    cache.compress()
    after = cache.entries(0)[0][:, :, head : head + kept]
    rot = KeyRotation(_cpu_rotary(model))
    pre = rot.unrotate(before, torch.arange(head, head + span)).movedim(-2, -1)
    low = (dct.idct_ortho(dct.dct_ortho(pre, dim=-1, keep=kept), dim=-1) * math.sqrt(kept / span)).movedim(
        -1, -2
    )
    err = rel(after, rot.rotate(low, torch.arange(head, head + kept)))
    del engine, cache
    return err


def run_variants(model, args, dense: int, ceiling: float) -> list[dict]:
    rows = []
    for name in args.variants:
        undo = install_lowpass_variant(name)
        method = "fft" if name == "fft" else "matrix"
        try:
            accuracy = compression_accuracy(model, args, method)
            for tokens in args.variant_lengths:
                started = time.perf_counter()
                row = run_engine(
                    model,
                    CachePolicy(kind="freqkv", window=args.window, sink=4, ratio=0.5),
                    tokens,
                    argparse.Namespace(**{**vars(args), "lowpass": method, "profile_decode": None}),
                    dense,
                    ceiling,
                )
                row["impl"] = f"variant:{name}"
                row["compressed_keys_relerr"] = accuracy
                rows.append(row)
                log(describe(row, time.perf_counter() - started) + f"; layer-0 keys vs fp64 {accuracy:.2e}")
        finally:
            undo()
    return rows


# -- correctness ----------------------------------------------------------------------------
@torch.inference_mode()
def checks(model, args) -> dict:
    device = model.device
    out: dict = {}
    window = args.window
    short = min(3000, window - 100)
    ids = random_ids(short, model.config.vocab_size, seed=7)
    logits = {}
    for kind in ("freqkv", "full"):
        engine = StreamingEngine(
            model,
            CachePolicy(kind=kind, window=window, sink=4, ratio=0.5),
            max_chunk=args.max_chunk,
            lowpass_method=args.lowpass,
        )
        logits[kind] = engine.feed(ids)[-1]
        del engine
    hidden = model.model(input_ids=torch.tensor([ids], device=device)).last_hidden_state
    logits["stock"] = model.lm_head(hidden[:, -1]).float()[-1]
    out["freqkv_vs_full_relerr"] = rel(logits["freqkv"], logits["full"])
    out["full_vs_stock_relerr"] = rel(logits["full"], logits["stock"])
    out["argmax_agree"] = int(torch.argmax(logits["freqkv"])) == int(torch.argmax(logits["stock"]))
    log(
        f"check, {short} tokens < window {window} (no compression): freqkv vs full logits rel err "
        f"{out['freqkv_vs_full_relerr']:.2e}; full (chunks of {args.max_chunk}) vs stock one-shot forward "
        f"{out['full_vs_stock_relerr']:.2e}; argmax agree: {out['argmax_agree']}"
    )

    # Batched compression (GPU groups 4 layers per call) vs one layer at a time, same input.
    policy = CachePolicy(kind="freqkv", window=window, sink=4, ratio=0.5)
    engine = StreamingEngine(model, policy, max_chunk=args.max_chunk, lowpass_method=args.lowpass)
    engine.feed(random_ids(window, model.config.vocab_size, seed=8))
    cache = engine.cache
    saved = cache.state()
    cache.compress()
    layers = range(model.config.num_hidden_layers)
    grouped = [tuple(t.clone() for t in cache.entries(i)) for i in layers]
    cache.load_state(saved, device, model.dtype)
    head, span, kept = cache.head, policy.span(cache.head), policy.kept(cache.head)
    cache.rounds.group = 1  # one layer at a time
    cache.compress()
    errs = []
    for index, (k, v) in zip(layers, grouped, strict=True):
        keys, values = cache.entries(index)
        errs.append(rel(k, keys))
        errs.append(rel(v, values))
    out["grouped_vs_single_layer_max_relerr"] = max(errs)
    # the compressed keys vs a float64 evaluation (unrotate, low-pass, rotate) for layer 0
    from freqkv_cli.cache import dct
    from freqkv_cli.cache.rotary import KeyRotation

    k0 = saved.tensors["layer.0.keys"][:, :, head : head + span].double().cpu()
    rot_cpu = KeyRotation(_cpu_rotary(model))
    pos_old = torch.arange(head, head + span)
    pos_new = torch.arange(head, head + kept)
    pre = rot_cpu.unrotate(k0, pos_old).movedim(-2, -1)
    low = (dct.idct_ortho(dct.dct_ortho(pre, dim=-1, keep=kept), dim=-1) * math.sqrt(kept / span)).movedim(
        -1, -2
    )
    ref = rot_cpu.rotate(low, pos_new)
    out["compressed_keys_vs_fp64_relerr"] = rel(grouped[0][0][:, :, head : head + kept], ref)
    log(
        f"check, compression at window {window}: batched (GPU path) vs per-layer max rel err "
        f"{out['grouped_vs_single_layer_max_relerr']:.2e}; layer-0 keys vs float64 reference "
        f"{out['compressed_keys_vs_fp64_relerr']:.2e} (bf16 storage: expect ~1e-3..1e-2)"
    )
    del engine, cache, saved, grouped

    # Past the window: compression happens; logits must stay finite.
    engine = StreamingEngine(model, policy, max_chunk=args.max_chunk, lowpass_method=args.lowpass)
    long_ids = random_ids(int(window * 1.6), model.config.vocab_size, seed=9)
    lg = engine.feed(long_ids)
    full = StreamingEngine(model, CachePolicy(kind="full"), max_chunk=args.max_chunk)
    lf = full.feed(long_ids)
    out["past_window_finite"] = bool(torch.isfinite(lg).all())
    out["past_window_vs_full_relerr"] = rel(lg[-1], lf[-1])
    log(
        f"check, {len(long_ids)} tokens > window: freqkv logits finite: {out['past_window_finite']}; "
        f"vs full rel err {out['past_window_vs_full_relerr']:.2e} (expected > 0: the cache is compressed)"
    )
    del engine, full
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    out["passed"] = (
        out["freqkv_vs_full_relerr"] < 1e-3
        and out["full_vs_stock_relerr"] < 5e-2
        and out["grouped_vs_single_layer_max_relerr"] < 1e-2
        and out["compressed_keys_vs_fp64_relerr"] < 2e-2
        and out["past_window_finite"]
    )
    return out


def _cpu_rotary(model):
    import copy

    rotary = copy.deepcopy(model.model.rotary_emb).to("cpu")
    return rotary


# -- report ---------------------------------------------------------------------------------
def fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return missing
    return format(value, spec)


def markdown(rows: list[dict]) -> str:
    stock = {r["tokens"]: r for r in rows if r["impl"] == "stock" and "prefill_tok_s" in r}
    full = {
        r["tokens"]: r for r in rows if r["impl"] != "stock" and r["kind"] == "full" and "prefill_tok_s" in r
    }
    lines = [
        "| impl | policy | tokens | prefill tok/s | vs stock | vs full | peak GiB | compress share | MFU "
        "| decode ms/tok |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        name = r["kind"] + (f" w{r['window']}" if r.get("window") else "")
        if "error" in r and "prefill_tok_s" not in r:
            lines.append(f"| {r['impl']} | {name} | {r['tokens']} | {r['error'][:40]} | | | | | | |")
            continue
        s, f = stock.get(r["tokens"]), full.get(r["tokens"])
        lines.append(
            f"| {r['impl']} | {name} | {r['tokens']} | {r['prefill_tok_s']:.0f} | "
            f"{fmt(s and r['prefill_tok_s'] / s['prefill_tok_s'], '.2f')}x | "
            f"{fmt(f and r['prefill_tok_s'] / f['prefill_tok_s'], '.2f')}x | "
            f"{fmt(r.get('peak_gib', r.get('peak_prefill_gib')), '.1f')} | "
            f"{fmt(r.get('compress_share') and 100 * r['compress_share'], '.1f')}% | "
            f"{fmt(r.get('mfu') and 100 * r['mfu'], '.0f')}% | "
            + (f"{r['decode_ms_median']:.1f} |" if "decode_ms_median" in r else f"{r['error'][:24]} |")
        )
    return re.sub(r"\| -[x%] (?=\|)", "| - ", "\n".join(lines)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 4-layer model, for a smoke test anywhere")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--stock-lengths", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--kinds", nargs="+", default=["freqkv", "sink", "full"])
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--max-chunk", type=int, default=2048)
    parser.add_argument("--lowpass", default="auto", help="lowpass method for freqkv: auto, fft, matrix")
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="freqkv operator variants to time end to end: fft matrix matrix_fp32 matrix_tf32 matrix_bf16",
    )
    parser.add_argument("--variant-lengths", type=int, nargs="+", default=[32768])
    parser.add_argument(
        "--profile-decode",
        type=int,
        nargs="*",
        default=None,
        help="lengths at which to profile 4 decode steps (torch.profiler)",
    )
    parser.add_argument("--skip-main", action="store_true", help="only checks, ceiling and variants")
    parser.add_argument(
        "--sdpa",
        default="default",
        choices=["default", "no-cudnn"],
        help="no-cudnn: run everything inside sdpa_kernel([flash, efficient, math]), i.e. without "
        "cuDNN attention, which rebuilds a plan for every new key length. The engine already keeps "
        "calls of 16 tokens or fewer off cuDNN, so this changes the prefill",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "results"))
    )
    parser.add_argument("--tag", default="gpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformers_path": transformers.__file__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "dtype": str(dtype),
        "cpu_cores": os.cpu_count(),
    }
    try:
        import huggingface_hub
        import tokenizers

        env["huggingface_hub"] = huggingface_hub.__version__
        env["tokenizers"] = tokenizers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gib"] = props.total_memory / 2**30
        env["sms"] = props.multi_processor_count
    log("bench_gpu: Llama-2-7B-shaped model, random weights, streaming through freqkv_cli caches")
    for key, value in env.items():
        log(f"  {key}: {value}")
    log(
        f"  settings: window {args.window}, sink 4, recent 0, ratio 0.5, max_chunk {args.max_chunk}, "
        f"lowpass {args.lowpass}, decode {args.decode} greedy tokens, sdpa attention"
    )

    if args.sdpa == "no-cudnn":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        sdpa_context = sdpa_kernel(backends)
        sdpa_context.__enter__()  # for the whole run; the process ends after main()
    log(f"  sdpa backends: {args.sdpa}")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    config = make_config(args.tiny)
    model = build_model(config, device, dtype)
    sync(device)
    dense = dense_params(model)
    total = sum(p.numel() for p in model.parameters())
    env["params"] = total
    env["dense_params"] = dense
    env["build_s"] = time.perf_counter() - t0
    log(
        f"  model: {total / 1e9:.2f} B parameters ({dense / 1e9:.2f} B in matmuls per token), built in "
        f"{env['build_s']:.1f} s"
        + (
            f", {torch.cuda.memory_allocated(device) / 2**30:.1f} GiB on the GPU"
            if device.type == "cuda"
            else ""
        )
    )

    result: dict = {"environment": env, "checks": None, "rows": []}
    out_json = args.out_dir / f"{args.tag}.json"

    def save() -> None:
        out_json.write_text(json.dumps(result, indent=2))
        (args.out_dir / f"{args.tag}.log").write_text("\n".join(LOG) + "\n")

    if not args.skip_checks:
        result["checks"] = checks(model, args)
        log(f"checks passed: {result['checks']['passed']}")
        save()
        if not result["checks"]["passed"]:
            log("correctness checks FAILED: timings below are not trustworthy")

    ceiling = matmul_ceiling(device)
    env["bf16_matmul_tflop_s"] = ceiling
    log(f"bf16 matmul ceiling (8192^3, median of 20, CUDA events): {ceiling:.0f} TFLOP/s")

    # warm-up: one short run so kernels, cuBLAS handles and the DCT matrix are ready
    for kind in args.kinds:
        run_engine(
            model,
            CachePolicy(kind=kind, window=args.window, sink=4, ratio=0.5),
            min(args.window + 2048, max(args.lengths)),
            argparse.Namespace(**{**vars(args), "decode": 2, "profile_decode": None}),
            dense,
            ceiling,
        )
    warm = argparse.Namespace(**{**vars(args), "decode": 2, "profile_decode": None})
    run_stock(model, min(4096, max(args.lengths)), warm, dense, ceiling)

    for tokens in [] if args.skip_main else args.lengths:
        for kind in args.kinds:
            policy = CachePolicy(kind=kind, window=args.window, sink=4, ratio=0.5)
            started = time.perf_counter()
            try:
                row = run_engine(model, policy, tokens, args, dense, ceiling)
            except Exception as exc:  # keep going: report what broke
                row = {
                    "impl": "freqkv_cli",
                    "kind": kind,
                    "window": args.window,
                    "tokens": tokens,
                    "error": f"{type(exc).__name__}: {exc}"[:200],
                }
                log(traceback.format_exc())
            result["rows"].append(row)
            log(describe(row, time.perf_counter() - started))
            save()
        if tokens in args.stock_lengths:
            started = time.perf_counter()
            row = run_stock(model, tokens, args, dense, ceiling)
            result["rows"].append(row)
            log(describe(row, time.perf_counter() - started))
            save()

    if args.variants:
        log(f"freqkv operator variants, window {args.window}:")
        result["variants"] = run_variants(model, args, dense, ceiling)
        save()
    if PROFILES:
        (args.out_dir / f"{args.tag}_decode_profile.txt").write_text("\n".join(PROFILES) + "\n")

    table = markdown(result["rows"] + result.get("variants", []))
    (args.out_dir / f"{args.tag}.md").write_text(table)
    log("")
    log(table)
    save()


def describe(row: dict, wall: float) -> str:
    name = f"{row['impl']:10s} {row['kind']:12s} {row['tokens']:>7}"
    if "error" in row and "prefill_tok_s" not in row:
        return f"{name}: {row['error']}  [{wall:.0f} s]"
    if "error" in row:  # the prefill finished, what followed (decode) failed
        return (
            f"{name}: prefill {row['prefill_tok_s']:9.0f} tok/s ({row['prefill_s']:.2f} s), "
            f"peak {fmt(row.get('peak_prefill_gib'), '.1f')} GiB during prefill; "
            f"then {row['error']}  [{wall:.0f} s]"
        )
    extra = ""
    if "compress_share" in row:
        extra = (
            f", {row['compressions']} compressions = {100 * row['compress_share']:.1f}% of prefill "
            f"({row['compress_s']:.2f} s)"
        )
    return (
        f"{name}: prefill {row['prefill_tok_s']:9.0f} tok/s ({row['prefill_s']:.2f} s), "
        f"{row['achieved_tflop_s']:.0f} TFLOP/s = MFU {fmt(row.get('mfu') and 100 * row['mfu'], '.0f')}%, "
        f"peak {fmt(row.get('peak_gib'), '.1f')} GiB, decode {row['decode_ms_median']:.1f} ms/tok median"
        f"{extra}  [{wall:.0f} s]"
    )


if __name__ == "__main__":
    main()
