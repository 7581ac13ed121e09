"""Shared plumbing of the commands: Ctrl-C handling, sessions, reading a document, answering."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..documents import Document, join_documents
from ..errors import Interrupted, UsageError
from ..sizes import format_bytes, format_count
from .options import (
    ANSWER,
    CACHE,
    INPUT,
    LOGGED_OUTPUT,
    MODEL,
    AnswerChoice,
    CacheChoice,
    InputChoice,
    ModelChoice,
    OutputChoice,
)

# What the runs below use brings torch and transformers: imported when a run starts, so that
# a command's --help does not wait for them.
if TYPE_CHECKING:
    from ..models.loading import LoadedModel
    from ..session.reading import ReadReport
    from ..session.session import Session
    from .output import Readout


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
    from ..session.session import Session

    policy = loaded.cache_policy(cache.settings)
    return Session(loaded, policy, ctx=cache.ctx_tokens, system=system, max_chunk=cache.max_chunk)


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
    finish: bool = True,
) -> ReadReport:
    """Stream a document with live progress; warn (never silently) about anything lost."""
    total_chars = len(document.text()) if document.page_count is None else None
    with readout.reading(document, session, total_chars) as on_progress:
        report = session.read_document(
            document,
            task=task,
            question=question,
            reserve=reserve,
            reread=reread,
            finish=finish,
            on_progress=on_progress,
            should_stop=stop,
        )
    for warning in report.warnings:  # a joined document's name each of its parts' warnings
        readout.warn(warning if document.parts else f"{document.name}: {warning}")
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
DOCUMENT_TASK = {"model": MODEL, "cache": CACHE, "answering": ANSWER, "source": INPUT}
DOCUMENT_TASK["output"] = LOGGED_OUTPUT  # with --no-log: their exchanges are logged


def run_document_task(
    paths: list[str],
    *,
    task: str,
    question: str | None = None,
    save: str | None = None,
    model: ModelChoice,
    cache: CacheChoice,
    answering: AnswerChoice,
    source: InputChoice,
    output: OutputChoice,
) -> None:
    """summarize / qa: check input, load, read the documents, in order, as one (or load a saved
    memory), answer, report. ``save``: keep the read as a memory file too."""
    from ..memory.file_format import is_memory_file
    from ..memory.recall import answer_from_memory
    from ..memory.saved import load_session
    from .conversation_log import log_exchange
    from .output import result_json, write_json

    cache.settings.check()
    readout = output.readout
    started = time.perf_counter()
    path = paths[0]
    memory = is_memory_file(path)
    memories = [p for p in paths if p != "-" and is_memory_file(p)]
    if memories and len(paths) > 1:
        raise UsageError(f"{memories[0]} is a saved memory: it is asked alone, without other documents")
    if memory:
        refuse_cache_flags(cache, path)
    else:
        document = open_documents(paths, source)  # before the model: bad input fails fast
    if save is not None:
        check_writable(save)
    loaded = model.load(readout)
    stop = StopFlag()
    with stop.armed():
        if memory:
            with readout.status(f"loading memory {path} ..."):
                loaded_memory = load_session(loaded, path, ctx=cache.ctx_tokens, max_chunk=cache.max_chunk)
            session = loaded_memory.session
            extra = memory_json(session, loaded_memory.seconds)
            pages = sum(d["pages"] or 0 for d in session.documents) or None
        else:
            session = make_session(loaded, cache, answering.system)
            later = save is not None  # a memory must not depend on this question
            report = read_into(
                session,
                document,
                readout,
                stop,
                task="read" if later else task,
                question=None if later else question,
                reserve=answering.max_new_tokens,
                reread=cache.reread,
                finish=not later,
            )
            if stop():
                raise Interrupted("interrupted while reading")
            if later:
                keep_memory(session, save, readout)  # type: ignore[arg-type]
            extra = {
                "document": document.name,
                "documents": document.parts or [document.name],
                "document_tokens": report.tokens,
                "document_tokens_total": report.tokens_total,
                "truncated": report.truncated,
                "warnings": report.warnings,
                "memory": False,
            }
            pages = document.page_count
        if memory or save is not None:
            answer_from_memory(session, task, question, cache.reread, cache.recall)
        tokens_in = session.tokens_held
        result = answer(session, answering, stop, stream=not output.as_json)
    seconds = time.perf_counter() - started
    cut = result.stop_reason == "max_new_tokens"
    log_exchange(task, session, question, result, tokens_in, seconds, answering, output.no_log)
    if output.as_json:
        data = result_json(
            session=session,
            answer=result.text,
            tokens_in=tokens_in,
            tokens_out=result.tokens_out,
            seconds=seconds,
            pages=pages,
            extra={**extra, "stop_reason": result.stop_reason, "answer_truncated": cut},
        )
        write_json(data)
        sys.stdout.flush()  # an output that cannot be written is said before any note on the answer
    if cut:  # said in both modes: a cut answer reads like a finished one
        readout.warn(
            f"the answer was cut at --max-new-tokens {answering.max_new_tokens}; raise it for a longer one"
        )
    if not output.as_json:
        read_line = (
            f"memory loaded in {extra['load_seconds']:.2f} s"
            if memory
            else f"{format_count(report.tokens)} document tokens in {report.seconds:.1f} s "
            f"({report.tokens / max(report.seconds, 1e-9):,.0f} tok/s)"
        )
        readout.info(
            f"{readout.memory_line(session)} · {read_line} · {result.tokens_out} tokens out · "
            f"{seconds:.1f} s in all"
        )
    if result.stop_reason == "interrupted":
        raise Interrupted("interrupted: the answer above is incomplete")


def open_documents(paths: list[str], source: InputChoice) -> Document:
    """Open and check every document (standard input at most once) and join them in order."""
    if not paths:
        raise UsageError("no document given: pass a file path, or - for standard input")
    if paths.count("-") > 1:
        raise UsageError("standard input (-) can be read only once")
    if len(paths) > 1 and source.pages is not None:
        raise UsageError("--pages selects the pages of one PDF; with several documents, drop it")
    return join_documents([source.open(path) for path in paths])


def refuse_cache_flags(cache: CacheChoice, path: str) -> None:
    given = cache.given()
    if given:
        raise UsageError(
            f"{path} is a saved memory: it keeps the cache settings it was read with; drop {', '.join(given)}"
        )


def check_writable(path: str) -> None:
    """Refuse, before any reading, a memory file that could not be written."""
    folder = Path(path).expanduser().resolve().parent
    if Path(path).is_dir():
        raise UsageError(f"cannot write the memory to '{path}': it is a folder")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write the memory to '{path}': '{folder}' is not a writable folder")


def keep_memory(session: Session, path: str, readout: Readout) -> None:
    from ..memory.saved import save_session

    started = time.perf_counter()
    header = save_session(session, path)
    size = Path(path).stat().st_size
    readout.info(
        f"kept the memory of {format_count(header.tokens_read)} tokens in {path} "
        f"({format_bytes(size)}, {time.perf_counter() - started:.1f} s)"
    )


def memory_json(session: Session, seconds: float) -> dict:
    documents = session.documents
    return {
        "document": ", ".join(str(d["name"]) for d in documents),
        "document_tokens": sum(int(d["tokens"]) for d in documents),
        "memory": True,
        "load_seconds": round(seconds, 3),
    }
