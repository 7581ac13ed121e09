"""`freqkv eval ruler`: RULER's synthetic tasks under each cache policy, scored as RULER scores them."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from rich.table import Table

from ...errors import UsageError
from ...evaluation import ruler as ruler_lib
from ...evaluation.ruler import presses
from ...evaluation.ruler.haystack import words_of
from ...evaluation.ruler.plot import plot_ruler
from ...session.session import Session
from ...sizes import format_size
from .. import options as o
from ..comparing import CachesOpt, Comparison, LengthsOpt, haystack_option, read_haystack, seeds_option
from ..output import Readout, show_table, table, tables_console


@o.takes(shared=o.COMPARED, model=o.MODEL, output=o.OUTPUT)
def ruler(
    *,
    tasks: Annotated[
        str,
        o.option(
            "--tasks",
            "-t",
            panel=None,
            help="Tasks, comma-separated: niah_single_1..3, niah_multikey_1..3, niah_multivalue, "
            "niah_multiquery, vt, cwe, fwe; or the groups all, niah, aggregation.",
        ),
    ] = "all",
    lengths: LengthsOpt = "4k,8k",
    seeds: Annotated[int, seeds_option("Samples per task and length.")] = 3,
    cache: CachesOpt = "full,sink,freqkv,hybrid",
    layout: Annotated[
        str,
        o.option(
            "--layout",
            panel=None,
            help="ruler: RULER's prompt, the question after the context; qa: freqkv qa's prompt, "
            "the question pinned before the context too (the hybrid keeps what it attends to).",
        ),
    ] = "ruler",
    press: Annotated[
        str | None,
        o.option(
            "--press",
            metavar="PRESSES",
            panel=None,
            show_default="none",
            help="Also run kvpress presses at the same window, e.g. snapkv,streaming_llm,knorm,"
            "expected_attention (needs kvpress installed; rows 'kvpress:NAME').",
        ),
    ] = None,
    haystack: Annotated[
        str | None, haystack_option("Real text for the niah tasks that hide needles in text.")
    ] = None,
    shared: o.CacheChoice,
    model: o.ModelChoice,
    plot: o.PlotOpt = None,
    output: o.OutputChoice,
) -> None:
    """RULER's synthetic tasks: needles, variable tracking, word extraction, every policy.

    Each sample is generated from its seed (the same prompt for every policy), its haystack
    fitted so that the prompt plus the task's answer length is LENGTH tokens of the model's
    tokenizer. The model answers greedily after RULER's answer prefix; a sample scores the share
    of its reference values found in the answer (RULER's string match). The table gives each
    task's mean score (0-100) and the average over tasks.

    Examples:

      freqkv eval ruler --lengths 4k,8k --window 1k

      freqkv eval ruler --tasks niah_single_1,vt --seeds 5 --json

      freqkv eval ruler --tasks niah --cache hybrid,freqkv --layout qa --plot ruler.png

      freqkv eval ruler --lengths 4k --cache full,freqkv --press snapkv,knorm
    """
    comparison = Comparison.of(lengths, cache, shared, plot)
    picked = ruler_lib.parse_tasks(tasks)
    if layout not in ruler_lib.LAYOUTS:
        raise UsageError(f"--layout: '{layout}' is not a layout: use one of {', '.join(ruler_lib.LAYOUTS)}")
    press_names = presses.parse_presses(press)  # without kvpress: one line, before the model loads
    readout = output.readout
    source, text = read_haystack(haystack)
    loaded = model.load(readout)
    policies = comparison.on(loaded)
    count = ruler_lib.token_counter(Session(loaded, policies[0]), layout)
    samples = [
        task.generate(length, seed, count, text)
        for length in comparison.lengths
        for task in picked
        for seed in range(seeds)
    ]
    _warn_repeats(readout, samples, picked, len(words_of(text)), source)
    runner = None
    if press_names:
        window = comparison.settings_json()["window"] or policies[0].window
        runner = presses.PressRunner(loaded.model, loaded.tokenizer, window)

    results: list[ruler_lib.RulerResult] = []
    rows = len(policies) + len(press_names)
    bar = readout.token_progress()
    with bar:
        progress = bar.add_task("", total=sum(s.length for s in samples) * rows)
        for sample in samples:
            for name in [p.kind for p in policies] + [f"kvpress:{n}" for n in press_names]:
                bar.update(
                    progress,
                    description=f"{format_size(sample.length)} · {sample.task} · seed {sample.seed} · "
                    f"{name} ({len(results) + 1}/{len(samples) * rows})",
                )
                if runner is not None and name.startswith("kvpress:"):
                    results.append(runner.run(name.split(":", 1)[1], sample))
                else:
                    policy = policies[[p.kind for p in policies].index(name)]
                    results.append(ruler_lib.run_sample(Session(loaded, policy), sample, layout))
                bar.advance(progress, sample.length)
    cells = ruler_lib.ruler_scores(results)
    comparison.draw(plot_ruler, cells)
    mean = ruler_lib.averages(cells)
    if output.as_json:
        average: dict[str, dict[str, float]] = {}
        for (name, length), value in mean.items():
            average.setdefault(name, {})[str(length)] = value
        comparison.write_json(
            tasks=[task.name for task in picked],
            metrics={task.name: task.metric for task in picked},
            seeds=seeds,
            layout=layout,
            presses=press_names,
            haystack=source,
            results=[asdict(result) for result in results],
            grid=[asdict(cell) for cell in cells],
            average=average,
        )
        return
    console = tables_console(output.no_color)
    native = loaded.native_window
    for length in comparison.lengths:
        mark = " (past the model's native window)" if native and length > native else ""
        title = f"RULER at {format_size(length)} tokens{mark}: score 0-100, {seeds} seed(s), layout {layout}"
        show_table(console, title, _ruler_table(cells, mean, length))


def _warn_repeats(
    readout: Readout, samples: list[ruler_lib.Sample], picked: list[ruler_lib.Task], words: int, source: str
) -> None:
    """A real-text haystack shorter than a sample is read again from its start: say so once."""
    texts = {task.name for task in picked if getattr(task, "haystack", "") == "text"}
    longest = max((s.units for s in samples if s.task in texts), default=0)
    if longest > words:
        readout.warn(f"{source} has {words:,} words, fewer than a haystack needs: it is repeated")


def _ruler_table(cells: list[ruler_lib.RulerCell], mean: dict[tuple[str, int], float], length: int) -> Table:
    caches = list(dict.fromkeys(c.cache for c in cells))
    grid = table("task", *caches)
    at = {(c.task, c.cache): c for c in cells if c.length == length}
    for task in dict.fromkeys(c.task for c in cells):
        row = [at.get((task, cache)) for cache in caches]
        grid.add_row(task, *("" if c is None else f"{100 * c.score:.1f}" for c in row))
    grid.add_row("average", *(f"{100 * mean[(cache, length)]:.1f}" for cache in caches), end_section=True)
    return grid
