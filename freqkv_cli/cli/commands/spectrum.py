"""`freqkv spectrum PATH|-`: how much of each layer's key and value energy low DCT frequencies hold."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict
from typing import Annotated

from rich.table import Table

from ...cache.policy import CacheSettings
from ...errors import InputError
from ...evaluation import perplexity as ppl_lib
from ...evaluation import plots
from ...evaluation import spectrum as spectrum_lib
from ...sizes import format_count, parse_size
from .. import options as o
from ..comparing import encoder
from ..output import model_json, show_table, table, tables_console, write_json


@o.takes(model=o.MODEL, source=o.INPUT, output=o.OUTPUT)
def spectrum(
    path: o.PathArg,
    *,
    tokens: Annotated[
        str,
        o.option("--tokens", panel=None, help="Tokens of the document to read (from its start), e.g. 4k."),
    ] = "4k",
    ratio: o.RatioOpt = None,
    sink: Annotated[
        int | None, o.option("--sink", help="Leading tokens left out, as FreqKV never compresses them [4].")
    ] = None,
    model: o.ModelChoice,
    source: o.InputChoice,
    plot: o.PlotOpt = None,
    output: o.OutputChoice,
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
    settings = CacheSettings(kind="freqkv", sink=sink, ratio=ratio)
    settings.check()
    if plot:
        plots.require_matplotlib()
    readout = output.readout
    started = time.perf_counter()
    document = source.open(path)
    loaded = model.load(readout)
    policy = loaded.cache_policy(settings)  # the checkpoint's ratio and sink unless given
    encode = encoder(loaded, special=True)
    text = document.text()
    ids = ppl_lib.first_tokens(encode, text, count) or encode(text)
    if len(ids) < count:
        readout.warn(f"{document.name} has {format_count(len(ids))} tokens, fewer than --tokens {tokens}")
    if len(ids) < policy.sink + 16:
        raise InputError(f"{document.name}: {len(ids)} tokens are too few for a spectrum")
    bar = readout.token_progress()
    with bar:
        task = bar.add_task(f"reading {document.name}", total=len(ids))
        layers = spectrum_lib.model_spectrum(
            loaded.model,
            ids,
            ratio=policy.ratio,
            skip=policy.sink,
            on_progress=functools.partial(bar.advance, task),
        )
    if plot:
        plots.plot_spectrum(layers, policy.ratio, plot, title=f"{loaded.name} · {document.name}")
    if output.as_json:
        write_json(
            {
                **model_json(loaded),
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
    show_table(tables_console(output.no_color), title, _spectrum_table(layers))


def _spectrum_table(layers: list[spectrum_lib.LayerSpectrum]) -> Table:
    headings = [
        f"{kind} {name}"
        for kind in ("K", "V")
        for name in [*(f"{fraction:.0%}" for fraction in spectrum_lib.FRACTIONS), "error"]
    ]
    grid = table("layer", *headings, first="right")
    for layer in [*layers, spectrum_lib.spectrum_mean(layers)]:
        cells = []
        for part in (layer.keys, layer.values):
            cells += [f"{share:.1%}" for share in part.shares] + [f"{part.error:.2e}"]
        grid.add_row("mean" if layer.layer < 0 else str(layer.layer), *cells, end_section=layer is layers[-1])
    return grid
