"""GPU speed of the streaming engine against the hardware and stock transformers, one run.

Random bf16 weights of real shapes (Llama-3-8B: hidden 4096, 32 layers, 32 heads, 8 KV
heads, MLP 14336, vocab 128256; SmolLM2-135M: the embedded default's shape), sdpa attention,
one process, one GPU. Sections (``--sections``, in this order):

- ``ceilings``: bf16 8192^3 matmul TFLOP/s and device copy TB/s (CUDA events, median of 20);
  from them the linear-layer prefill limit (tok/s) and the weight-read decode floor (ms).
- ``check``: the GPU path (captured decode, lower-right prefill attention, fused rounds) against
  the plain eager one. Four families (tiny shapes) and
  the 8B shape, bf16, with compression rounds during decode: teacher-forced logits (the same
  tokens for both, so a near tie cannot send them apart) and free-running greedy tokens.
- ``prefill``: tokens/s, share of time in compression, peak memory, per policy and length;
  the hybrid reads a pinned question first, as ``freqkv qa`` does. At the first length and at
  128k also the same read as the previous version did it (masked SDPA, rounds unfused:
  ``*_before``), and at the first length eagerly (no replays).
- ``decode``: ms/token of ``generate`` (greedy, 64 tokens, tokenizer-free) after each prefill,
  graph and eager.
- ``stock``: transformers' own ``generate`` with a StaticCache (which compiles its decode
  step with torch.compile) at the same context: ms/token from (generate 65) - (generate 1).
- ``profile``: torch.profiler over steady-state prefill rounds: the top CUDA kernels.

    python benchmarks/bench_speed.py --out results.json
    python benchmarks/bench_speed.py --tiny --device cpu --sections check prefill decode  # smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from freqkv_cli.cache.policy import CachePolicy  # noqa: E402
from freqkv_cli.engine.graph_decode import GraphDecoder  # noqa: E402
from freqkv_cli.engine.sampling import Sampler  # noqa: E402
from freqkv_cli.engine.streaming import StreamingEngine  # noqa: E402

LLAMA3_8B = dict(
    model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
    max_position_embeddings=8192, tie_word_embeddings=False,
)  # fmt: skip
SMOLLM2_135M = dict(
    model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0,
    max_position_embeddings=8192, tie_word_embeddings=True,
)  # fmt: skip
TINY = dict(
    model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, vocab_size=512, rope_theta=10000.0,
    max_position_embeddings=8192, tie_word_embeddings=False,
)  # fmt: skip
FAMILY_SHAPES = {  # small but real-proportioned models of each family, for the capture check
    "llama": dict(model_type="llama"),
    "mistral": dict(model_type="mistral", sliding_window=None),
    "qwen2": dict(model_type="qwen2", sliding_window=None, use_sliding_window=False),
    "qwen3": dict(model_type="qwen3", head_dim=64, sliding_window=None, use_sliding_window=False),
}
FAMILY_BASE = dict(
    hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=2, vocab_size=1024, rope_theta=10000.0, max_position_embeddings=8192,
    tie_word_embeddings=False,
)  # fmt: skip

OUT: dict = {}
SAVE = [lambda: None]  # writes OUT where --out says


STARTED = time.perf_counter()


def log(message: str = "") -> None:
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {message}", flush=True)


def build(shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    shape = dict(shape)
    config = AutoConfig.for_model(shape.pop("model_type"), **shape, attn_implementation="sdpa")
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters made in the target dtype: no float32 copy of 8B
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval().requires_grad_(False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_ids(count: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reserved_gib(device: torch.device) -> float:
    """The allocator's peak reservation: what the process held on the device, graph pools (whose
    freed blocks no longer count as allocated, but stay theirs) and fragmentation included."""
    return torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else float("nan")


# -- ceilings --------------------------------------------------------------------------------------
def ceilings(device: torch.device) -> dict:
    def timed(fn, reps: int = 20) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        return statistics.median(times)

    mats = [torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2)]
    tflops = 2 * 8192**3 / timed(lambda: mats[0] @ mats[1]) / 1e12
    bufs = [torch.empty(2 << 30, dtype=torch.uint8, device=device) for _ in range(2)]
    tbps = 2 * bufs[0].numel() / timed(lambda: bufs[1].copy_(bufs[0])) / 1e12  # bytes read + written
    mats.clear()
    bufs.clear()
    torch.cuda.empty_cache()
    return {"matmul_tflops": tflops, "copy_tbps": tbps}


def limits(model, ceiling: dict) -> dict:
    """Linear-layer prefill limit and weight-read decode floor for ``model``."""
    linear = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    linear -= (
        model.lm_head.weight.numel() if not model.config.tie_word_embeddings else 0
    )  # no lm_head in prefill
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "prefill_limit_tok_s": ceiling["matmul_tflops"] * 1e12 / (2 * linear),
        "decode_floor_ms": weight_bytes / (ceiling["copy_tbps"] * 1e12) * 1e3,  # every weight read once
        "weight_gib": weight_bytes / 2**30,
    }


# -- check -----------------------------------------------------------------------------------------
def compare(
    model, policy: CachePolicy, prompt: list[int], forced: list[int], fill_to_room: int | None, reference=None
) -> dict:
    """Teacher-forced logits and free-running greedy tokens, graph vs eager; with ``reference``
    (the same weights in float32, eager), how far bf16 itself is from it: the tolerance."""
    runs = {}
    todo = [("eager", False, model), ("graph", True, model)] + (
        [("fp32", False, reference)] if reference else []
    )
    for name, graphs, net in todo:
        # "eager" is the plain path: masked SDPA, rounds unfused, nothing replayed; "graph" is
        # every default of the GPU path (replays, lower-right prefill attention, fused rounds).
        plain = {} if graphs else {"chunk_attention": False, "fuse_rounds": False}
        engine = StreamingEngine(net, policy, decode_graphs=graphs, **plain)
        engine.feed(prompt)
        if fill_to_room is not None:  # decode will cross a compression boundary soon
            room = engine.cache.room() or 0
            if room > fill_to_room:
                engine.feed(random_ids(room - fill_to_room, model.config.vocab_size, 9))
        saved = engine.state()
        logits = [engine.next_logits()[0]]
        for token in forced:
            logits.append(engine.advance(token).clone())
        rounds = engine.stats().compressions
        engine.load_state(saved)
        greedy = engine.generate(len(forced), Sampler(), stop_token_ids=()).token_ids
        runs[name] = (torch.stack(logits).float(), greedy, rounds)
    (want, want_tokens, rounds), (got, got_tokens, rounds_graph) = runs["eager"], runs["graph"]
    scale = want.abs().max().item()
    same = next(
        (i for i, (a, b) in enumerate(zip(want_tokens, got_tokens, strict=True)) if a != b), len(want_tokens)
    )
    extra = {}
    if "fp32" in runs:
        exact = runs["fp32"][0]
        extra = {
            "eager_bf16_vs_fp32_max_diff": (want - exact).abs().max().item(),
            "graph_bf16_vs_fp32_max_diff": (got - exact).abs().max().item(),
            "eager_argmax_vs_fp32": (want.argmax(-1) == exact.argmax(-1)).float().mean().item(),
            "graph_argmax_vs_fp32": (got.argmax(-1) == exact.argmax(-1)).float().mean().item(),
        }
    return {
        **extra,
        "max_abs_diff": (got - want).abs().max().item(),
        "logit_scale": scale,
        "argmax_agree": (got.argmax(-1) == want.argmax(-1)).float().mean().item(),
        "greedy_same_prefix": same,
        "greedy_tokens": len(want_tokens),
        "rounds_in_decode": rounds,
        "rounds_equal": rounds == rounds_graph,
    }


def check(device: torch.device, args) -> dict:
    results = {}
    for family, extra in FAMILY_SHAPES.items():
        model = build({**FAMILY_BASE, **extra}, device, args.dtype)
        reference = build({**FAMILY_BASE, **extra}, device, torch.float32)  # the same seed: same weights
        for kind in ("freqkv", "sink", "hybrid"):
            policy = CachePolicy(kind=kind, window=128, sink=4, recent=16, exact=0.25)
            row = compare(model, policy, random_ids(300, 1024, 1), random_ids(96, 1024, 2), None, reference)
            results[f"{family}/{kind}"] = row
            log(f"check {family}/{kind}: {row}")
        del model, reference
    if not args.tiny and not args.no_big_check:
        model = build(LLAMA3_8B, device, args.dtype)
        for kind in ("freqkv", "hybrid"):
            policy = CachePolicy(kind=kind, window=4096, sink=4, recent=0 if kind == "freqkv" else 128)
            row = compare(model, policy, random_ids(6000, 128256, 3), random_ids(48, 128256, 4), 16)
            results[f"llama3-8b/{kind}"] = row
            log(f"check llama3-8b/{kind}: {row}")
        del model
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return results


# -- prefill and decode ----------------------------------------------------------------------------
def read(
    model, policy: CachePolicy, length: int, device: torch.device, graphs: bool | None = None, **options
):
    replay_rounds = options.pop("replay_rounds", True)
    engine = StreamingEngine(model, policy, decode_graphs=graphs, **options)
    if not replay_rounds:  # every round eager, everything else as shipped
        engine.cache.round_graphs = None
    vocab = model.config.vocab_size
    if policy.kind == "hybrid":  # as qa does: the question first, pinned; it chooses the exact slots
        engine.feed(random_ids(24, vocab, 5), pin=True, question=True)
    ids = random_ids(length, vocab, 6)
    peak_reset(device)
    sync(device)
    started = time.perf_counter()
    engine.feed(ids)
    sync(device)
    seconds = time.perf_counter() - started
    stats = engine.stats()
    return engine, {
        "tokens": length,
        "tok_s": length / seconds,
        "seconds": seconds,
        "compress_share": stats.compress_seconds / seconds,
        "compressions": stats.compressions,
        "peak_gib": peak_gib(device),
        "reserved_gib": reserved_gib(device),
    }


def decode_ms(engine: StreamingEngine, steps: int, device: torch.device) -> float:
    engine.generate(4, Sampler(), stop_token_ids=())  # warm (captures the graph once)
    sync(device)
    started = time.perf_counter()
    engine.generate(steps, Sampler(), stop_token_ids=())
    sync(device)
    return (time.perf_counter() - started) / steps * 1e3


def streaming(model, shape: str, device: torch.device, args, base: dict) -> list[dict]:
    rows = []
    kinds = args.kinds
    for length in args.lengths:
        for kind in kinds:
            policy = CachePolicy(
                kind=kind, window=args.window, sink=4, recent=args.recent if kind != "freqkv" else 0
            )
            try:
                engine, row = read(model, policy, length, device)
                if "decode" in args.sections:
                    row["decode_graph_ms"] = decode_ms(engine, args.decode, device)
                    first = length == args.lengths[0] and kind == kinds[0]  # compiling takes a minute: once
                    if first and device.type == "cuda" and args.compile_decode:
                        decoder = engine.replays.decoder
                        engine.replays.decoder = GraphDecoder(model, engine.replays.buffers, compile=True)
                        started = time.perf_counter()
                        engine.generate(2, Sampler(), stop_token_ids=())
                        row["compile_s"] = time.perf_counter() - started
                        row["decode_compiled_ms"] = decode_ms(engine, args.decode, device)
                        row["decode_compiled_fell_back"] = not engine.replays.decoder.compile
                        engine.replays.decoder = decoder
                    if length == args.lengths[0]:
                        decoder, engine.replays.decoder = engine.replays.decoder, None  # eager from here
                        row["decode_eager_ms"] = decode_ms(engine, args.decode // 2, device)
                        engine.replays.decoder = decoder
                # The comparison reads below run with no other engine alive (an engine's slots
                # would count in their peaks): the one measured above is done with.
                del engine
                gc.collect()
                if length == args.lengths[0]:
                    eager = read(model, policy, length, device, graphs=False)[1]
                    row["prefill_eager_tok_s"] = eager["tok_s"]
                if device.type == "cuda" and length in (args.lengths[0], 131072):
                    # What the previous version did: masked SDPA in prefill, rounds unfused.
                    before = read(model, policy, length, device, chunk_attention=False, fuse_rounds=False)[1]
                    row["prefill_before_tok_s"] = before["tok_s"]
                    row["compress_share_before"] = before["compress_share"]
                    row["peak_gib_before"] = before["peak_gib"]
                if device.type == "cuda" and kind == "hybrid" and length == 131072:
                    # The same read with the hybrid's rounds eager (before they were replayed).
                    eager_rounds = read(model, policy, length, device, replay_rounds=False)[1]
                    row["prefill_rounds_eager_tok_s"] = eager_rounds["tok_s"]
                    row["peak_gib_rounds_eager"] = eager_rounds["peak_gib"]
                row.update(
                    kind=kind, shape=shape, **{k: v for k, v in base.items() if k.endswith("limit_tok_s")}
                )
                row["prefill_of_limit"] = row["tok_s"] / base["prefill_limit_tok_s"] if base else float("nan")
                log(
                    f"{shape} {kind} {length}: "
                    + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
                )
                rows.append(row)
                OUT[f"streaming/{shape}"] = rows  # kept as it grows: a run cut short keeps its rows
                SAVE[0]()
            except torch.OutOfMemoryError as exc:
                log(f"{shape} {kind} {length}: out of memory ({exc})")
                rows.append({"kind": kind, "tokens": length, "shape": shape, "error": "oom"})
            peak_reset(device)
    return rows


def stock(model, device: torch.device, context: int) -> dict:
    """transformers' generate with a static cache (it compiles the decode step itself)."""
    ids = torch.tensor([random_ids(context, model.config.vocab_size, 7)], device=device)
    mask = torch.ones_like(ids)

    def generate(new: int) -> float:
        sync(device)
        started = time.perf_counter()
        model.generate(
            ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
            cache_implementation="static", eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
        sync(device)
        return time.perf_counter() - started

    warm = generate(65) + generate(65)  # compiles
    one = statistics.median(generate(1) for _ in range(3))
    full = statistics.median(generate(65) for _ in range(3))
    return {"context": context, "decode_ms": (full - one) / 64 * 1e3, "warmup_s": warm}


def profile(model, device: torch.device, args) -> str:
    policy = CachePolicy(kind="freqkv", window=args.window, sink=4, recent=0)
    engine = StreamingEngine(model, policy)
    engine.feed(random_ids(args.window * 2, model.config.vocab_size, 8))  # steady state
    ids = random_ids(args.window * 2, model.config.vocab_size, 9)
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.feed(ids)
        sync(device)
    averages = prof.key_averages()
    return "\n".join(
        averages.table(sort_by=key, row_limit=30, max_name_column_width=70)
        for key in ("cuda_time_total", "self_cuda_time_total")
    )


def decode_profile(model, device: torch.device, args) -> str:
    """The kernels of eight static decode steps run without capture (a replay runs the same
    kernels); compiled first with ``--compile-decode``."""
    engine = StreamingEngine(model, CachePolicy(kind="freqkv", window=args.window, sink=4))
    engine.feed(random_ids(2048, model.config.vocab_size, 10))
    decoder = GraphDecoder(model, engine.replays.buffers, capture=False, compile=args.compile_decode)
    decoder.step(engine.cache, 1)
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for token in range(8):
            decoder.step(engine.cache, token)
        sync(device)
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=70)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--sections", nargs="+", default=["ceilings", "check", "prefill", "decode", "stock"])
    parser.add_argument("--shapes", nargs="+", default=["llama3-8b", "smollm2-135m"])
    parser.add_argument(
        "--lengths", type=lambda s: [int(float(x)) for x in s.split(",")], default=[8192, 131072, 1 << 20]
    )
    parser.add_argument("--kinds", nargs="+", default=["freqkv", "hybrid", "sink"])
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--recent", type=int, default=128)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--stock-context", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-big-check", action="store_true", help="check the four small families only")
    parser.add_argument("--compile-decode", action="store_true", help="also time the compiled decode graph")
    args = parser.parse_args()
    args.dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # the rotary position matmul needs full float32
    # The check's many small shapes would otherwise use up torch.compile's recompiles of the
    # fused round steps before the 8B model comes (a process with one model needs two or three).
    torch._dynamo.config.recompile_limit = 64
    OUT["machine"] = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    OUT["command"] = " ".join(sys.argv)
    log(json.dumps(OUT["machine"]))

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(OUT, indent=1, default=str))

    SAVE[0] = save

    def section(name: str, fn) -> None:
        try:
            OUT[name] = fn()
        except Exception:
            OUT[name] = {"error": traceback.format_exc()}
            log(traceback.format_exc())
        save()

    if "ceilings" in args.sections and device.type == "cuda":
        section("ceilings", lambda: ceilings(device))
    if "check" in args.sections:
        section("check", lambda: check(device, args))
    shapes = {"llama3-8b": LLAMA3_8B, "smollm2-135m": SMOLLM2_135M} if not args.tiny else {"tiny": TINY}
    for shape in args.shapes if not args.tiny else ["tiny"]:
        model = build(shapes[shape], device, args.dtype)
        base = limits(model, OUT.get("ceilings", {"matmul_tflops": float("nan"), "copy_tbps": float("nan")}))
        OUT.setdefault("limits", {})[shape] = base
        log(f"{shape} limits: {base}")
        local = argparse.Namespace(**vars(args))
        if shape == "smollm2-135m":
            local.window, local.lengths = 1024, [length for length in args.lengths if length <= 131072]
        if {"prefill", "decode"} & set(args.sections):
            section(f"streaming/{shape}", partial(streaming, model, shape, device, local, base))
        if shape != "smollm2-135m" and "stock" in args.sections:
            section(f"stock/{shape}", partial(stock, model, device, args.stock_context))
        if "decode_profile" in args.sections and shape != "smollm2-135m" and device.type == "cuda":
            text = decode_profile(model, device, local)
            log(text)
            OUT[f"decode_profile/{shape}"] = text
            save()
        if "profile" in args.sections:
            text = profile(model, device, local)
            log(text)
            OUT[f"profile/{shape}"] = text
            save()
        del model
        peak_reset(device)
    save()


if __name__ == "__main__":
    main()
