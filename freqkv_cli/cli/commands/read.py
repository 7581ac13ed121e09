"""`freqkv read PATH|- -o FILE.fkv`: read a document once and keep what the model holds."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from ...errors import Interrupted
from .. import options as o
from ..output import write_json
from ..running import StopFlag, check_writable, keep_memory, make_session, read_into


@o.takes(model=o.MODEL, cache=o.CACHE, source=o.INPUT, output=o.OUTPUT)
def read(
    path: o.PathArg,
    out: Annotated[
        str,
        typer.Option("--out", "-o", metavar="FILE.fkv", help="Where to keep the memory.", show_default=False),
    ],
    *,
    model: o.ModelChoice,
    cache: o.CacheChoice,
    source: o.InputChoice,
    output: o.OutputChoice,
) -> None:
    """Read a document and keep what the model holds after reading, in a file of constant size.

    `freqkv qa FILE.fkv "..."`, `freqkv summarize FILE.fkv` and `freqkv chat FILE.fkv` then
    answer from it in seconds, without reading the document again. The file holds the
    compressed cache (the window of every layer, whatever the document's length) and the
    document's token ids (at most 4 bytes each), from which passages are recalled for each
    question. It is refused by another model or tokenizer.

    Examples:

      freqkv read book.pdf -o book.fkv

      freqkv read report.pdf --pages 3-40 -o report.fkv --window 2k

      freqkv qa book.fkv "Who is the narrator?"
    """
    cache.settings.check()
    check_writable(out)
    readout = output.readout
    started = time.perf_counter()
    document = source.open(path)
    session = make_session(model.load(readout), cache, None)
    stop = StopFlag()
    with stop.armed():
        report = read_into(session, document, readout, stop, task="read", finish=False)
    if stop():
        raise Interrupted("interrupted while reading: no memory was written")
    keep_memory(session, out, readout)
    if output.as_json:
        stats = session.stats()
        write_json(
            {
                "memory": out,
                "document": document.name,
                "pages": document.page_count,
                "document_tokens": report.tokens,
                "document_tokens_total": report.tokens_total,
                "truncated": report.truncated,
                "kv_bytes": stats.kv_bytes,
                "compressions": stats.compressions,
                "bytes": os.path.getsize(out),
                "seconds": round(time.perf_counter() - started, 3),
                "warnings": report.warnings,
            }
        )
