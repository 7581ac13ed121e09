"""`freqkv eval ppl|needle` and `freqkv spectrum`: what compression costs, side by side.

Thin commands over :mod:`freqkv_cli.evaluation`: parse the lists, load once, loop, print a
table (stdout), progress (stderr), ``--json`` and ``--plot``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ...cache.policy import CachePolicy
from ...errors import InputError, UsageError
from ...evaluation import choices, plots
from ...evaluation import needle as needle_lib
from ...evaluation import perplexity as ppl_lib
from ...evaluation import spectrum as spectrum_lib
from ...models.loading import LoadedModel
from ...session.session import Session
from ...sizes import format_count, format_size, parse_size
from .. import options as o
from ..readout import Readout
from ..running import load, open_input

eval_app = typer.Typer(
    help="Measure what a cache policy costs on your model and text: long-text perplexity (ppl) "
    "and needle-in-a-haystack retrieval (needle), every policy side by side.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

LengthsOpt = Annotated[
    str,
    typer.Option("--lengths", "-l", help="Context lengths in tokens, comma-separated, e.g. 4k,8k,16k."),
]
CachesOpt = Annotated[
    str,
    typer.Option(
        "--cache",
        rich_help_panel=o.MODEL_PANEL,
        help="Policies to compare, comma-separated: full,sink,freqkv.",
    ),
]
PlotOpt = Annotated[
    str | None,
    typer.Option(
        "--plot",
        rich_help_panel=o.OUTPUT_PANEL,
        help="Also draw a figure to this file (.png, .svg, .pdf); needs matplotlib.",
    ),
]
EXTRAPOLATED_NOTE = "* past the model's native window ({native} positions): RoPE extrapolation"


# -- shared plumbing ---------------------------------------------------------------------------
class _Tracker:
    """A token-count progress bar on stderr (a no-op when progress is off)."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("", total=total) if progress is not None else None

    def describe(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=text)

    def advance(self, tokens: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, tokens)


@contextmanager
def _tracking(readout: Readout, total: int) -> Iterator[_Tracker]:
    if not readout.show_progress:
        yield _Tracker(None, total)
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} tok"),
        TimeRemainingColumn(),
        console=readout.console,
    )
    with progress:
        yield _Tracker(progress, total)


def _stdout(no_color: bool) -> Console:
    console = Console(no_color=o.color_disabled(no_color), highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)  # a pipe or file: do not wrap the tables
    return console


def _readout(quiet: bool, progress: bool, no_color: bool) -> Readout:
    return Readout(quiet=quiet, force_progress=progress, no_color=o.color_disabled(no_color))


def _policies(
    kinds: list[str],
    window: str | None,
    sink: int | None,
    recent: int | None,
    ratio: float | None,
    exact: float | None = None,
    selector: str | None = None,
) -> list[o.CacheChoice]:
    picked = [o.CacheChoice(kind, window, sink, recent, ratio, None, exact, selector) for kind in kinds]
    for choice in picked:
        choice.check()
    return picked


def _settings(loaded: LoadedModel, policies: list[CachePolicy]) -> dict[str, Any]:
    """The model and cache settings every JSON output starts with."""
    windowed = next((p for p in policies if p.kind != "full"), None)
    return {
        "model": loaded.name,
        "family": loaded.family,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "native_window": loaded.native_window or None,
        "window": windowed.window if windowed else None,
        "sink": policies[0].sink,
        "recent": policies[0].recent,
        "ratio": policies[0].ratio,
    }


def _length_label(length: int) -> str:
    return format_size(length)


def _encoder(loaded: LoadedModel, special: bool) -> Any:
    tokenizer = loaded.tokenizer

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=special)["input_ids"])  # type: ignore[operator]

    return encode


def _show(console: Console, title: str, table: Table) -> None:
    """A heading line, then the table (a table title would wrap to the table's width)."""
    console.print(title, style="bold", markup=False)
    console.print(table)


def _write_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")


# -- freqkv eval ppl ---------------------------------------------------------------------------
@eval_app.command()
def ppl(
    files: Annotated[
        list[str], typer.Argument(help="Text files or PDFs (long ones: books).", show_default=False)
    ],
    lengths: LengthsOpt = "4k,8k",
    cache: CachesOpt = "full,sink,freqkv",
    window: o.WindowOpt = None,
    sink: o.SinkOpt = None,
    recent: o.RecentOpt = None,
    ratio: o.RatioOpt = None,
    exact: o.ExactOpt = None,
    select: o.SelectOpt = None,
    model: o.ModelOpt = "default",
    base: o.BaseOpt = None,
    untuned: o.UntunedOpt = False,
    device: o.DeviceOpt = "auto",
    dtype: o.DtypeOpt = "auto",
    trust_remote_code: o.TrustOpt = False,
    buckets: Annotated[
        int,
        typer.Option(
            "--buckets", min=1, max=64, rich_help_panel=o.OUTPUT_PANEL, help="Position buckets of the loss."
        ),
    ] = 8,
    plot: PlotOpt = None,
    as_json: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    progress: o.ProgressOpt = False,
    no_color: o.NoColorOpt = False,
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
    wanted = choices.parse_lengths(lengths)
    picked = _policies(choices.parse_policies(cache), window, sink, recent, ratio, exact, select)
    if plot:
        plots.require_matplotlib()
    readout = _readout(quiet, progress, no_color)
    started = time.perf_counter()
    documents = [open_input(path, None, None) for path in files]  # bad input fails before loading
    loaded = load(o.ModelChoice(model, base, device, dtype, trust_remote_code, untuned), readout)
    policies = [choice.policy_for(loaded) for choice in picked]
    encode = _encoder(loaded, special=True)  # the tokenizer's own BOS convention, as in training

    contexts: list[tuple[str, list[int]]] = []
    skipped: list[dict[str, Any]] = []
    for document in documents:
        text = document.text()
        ids = ppl_lib.first_tokens(encode, text, wanted[-1]) or encode(text)
        for length in wanted:
            if len(ids) < length:
                skipped.append({"file": document.name, "length": length, "tokens": len(ids)})
                short = f"{format_count(len(ids))} tokens, shorter than {_length_label(length)}"
                readout.warn(f"{document.name}: {short}: skipped at that length")
        contexts.append((document.name, ids))
    plan = [(name, ids[:length]) for name, ids in contexts for length in wanted if len(ids) >= length]
    if not plan:
        raise InputError(f"no file is as long as {_length_label(wanted[0])} tokens: use smaller --lengths")

    runs: list[ppl_lib.PerplexityRun] = []
    with _tracking(readout, sum(len(ids) for _, ids in plan) * len(policies)) as tracker:
        for name, ids in plan:
            for policy in policies:
                tracker.describe(f"{name} · {_length_label(len(ids))} · {policy.kind}")
                run = ppl_lib.run_perplexity(
                    loaded.model,
                    policy,
                    ids,
                    file=name,
                    native_window=loaded.native_window,
                    buckets=buckets,
                    on_progress=tracker.advance,
                )
                runs.append(run)
                readout.info(
                    f"{name} · {_length_label(run.length)} · {run.cache}: ppl {run.ppl:.3f} "
                    f"({run.seconds:.1f} s, {run.tokens / max(run.seconds, 1e-9):,.0f} tok/s)"
                )
    summary = ppl_lib.perplexity_summary(runs)
    if plot:
        plots.plot_perplexity(summary, plot, title=_ppl_title(loaded, policies))
    if as_json:
        _write_json(
            {
                **_settings(loaded, policies),
                "caches": [p.kind for p in policies],
                "lengths": wanted,
                "files": [name for name, _ in contexts],
                "results": [_run_json(run) for run in runs],
                "summary": [
                    {**asdict(row), "ppl": row.ppl, "seconds": round(row.seconds, 3)} for row in summary
                ],
                "skipped": skipped,
                "plot": plot,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        return
    console = _stdout(no_color)
    files_seen = list(dict.fromkeys(run.file for run in runs))
    for name in files_seen:
        own = [run for run in runs if run.file == name]
        _show(console, f"perplexity · {name}", _ppl_table(ppl_lib.perplexity_summary(own)))
    if len(files_seen) > 1:
        _show(console, f"perplexity · all {len(files_seen)} files (token-weighted)", _ppl_table(summary))
    for length in wanted:
        own = [run for run in runs if run.length == length]
        if own:
            files = len({run.file for run in own})
            mean = f", mean of {files} files" if files > 1 else ""
            title = f"loss along the context at {_length_label(length)} (nats/token by position{mean})"
            _show(console, title, _bucket_table(own))
    if any(row.extrapolated for row in summary):
        console.print(EXTRAPOLATED_NOTE.format(native=format_count(loaded.native_window)))


def _ppl_title(loaded: LoadedModel, policies: list[CachePolicy]) -> str:
    settings = _settings(loaded, policies)
    return (
        f"{settings['model']} · window {settings['window']} · sink {settings['sink']} · "
        f"recent {settings['recent']} · ratio {settings['ratio']}"
    )


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
    table = Table()
    table.add_column("cache")
    for length in lengths:
        table.add_column(_length_label(length), justify="right")
    cells = {(row.cache, row.length): row for row in summary}
    for cache in dict.fromkeys(row.cache for row in summary):
        values = []
        for length in lengths:
            row = cells.get((cache, length))
            values.append("" if row is None else f"{row.ppl:.3f}{'*' if row.extrapolated else ''}")
        table.add_row(cache, *values)
    return table


def _bucket_table(runs: list[ppl_lib.PerplexityRun]) -> Table:
    """Loss along the context of one length: mean over files (equal token counts at one length)."""
    edges = [(b.start, b.end) for b in runs[0].buckets]
    table = Table()
    table.add_column("cache")
    for start, end in edges:
        table.add_column(f"{_short(start)}–{_short(end - 1)}", justify="right")
    for cache in dict.fromkeys(run.cache for run in runs):
        own = [run for run in runs if run.cache == cache]
        means = [sum(run.buckets[i].nll for run in own) / len(own) for i in range(len(edges))]
        table.add_row(cache, *(f"{value:.3f}" for value in means))
    return table


def _short(position: int) -> str:
    return str(position) if position < 10_000 else f"{position / 1024:.1f}k"


# -- freqkv eval needle ------------------------------------------------------------------------
@eval_app.command()
def needle(
    lengths: LengthsOpt = "4k,8k",
    depths: Annotated[
        str, typer.Option("--depths", "-d", help="Needle depths, 0 = start of the document, 1 = end.")
    ] = "0,0.25,0.5,0.75,1",
    cache: CachesOpt = "full,sink,freqkv",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Random pass keys per cell.")] = 3,
    haystack: Annotated[
        str | None,
        typer.Option(
            "--haystack",
            rich_help_panel=o.INPUT_PANEL,
            help="Text to hide the needle in [an excerpt of Botchan, public domain, shipped].",
        ),
    ] = None,
    max_new_tokens: Annotated[
        int,
        typer.Option("--max-new-tokens", "-n", min=1, rich_help_panel=o.OUTPUT_PANEL, help="Answer length."),
    ] = 16,
    window: o.WindowOpt = None,
    sink: o.SinkOpt = None,
    recent: o.RecentOpt = None,
    ratio: o.RatioOpt = None,
    exact: o.ExactOpt = None,
    select: o.SelectOpt = None,
    model: o.ModelOpt = "default",
    base: o.BaseOpt = None,
    untuned: o.UntunedOpt = False,
    device: o.DeviceOpt = "auto",
    dtype: o.DtypeOpt = "auto",
    trust_remote_code: o.TrustOpt = False,
    plot: PlotOpt = None,
    as_json: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    progress: o.ProgressOpt = False,
    no_color: o.NoColorOpt = False,
) -> None:
    """Needle in a haystack: can the model find a pass key hidden at each depth?

    A sentence "The pass key is NNNNN. Remember it." is hidden at each depth of real text
    cut so the whole qa prompt is LENGTH tokens; the model is asked "What is the pass key?"
    (the prompt of freqkv qa) and answers greedily. A trial is right when the first number
    in the answer is the key. Every policy gets the same prompts.

    Examples:

      freqkv eval needle --lengths 4k,8k --window 2k

      freqkv eval needle --depths 0.5 --seeds 10 --haystack book.txt --json

      freqkv eval needle --lengths 2k,4k --plot needle_lib.png
    """
    wanted = choices.parse_lengths(lengths)
    where = choices.parse_depths(depths)
    picked = _policies(choices.parse_policies(cache), window, sink, recent, ratio, exact, select)
    if plot:
        plots.require_matplotlib()
    readout = _readout(quiet, progress, no_color)
    started = time.perf_counter()
    if haystack is not None:
        source, text = haystack, open_input(haystack, None, None).text()
    else:
        source, text = f"{needle_lib.HAYSTACK_NAME} (Botchan, chapters I-III)", needle_lib.default_haystack()
    if not text.strip():
        raise InputError(f"{source}: the haystack has no text")
    loaded = load(o.ModelChoice(model, base, device, dtype, trust_remote_code, untuned), readout)
    policies = [choice.policy_for(loaded) for choice in picked]
    # Session.encode's convention (no BOS): the document goes in as freqkv qa streams it.
    encode = _encoder(loaded, special=False)
    decode = loaded.tokenizer.decode  # type: ignore[attr-defined]
    overhead = needle_lib.prompt_overhead(Session(loaded, policies[0]))
    if wanted[0] - overhead < 16:
        raise UsageError(f"--lengths {wanted[0]} is too short: the question alone takes {overhead} tokens")

    trials: list[needle_lib.NeedleTrial] = []
    repeated: dict[int, int] = {}
    total = len(wanted) * len(where) * seeds * len(policies)
    with _tracking(readout, sum(wanted) * len(where) * seeds * len(policies)) as tracker:
        for length in wanted:
            for depth in where:
                for seed in range(seeds):
                    key = needle_lib.make_key(seed, length, depth)
                    document = needle_lib.build_document(encode, decode, text, length - overhead, depth, key)
                    repeated[length] = document.repeats
                    for policy in policies:
                        tracker.describe(
                            f"{_length_label(length)} · depth {depth:g} · seed {seed} · {policy.kind} "
                            f"({len(trials) + 1}/{total})"
                        )
                        trial = needle_lib.run_needle_trial(
                            Session(loaded, policy),
                            document,
                            length=length,
                            seed=seed,
                            max_new_tokens=max_new_tokens,
                        )
                        trials.append(trial)
                        tracker.advance(length)
    for length, repeats in repeated.items():
        if repeats:
            readout.warn(
                f"{source} is shorter than {_length_label(length)} tokens: repeated {repeats + 1} times"
            )
    cells = needle_lib.needle_accuracy(trials)
    if plot:
        plots.plot_needle(cells, plot, title=_ppl_title(loaded, policies))
    if as_json:
        _write_json(
            {
                **_settings(loaded, policies),
                "caches": [p.kind for p in policies],
                "lengths": wanted,
                "depths": where,
                "seeds": seeds,
                "haystack": source,
                "needle": needle_lib.NEEDLE,
                "question": needle_lib.QUESTION,
                "results": [asdict(trial) for trial in trials],
                "grid": [{**asdict(cell), "accuracy": cell.accuracy} for cell in cells],
                "accuracy": _overall(trials),
                "plot": plot,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        return
    _show(_stdout(no_color), "needle accuracy (right / trials)", _needle_table(cells, loaded.native_window))


def _overall(trials: list[needle_lib.NeedleTrial]) -> dict[str, float]:
    out: dict[str, list[int]] = {}
    for trial in trials:
        out.setdefault(trial.cache, []).append(int(trial.correct))
    return {cache: sum(hits) / len(hits) for cache, hits in out.items()}


def _needle_table(cells: list[needle_lib.NeedleCell], native: int) -> Table:
    lengths = sorted({c.length for c in cells})
    table = Table()
    table.add_column("cache")
    table.add_column("depth", justify="right")
    for length in lengths:
        mark = "*" if native and length > native else ""
        table.add_column(_length_label(length) + mark, justify="right")
    grid = {(c.cache, c.length, c.depth): c for c in cells}
    for cache in dict.fromkeys(c.cache for c in cells):
        for depth in sorted({c.depth for c in cells if c.cache == cache}):
            row = [grid.get((cache, length, depth)) for length in lengths]
            table.add_row(cache, f"{depth:g}", *("" if c is None else f"{c.correct}/{c.trials}" for c in row))
        sums = []
        for length in lengths:
            own = [c for c in cells if c.cache == cache and c.length == length]
            right, tried = sum(c.correct for c in own), sum(c.trials for c in own)
            sums.append(f"{right / tried:.0%}" if tried else "")
        table.add_row(cache, "all", *sums, end_section=True)
    return table


# -- freqkv spectrum ---------------------------------------------------------------------------
def spectrum(
    path: Annotated[
        str, typer.Argument(help="A PDF, a text file, or - for standard input.", show_default=False)
    ],
    tokens: Annotated[
        str, typer.Option("--tokens", help="Tokens of the document to read (from its start), e.g. 4k.")
    ] = "4k",
    ratio: o.RatioOpt = None,
    sink: Annotated[
        int | None,
        typer.Option(
            "--sink",
            rich_help_panel=o.MODEL_PANEL,
            help="Leading tokens left out, as FreqKV never compresses them [4].",
        ),
    ] = None,
    model: o.ModelOpt = "default",
    base: o.BaseOpt = None,
    untuned: o.UntunedOpt = False,
    device: o.DeviceOpt = "auto",
    dtype: o.DtypeOpt = "auto",
    trust_remote_code: o.TrustOpt = False,
    pages: o.PagesOpt = None,
    password: o.PasswordOpt = None,
    plot: PlotOpt = None,
    as_json: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    progress: o.ProgressOpt = False,
    no_color: o.NoColorOpt = False,
) -> None:
    """How much of each layer's key and value energy sits in low DCT frequencies.

    The model reads the start of the document with a full cache; per layer, the keys
    (before RoPE) and values are transformed with a DCT along the positions, and the share
    of energy in the lowest 10/25/50% of coefficients is shown with the relative squared
    error of FreqKV's low-pass at --ratio (the energy it discards).

    Examples:

      freqkv spectrum book.txt

      freqkv spectrum report.pdf --tokens 8k --ratio 0.25 --json

      freqkv spectrum book.txt --plot spectrum_lib.png
    """
    count = parse_size(tokens)
    choice = o.CacheChoice("freqkv", None, sink, None, ratio)
    choice.check()
    if plot:
        plots.require_matplotlib()
    readout = _readout(quiet, progress, no_color)
    started = time.perf_counter()
    document = open_input(path, password, pages)
    loaded = load(o.ModelChoice(model, base, device, dtype, trust_remote_code, untuned), readout)
    policy = choice.policy_for(loaded)  # the checkpoint's ratio and sink unless given
    encode = _encoder(loaded, special=True)
    text = document.text()
    ids = ppl_lib.first_tokens(encode, text, count) or encode(text)
    if len(ids) < count:
        readout.warn(f"{document.name} has {format_count(len(ids))} tokens, fewer than --tokens {tokens}")
    if len(ids) < policy.sink + 16:
        raise InputError(f"{document.name}: {len(ids)} tokens are too few for a spectrum")
    with _tracking(readout, len(ids)) as tracker:
        tracker.describe(f"reading {document.name}")
        layers = spectrum_lib.model_spectrum(
            loaded.model, ids, ratio=policy.ratio, skip=policy.sink, on_progress=tracker.advance
        )
    if plot:
        plots.plot_spectrum(layers, policy.ratio, plot, title=f"{loaded.name} · {document.name}")
    if as_json:
        _write_json(
            {
                "model": loaded.name,
                "family": loaded.family,
                "device": str(loaded.device),
                "dtype": str(loaded.dtype).removeprefix("torch."),
                "document": document.name,
                "tokens": len(ids),
                "skipped": policy.sink,
                "ratio": policy.ratio,
                "fractions": list(spectrum_lib.FRACTIONS),
                "layers": [asdict(layer) for layer in layers],
                "mean": asdict(spectrum_lib.spectrum_mean(layers)),
                "plot": plot,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        return
    title = (
        f"DCT energy along the sequence · {document.name}, {format_count(len(ids))} tokens "
        f"(share in the lowest coefficients; error: energy lost at ratio {policy.ratio:g})"
    )
    _show(_stdout(no_color), title, _spectrum_table(layers))


def _spectrum_table(layers: list[spectrum_lib.LayerSpectrum]) -> Table:
    table = Table()
    table.add_column("layer", justify="right")
    for kind in ("K", "V"):
        for fraction in spectrum_lib.FRACTIONS:
            table.add_column(f"{kind} {fraction:.0%}", justify="right")
        table.add_column(f"{kind} error", justify="right")
    for layer in [*layers, spectrum_lib.spectrum_mean(layers)]:
        cells = []
        for part in (layer.keys, layer.values):
            cells += [f"{share:.1%}" for share in part.shares] + [f"{part.error:.2e}"]
        table.add_row(
            "mean" if layer.layer < 0 else str(layer.layer), *cells, end_section=layer is layers[-1]
        )
    return table
