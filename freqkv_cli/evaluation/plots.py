"""Figures for the evaluations (PNG, SVG, PDF: matplotlib picks the format from the name).

matplotlib is an optional extra: it is imported only here, only when a plot is asked for,
and through its object API (``Figure``), so no GUI backend or global pyplot state is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .needle import NeedleCell
from .perplexity import PerplexitySummary
from .spectrum import FRACTIONS, LayerSpectrum

MISSING = "--plot needs matplotlib: pip install 'freqkv-cli[plot]'"


def require_matplotlib() -> None:
    """Fail before a long evaluation, not after it."""
    _figure_class()


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(MISSING) from None
    return Figure


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    try:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    except (OSError, ValueError) as exc:  # unwritable folder, unknown extension
        raise UsageError(f"--plot {path}: cannot write the figure: {exc}") from None
    return path


def _length_label(length: int) -> str:
    return f"{length // 1024}k" if length % 1024 == 0 else str(length)


def plot_perplexity(summary: Sequence[PerplexitySummary], path: str | Path, title: str = "") -> Path:
    """Perplexity against context length, one line per policy; hollow markers: extrapolated."""
    figure = _figure_class()(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.add_subplot()
    lengths = sorted({row.length for row in summary})
    for cache in dict.fromkeys(row.cache for row in summary):
        rows = sorted((row for row in summary if row.cache == cache), key=lambda row: row.length)
        (line,) = axes.plot([r.length for r in rows], [r.ppl for r in rows], marker="o", label=cache)
        for row in rows:
            if row.extrapolated:
                axes.plot(
                    [row.length], [row.ppl], marker="o", markerfacecolor="white", color=line.get_color()
                )
    values = [row.ppl for row in summary]
    if values and max(values) > 4 * min(values):  # an extrapolated full cache would flatten the rest
        axes.set_yscale("log")
    axes.set_xscale("log", base=2)
    axes.set_xticks(lengths, [_length_label(n) for n in lengths])
    axes.minorticks_off()
    axes.set_xlabel("context length (tokens)")
    axes.set_ylabel("perplexity")
    if any(row.extrapolated for row in summary):
        title = (title + "\n" if title else "") + "hollow: past the model's native window"
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_needle(cells: Sequence[NeedleCell], path: str | Path, title: str = "") -> Path:
    """One heatmap per policy: depth (rows) x length (columns), colour = accuracy over seeds."""
    caches = list(dict.fromkeys(cell.cache for cell in cells))
    lengths = sorted({cell.length for cell in cells})
    depths = sorted({cell.depth for cell in cells})
    grid = {(cell.cache, cell.length, cell.depth): cell.accuracy for cell in cells}
    width = 2.2 + (0.6 + 0.8 * len(lengths)) * len(caches)
    figure = _figure_class()(figsize=(width, 1.6 + 0.45 * len(depths)), layout="constrained")
    axes_list = figure.subplots(1, len(caches), squeeze=False, sharey=True)[0]
    image = None
    for axes, cache in zip(axes_list, caches, strict=True):
        data = [[grid.get((cache, length, depth), float("nan")) for length in lengths] for depth in depths]
        image = axes.imshow(data, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        for row, values in enumerate(data):
            for column, value in enumerate(values):
                if value == value:  # not NaN
                    axes.text(column, row, f"{value:.0%}", ha="center", va="center", fontsize=8)
        axes.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths])
        axes.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
        axes.set_xlabel("context length")
        axes.set_title(cache)
    axes_list[0].set_ylabel("needle depth")
    if image is not None:
        figure.colorbar(image, ax=list(axes_list), label="accuracy")
    if title:
        figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def plot_spectrum(spectra: Sequence[LayerSpectrum], ratio: float, path: str | Path, title: str = "") -> Path:
    """Per layer: energy share in the low bands, and the low-pass error at ``ratio`` (log scale)."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure_class()(figsize=(10, 4), layout="constrained")
    share_axes, error_axes = figure.subplots(1, 2)
    layers = [s.layer for s in spectra]
    # Colour: the band; line style: keys (solid) or values (dashed).
    for kind, style in (("keys", "-"), ("values", "--")):
        for index, fraction in enumerate(FRACTIONS):
            shares = [getattr(s, kind).shares[index] for s in spectra]
            share_axes.plot(
                layers, shares, style, color=f"C{index}", marker=".", label=f"{kind}, lowest {fraction:.0%}"
            )
        errors = [max(getattr(s, kind).error, 1e-12) for s in spectra]
        error_axes.plot(layers, errors, style, color="C3", marker=".", label=kind)
    for axes in (share_axes, error_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    share_axes.set_xlabel("layer")
    share_axes.set_ylabel("share of energy")
    share_axes.set_ylim(0, 1.02)
    share_axes.legend(fontsize=7)
    share_axes.grid(alpha=0.3)
    error_axes.set_yscale("log")
    error_axes.set_xlabel("layer")
    error_axes.set_ylabel(f"relative squared error at ratio {ratio:g}")
    error_axes.legend(fontsize=7)
    error_axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=9)
    return _save(figure, path)
