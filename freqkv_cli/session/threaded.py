"""A generation's text as an iterator: the generation runs in a thread and hands its pieces
over a queue, so that a caller can loop over an answer (``stream=True``) as it is generated."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator


def threaded_pieces(produce: Callable[[Callable[[str], None], Callable[[], bool]], object]) -> Iterator[str]:
    """What ``produce(on_text, should_stop)`` hands ``on_text``, as an iterator: it runs in a
    thread once iteration starts; leaving the loop early (break, close) stops it at the next
    token; its exception is raised in the loop."""
    pieces: queue.Queue[str | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            produce(pieces.put, stop.is_set)
        except BaseException as exc:  # handed to the reader
            pieces.put(exc)
        pieces.put(None)

    worker = threading.Thread(target=work, name="freqkv-generate", daemon=True)
    worker.start()
    try:
        while (piece := pieces.get()) is not None:
            if isinstance(piece, BaseException):
                raise piece
            yield piece
    finally:
        stop.set()
        worker.join()
