"""Shared plumbing of the commands: Ctrl-C handling, loading, reading a document, answering."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..documents import Document, open_document
from ..engine.sampling import Sampler
from ..errors import Interrupted
from ..models.loading import LoadedModel, load_model
from ..session.session import ReadReport, Session
from ..sizes import format_count
from .options import CacheChoice, ModelChoice
from .readout import Readout, result_json


class StopFlag:
    """Ctrl-C sets the flag (work stops at the next token or chunk, cleanly); a second Ctrl-C
    while the flag is still set raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.set = False

    def __call__(self) -> bool:
        return self.set

    def _handler(self, signum: int, frame: object) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    @contextmanager
    def armed(self) -> Iterator[StopFlag]:
        self.set = False
        try:
            previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread (e.g. some test runners): plain KeyboardInterrupt
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def load(choice: ModelChoice, readout: Readout) -> LoadedModel:
    with readout.status(f"loading model {choice.model} ..."):
        loaded = load_model(
            choice.model,
            device=choice.device,
            dtype=choice.dtype,
            base=choice.base,
            trust_remote_code=choice.trust_remote_code,
            untuned=choice.untuned,
        )
    return loaded


def open_input(path: str, password: str | None, pages: str | None) -> Document:
    return open_document(path, password=password, pages=pages)


def make_session(loaded: LoadedModel, cache: CacheChoice, system: str | None) -> Session:
    return Session(loaded, cache.policy_for(loaded), ctx=cache.ctx_tokens(), system=system)


def read_into(
    session: Session,
    document: Document,
    readout: Readout,
    stop: StopFlag,
    *,
    task: str,
    question: str | None = None,
    reserve: int = 0,
    reread: int = 0,
) -> ReadReport:
    """Stream a document with live progress; warn (never silently) about anything lost."""
    total_chars = len(document.text()) if document.kind == "text" else None
    with readout.reading(document, session, total_chars) as on_progress:
        report = session.read_document(
            document,
            task=task,
            question=question,
            reserve=reserve,
            reread=reread,
            on_progress=on_progress,
            should_stop=stop,
        )
    for warning in report.warnings:
        readout.warn(f"{document.name}: {warning}")
    if report.truncated:
        read, total, limit = (format_count(n) for n in (report.tokens, report.tokens_total, session.ctx or 0))
        readout.warn(
            f"{document.name}: read {read} of {total} tokens; the rest is past --ctx {limit} (raise --ctx)"
        )
    return report


@dataclass
class Answer:
    text: str
    tokens_out: int
    stop_reason: str
    extra: dict[str, Any] = field(default_factory=dict)


def answer(
    session: Session, sampler: Sampler, max_new_tokens: int, stop: StopFlag, *, stream: bool
) -> Answer:
    """Generate; with ``stream`` the text goes to stdout as it comes."""

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = session.generate(
        max_new_tokens=max_new_tokens, sampler=sampler, on_text=write if stream else None, should_stop=stop
    )
    if stream:
        write("\n")
    return Answer(result.text, len(result.token_ids), result.stop_reason)


def run_document_task(
    *,
    path: str,
    task: str,
    question: str | None,
    model: ModelChoice,
    cache: CacheChoice,
    sampler: Sampler,
    max_new_tokens: int,
    system: str | None,
    password: str | None,
    pages: str | None,
    readout: Readout,
    as_json: bool,
    reread: int = 0,
) -> None:
    """summarize / qa: check input, load, stream the document, answer, report."""
    cache.check()
    started = time.perf_counter()
    document = open_input(path, password, pages)  # before the model: bad input fails fast
    loaded = load(model, readout)
    session = make_session(loaded, cache, system)
    stop = StopFlag()
    with stop.armed():
        report = read_into(
            session,
            document,
            readout,
            stop,
            task=task,
            question=question,
            reserve=max_new_tokens,
            reread=reread,
        )
        tokens_in = session.tokens_held
        if stop():
            raise Interrupted("interrupted while reading")
        result = answer(session, sampler, max_new_tokens, stop, stream=not as_json)
    seconds = time.perf_counter() - started
    if as_json:
        data = result_json(
            session=session,
            answer=result.text,
            tokens_in=tokens_in,
            tokens_out=result.tokens_out,
            seconds=seconds,
            pages=document.page_count,
            extra={
                "document": document.name,
                "document_tokens": report.tokens,
                "document_tokens_total": report.tokens_total,
                "truncated": report.truncated,
                "stop_reason": result.stop_reason,
                "warnings": report.warnings,
            },
        )
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    else:
        readout.info(
            f"{readout.memory_line(session)} · {format_count(report.tokens)} document tokens in "
            f"{report.seconds:.1f} s ({report.tokens / max(report.seconds, 1e-9):,.0f} tok/s) · "
            f"{result.tokens_out} tokens out · {seconds:.1f} s in all"
        )
    if result.stop_reason == "interrupted":
        raise Interrupted("interrupted: the answer above is incomplete")
