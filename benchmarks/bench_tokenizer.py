"""Hugging Face fast tokenizer vs its exact tiktoken twin (`freqkv_cli.models.fast_tokenizer`).

Same corpus, same run, same process: `samples/botchan.txt` plus a spread of the venv's
*.py/*.md/*.txt files (every k-th file, each cut at 60 KB) up to --mb megabytes. Before any timing
the twin's ids are checked against the HF ids on the whole corpus (the run stops if one differs).

Call patterns, each timed --repeats rounds, the contenders interleaved in rotating order (median and
min reported, tokens/s from the median):

- ``document``: one call per document (`freqkv count` on a text file, one page);
- ``page``: documents cut in 3,000-character pages, one call per page (`freqkv count` on a PDF,
  the streaming engine's per-page/block encode);
- ``small``: 300-character pieces, one call each (many tiny calls: per-call overhead);
- ``batch``: one batched call over all documents (HF: Rust thread pool; tiktoken: encode_batch).

Contenders:

- ``hf``: `tokenizer(text, add_special_tokens=False)["input_ids"]`, what freqkv calls today;
- ``hf-rust``: `tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids` (no
  transformers layer, the fastest way to use the HF tokenizer);
- ``tiktoken``: `FastBPE.encode` (the fallback scan for bytes the vocab lacks included);
- ``count``: `count_tokens(texts, tokenizer)` on the same calls.

Usage::

    python benchmarks/bench_tokenizer.py                      # 4 MB, 5 repeats
    python benchmarks/bench_tokenizer.py --mb 8 --repeats 7 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import site
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from freqkv_cli.models import fast_tokenizer as ft  # noqa: E402
from freqkv_cli.models.tokenizer import load_tokenizer  # noqa: E402


def corpus(limit: int, per_file: int = 60_000) -> list[str]:
    """Same recipe as tests/test_fast_tokenizer.py::corpus."""
    texts = [(ROOT / "samples" / "botchan.txt").read_text(encoding="utf-8")]
    size = len(texts[0].encode())
    packages = Path(site.getsitepackages()[0])
    files = sorted(p for ext in ("py", "md", "txt") for p in packages.rglob(f"*.{ext}") if p.is_file())
    step = max(1, len(files) // 400)
    for offset in range(step):
        for path in files[offset::step]:
            try:
                text = path.read_text(encoding="utf-8")[:per_file]
            except (OSError, UnicodeDecodeError):
                continue
            texts.append(text)
            size += len(text.encode())
            if size >= limit:
                return texts
    return texts


def cut(texts: list[str], size: int) -> list[str]:
    return [text[i : i + size] for text in texts for i in range(0, len(text), size)]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def interleaved(fns: dict[str, Callable[[], int]], repeats: int) -> dict[str, tuple[list[float], int]]:
    """Each contender once per round, the order rotating, so load changes hit all of them alike."""
    for fn in fns.values():
        fn()  # warm-up (caches, thread pools)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    tokens: dict[str, int] = {}
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            tokens[name] = fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (times[name], tokens[name]) for name in names}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=4.0, help="corpus size in MB (default 4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="default", help="tokenizer to compare (default: SmolLM2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import tiktoken
    import tokenizers
    import transformers

    tok = load_tokenizer(args.model)
    backend = tok.backend_tokenizer  # type: ignore[attr-defined]
    start = time.perf_counter()
    fast = ft.build(tok)
    build_s = time.perf_counter() - start
    texts = corpus(int(args.mb * 1e6))
    size = sum(len(t.encode()) for t in texts)

    info = {
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "tiktoken": tiktoken.__version__,
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
        "tokenizer": getattr(tok, "name_or_path", args.model),
        "corpus_mb": round(size / 1e6, 3),
        "documents": len(texts),
        "build_s": round(build_s, 3),
        "rayon_threads": os.environ.get("RAYON_NUM_THREADS", "default"),
        "load_avg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    for key, value in info.items():
        print(f"{key:>13}: {value}")

    # Identity first: no speed number for a twin that is not exact.
    patterns = {"document": texts, "page": cut(texts, 3000), "small": cut(texts, 300)}
    checked = 0
    for name, calls in patterns.items():
        want = tok(calls, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        for text, ids, have in zip(calls, want, fast.encode_batch(calls), strict=True):
            if have is not None and have != list(ids):
                print(f"MISMATCH ({name}) on {text[:60]!r}: the twin must not be used")
                return 1
            checked += len(text.encode()) if have is not None else 0
    print(f"{'identical':>13}: {checked / 1e6:.2f} MB of calls (document+page+small), 0 mismatches\n")

    specials = fast.specials
    enc = fast.encoding

    def per_call(encode: Callable[[str], list[int]], calls: list[str]) -> Callable[[], int]:
        return lambda: sum(len(encode(text)) for text in calls)

    contenders: dict[str, Callable[[list[str]], Callable[[], int]]] = {
        "hf": lambda calls: per_call(lambda t: tok(t, add_special_tokens=False)["input_ids"], calls),  # type: ignore[operator]
        "hf-rust": lambda calls: per_call(lambda t: backend.encode(t, add_special_tokens=False).ids, calls),
        "tiktoken": lambda calls: per_call(fast.encode, calls),  # type: ignore[arg-type]
        "count": lambda calls: lambda: sum(ft.count_tokens(t, tok) for t in calls),
    }
    batch = {
        "hf": lambda: sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]),  # type: ignore[operator]
        "hf-rust": lambda: sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)),
        "tiktoken": lambda: sum(
            len(ids) for ids in enc.encode_batch(texts, allowed_special=specials, disallowed_special=())
        ),
        "count": lambda: ft.count_tokens(texts, tok),
    }

    results: dict[str, dict] = {}
    print(f"{'pattern':<9}{'calls':>8}  {'contender':<9}{'median s':>10}{'min s':>9}{'Mtok/s':>9}{'MB/s':>8}")
    for name in [*patterns, "batch"]:
        calls = patterns.get(name, texts)
        row: dict[str, dict] = {}
        fns = {who: batch[who] if name == "batch" else contenders[who](calls) for who in contenders}
        for who, (times, tokens) in interleaved(fns, args.repeats).items():
            median = statistics.median(times)
            row[who] = {
                "median_s": round(median, 4),
                "min_s": round(min(times), 4),
                "tokens": tokens,
                "tokens_per_s": round(tokens / median),
                "mb_per_s": round(size / 1e6 / median, 3),
            }
            n_calls = len(calls) if name != "batch" else 1
            print(
                f"{name:<9}{n_calls:>8}  {who:<9}{median:>10.3f}{min(times):>9.3f}"
                f"{tokens / median / 1e6:>9.3f}{size / 1e6 / median:>8.2f}"
            )
        counts = {v["tokens"] for v in row.values()}
        assert len(counts) == 1, f"token counts differ: {row}"
        row["ratio_tiktoken_vs_hf"] = round(row["hf"]["median_s"] / row["tiktoken"]["median_s"], 2)
        row["ratio_tiktoken_vs_hf_rust"] = round(row["hf-rust"]["median_s"] / row["tiktoken"]["median_s"], 2)
        row["ratio_count_vs_hf"] = round(row["hf"]["median_s"] / row["count"]["median_s"], 2)
        results[name] = row
        print(
            f"{'':<17}tiktoken is {row['ratio_tiktoken_vs_hf']}x hf, "
            f"{row['ratio_tiktoken_vs_hf_rust']}x hf-rust; count_tokens is {row['ratio_count_vs_hf']}x hf"
        )
    info["load_avg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at start {info['load_avg_start']}, at end {info['load_avg_end']} (1/5/15 min)")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
