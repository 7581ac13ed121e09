"""The FreqKV frequency operator: FFT form vs cached-matrix form, per device.

Times ``freqkv_cli.cache.dct.lowpass_fft`` and ``lowpass_matmul`` (what ``lowpass(method=...)``
dispatches to) on float32 inputs, which is what ``WindowedCache.compress`` hands them
(it up-casts keys and values before the operator). Shapes:

- ``smol``  (1, 3, n, 64):   SmolLM2-135M, one key or value tensor of one layer;
- ``llama`` (1, 32, n, 128): Llama-2-7B, likewise;
- ``smol-cache``  (2, 1, 3, n, 64):   what the cache passes on a CPU (keys + values of 1 layer);
- ``llama-cache`` (8, 1, 32, n, 128): what the cache passes on a GPU (keys + values of 4 layers);

with n = 1020, 4092, 8188 (window - 4 sinks for windows 1024/4096/8192) and kept = n // 2.

Timing: warm-up calls first (these also build and cache the matrix, whose one-off build
time is reported separately), then the median of repeated calls over 4 rotating input
sets; host clock on the CPU, CUDA events on the GPU. Accuracy: both methods against a
float64 evaluation of the same operator. On CUDA the matrix method is also timed with
TF32 matmuls allowed (``matrix_tf32``): what the library uses for 16-bit caches
(``lowpass(..., tf32=True)``), whose values are exact in TF32.

Usage::

    python benchmarks/bench_dct.py                    # cpu, plus cuda if available
    python benchmarks/bench_dct.py --devices cuda --out $OUT/dct.json --md $OUT/dct.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from freqkv_cli.cache import dct  # noqa: E402

SHAPES = {
    "smol": (1, 3, None, 64),
    "llama": (1, 32, None, 128),
    "smol-cache": (2, 1, 3, None, 64),
    "llama-cache": (8, 1, 32, None, 128),
}


def shape_for(name: str, n: int) -> tuple[int, ...]:
    return tuple(n if s is None else s for s in SHAPES[name])


def reference(x: torch.Tensor, kept: int) -> torch.Tensor:
    """The operator in float64 on the CPU (same Makhoul code path, double precision)."""
    x64 = x.detach().to("cpu", torch.float64).movedim(-2, -1)
    n = x64.shape[-1]
    out = dct.idct_ortho(dct.dct_ortho(x64, dim=-1, keep=kept), dim=-1) * math.sqrt(kept / n)
    return out.movedim(-1, -2)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.detach().to("cpu", torch.float64)
    return float((out - ref).norm() / ref.norm())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn,
    inputs: list[torch.Tensor],
    device: torch.device,
    min_seconds: float,
    max_reps: int,
    min_reps: int,
    clock: str = "wall",
) -> list[float]:
    """Per-call seconds; warm-up excluded. Rotates over ``inputs``."""
    times: list[float] = []
    total = 0.0
    i = 0
    while (total < min_seconds or len(times) < min_reps) and len(times) < max_reps:
        x = inputs[i % len(inputs)]
        i += 1
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        elif clock == "cpu":  # CPU seconds of this process: robust to other processes' load
            t0 = time.process_time()
            fn(x)
            seconds = time.process_time() - t0
        else:
            t0 = time.perf_counter()
            fn(x)
            seconds = time.perf_counter() - t0
        times.append(seconds)
        total += seconds
    return times


def bench_one(device: torch.device, name: str, n: int, args: argparse.Namespace) -> dict:
    shape = shape_for(name, n)
    kept = n // 2
    gen = torch.Generator(device=device).manual_seed(n)
    inputs = [torch.randn(shape, generator=gen, device=device) for _ in range(4)]
    row: dict = {"device": device.type, "shape_name": name, "shape": list(shape), "n": n, "kept": kept}
    # The matrix's one-off build (float64 on the CPU, then moved), outside the timed loop.
    dct.clear_cached()
    sync(device)
    t0 = time.perf_counter()
    dct.lowpass_matrix(n, kept, device)
    sync(device)
    row["matrix_build_s"] = time.perf_counter() - t0

    methods = {
        "fft": lambda x: dct.lowpass_fft(x, kept, -2),
        "matrix": lambda x: dct.lowpass_matmul(x, kept, -2),
    }
    if device.type == "cuda":

        def tf32(x: torch.Tensor) -> torch.Tensor:
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                return dct.lowpass_matmul(x, kept, -2)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous

        methods["matrix_tf32"] = tf32

    ref = (
        reference(inputs[0][(0,) * (len(shape) - 3)][None] if len(shape) > 4 else inputs[0], kept)
        if args.check
        else None
    )
    for method, fn in methods.items():
        for _ in range(args.warmup):
            fn(inputs[0])
        sync(device)
        times = time_calls(fn, inputs, device, args.min_seconds, args.max_reps, args.min_reps, args.clock)
        row[f"{method}_ms"] = 1000 * statistics.median(times)
        row[f"{method}_reps"] = len(times)
        row[f"{method}_spread"] = (max(times) - min(times)) / statistics.median(times)
        if ref is not None:
            probe = inputs[0][(0,) * (len(shape) - 3)][None] if len(shape) > 4 else inputs[0]
            row[f"{method}_relerr"] = rel_err(fn(probe), ref)
    row["winner"] = "fft" if row["fft_ms"] <= row["matrix_ms"] else "matrix"
    row["matrix_over_fft"] = row["matrix_ms"] / row["fft_ms"]
    # Bytes the operator must at least move (read n x d, write kept x d, float32) -> GB/s achieved.
    elems_in = math.prod(shape)
    row["min_bytes"] = 4 * (elems_in + elems_in * kept // n)
    row["matrix_gflop"] = 2 * kept * elems_in / 1e9
    del inputs
    dct.clear_cached()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def environment(devices: list[torch.device], clock: str) -> dict:
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "tf32_default": torch.backends.cuda.matmul.allow_tf32,
        "cpu_clock": clock,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if any(d.type == "cuda" for d in devices):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def markdown(rows: list[dict]) -> str:
    has_tf32 = any("matrix_tf32_ms" in r for r in rows)
    head = "| device | shape | n -> kept | fft ms | matrix ms | matrix / fft | winner |"
    rule = "| --- | --- | --- | ---: | ---: | ---: | --- |"
    if has_tf32:
        head += " matrix TF32 ms |"
        rule += " ---: |"
    head += " matrix build s |"
    rule += " ---: |"
    lines = [head, rule]
    for r in rows:
        line = (
            f"| {r['device']} | {r['shape_name']} {tuple(r['shape'])} | {r['n']} -> {r['kept']} | "
            f"{r['fft_ms']:.3f} | {r['matrix_ms']:.3f} | {r['matrix_over_fft']:.2f} | {r['winner']} |"
        )
        if has_tf32:
            line += f" {r['matrix_tf32_ms']:.3f} |" if "matrix_tf32_ms" in r else " - |"
        line += f" {r['matrix_build_s']:.2f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu + cuda if present)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1020, 4092, 8188])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        help=f"of {', '.join(SHAPES)}; default: all on cuda, all but llama-cache on cpu "
        "(on a CPU the cache passes one layer at a time: 2x the llama shape)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="CPU timing: wall clock, or this process's CPU time (use with --threads 1 on a loaded machine)",
    )
    parser.add_argument("--min-reps", type=int, default=None, help="default cpu 3, cuda 5")
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up calls per method (default cpu 1, cuda 2)"
    )
    parser.add_argument(
        "--min-seconds", type=float, default=None, help="time budget per method (default cpu 2, cuda 0.5)"
    )
    parser.add_argument("--max-reps", type=int, default=None, help="default cpu 15, cuda 100")
    parser.add_argument(
        "--no-check", dest="check", action="store_false", help="skip the float64 accuracy check"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dct.json")
    parser.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "results" / "dct.md")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    devices = [torch.device(d) for d in names]
    env = environment(devices, args.clock)
    print("bench_dct: FreqKV low-pass operator, fft vs cached matrix, float32 inputs, kept = n // 2")
    for key, value in env.items():
        print(f"  {key}: {value}")
    print(
        "  warm-up calls (cpu 1, cuda 2 unless --warmup); median of repeats over 4 rotating inputs; "
        f"{'process CPU time' if args.clock == 'cpu' else 'host clock'} on cpu, CUDA events on cuda",
        flush=True,
    )
    rows: list[dict] = []
    for device in devices:
        min_s = args.min_seconds if args.min_seconds is not None else (2.0 if device.type == "cpu" else 0.5)
        reps = args.max_reps if args.max_reps is not None else (15 if device.type == "cpu" else 100)
        min_reps = args.min_reps if args.min_reps is not None else (3 if device.type == "cpu" else 5)
        warmup = args.warmup if args.warmup is not None else (1 if device.type == "cpu" else 2)
        local = argparse.Namespace(
            **{**vars(args), "min_seconds": min_s, "max_reps": reps, "min_reps": min_reps, "warmup": warmup}
        )
        shapes = args.shapes or [n for n in SHAPES if not (device.type == "cpu" and n == "llama-cache")]
        for name in shapes:
            for n in args.sizes:
                row = bench_one(device, name, n, local)
                rows.append(row)
                extra = f", tf32 {row['matrix_tf32_ms']:.3f} ms" if "matrix_tf32_ms" in row else ""
                errs = ", ".join(f"{k[:-7]} {v:.1e}" for k, v in row.items() if k.endswith("_relerr"))
                print(
                    f"{device.type:4s} {name:11s} {tuple(row['shape'])!s:24s} fft {row['fft_ms']:9.3f} ms, "
                    f"matrix {row['matrix_ms']:9.3f} ms{extra} -> {row['winner']} "
                    f"({row['matrix_over_fft']:.2f}x); "
                    f"build {row['matrix_build_s']:.2f} s; rel err vs fp64: {errs}",
                    flush=True,
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    table = markdown(rows)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(table)
    print()
    print(table)
    for device in sorted({r["device"] for r in rows}):
        mine = [r for r in rows if r["device"] == device]
        # What lowpass(method="auto") picks for these float32 inputs (no TF32).
        right = sum(r["winner"] == ("fft" if device == "cpu" or r["n"] >= 4092 else "matrix") for r in mine)
        fft_wins = sum(r["winner"] == "fft" for r in mine)
        print(
            f"{device}: fft wins {fft_wins} of {len(mine)} cases; "
            f"the library's auto choice is the faster one in {right} of {len(mine)}"
        )
    print(f"written: {args.out} and {args.md}")


if __name__ == "__main__":
    main()
