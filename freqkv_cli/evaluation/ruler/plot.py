"""The figure of ``freqkv eval ruler --plot``: one panel per length, a group of bars per task
(and the average), one bar per cache policy. matplotlib is imported only when called."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...errors import UsageError
from ..plots import require_matplotlib
from .run import RulerCell, averages


def plot_ruler(cells: Sequence[RulerCell], path: str | Path, title: str = "") -> Path:
    """Scores (0-100) by task and policy, a panel per length; the last group is the average."""
    require_matplotlib()
    from matplotlib.figure import Figure

    caches = list(dict.fromkeys(cell.cache for cell in cells))
    tasks = list(dict.fromkeys(cell.task for cell in cells))
    lengths = sorted({cell.length for cell in cells})
    grid = {(cell.task, cell.cache, cell.length): cell.score for cell in cells}
    mean = averages(cells)
    groups = [*tasks, "average"]
    width = 0.8 / max(len(caches), 1)
    figure = Figure(figsize=(1.6 + 0.75 * len(groups), 2.4 * len(lengths) + 0.6), layout="constrained")
    panels = figure.subplots(len(lengths), 1, squeeze=False, sharex=True)[:, 0]
    for axes, length in zip(panels, lengths, strict=True):
        for index, cache in enumerate(caches):
            values = [grid.get((task, cache, length), float("nan")) for task in tasks]
            values.append(mean.get((cache, length), float("nan")))
            spots = [group + (index - (len(caches) - 1) / 2) * width for group in range(len(groups))]
            axes.bar(spots, [100 * v for v in values], width, label=cache)
        axes.set_ylim(0, 100)
        axes.set_ylabel("score")
        label = f"{length // 1024}k" if length % 1024 == 0 else str(length)
        axes.set_title(f"{label} tokens", fontsize=9)
        axes.grid(axis="y", alpha=0.3)
    panels[-1].set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
    panels[0].legend(fontsize=7, ncols=min(len(caches), 4))
    if title:
        figure.suptitle(title, fontsize=9)
    try:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    except (OSError, ValueError) as exc:  # unwritable folder, unknown extension
        raise UsageError(f"--plot {path}: cannot write the figure: {exc}") from None
    return Path(path)
