"""Tables for docs/BENCHMARKS.md from the JSON that `benchmarks/gpu_train.sh eval` wrote.

    python benchmarks/render_finetune.py benchmarks/results/finetune > benchmarks/results/finetune/summary.md

Perplexity is token-weighted over the three texts (exp of total NLL / total tokens), as in
docs/QUALITY.md; per-text values are in the JSON files.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

RUNS = ["w1k", "w1k-r128", "w2k", "w1k-r128-big", "d-w1k-r128", "d50-w1k-r128", "d-w1k-r256"]
CACHES = ["full", "sink", "freqkv"]


def ppl_table(folder: Path, run: str) -> list[str]:
    lines = []
    for kind in ("untuned", "tuned"):
        path = folder / f"ppl_{run}-{kind}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        totals: dict[tuple[str, int], list[float]] = {}
        for row in data["results"]:
            total = totals.setdefault((row["cache"], row["length"]), [0.0, 0])
            total[0] += row["nll"] * row["tokens"]
            total[1] += row["tokens"]
        if not lines:
            head = " | ".join(f"{n // 1024}k" for n in data["lengths"])
            lines += [f"| weights | cache | {head} |", "|---|---|" + "---:|" * len(data["lengths"])]
        for cache in CACHES:
            cells = []
            for n in data["lengths"]:
                nll, count = totals.get((cache, n), (0.0, 0))
                star = "*" if cache == "full" and n > data["native_window"] else ""
                cells.append(f"{math.exp(nll / count):.2f}{star}" if count else "–")
            lines.append(f"| {kind} | {cache} | {' | '.join(cells)} |")
    return lines


def per_text_gap(folder: Path, run: str) -> list[str]:
    """freqkv / sink − 1 per text and length, tuned weights."""
    path = folder / f"ppl_{run}-tuned.json"
    data = json.loads(path.read_text())
    ppl = {(r["file"], r["cache"], r["length"]): r["ppl"] for r in data["results"]}
    files = data["files"]
    lines = ["| text | " + " | ".join(f"{n // 1024}k" for n in data["lengths"]) + " |"]
    lines.append("|---|" + "---:|" * len(data["lengths"]))
    for file in files:
        cells = []
        for n in data["lengths"]:
            if (file, "freqkv", n) in ppl:
                cells.append(f"{100 * (ppl[(file, 'freqkv', n)] / ppl[(file, 'sink', n)] - 1):+.1f}%")
            else:
                cells.append("–")
        lines.append(f"| {Path(file).stem} | {' | '.join(cells)} |")
    return lines


def needle_line(folder: Path, run: str) -> list[str]:
    lines = []
    for kind in ("untuned", "tuned"):
        path = folder / f"needle_{run}-{kind}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        hits: dict[tuple[str, int], list[int]] = {}
        for row in data["results"]:
            cell = hits.setdefault((row["cache"], row["length"]), [0, 0])
            cell[0] += bool(row["correct"])
            cell[1] += 1
        cells = [
            f"{cache} {n // 1024}k: {hits[(cache, n)][0]}/{hits[(cache, n)][1]}"
            for cache in CACHES
            for n in data["lengths"]
        ]
        lines.append(f"| {run} | {kind} | {' · '.join(cells)} |")
    return lines


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/finetune")
    out = []
    for run in RUNS:
        settings = json.loads((folder / f"adapter_{run}.freqkv.json").read_text())
        train = settings["training"]
        out += [
            f"### {run}: window {settings['window']}, recent {settings['recent']}, LoRA r{train['lora_r']} "
            f"on {', '.join(train['target_modules'])}",
            "",
            f"{train['steps']} steps, {train['tokens']:,} tokens, {train['seconds_last_run']:.0f} s, "
            f"final training loss {train['final_loss']}, "
            f"{train['trainable_parameters']:,} trainable parameters.",
            "",
            *ppl_table(folder, run),
            "",
            "FreqKV vs sink at equal (tuned) weights, per text:",
            "",
            *per_text_gap(folder, run),
            "",
        ]
    out += [
        "### Needle (pass key, 5 depths x 5 seeds per length)",
        "",
        "| run | weights | hits |",
        "|---|---|---|",
    ]
    for run in RUNS:
        out += needle_line(folder, run)
    print("\n".join(out))


if __name__ == "__main__":
    main()
