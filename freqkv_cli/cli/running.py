"""Shared plumbing of the commands: Ctrl-C handling, sessions, reading a document, answering."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..documents import Document
from ..errors import Interrupted
from ..models.loading import LoadedModel
from ..session.session import ReadReport, Session
from ..sizes import format_count
from .options import (
    ANSWER,
    CACHE,
    INPUT,
    MODEL,
    OUTPUT,
    AnswerChoice,
    CacheChoice,
    InputChoice,
    ModelChoice,
    OutputChoice,
)
from .output import Readout, result_json, write_json


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


def make_session(loaded: LoadedModel, cache: CacheChoice, system: str | None) -> Session:
    """A session under the policy the cache flags resolve to on this model."""
    return Session(loaded, loaded.cache_policy(cache.settings), ctx=cache.ctx_tokens, system=system)


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


def answer(session: Session, choice: AnswerChoice, stop: StopFlag, *, stream: bool) -> Answer:
    """Generate; with ``stream`` the text goes to stdout as it comes."""

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = session.generate(
        max_new_tokens=choice.max_new_tokens,
        sampler=choice.sampler(),
        on_text=write if stream else None,
        should_stop=stop,
    )
    if stream:
        write("\n")
    return Answer(result.text, len(result.token_ids), result.stop_reason)


# What summarize and qa take (the groups ``run_document_task`` is given).
DOCUMENT_TASK = {"model": MODEL, "cache": CACHE, "answering": ANSWER, "source": INPUT, "output": OUTPUT}


def run_document_task(
    path: str,
    *,
    task: str,
    question: str | None = None,
    model: ModelChoice,
    cache: CacheChoice,
    answering: AnswerChoice,
    source: InputChoice,
    output: OutputChoice,
) -> None:
    """summarize / qa: check input, load, stream the document, answer, report."""
    cache.settings.check()
    readout = output.readout
    started = time.perf_counter()
    document = source.open(path)  # before the model: bad input fails fast
    session = make_session(model.load(readout), cache, answering.system)
    stop = StopFlag()
    with stop.armed():
        report = read_into(
            session,
            document,
            readout,
            stop,
            task=task,
            question=question,
            reserve=answering.max_new_tokens,
            reread=cache.reread,
        )
        tokens_in = session.tokens_held
        if stop():
            raise Interrupted("interrupted while reading")
        result = answer(session, answering, stop, stream=not output.as_json)
    seconds = time.perf_counter() - started
    if output.as_json:
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
        write_json(data)
    else:
        readout.info(
            f"{readout.memory_line(session)} · {format_count(report.tokens)} document tokens in "
            f"{report.seconds:.1f} s ({report.tokens / max(report.seconds, 1e-9):,.0f} tok/s) · "
            f"{result.tokens_out} tokens out · {seconds:.1f} s in all"
        )
    if result.stop_reason == "interrupted":
        raise Interrupted("interrupted: the answer above is incomplete")
