"""CPU streaming benchmark: the embedded SmolLM2-135M (fp32) through full / sink / freqkv caches.

Every configuration runs in a fresh Python subprocess, so its peak RSS (``ru_maxrss`` of
the child itself) is its own and nothing is cached across configurations. For each:

- prefill: ``engine.feed(ids)`` of T tokens of ``samples/botchan.txt`` (repeated as
  needed, tokenized with the model's tokenizer), wall time -> tokens/s;
- decode: ``engine.generate(32)`` greedy right after, wall time / 32 -> ms/token;
- peak RSS of the child, cache stats (entries, compressions, compress_seconds).

Usage::

    python benchmarks/bench_cpu.py                       # the whole grid (slow on 2 cores)
    python benchmarks/bench_cpu.py --lengths 2048 --windows 1024   # a quick subset
    python benchmarks/bench_cpu.py --out benchmarks/results/cpu.json --md benchmarks/results/cpu.md

Writes a JSON file with every measurement and a Markdown table fragment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "botchan.txt"


def _cpu_s() -> float:
    """CPU seconds this process used (user + system): less sensitive to other load than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _matmul_gflops(torch, size: int = 1024, repeats: int = 5) -> float:
    """Median fp32 matmul rate now: a probe of how much CPU the other processes leave us."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    times.sort()
    return 2 * size**3 / times[len(times) // 2] / 1e9


# -- child: one configuration -------------------------------------------------------------
def run_child(kind: str, window: int, tokens: int, decode: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from freqkv_cli.cache.policy import CachePolicy
    from freqkv_cli.engine.streaming import StreamingEngine
    from freqkv_cli.models.loading import load_model

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    loaded = load_model("default")
    load_s = time.perf_counter() - t0
    tokenizer = loaded.tokenizer
    text = SAMPLE.read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    base_len = len(ids)
    while len(ids) < tokens:
        ids = ids + ids[:base_len]
    ids = ids[:tokens]
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    policy = CachePolicy(kind=kind, window=window if kind != "full" else 4096, sink=4, recent=0, ratio=0.5)
    engine = StreamingEngine(loaded.model, policy, tokenizer=tokenizer)
    gflops_before = _matmul_gflops(torch)
    fed = [0]

    def progress(count: int) -> None:
        fed[0] += count
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(
            f"PROGRESS {fed[0]} {time.perf_counter() - t0:.3f} {_cpu_s() - c0:.3f} "
            f"{usage.ru_maxrss / 1024:.1f}",
            flush=True,
        )

    c0 = _cpu_s()
    t0 = time.perf_counter()
    engine.feed(ids, on_progress=progress)
    prefill_s = time.perf_counter() - t0
    prefill_cpu = _cpu_s() - c0
    after_prefill = engine.stats()
    rss_prefill = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    c0 = _cpu_s()
    t0 = time.perf_counter()
    result = engine.generate(max_new_tokens=decode)
    decode_s = time.perf_counter() - t0
    decode_cpu = _cpu_s() - c0
    produced = len(result.token_ids) + (1 if result.stop_reason == "eos" else 0)
    stats = engine.stats()
    gflops_after = _matmul_gflops(torch)
    return {
        "kind": kind,
        "window": None if kind == "full" else window,
        "tokens": tokens,
        "sample_tokens": base_len,
        "load_s": load_s,
        "prefill_s": prefill_s,
        "prefill_tok_s": tokens / prefill_s,
        "prefill_cpu_s": prefill_cpu,
        "prefill_tok_per_cpu_s": tokens / prefill_cpu,
        "decode_tokens": produced,
        "decode_stop": result.stop_reason,
        "decode_ms_per_token": 1000 * decode_s / max(produced, 1),
        "decode_cpu_ms_per_token": 1000 * decode_cpu / max(produced, 1),
        "entries": after_prefill.entries,
        "compressions": after_prefill.compressions,
        "compress_s": after_prefill.compress_seconds,
        "compress_share": after_prefill.compress_seconds / prefill_s,
        "kv_bytes": after_prefill.kv_bytes,
        "kv_reserved_bytes": after_prefill.kv_reserved_bytes,
        "full_kv_bytes": after_prefill.full_kv_bytes,
        "decode_compressions": stats.compressions - after_prefill.compressions,
        # ru_maxrss is in KiB on Linux
        "rss_start_mib": rss_start / 1024,
        "rss_loaded_mib": rss_loaded / 1024,
        "rss_after_prefill_mib": rss_prefill / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        # CPU share actually available to this child: fp32 1024^3 matmul rate around the run
        "matmul_gflops_before": gflops_before,
        "matmul_gflops_after": gflops_after,
        "loadavg_end": os.getloadavg(),
    }


# -- parent: the grid ----------------------------------------------------------------------
def environment() -> dict:
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
    }


def configs(lengths: list[int], windows: list[int], kinds: list[str]) -> list[tuple[str, int, int]]:
    """Per length: the windowed policies (largest window first), then full, whose cost grows
    with the square of the length (it runs last so that a time limit cuts only it)."""
    grid = []
    for tokens in lengths:
        for window in sorted(windows, reverse=True):
            grid += [(kind, window, tokens) for kind in kinds if kind != "full"]
        if "full" in kinds:
            grid.append(("full", 0, tokens))
    return grid


def markdown(rows: list[dict]) -> str:
    full = {r["tokens"]: r for r in rows if r["kind"] == "full" and "error" not in r}
    lines = [
        "| policy | window | tokens | prefill tok/s (wall) | tok per CPU-s | vs full (CPU) "
        "| decode ms/tok (wall) "
        "| decode CPU ms/tok | peak RSS MiB | KV held MiB | compressions | compress share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: (r["tokens"], r["kind"] != "full", r["kind"], r.get("window") or 0)):
        window = r.get("window") or "-"
        if "error" in r:
            done = ""
            if r.get("tokens_done"):
                done = (
                    f"{r['tokens_done']} tokens in {r['elapsed_s']:.0f} s = "
                    f"{r['tokens_done'] / r['elapsed_s']:.0f} tok/s ({r['tokens_done'] / r['cpu_s']:.0f} "
                    f"tok/CPU-s); RSS so far {r['rss_mib']:.0f} MiB; "
                )
            lines.append(
                f"| {r['kind']} | {window} | {r['tokens']} | {done}{r['error'][:80]} | | | | | | | | |"
            )
            continue
        base = full.get(r["tokens"])
        rel = f"{r['prefill_tok_per_cpu_s'] / base['prefill_tok_per_cpu_s']:.2f}x" if base else "-"
        lines.append(
            f"| {r['kind']} | {window} | {r['tokens']} | {r['prefill_tok_s']:.0f} | "
            f"{r['prefill_tok_per_cpu_s']:.0f} | {rel} | {r['decode_ms_per_token']:.1f} | "
            f"{r['decode_cpu_ms_per_token']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['kv_bytes'] / 2**20:.1f} | {r['compressions']} | {100 * r['compress_share']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def run_config(kind: str, window: int, tokens: int, args: argparse.Namespace, timeout: float) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        str(window),
        str(tokens),
        "--decode",
        str(args.decode),
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        timed_out = True
    lines = stdout.splitlines()
    results = [line for line in lines if line.startswith("RESULT ")]
    if results and not timed_out and proc.returncode == 0:
        return json.loads(results[-1][len("RESULT ") :])
    row: dict = {"kind": kind, "window": window or None, "tokens": tokens}
    progress = [line.split() for line in lines if line.startswith("PROGRESS ")]
    if progress:
        _, done, elapsed, cpu, rss = progress[-1]
        row.update(tokens_done=int(done), elapsed_s=float(elapsed), cpu_s=float(cpu), rss_mib=float(rss))
    if timed_out:
        row["error"] = f"stopped at the {timeout:.0f} s limit"
    else:
        row["error"] = f"rc={proc.returncode}: " + (stderr.strip().splitlines() or ["no output"])[-1]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--windows", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--kinds", nargs="+", default=["freqkv", "sink", "full"])
    parser.add_argument("--decode", type=int, default=32, help="tokens decoded after the prefill")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in the child (0: torch default = cores). 1 by default: on a shared "
        "2-core machine two threads stall each other whenever another process runs",
    )
    parser.add_argument("--timeout", type=float, default=1500, help="seconds one configuration may run")
    parser.add_argument(
        "--full-timeout",
        type=float,
        default=600,
        help="seconds full may run beyond 8k tokens; its progress so far is reported if stopped",
    )
    parser.add_argument(
        "--budget-min", type=float, default=60, help="start no configuration after this many minutes"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu.json")
    parser.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "results" / "cpu.md")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "WINDOW", "TOKENS"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="run nothing: combine the results of earlier runs into --out and --md",
    )
    args = parser.parse_args()

    if args.merge:
        merged = [json.loads(path.read_text()) for path in args.merge]
        keyed = {}
        for part in merged:  # a later file's successful row replaces an earlier failed/skipped one
            for row in part["results"]:
                key = (row["kind"], row.get("window"), row["tokens"])
                if key not in keyed or "error" in keyed[key]:
                    keyed[key] = row
        rows = list(keyed.values())
        env = {
            "merged_from": [str(p) for p in args.merge],
            "environments": [m["environment"] for m in merged],
        }
        args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
        args.md.write_text(markdown(rows))
        print(markdown(rows))
        print(f"written: {args.out} and {args.md}")
        return

    if args.child:
        kind, window, tokens = args.child[0], int(args.child[1]), int(args.child[2])
        print("RESULT " + json.dumps(run_child(kind, window, tokens, args.decode, args.threads)), flush=True)
        return

    env = environment()
    env["child_threads"] = args.threads
    print("bench_cpu: streaming the embedded SmolLM2-135M (fp32, CPU), one fresh subprocess per config")
    for key, value in env.items():
        print(f"  {key}: {value}")
    print(f"  sample: {SAMPLE.relative_to(ROOT)} repeated; decode {args.decode} greedy tokens after prefill")
    print("  policy: sink 4, recent 0, ratio 0.5; lowpass auto; max_chunk 2048")
    print(
        "  peak RSS: ru_maxrss of the child; CPU-s: the child's user+system time (robust to other load)",
        flush=True,
    )
    rows: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    for kind, window, tokens in configs(args.lengths, args.windows, args.kinds):
        label = f"{kind:6s} window={window or '-':>5} tokens={tokens:>6}"
        if time.perf_counter() - began > 60 * args.budget_min:
            row = {
                "kind": kind,
                "window": window or None,
                "tokens": tokens,
                "error": f"not run: the {args.budget_min:.0f}-minute budget was spent",
            }
            print(f"{label}: skipped (budget)", flush=True)
            rows.append(row)
            continue
        started = time.perf_counter()
        load = os.getloadavg()
        limit = args.full_timeout if kind == "full" and tokens > 8192 else args.timeout
        row = run_config(kind, window, tokens, args, limit)
        row["loadavg_start"] = load
        if "error" in row:
            partial = ""
            if row.get("tokens_done"):
                partial = (
                    f" after {row['tokens_done']} tokens in {row['elapsed_s']:.0f} s "
                    f"({row['tokens_done'] / row['elapsed_s']:.1f} tok/s, RSS {row['rss_mib']:.0f} MiB)"
                )
            print(f"{label}: FAILED {row['error']}{partial}", flush=True)
        else:
            print(
                f"{label}: prefill {row['prefill_tok_s']:6.1f} tok/s wall, "
                f"{row['prefill_tok_per_cpu_s']:6.1f} tok/CPU-s "
                f"({row['prefill_s']:.0f} s), decode {row['decode_ms_per_token']:6.1f} ms/tok wall "
                f"({row['decode_cpu_ms_per_token']:.1f} CPU), peak RSS {row['peak_rss_mib']:5.0f} MiB, "
                f"entries {row['entries']}, compressions {row['compressions']} "
                f"({100 * row['compress_share']:.1f}% of prefill), "
                f"load {load[0]:.2f}->{os.getloadavg()[0]:.2f}, "
                f"matmul {row['matmul_gflops_before']:.0f}/{row['matmul_gflops_after']:.0f} GFLOP/s "
                f"[{time.perf_counter() - started:.0f} s wall]",
                flush=True,
            )
        rows.append(row)
        args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    env["loadavg_end"] = os.getloadavg()
    env["total_minutes"] = (time.perf_counter() - began) / 60
    args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    table = markdown(rows)
    args.md.write_text(table)
    print()
    print(table)
    full8 = next((r for r in rows if r["kind"] == "full" and r["tokens"] == 8192 and "error" not in r), None)
    for r in rows:
        if full8 and r["kind"] in ("freqkv", "sink") and r["tokens"] == 8192 and "error" not in r:
            print(
                f"{r['kind']} window {r['window']} at 8k: "
                f"{r['prefill_tok_per_cpu_s'] / full8['prefill_tok_per_cpu_s']:.2f}x "
                f"the tokens per CPU-second of full, "
                f"{r['prefill_tok_s'] / full8['prefill_tok_s']:.2f}x its wall-clock "
                f"tokens/s (expected >= 0.85x)"
            )
    for kind in ("sink", "freqkv", "full"):
        for window in [None] if kind == "full" else args.windows:
            rss = [
                (r["tokens"], r["peak_rss_mib"])
                for r in rows
                if r["kind"] == kind and r.get("window") == window and "error" not in r
            ]
            if rss:
                print(
                    f"{kind} window {window or '-'}: peak RSS "
                    + ", ".join(f"{t}: {m:.0f} MiB" for t, m in rss)
                )
    print(f"total {env['total_minutes']:.1f} min; written: {args.out} and {args.md}")


if __name__ == "__main__":
    main()
