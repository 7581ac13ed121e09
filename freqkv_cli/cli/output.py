"""What the user sees on stderr: live progress, memory readouts, warnings, final statistics."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from ..documents import Document
from ..session.session import ReadProgress, Session
from ..sizes import format_bytes, format_count


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
    return torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)


class Readout:
    """Progress and diagnostics on stderr. ``show_progress`` False: warnings and errors only."""

    def __init__(self, *, quiet: bool, force_progress: bool, no_color: bool) -> None:
        self.console = Console(stderr=True, no_color=no_color, highlight=False)
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

    def memory_line(self, session: Session) -> str:
        stats = session.stats()
        parts = [
            f"{format_count(stats.tokens_seen)} tokens",
            f"{stats.compressions} compressions",
            f"KV {format_bytes(stats.kv_bytes)} held (full cache: {format_bytes(stats.full_kv_bytes)})",
            f"RSS {format_bytes(rss_bytes())}",
        ]
        gpu = gpu_bytes(session.loaded.device)
        if gpu is not None:
            parts.append(f"GPU {format_bytes(gpu[0])} (peak {format_bytes(gpu[1])})")
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
        progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]reading[/] {task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[done]}"),
            TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        memory = Text("  starting ...", style="dim")
        started = time.perf_counter()
        task = progress.add_task(Path(document.name).name, total=total, done="", speed="")

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
        "model": session.loaded.name,
        "family": session.loaded.family,
        "device": str(session.loaded.device),
        "dtype": str(session.loaded.dtype).removeprefix("torch."),
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
        "pages": pages,
    }
    if session.quoted:
        data["quoted_passages"] = session.quoted
    data.update(extra or {})
    return data
