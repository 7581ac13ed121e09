"""One document read into a session: its pages handed to the engine in blocks of token ids, cut
at the --ctx budget, and its progress counted as the model reads them."""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..documents import Document


@dataclass
class ReadReport:
    """What reading one document did."""

    name: str
    pages: int  # pages (or text parts) that reached the model
    tokens: int  # document tokens streamed into the model
    tokens_total: int  # document tokens in all (more than ``tokens`` only if --ctx cut it)
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return self.tokens < self.tokens_total


@dataclass
class ReadProgress:
    """Passed to the progress callback after every forward call."""

    pages_done: int
    pages_total: int | None
    chars_done: int
    tokens_done: int  # tokens of this document streamed so far


class DocumentFeed:
    """``document``'s token ids block by block (:meth:`blocks`), at most ``budget`` of them (None:
    all), each kept in ``document_ids``; :meth:`consumed` takes the tokens the engine has read and
    hands ``on_progress`` the :class:`ReadProgress` so far."""

    def __init__(
        self,
        document: Document,
        encode: Callable[[str], list[int]],
        document_ids: array,
        budget: int | None,
        on_progress: Callable[[ReadProgress], None] | None,
    ) -> None:
        self.document = document
        self.encode = encode
        self.document_ids = document_ids
        self.budget = budget
        self.on_progress = on_progress
        self.progress = ReadProgress(0, document.page_count, 0, 0)
        self.total = 0  # the document's tokens in all
        self.sent = 0  # the tokens handed to the engine (fewer than total where the budget cuts)
        # (tokens, chars, ends a page) of each block handed to the engine and not yet consumed:
        # progress follows what the model has read, not what the tokenizer has produced.
        self.queued: deque[list[int]] = deque()

    def blocks(self) -> Iterator[list[int]]:
        first = True
        for page in self.document.pages():
            text = page.text if first else "\n\n" + page.text
            first = False
            blocks = _blocks(text)
            for index, block in enumerate(blocks):
                ids = self.encode(block)
                self.total += len(ids)
                if self.budget is not None and self.sent + len(ids) > self.budget:
                    ids = ids[: max(0, self.budget - self.sent)]
                self.sent += len(ids)
                self.document_ids.extend(ids)
                self.queued.append([len(ids), len(block), int(index == len(blocks) - 1)])
                if ids:
                    yield ids
                else:
                    self.consumed(0)

    def consumed(self, count: int) -> None:
        state, queued = self.progress, self.queued
        state.tokens_done += count
        while queued and count >= queued[0][0]:
            tokens, chars, ends_page = queued.popleft()
            count -= tokens
            state.chars_done += chars
            state.pages_done += ends_page
        if queued and count:  # inside a block: its characters counted pro rata, so that a
            block = queued[0]  # one-block text moves too and the time left can show
            share = block[1] * count // block[0]
            block[0] -= count
            block[1] -= share
            state.chars_done += share
        if self.on_progress is not None:
            self.on_progress(state)


def _blocks(text: str, size: int = 16384) -> list[str]:
    """Split text at line breaks into blocks of about ``size`` characters, for steady progress.

    Cutting just before a newline keeps the tokenization of byte-level BPEs (whose
    pre-tokenizers split before whitespace runs anyway) practically unchanged.
    """
    blocks: list[str] = []
    start = 0
    while len(text) - start > size:
        cut = text.rfind("\n", start + size // 2, start + size)
        cut = cut if cut > start else start + size
        blocks.append(text[start:cut])
        start = cut
    blocks.append(text[start:])
    return blocks
