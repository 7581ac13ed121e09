"""Quantized weights and device maps on one GPU (#15): random weights of real shapes, no download.

Arms, in one process, each against the bf16 8B measured in the same run:
  8b-bf16, 8b-int8, 8b-int4, 70b-int4: built layer by layer on the GPU (a layer's bf16 weights
      exist only until they are quantized: a 70B model never exists in bf16), then a document of
      random token ids streams through the FreqKV engine: weight memory, peak memory at each
      length, prefill tok/s, decode ms/token.
  load: an 8B bf16 state dict on the CPU quantized to int4 through transformers as freqkv does for
      a GGUF or a merged adapter (peak GPU memory while quantizing), saved pre-quantized
      (safetensors) and loaded again (what a second `--quantize int4` load costs).
  map: an 8B bf16 model read once on one GPU and once spread by accelerate over the GPU and the
      CPU under a GPU cap it does not fit (--max-memory 0=6GiB): NLL of every token through the
      engine across compression rounds, compared; and once with its last layers computing on the
      CPU (each layer's cache on its own device).

Writes one JSON per arm under --out as it goes. Usage:
  python benchmarks/bench_quant.py --out benchmarks/results/quant [--tiny] [--budget 420]
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.engine.streaming import StreamingEngine
from freqkv_cli.models.device_map import devices_of
from freqkv_cli.models.quantize import INT8_THRESHOLD, require_bitsandbytes

GiB = 1 << 30


def shape(name: str, tiny: bool) -> dict:
    if tiny:
        return dict(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
        )
    if name == "70b":
        return dict(
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=128256,
        )
    return dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    )


def config_of(name: str, tiny: bool) -> object:
    from transformers import LlamaConfig

    return LlamaConfig(
        **shape(name, tiny), max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False
    )


def quantized_linear(linear: nn.Linear, kind: str, device: torch.device) -> nn.Module:
    """``linear`` (bf16, on ``device``) as a bitsandbytes layer; its bf16 weight is then dropped."""
    bnb = require_bitsandbytes()
    weight = linear.weight.data
    if kind == "int4":
        new = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=False,
            compute_dtype=torch.bfloat16,
            quant_type="nf4",
            compress_statistics=False,  # as --quantize int4 (models/quantize.py): no double quant
            device="meta",
        )
        new.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, quant_type="nf4", compress_statistics=False
        ).to(device)
    else:
        new = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=False,
            has_fp16_weights=False,
            threshold=THRESHOLD[0],
            device="meta",
        )
        # Int8Params quantizes only on a move from the CPU: from a GPU tensor it stayed 16-bit.
        new.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False).to(device)
    return new


def build(name: str, kind: str, device: torch.device, tiny: bool, seed: int = 0) -> nn.Module:
    """A Llama of ``name``'s shape with random weights, made one layer at a time on ``device``."""
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    config = config_of(name, tiny)
    with init_empty_weights(include_buffers=False):
        model = LlamaForCausalLM(config)
    torch.manual_seed(seed)
    pieces = [model.model.embed_tokens, model.model.norm, model.lm_head, *model.model.layers]
    for piece in pieces:
        piece.to_empty(device=device)
        with torch.no_grad():
            for pname, param in piece.named_parameters():
                if "norm" in pname:
                    param.data = torch.ones_like(param, dtype=torch.bfloat16)
                else:
                    param.data = torch.randn(param.shape, device=device, dtype=torch.bfloat16) * 0.02
        if kind != "bf16" and piece not in (model.model.embed_tokens, model.model.norm, model.lm_head):
            for _, module in list(piece.named_modules()):
                for child_name, child in list(module.named_children()):
                    if isinstance(child, nn.Linear):
                        setattr(module, child_name, quantized_linear(child, kind, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    model.model.rotary_emb.to(device)
    return model.eval().requires_grad_(False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


MAX_CHUNK = [2048]  # the engine's default; --max-chunk splits prefill forwards (less activation memory)
THRESHOLD = [INT8_THRESHOLD]  # --int8-threshold: LLM.int8's outlier threshold (freqkv's default)
GRAPHS = [False]  # --graphs: the engine's default replays (decode graphs, replayed rounds)


def make_engine(model: nn.Module, window: int) -> StreamingEngine:
    """The same decode path for bf16 and quantized weights in every arm, so their ratio compares
    the weights alone: eager unless --graphs, then what the engine replays by default."""
    kwargs = {}
    if "decode_graphs" in inspect.signature(StreamingEngine).parameters:
        kwargs["decode_graphs"] = None if GRAPHS[0] else False
    return StreamingEngine(model, CachePolicy("freqkv", window=window), max_chunk=MAX_CHUNK[0], **kwargs)


def stream(model: nn.Module, device: torch.device, lengths: list[int], window: int, deadline: float) -> dict:
    """Random ids through the engine; peak memory at each length; decode after the longest."""
    engine = make_engine(model, window)
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    out: dict = {"window": window, "at": {}}
    # A warm-up read of four windows, then reset: every arm is timed after its own captures and
    # kernel choices, so the first arm of a process is not slower for being first.
    t0 = time.perf_counter()
    engine.feed(torch.randint(0, vocab, (4 * window,), generator=gen).tolist())
    engine.generate(max_new_tokens=2)
    sync(device)
    engine.reset()
    out["warmup_s"] = round(time.perf_counter() - t0, 2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fed, started = 0, time.perf_counter()
    for length in sorted(lengths):
        while fed < length:
            if time.perf_counter() > deadline:
                out["stopped_early_at"] = fed
                break
            piece = min(65536, length - fed)
            engine.feed(torch.randint(0, vocab, (piece,), generator=gen).tolist())
            fed += piece
        sync(device)
        if fed < length:
            break
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        out["at"][str(length)] = {
            "tokens": fed,
            "seconds": round(seconds, 2),
            "prefill_tok_s": round(fed / seconds, 1),
            "peak_bytes": peak,
        }
    engine.generate(max_new_tokens=4)  # warm-up
    sync(device)
    count = 32 if device.type == "cuda" else 4
    t0 = time.perf_counter()
    engine.generate(max_new_tokens=count)
    sync(device)
    out["decode_ms_per_token"] = round((time.perf_counter() - t0) * 1000 / count, 2)
    out["tokens_fed"] = fed
    del engine
    return out


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def arm_model(name: str, kind: str, device: torch.device, args: argparse.Namespace, deadline: float) -> dict:
    free(device)
    base = allocated(device)
    t0 = time.perf_counter()
    model = build(name, kind, device, args.tiny)
    sync(device)
    built = time.perf_counter() - t0
    result = {
        "arm": f"{name}-{kind}",
        "build_and_quantize_s": round(built, 2),
        "weight_bytes_allocated": allocated(device) - base,
        "weight_bytes": sum(devices_of(model).values()),
    }
    lengths = args.lengths_70b if name == "70b" else (args.lengths_int8 if kind == "int8" else args.lengths)
    result.update(stream(model, device, lengths, args.window, deadline))
    del model
    free(device)
    return result


def cpu_model(tiny: bool, device: torch.device) -> nn.Module:
    """The 8B shape in bf16 on the CPU, seeded: the same weights for every arm that reads it (made
    on the GPU and moved: random bf16 on 16 cores took 200 s of the first run)."""
    return build("8b", "bf16", device, tiny, seed=3).to("cpu")


def arm_load(model: nn.Module, device: torch.device, scratch: Path) -> dict:
    """The library's path for a model held on the CPU: quantized tensor by tensor onto the GPU."""
    from transformers import AutoModelForCausalLM

    from freqkv_cli.models.quantize import Quantization, requantize

    free(device)
    torch.cuda.reset_peak_memory_stats(device)
    kwargs = {
        "dtype": torch.bfloat16,
        "device_map": {"": str(device)},
        "quantization_config": Quantization("int4").config(torch.bfloat16),
    }
    t0 = time.perf_counter()
    quantized = requantize(model, kwargs)
    sync(device)
    first = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device)
    held = allocated(device)
    t0 = time.perf_counter()
    quantized.save_pretrained(scratch)
    saved = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in scratch.iterdir())
    del quantized
    free(device)
    t0 = time.perf_counter()
    again = AutoModelForCausalLM.from_pretrained(scratch, device_map={"": str(device)})
    sync(device)
    second = time.perf_counter() - t0
    del again
    free(device)
    return {
        "arm": "load-8b-int4",
        "quantize_on_load_s": round(first, 2),
        "peak_gpu_bytes_quantizing": peak,
        "weight_bytes": held,
        "save_s": round(saved, 2),
        "saved_bytes": size,
        "prequantized_load_s": round(second, 2),
    }


def nll(model: nn.Module, ids: list[int], window: int) -> torch.Tensor:
    engine = make_engine(model, window)
    out = engine.score(ids).float().cpu()
    rounds = engine.stats().compressions
    del engine
    return out, rounds


def arm_map(model: nn.Module, device: torch.device, args: argparse.Namespace) -> dict:
    """Single device against accelerate's GPU+CPU map under a cap, and with CPU-computed layers."""
    from accelerate import dispatch_model, infer_auto_device_map

    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (args.map_tokens,), generator=gen).tolist()
    window = args.map_window
    model.to(device)
    reference, rounds = nll(model, ids, window)
    model.to("cpu")
    free(device)
    result = {
        "arm": "map-8b-bf16",
        "tokens": len(ids),
        "window": window,
        "rounds": rounds,
        "reference_mean_nll": round(float(reference.mean()), 5),
    }
    layers = ["LlamaDecoderLayer"]
    cap = {0: args.gpu_cap, "cpu": "200GiB"}
    mapping = infer_auto_device_map(model, max_memory=cap, no_split_module_classes=layers)
    spread = dispatch_model(model, mapping, main_device=0)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    mapped, _ = nll(spread, ids, window)
    on_gpu = sum(1 for k, v in mapping.items() if "layers" in k and v == 0)
    result["offload"] = compare(reference, mapped) | {
        "gpu_cap": args.gpu_cap,
        "on_gpu_layers": on_gpu,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    from accelerate.hooks import remove_hook_from_submodules

    remove_hook_from_submodules(spread)
    model.to("cpu")
    free(device)
    # The last layers compute on the CPU (their cache there too): compression on two devices.
    count = model.config.num_hidden_layers
    hetero = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 0, "lm_head": 0}
    hetero.update({f"model.layers.{i}": (0 if i < count - args.cpu_layers else "cpu") for i in range(count)})
    spread = dispatch_model(model, hetero, main_device="cpu")
    t0 = time.perf_counter()
    mixed, _ = nll(spread, ids, window)
    result["gpu_and_cpu_layers"] = compare(reference, mixed) | {
        "cpu_layers": args.cpu_layers,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    remove_hook_from_submodules(spread)
    return result


def compare(reference: torch.Tensor, other: torch.Tensor) -> dict:
    diff = (reference - other).abs()
    return {
        "max_abs_nll_diff": round(float(diff.max()), 5),
        "mean_abs_nll_diff": round(float(diff.mean()), 6),
        "mean_nll": round(float(other.mean()), 5),
    }


def versions() -> dict:
    import accelerate
    import transformers

    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "bitsandbytes": require_bitsandbytes().__version__,
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quant"))
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: checks the script")
    parser.add_argument("--arms", default="8b-bf16,8b-int4,70b-int4,map,load,8b-int8")
    parser.add_argument("--lengths", default="131072,1048576")
    parser.add_argument("--lengths-int8", default="131072")
    parser.add_argument("--lengths-70b", default="131072,262144")
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--map-tokens", type=int, default=3072)
    parser.add_argument("--map-window", type=int, default=1024)
    parser.add_argument("--gpu-cap", default="6GiB")
    parser.add_argument("--cpu-layers", type=int, default=4)
    parser.add_argument("--max-chunk", type=int, default=2048)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all arms")
    parser.add_argument("--graphs", action="store_true", help="the engine's default replays, not eager")
    parser.add_argument("--int8-threshold", type=float, default=INT8_THRESHOLD)
    args = parser.parse_args()
    for key in ("lengths", "lengths_int8", "lengths_70b"):
        setattr(args, key, [int(x) for x in getattr(args, key).split(",")])
    if args.tiny:
        args.lengths, args.lengths_int8, args.lengths_70b = [600, 1200], [600], [600]
        args.window, args.map_tokens, args.map_window, args.cpu_layers = 128, 300, 128, 1
    MAX_CHUNK[0], GRAPHS[0], THRESHOLD[0] = args.max_chunk, args.graphs, args.int8_threshold
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    facts = versions()
    print(json.dumps(facts), flush=True)
    results, held = [], {}
    arms = args.arms.split(",")
    for arm in arms:
        left = args.budget - (time.perf_counter() - start)
        if left < 20:
            print(f"skipped {arm}: budget spent", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            if arm in ("load", "map"):
                if device.type != "cuda":
                    continue
                if "cpu" not in held:  # built once (seeded) for both arms
                    held["cpu"] = cpu_model(args.tiny, device)
                model = held["cpu"]
                result = (
                    arm_load(model, device, Path("/tmp/q8b"))
                    if arm == "load"
                    else arm_map(model, device, args)
                )
            else:
                name, kind = arm.split("-")
                # The last arm may take what is left; earlier ones leave room for the rest.
                share = 1.0 if arm == arms[-1] else (0.5 if name == "70b" else 0.2)
                result = arm_model(name, kind, device, args, time.perf_counter() + left * share)
        except Exception as exc:  # one arm failing must not lose the others' figures
            result = {"arm": arm, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        result["arm_seconds"] = round(time.perf_counter() - t0, 1)
        result["versions"] = facts
        result["max_chunk"] = args.max_chunk
        result["int8_threshold"] = args.int8_threshold
        results.append(result)
        print(json.dumps(result), flush=True)
        (args.out / f"{arm}.json").write_text(json.dumps(result, indent=1) + "\n")
        free(device)
    (args.out / "all.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
