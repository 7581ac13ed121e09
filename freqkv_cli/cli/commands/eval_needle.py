"""`freqkv eval needle`: can the model find a pass key hidden at each depth, under each policy?"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from rich.table import Table

from ...errors import UsageError
from ...evaluation import choices, plots
from ...evaluation import needle as needle_lib
from ...memory.recall_methods import RECALL_METHODS
from ...session.session import Session
from ...sizes import format_size
from .. import options as o
from ..comparing import (
    CachesOpt,
    Comparison,
    LengthsOpt,
    encoder,
    haystack_option,
    read_haystack,
    seeds_option,
)
from ..output import show_table, table, tables_console


@o.takes(shared=o.COMPARED, model=o.MODEL, output=o.OUTPUT)
def needle(
    *,
    lengths: LengthsOpt = "4k,8k",
    depths: Annotated[
        str, o.option("--depths", "-d", panel=None, help="Needle depths, 0 = start of the document, 1 = end.")
    ] = "0,0.25,0.5,0.75,1",
    cache: CachesOpt = "full,sink,freqkv,hybrid",
    seeds: Annotated[int, seeds_option("Random pass keys per cell.")] = 3,
    haystack: Annotated[str | None, haystack_option("Text to hide the needle in.")] = None,
    later: Annotated[
        str | None,
        o.option(
            "--later",
            metavar="METHODS",
            panel=None,
            help="Also read each prompt's document with no question in sight, keep it as a memory "
            "file, and ask from that file once per recall method named here, e.g. both,tokens,none "
            "(rows 'POLICY later/METHOD').",
        ),
    ] = None,
    max_new_tokens: Annotated[
        int, o.option("--max-new-tokens", "-n", min=1, panel=o.OUTPUT_PANEL, help="Answer length.")
    ] = 16,
    shared: o.CacheChoice,
    model: o.ModelChoice,
    plot: o.PlotOpt = None,
    output: o.OutputChoice,
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

      freqkv eval needle --lengths 4k,16k --cache hybrid,freqkv --later both,none
    """
    comparison = Comparison.of(lengths, cache, shared, plot)
    methods = [m.strip() for m in later.split(",") if m.strip()] if later is not None else []
    unknown = [m for m in methods if m not in RECALL_METHODS]
    if unknown or (later is not None and not methods):
        raise UsageError(f"--later takes recall methods among {', '.join(RECALL_METHODS)}, not {later!r}")
    wanted = comparison.lengths
    where = choices.parse_depths(depths)
    readout = output.readout
    source, text = read_haystack(haystack)
    loaded = model.load(readout)
    policies = comparison.on(loaded)
    # Session.encode's convention (no BOS): the document goes in as freqkv qa streams it.
    encode = encoder(loaded, special=False)
    decode = loaded.tokenizer.decode  # type: ignore[attr-defined]
    overhead = needle_lib.prompt_overhead(Session(loaded, policies[0]))
    if wanted[0] - overhead < 16:
        raise UsageError(f"--lengths {wanted[0]} is too short: the question alone takes {overhead} tokens")

    trials: list[needle_lib.NeedleTrial] = []
    repeated: dict[int, int] = {}
    rounds = 2 if methods else 1  # a memory read is one more read of every prompt
    total = len(wanted) * len(where) * seeds * len(policies) * rounds
    bar = readout.token_progress()
    with bar:
        task = bar.add_task("", total=sum(wanted) * len(where) * seeds * len(policies) * rounds)
        for length in wanted:
            for depth in where:
                for seed in range(seeds):
                    key = needle_lib.make_key(seed, length, depth)
                    document = needle_lib.build_document(encode, decode, text, length - overhead, depth, key)
                    repeated[length] = document.repeats
                    for policy in policies:
                        bar.update(
                            task,
                            description=f"{format_size(length)} · depth {depth:g} · seed {seed} · "
                            f"{policy.kind} ({len(trials) + 1}/{total})",
                        )
                        trial = needle_lib.run_needle_trial(
                            Session(loaded, policy),
                            document,
                            length=length,
                            seed=seed,
                            max_new_tokens=max_new_tokens,
                        )
                        trials.append(trial)
                        bar.advance(task, length)
                        if methods:
                            trials += needle_lib.run_read_first_trials(
                                Session(loaded, policy),
                                document,
                                methods,
                                length=length,
                                seed=seed,
                                max_new_tokens=max_new_tokens,
                            )
                            bar.advance(task, length)
    for length, repeats in repeated.items():
        if repeats:
            readout.warn(
                f"{source} is shorter than {format_size(length)} tokens: repeated {repeats + 1} times"
            )
    cells = needle_lib.needle_accuracy(trials)
    comparison.draw(plots.plot_needle, cells)
    if output.as_json:
        comparison.write_json(
            depths=where,
            seeds=seeds,
            haystack=source,
            needle=needle_lib.NEEDLE,
            question=needle_lib.QUESTION,
            results=[asdict(trial) for trial in trials],
            grid=[{**asdict(cell), "accuracy": cell.accuracy} for cell in cells],
            accuracy=_overall(trials),
        )
        return
    grid = _needle_table(cells, loaded.native_window)
    show_table(tables_console(output.no_color), "needle accuracy (right / trials)", grid)


def _overall(trials: list[needle_lib.NeedleTrial]) -> dict[str, float]:
    out: dict[str, list[int]] = {}
    for trial in trials:
        out.setdefault(trial.cache, []).append(int(trial.correct))
    return {cache: sum(hits) / len(hits) for cache, hits in out.items()}


def _needle_table(cells: list[needle_lib.NeedleCell], native: int) -> Table:
    lengths = sorted({c.length for c in cells})
    marks = ["*" if native and length > native else "" for length in lengths]
    grid = table(
        "cache", "depth", *(format_size(length) + mark for length, mark in zip(lengths, marks, strict=True))
    )
    cells_at = {(c.cache, c.length, c.depth): c for c in cells}
    for cache in dict.fromkeys(c.cache for c in cells):
        for depth in sorted({c.depth for c in cells if c.cache == cache}):
            row = [cells_at.get((cache, length, depth)) for length in lengths]
            grid.add_row(cache, f"{depth:g}", *("" if c is None else f"{c.correct}/{c.trials}" for c in row))
        sums = []
        for length in lengths:
            own = [c for c in cells if c.cache == cache and c.length == length]
            right, tried = sum(c.correct for c in own), sum(c.trials for c in own)
            sums.append(f"{right / tried:.0%}" if tried else "")
        grid.add_row(cache, "all", *sums, end_section=True)
    return grid
