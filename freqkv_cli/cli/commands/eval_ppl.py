"""`freqkv eval ppl FILE...`: long-text perplexity of each cache policy at each context length."""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from ...documents import open_document
from ...errors import InputError
from ...evaluation import perplexity as ppl_lib
from ...evaluation import plots
from ...sizes import format_count, format_size
from .. import options as o
from ..comparing import CachesOpt, Comparison, LengthsOpt, encoder
from ..output import show_table, table, tables_console

EXTRAPOLATED_NOTE = "* past the model's native window ({native} positions): RoPE extrapolation"


@o.takes(shared=o.COMPARED, model=o.MODEL, output=o.OUTPUT)
def ppl(
    files: Annotated[
        list[str], typer.Argument(help="Text files or PDFs (long ones: books).", show_default=False)
    ],
    *,
    lengths: LengthsOpt = "4k,8k",
    cache: CachesOpt = "full,sink,freqkv,hybrid",
    shared: o.CacheChoice,
    model: o.ModelChoice,
    buckets: Annotated[
        int, o.option("--buckets", min=1, max=64, panel=o.OUTPUT_PANEL, help="Position buckets of the loss.")
    ] = 8,
    plot: o.PlotOpt = None,
    output: o.OutputChoice,
) -> None:
    """Long-text perplexity of each cache policy at each context length.

    The first LENGTH tokens of each file are streamed through the cache; every token is
    scored by the model that has read everything before it (as the paper does for PG-19).
    A file shorter than a length is skipped for it, with a warning.

    Examples:

      freqkv eval ppl book.txt --lengths 4k,8k,16k --window 2k

      freqkv eval ppl a.txt b.txt --cache sink,freqkv --ratio 0.25 --json

      freqkv eval ppl book.txt --lengths 2k,4k,8k --plot ppl.png
    """
    comparison = Comparison.of(lengths, cache, shared, plot)
    wanted = comparison.lengths
    readout = output.readout
    documents = [open_document(path) for path in files]  # bad input fails before loading
    loaded = model.load(readout)
    policies = comparison.on(loaded)
    encode = encoder(loaded, special=True)  # the tokenizer's own BOS convention, as in training

    contexts: list[tuple[str, list[int]]] = []
    skipped: list[dict[str, Any]] = []
    for document in documents:
        text = document.text()
        ids = ppl_lib.first_tokens(encode, text, wanted[-1]) or encode(text)
        for length in wanted:
            if len(ids) < length:
                skipped.append({"file": document.name, "length": length, "tokens": len(ids)})
                short = f"{format_count(len(ids))} tokens, shorter than {format_size(length)}"
                readout.warn(f"{document.name}: {short}: skipped at that length")
        contexts.append((document.name, ids))
    plan = [(name, ids[:length]) for name, ids in contexts for length in wanted if len(ids) >= length]
    if not plan:
        raise InputError(f"no file is as long as {format_size(wanted[0])} tokens: use smaller --lengths")

    runs: list[ppl_lib.PerplexityRun] = []
    bar = readout.token_progress()
    with bar:
        task = bar.add_task("", total=sum(len(ids) for _, ids in plan) * len(policies))
        for name, ids in plan:
            for policy in policies:
                bar.update(task, description=f"{name} · {format_size(len(ids))} · {policy.kind}")
                run = ppl_lib.run_perplexity(
                    loaded.model,
                    policy,
                    ids,
                    file=name,
                    native_window=loaded.native_window,
                    buckets=buckets,
                    on_progress=functools.partial(bar.advance, task),
                )
                runs.append(run)
                readout.info(
                    f"{name} · {format_size(run.length)} · {run.cache}: ppl {run.ppl:.3f} "
                    f"({run.seconds:.1f} s, {run.tokens / max(run.seconds, 1e-9):,.0f} tok/s)"
                )
    summary = ppl_lib.perplexity_summary(runs)
    comparison.draw(plots.plot_perplexity, summary)
    if output.as_json:
        comparison.write_json(
            files=[name for name, _ in contexts],
            results=[_run_json(run) for run in runs],
            summary=[{**asdict(row), "ppl": row.ppl, "seconds": round(row.seconds, 3)} for row in summary],
            skipped=skipped,
        )
        return
    console = tables_console(output.no_color)
    files_seen = list(dict.fromkeys(run.file for run in runs))
    for name in files_seen:
        own = [run for run in runs if run.file == name]
        show_table(console, f"perplexity · {name}", _ppl_table(ppl_lib.perplexity_summary(own)))
    if len(files_seen) > 1:
        show_table(console, f"perplexity · all {len(files_seen)} files (token-weighted)", _ppl_table(summary))
    for length in wanted:
        own = [run for run in runs if run.length == length]
        if own:
            files = len({run.file for run in own})
            mean = f", mean of {files} files" if files > 1 else ""
            title = f"loss along the context at {format_size(length)} (nats/token by position{mean})"
            show_table(console, title, _bucket_table(own))
    if any(row.extrapolated for row in summary):
        console.print(EXTRAPOLATED_NOTE.format(native=format_count(loaded.native_window)))


def _run_json(run: ppl_lib.PerplexityRun) -> dict[str, Any]:
    return {
        "file": run.file,
        "cache": run.cache,
        "length": run.length,
        "ppl": run.ppl,
        "nll": run.nll,
        "tokens": run.tokens,
        "seconds": round(run.seconds, 3),
        "tokens_per_second": round(run.tokens / max(run.seconds, 1e-9), 1),
        "extrapolated": run.extrapolated,
        "buckets": [asdict(bucket) for bucket in run.buckets],
    }


def _ppl_table(summary: list[ppl_lib.PerplexitySummary]) -> Table:
    lengths = sorted({row.length for row in summary})
    grid = table("cache", *(format_size(length) for length in lengths))
    cells = {(row.cache, row.length): row for row in summary}
    for cache in dict.fromkeys(row.cache for row in summary):
        values = []
        for length in lengths:
            row = cells.get((cache, length))
            values.append("" if row is None else f"{row.ppl:.3f}{'*' if row.extrapolated else ''}")
        grid.add_row(cache, *values)
    return grid


def _bucket_table(runs: list[ppl_lib.PerplexityRun]) -> Table:
    """Loss along the context of one length: mean over files (equal token counts at one length)."""
    edges = [(b.start, b.end) for b in runs[0].buckets]
    grid = table("cache", *(f"{_short(start)}–{_short(end - 1)}" for start, end in edges))
    for cache in dict.fromkeys(run.cache for run in runs):
        own = [run for run in runs if run.cache == cache]
        means = [sum(run.buckets[i].nll for run in own) / len(own) for i in range(len(edges))]
        grid.add_row(cache, *(f"{value:.3f}" for value in means))
    return grid


def _short(position: int) -> str:
    return str(position) if position < 10_000 else f"{position / 1024:.1f}k"
