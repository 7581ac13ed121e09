"""Quality benchmark: what FreqKV costs against a full cache and sink truncation, training-free.

Runs the project's own CLI commands (``freqkv eval ppl``, ``freqkv eval needle``,
``freqkv spectrum``, all with ``--json --plot``) in one process, so the model is loaded once
(the loader is memoized; every command still parses its own flags and runs its own code),
and writes:

- ``quality.json``: every command line, its exit code, wall seconds and parsed JSON output,
  plus the machine and versions;
- ``quality.log``: what the commands printed on stderr (one line per scored context);
- ``quality.md``: the tables (``--render quality.json`` rebuilds them from the JSON alone);
- ``plots.tar``: the PNGs (the device machine returns at most 8 files).

The JSON, log and tar are rewritten after every step, so a run cut short still returns
what it finished.

Steps (names for ``--steps``):

- ``ppl``: perplexity at ``--lengths`` for full, sink, freqkv at each ``--windows``, on every text;
- ``sweep``: freqkv only, ``--sweep-window``, every ratio x recent, at ``--sweep-lengths``;
- ``needle``: needle heatmaps, ``--needle-window`` at ``--needle-lengths`` (and optionally a
  second window, ``needle2``);
- ``spectrum``: ``freqkv spectrum`` on every text;
- ``ppl32``: the first window of ``ppl`` again in float32 (only when the model runs in bf16).

Usage::

    python benchmarks/bench_quality.py --out-dir $OUT                       # everything (GPU)
    python benchmarks/bench_quality.py --out-dir /tmp/q --device cpu --lengths 512,1k \\
        --windows 128,256 --sweep-window 128 --sweep-lengths 512 --needle-window 128 \\
        --needle-lengths 256,512 --seeds 1 --spectrum-tokens 512 --steps ppl,sweep,needle,spectrum
    python benchmarks/bench_quality.py --render benchmarks/results/quality/quality.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_TEXTS = [
    "samples/botchan.txt",
    "benchmarks/texts/paradise-lost.txt",
    "benchmarks/texts/kjv-genesis-exodus.txt",
]
ALL_STEPS = "ppl,sweep,needle,spectrum,needle2,ppl32"


# -- running the CLI in-process ----------------------------------------------------------------
class Runner:
    """Runs ``freqkv`` argument lists in this process and keeps everything for the report."""

    def __init__(self, out: Path, meta: dict[str, Any], plot_dir: Path) -> None:
        self.out = out
        self.plot_dir = plot_dir
        self.log_path = out / "quality.log"
        self.json_path = out / "quality.json"
        self.report: dict[str, Any] = {"meta": meta, "steps": []}
        self.started = time.perf_counter()
        self._memoize_loader()

    @staticmethod
    def _memoize_loader() -> None:
        """Load each (model, device, dtype) once: every command loads through ``ModelChoice.load``."""
        from freqkv_cli.cli.options import ModelChoice

        cache: dict[tuple, Any] = {}
        original = ModelChoice.load

        def load(choice: Any, readout: Any) -> Any:
            key = (choice.model, choice.base, choice.device, choice.dtype, choice.trust_remote_code)
            if key not in cache:
                began = time.perf_counter()
                cache[key] = original(choice, readout)
                sys.stderr.write(f"[bench] loaded {key} in {time.perf_counter() - began:.1f} s\n")
            return cache[key]

        ModelChoice.load = load  # type: ignore[method-assign]

    def log(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(text + "\n")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def run(self, name: str, argv: list[str], **extra: Any) -> dict[str, Any] | None:
        from freqkv_cli.cli.app import run as freqkv_run

        command = "freqkv " + shlex.join(argv)
        self.log(f"\n$ {command}")
        stdout, stderr = io.StringIO(), io.StringIO()
        began = time.perf_counter()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = freqkv_run(argv)
        seconds = time.perf_counter() - began
        for line in stderr.getvalue().splitlines():
            self.log("  " + line)
        data = None
        text = stdout.getvalue().strip()
        if code == 0 and text:
            try:
                data = json.loads(text.splitlines()[-1])
            except ValueError:
                self.log("  [bench] stdout was not JSON: " + text[:300])
        self.log(f"  [bench] exit {code}, {seconds:.1f} s (total {self.elapsed():.0f} s)")
        self.report["steps"].append(
            {
                "name": name,
                "command": command,
                "exit": code,
                "seconds": round(seconds, 2),
                "json": data,
                **extra,
            }
        )
        self.save()
        return data

    def save(self) -> None:
        self.report["meta"]["total_seconds"] = round(self.elapsed(), 1)
        self.json_path.write_text(json.dumps(self.report, indent=1, ensure_ascii=False) + "\n")
        pngs = sorted(self.plot_dir.glob("*.png"))
        if pngs:
            with tarfile.open(self.out / "plots.tar", "w") as tar:
                for png in pngs:
                    tar.add(png, arcname=png.name)
        (self.out / "quality.md").write_text(render(self.report))


def machine_info(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformers_path": str(Path(transformers.__file__).parent),
        "requested_device": device,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    from importlib import metadata

    for package in ("gguf", "tokenizers", "matplotlib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[package] = metadata.version(package)
    try:
        info["git"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git"] = os.environ.get("FREQKV_GIT", "unknown")
    return info


# -- the benchmark -------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="benchmarks/results/quality")
    parser.add_argument("--plot-dir", help="Where the PNGs go before they are tarred [--out-dir].")
    parser.add_argument("--render", help="Only rebuild quality.md from this quality.json.")
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--texts", nargs="+", default=DEFAULT_TEXTS)
    parser.add_argument("--steps", default="ppl,sweep,needle,spectrum,needle2,ppl32")
    parser.add_argument("--lengths", default="4k,8k,16k,32k")
    parser.add_argument("--windows", default="1024,2048")
    parser.add_argument("--sweep-window", default="1024")
    parser.add_argument("--sweep-lengths", default="8k")
    parser.add_argument("--ratios", default="0.25,0.5,0.75")
    parser.add_argument("--recents", default="0,64,256")
    parser.add_argument("--needle-window", default="1024")
    parser.add_argument("--needle-lengths", default="2k,4k")
    parser.add_argument("--needle2-window", default="2048")
    parser.add_argument("--needle2-lengths", default="4k,8k")
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--spectrum-tokens", default="4k")
    parser.add_argument(
        "--budget", type=float, default=0, help="Seconds: skip the optional steps (needle2, ppl32) past this."
    )
    args = parser.parse_args()

    if args.render:
        report = json.loads(Path(args.render).read_text())
        target = Path(args.render).with_name("quality.md")
        target.write_text(render(report))
        print(f"wrote {target}")
        return 0

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("quality.log", "quality.json", "quality.md", "plots.tar"):
        (out / stale).unlink(missing_ok=True)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    meta = machine_info(args.device) | {"args": vars(args)}
    plot_dir = Path(args.plot_dir) if args.plot_dir else out
    plot_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, meta, plot_dir)
    runner.log("[bench] " + json.dumps(meta))
    common = ["--model", args.model, "--device", args.device, "--dtype", args.dtype]
    texts = args.texts
    windows = [w.strip() for w in args.windows.split(",") if w.strip()]
    optional = {"needle2", "ppl32"}

    def over_budget(step: str) -> bool:
        if args.budget and step in optional and runner.elapsed() > args.budget:
            runner.log(f"[bench] skipping {step}: {runner.elapsed():.0f} s > budget {args.budget:.0f} s")
            return True
        return False

    for step in steps:
        if over_budget(step):
            continue
        if step == "ppl":
            for window in windows:
                runner.run(
                    f"ppl_w{window}",
                    [
                        "eval",
                        "ppl",
                        *texts,
                        "--lengths",
                        args.lengths,
                        "--cache",
                        "full,sink,freqkv",
                        "--window",
                        window,
                        *common,
                        "--json",
                        "--plot",
                        str(plot_dir / f"ppl_w{window}.png"),
                    ],
                    kind="ppl",
                    window=int(window),
                )
        elif step == "sweep":
            for ratio in args.ratios.split(","):
                for recent in args.recents.split(","):
                    runner.run(
                        f"sweep_r{ratio}_R{recent}",
                        [
                            "eval",
                            "ppl",
                            *texts,
                            "--lengths",
                            args.sweep_lengths,
                            "--cache",
                            "freqkv",
                            "--window",
                            args.sweep_window,
                            "--ratio",
                            ratio,
                            "--recent",
                            recent,
                            *common,
                            "--json",
                        ],
                        kind="sweep",
                        ratio=float(ratio),
                        recent=int(recent),
                    )
            plot_sweep(runner.report, plot_dir / f"sweep_w{args.sweep_window}.png")
        elif step in ("needle", "needle2"):
            window = args.needle_window if step == "needle" else args.needle2_window
            lengths = args.needle_lengths if step == "needle" else args.needle2_lengths
            runner.run(
                f"needle_w{window}",
                [
                    "eval",
                    "needle",
                    "--lengths",
                    lengths,
                    "--depths",
                    args.depths,
                    "--cache",
                    "full,sink,freqkv",
                    "--seeds",
                    str(args.seeds),
                    "--window",
                    window,
                    *common,
                    "--json",
                    "--plot",
                    str(plot_dir / f"needle_w{window}.png"),
                ],
                kind="needle",
                window=int(window),
            )
        elif step == "spectrum":
            for text in texts:
                stem = Path(text).stem
                runner.run(
                    f"spectrum_{stem}",
                    [
                        "spectrum",
                        text,
                        "--tokens",
                        args.spectrum_tokens,
                        *common,
                        "--json",
                        "--plot",
                        str(plot_dir / f"spectrum_{stem}.png"),
                    ],
                    kind="spectrum",
                )
        elif step == "ppl32":
            window = windows[0]
            done = [s["json"] for s in runner.report["steps"] if s.get("kind") == "ppl" and s["json"]]
            if done and done[0]["dtype"] == "float32":
                runner.log("[bench] skipping ppl32: the model already runs in float32")
                continue
            runner.run(
                f"ppl_w{window}_float32",
                [
                    "eval",
                    "ppl",
                    *texts,
                    "--lengths",
                    args.lengths,
                    "--cache",
                    "full,sink,freqkv",
                    "--window",
                    window,
                    "--model",
                    args.model,
                    "--device",
                    args.device,
                    "--dtype",
                    "float32",
                    "--json",
                    "--plot",
                    str(plot_dir / f"ppl_w{window}_float32.png"),
                ],
                kind="ppl",
                window=int(window),
            )
        else:
            runner.log(f"[bench] unknown step {step!r}")
    runner.save()
    failed = [s["name"] for s in runner.report["steps"] if s["exit"] != 0]
    runner.log(f"[bench] done in {runner.elapsed():.0f} s; failed steps: {failed or 'none'}")
    return 1 if failed else 0


def plot_sweep(report: dict[str, Any], path: Path) -> None:
    """Heatmap of freqkv perplexity (token-weighted over the texts) over ratio x recent."""
    cells = _sweep_cells(report)
    if not cells:
        return
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return
    ratios = sorted({r for r, _, _ in cells})
    recents = sorted({R for _, R, _ in cells})
    lengths = sorted({n for _, _, n in cells})
    figure = Figure(figsize=(3.2 * len(lengths) + 1, 3.2), layout="constrained")
    axes_list = figure.subplots(1, len(lengths), squeeze=False)[0]
    for axes, length in zip(axes_list, lengths, strict=True):
        data = [[cells.get((r, R, length), float("nan")) for R in recents] for r in ratios]
        image = axes.imshow(data, cmap="viridis_r", aspect="auto")
        for i, row in enumerate(data):
            for j, value in enumerate(row):
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9, color="white")
        axes.set_xticks(range(len(recents)), [str(R) for R in recents])
        axes.set_yticks(range(len(ratios)), [f"{r:g}" for r in ratios])
        axes.set_xlabel("recent R")
        axes.set_ylabel("ratio r")
        axes.set_title(f"freqkv ppl at {_label(length)}", fontsize=9)
        figure.colorbar(image, ax=axes)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def _sweep_cells(report: dict[str, Any]) -> dict[tuple[float, int, int], float]:
    cells = {}
    for step in report["steps"]:
        if step.get("kind") == "sweep" and step["json"]:
            for row in step["json"]["summary"]:
                cells[(step["ratio"], step["recent"], row["length"])] = row["ppl"]
    return cells


# -- the report ----------------------------------------------------------------------------------
def _label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    steps = report["steps"]
    lines = ["# Quality benchmark (generated by benchmarks/bench_quality.py)", ""]
    keys = ("date", "gpu", "cuda", "torch", "transformers", "python", "git", "total_seconds")
    lines += [", ".join(f"{k}: {meta[k]}" for k in keys if k in meta), ""]
    first = next((s["json"] for s in steps if s["json"]), None)
    if first:
        lines += [
            f"model {first.get('model')} · device {first.get('device')} · dtype {first.get('dtype')} · "
            f"native window {first.get('native_window')}",
            "",
        ]
    for step in steps:
        data = step["json"]
        lines += [f"## {step['name']}", "", "```", step["command"], "```", ""]
        if data is None:
            lines += [f"failed: exit {step['exit']} (see quality.log)", ""]
            continue
        kind = step.get("kind")
        if kind == "ppl":
            lines += _ppl_section(data)
        elif kind == "needle":
            lines += _needle_section(data)
        elif kind == "spectrum":
            lines += _spectrum_section(data)
        elif kind == "sweep":
            rows = [
                [r["file"], _label(r["length"]), f"{r['ppl']:.3f}", f"{r['seconds']:.1f}"]
                for r in data["results"]
            ]
            lines += _table(["text", "length", "freqkv ppl", "s"], rows)
    sweep = _sweep_section(report)
    if sweep:
        lines += ["## sweep summary (token-weighted over the texts)", "", *sweep]
    return "\n".join(lines) + "\n"


def _ppl_section(data: dict[str, Any]) -> list[str]:
    lengths = data["lengths"]
    out = [
        f"window {data['window']}, sink {data['sink']}, recent {data['recent']}, ratio {data['ratio']}, "
        f"dtype {data['dtype']}, {data['seconds']:.0f} s. `*` = full cache past the native window "
        f"({data['native_window']}): RoPE extrapolation.",
        "",
    ]
    grid = {(r["file"], r["cache"], r["length"]): r for r in data["results"]}
    rows = []
    for file in data["files"]:
        for cache in data["caches"]:
            cells = []
            for n in lengths:
                r = grid.get((file, cache, n))
                cells.append("—" if r is None else f"{r['ppl']:.3f}{'*' if r['extrapolated'] else ''}")
            rows.append([file, cache, *cells])
    summary = {(r["cache"], r["length"]): r for r in data["summary"]}
    for cache in data["caches"]:
        cells = []
        for n in lengths:
            r = summary.get((cache, n))
            cells.append("—" if r is None else f"**{r['ppl']:.3f}**{'*' if r['extrapolated'] else ''}")
        rows.append(["all (token-weighted)", cache, *cells])
    out += _table(["text", "cache", *(_label(n) for n in lengths)], rows)
    # Relative to the sink baseline.
    rel = []
    for n in lengths:
        s, f, full = summary.get(("sink", n)), summary.get(("freqkv", n)), summary.get(("full", n))
        if s and f:
            rel.append(
                [
                    _label(n),
                    f"{f['ppl'] / s['ppl'] - 1:+.1%}",
                    f"{f['ppl'] / full['ppl'] - 1:+.1%}" if full else "—",
                ]
            )
    if rel:
        out += ["freqkv against sink and full (token-weighted ppl):", ""]
        out += _table(["length", "freqkv vs sink", "freqkv vs full"], rel)
    # Loss along the context at the longest length, mean over the files.
    longest = max(lengths)
    runs = [r for r in data["results"] if r["length"] == longest]
    if runs and runs[0]["buckets"]:
        edges = [(b["start"], b["end"]) for b in runs[0]["buckets"]]
        rows = []
        for cache in data["caches"]:
            own = [r for r in runs if r["cache"] == cache]
            if own:
                means = [sum(r["buckets"][i]["nll"] for r in own) / len(own) for i in range(len(edges))]
                rows.append([cache, *(f"{m:.3f}" for m in means)])
        texts = len(runs) // len(rows)
        out += [f"loss along the context at {_label(longest)} (nats/token, mean of {texts} texts):", ""]
        out += _table(["cache", *(f"{a}–{b - 1}" for a, b in edges)], rows)
    speed = [
        [r["file"], r["cache"], _label(r["length"]), f"{r['seconds']:.2f}", f"{r['tokens_per_second']:,.0f}"]
        for r in data["results"]
        if r["length"] == longest
    ]
    out += [f"time at {_label(longest)}:", "", *_table(["text", "cache", "length", "s", "tok/s"], speed)]
    return out


def _needle_section(data: dict[str, Any]) -> list[str]:
    lengths, depths = data["lengths"], data["depths"]
    grid = {(c["cache"], c["length"], c["depth"]): c for c in data["grid"]}
    out = [
        f"window {data['window']}, sink {data['sink']}, recent {data['recent']}, ratio {data['ratio']}, "
        f"{data['seeds']} seeds per cell, haystack {data['haystack']}, dtype {data['dtype']}, "
        f"{data['seconds']:.0f} s. Cells: right / trials.",
        "",
    ]
    rows = []
    for cache in data["caches"]:
        for depth in depths:
            cells = []
            for n in lengths:
                c = grid.get((cache, n, depth))
                cells.append("—" if c is None else f"{c['correct']}/{c['trials']}")
            rows.append([cache, f"{depth:g}", *cells])
        totals = []
        for n in lengths:
            own = [c for c in data["grid"] if c["cache"] == cache and c["length"] == n]
            right, tried = sum(c["correct"] for c in own), sum(c["trials"] for c in own)
            totals.append(f"**{right}/{tried}**")
        rows.append([cache, "all", *totals])
    out += _table(["cache", "depth", *(_label(n) for n in lengths)], rows)
    wrong = [t for t in data["results"] if not t["correct"]][:12]
    if wrong:
        out += ["some wrong answers:", ""]
        out += _table(
            ["cache", "length", "depth", "key", "answer"],
            [
                [t["cache"], _label(t["length"]), f"{t['depth']:g}", t["key"], repr(t["answer"][:60])]
                for t in wrong
            ],
        )
    return out


def _spectrum_section(data: dict[str, Any]) -> list[str]:
    mean = data["mean"]
    fr = data["fractions"]
    header = ["", *(f"lowest {f:.0%}" for f in fr), f"error at ratio {data['ratio']:g}"]
    rows = [
        ["keys", *(f"{s:.1%}" for s in mean["keys"]["shares"]), f"{mean['keys']['error']:.3f}"],
        ["values", *(f"{s:.1%}" for s in mean["values"]["shares"]), f"{mean['values']['error']:.3f}"],
    ]
    return [f"{data['document']}, {data['tokens']} tokens, mean over layers:", "", *_table(header, rows)]


def _sweep_section(report: dict[str, Any]) -> list[str]:
    cells = _sweep_cells(report)
    if not cells:
        return []
    ratios = sorted({r for r, _, _ in cells})
    recents = sorted({R for _, R, _ in cells})
    out = []
    for length in sorted({n for _, _, n in cells}):
        rows = [
            [f"{r:g}", *(f"{cells.get((r, R, length), float('nan')):.3f}" for R in recents)] for r in ratios
        ]
        out += [f"freqkv perplexity at {_label(length)} (rows: ratio, columns: recent):", ""]
        out += _table(["ratio \\ recent", *(str(R) for R in recents)], rows)
    return out


if __name__ == "__main__":
    sys.exit(main())
