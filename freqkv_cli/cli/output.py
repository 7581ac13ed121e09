"""What the user sees: progress, memory readouts and warnings on stderr; tables and JSON on stdout."""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..sizes import format_bytes, format_count

if TYPE_CHECKING:  # these bring torch: a command's --help does without it
    import torch

    from ..documents import Document
    from ..models.loading import LoadedModel
    from ..session.reading import ReadProgress
    from ..session.session import Session


def rss_bytes() -> int:
    """Resident memory now (Linux /proc; elsewhere the peak is the best we have)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def gpu_bytes(device: torch.device) -> tuple[int, int] | None:
    """(allocated, peak allocated) on CUDA, else None."""
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)


# Wide enough for any readout line: rich wraps at the console's width, 80 columns off a terminal.
UNWRAPPED_WIDTH = 100_000


class Readout:
    """Progress and diagnostics on stderr. ``show_progress`` False: warnings and errors only."""

    def __init__(self, *, quiet: bool, force_progress: bool, no_color: bool) -> None:
        self.console = Console(stderr=True, no_color=no_color, highlight=False)
        if not self.console.is_terminal:
            # A file or a pipe: each readout stays one line, whatever its length, for grep.
            self.console.soft_wrap = True
            self.console.width = UNWRAPPED_WIDTH
        self.quiet = quiet
        self.show_progress = not quiet and (force_progress or self.console.is_terminal)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {message}", style="yellow", markup=False)

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        if self.show_progress:
            with self.console.status(message):
                yield
        else:
            yield

    def progress(self, label: str, *fields: str, bar_width: int = 24, spinner: bool = False) -> Progress:
        """The one progress bar: ``label``, the bar, ``fields`` (rich column templates), the time
        left. It draws nothing unless progress is shown, but takes tasks and updates all the same."""
        return Progress(
            *([SpinnerColumn()] if spinner else []),
            TextColumn(label),
            BarColumn(bar_width=bar_width),
            *(TextColumn(field) for field in fields),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.show_progress,
        )

    def token_progress(self) -> Progress:
        """The bar of the commands that count tokens: what runs now, tokens done of all."""
        return self.progress(
            "{task.description}", "{task.completed:,.0f}/{task.total:,.0f} tok", bar_width=40
        )

    def memory_line(self, session: Session) -> str:
        from ..models.device_map import gpu_memory

        stats = session.stats()
        parts = [
            f"{format_count(stats.tokens_seen)} tokens",
            f"{stats.compressions} compressions",
            f"KV {format_bytes(stats.kv_bytes)} held (full cache: {format_bytes(stats.full_kv_bytes)})",
            f"RSS {format_bytes(rss_bytes())}",
        ]
        for name, (now, peak) in gpu_memory(session.loaded.model).items():  # one per GPU of a device map
            parts.append(f"{name} {format_bytes(now)} (peak {format_bytes(peak)})")
        return " · ".join(parts)

    @contextmanager
    def reading(self, document: Document, session: Session, total_chars: int | None) -> Iterator[Any]:
        """Yields an ``on_progress(ReadProgress)`` callback that drives a live bar."""
        if not self.show_progress:
            yield None
            return
        by_pages = document.page_count is not None
        total = document.page_count if by_pages else total_chars
        unit = "pages" if by_pages else "chars"
        progress = self.progress(
            "[bold]reading[/] {task.description}", "{task.fields[done]}", "{task.fields[speed]}", spinner=True
        )
        memory = Text("  starting ...", style="dim")
        started = time.perf_counter()
        label = " + ".join(Path(name).name for name in document.parts or [document.name])
        task = progress.add_task(label, total=total, done="", speed="")

        def on_progress(state: ReadProgress) -> None:
            elapsed = max(time.perf_counter() - started, 1e-6)
            done = state.pages_done if by_pages else state.chars_done
            progress.update(
                task,
                completed=done,
                done=f"{format_count(done)}/{format_count(total or 0)} {unit} · "
                f"{format_count(state.tokens_done)} tok",
                speed=f"{state.tokens_done / elapsed:,.0f} tok/s",
            )
            memory.plain = "  " + self.memory_line(session)

        # The bar and the memory line below it, redrawn together.
        with Live(Group(progress, memory), console=self.console, refresh_per_second=4):
            yield on_progress
        if not self.console.is_terminal:  # off a terminal, Live leaves its last line open
            self.console.line()


# -- stdout ------------------------------------------------------------------------------------
def write_json(data: dict[str, Any]) -> None:
    """A command's result as one JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")


def table(*columns: str, first: str = "left") -> Table:
    """A results table: the first column names the row (justified ``first``), the others are
    right-aligned figures."""
    grid = Table()
    grid.add_column(columns[0], justify=first)  # type: ignore[arg-type]
    for column in columns[1:]:
        grid.add_column(column, justify="right")
    return grid


def tables_console(no_color: bool) -> Console:
    """Where tables go: stdout, wide enough not to wrap them in a pipe or a file."""
    console = Console(no_color=no_color, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def show_table(console: Console, title: str, grid: Table) -> None:
    """A heading line, then the table (a table title would wrap to the table's width)."""
    console.print(title, style="bold", markup=False)
    console.print(grid)


def model_json(loaded: LoadedModel) -> dict[str, Any]:
    """Which model ran where: the keys every JSON result starts with."""
    return {
        "model": loaded.name,
        "family": loaded.family,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
    }


def result_json(
    *,
    session: Session,
    answer: str | None,
    tokens_in: int,
    tokens_out: int,
    seconds: float,
    pages: int | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    stats = session.stats()
    policy = session.policy
    gpu = gpu_bytes(session.loaded.device)
    data: dict[str, Any] = {
        "answer": answer,
        **model_json(session.loaded),
        "cache": policy.kind,
        "window": policy.window if policy.kind != "full" else None,
        "sink": policy.sink,
        "recent": policy.recent,
        "ratio": policy.ratio,
        "ctx": session.ctx,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "compressions": stats.compressions,
        "kv_entries": stats.entries,
        "kv_bytes": stats.kv_bytes,
        "full_kv_bytes": stats.full_kv_bytes,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": gpu[1] if gpu is not None else None,
        "seconds": round(seconds, 3),
        "timings": session.engine.timings.as_dict(),
        "pages": pages,
    }
    if session.quoted:
        data["quoted_passages"] = session.quoted
    data.update(extra or {})
    return data
