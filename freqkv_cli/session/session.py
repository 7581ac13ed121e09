"""A conversation held in a FreqKV cache: documents and turns go in, answers come out.

This is the layer the commands use; it knows chat templates, documents and the --ctx
budget, and nothing about terminals.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable

import torch

from ..cache.policy import CachePolicy
from ..cache.state import State
from ..cache.window_cache import CacheStats
from ..documents import Document
from ..documents.text import TextSource
from ..engine.chunk_size import DEFAULT_MAX_CHUNK
from ..engine.passages import QUOTE_LEFT, QUOTE_RIGHT
from ..engine.sampling import Sampler
from ..engine.streaming import GenerationResult, StreamingEngine
from ..errors import ContextLimitError
from ..models.loading import LoadedModel
from .prompts import document_prompt, turn_template
from .reading import DocumentFeed, ReadProgress, ReadReport


class Session:
    """One conversation with ``loaded`` under ``policy``; ``ctx`` caps the tokens it may hold."""

    def __init__(
        self,
        loaded: LoadedModel,
        policy: CachePolicy,
        *,
        ctx: int | None = None,
        system: str | None = None,
        max_chunk: int = DEFAULT_MAX_CHUNK,
    ) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        profile = loaded.head_profile
        self.engine = StreamingEngine(
            loaded.model,
            policy,
            tokenizer=loaded.tokenizer,
            max_chunk=max_chunk,
            head_weights=profile.weights() if profile is not None else None,
        )
        self.template = turn_template(loaded.tokenizer, system)
        self.ctx = ctx
        self.system = system
        self.turns = 0  # user turns begun
        self.stop_token_ids = _stop_ids(loaded)
        self.quoted: list[str] = []  # passages the last qa read quoted before its question
        # Every document token read, in order (4 bytes each): what passages are recalled from
        # when a question comes after the reading; and what each document was.
        self.document_ids = array("i")
        self.documents: list[dict] = []
        self.open_task: str | None = None  # a document turn left open (read_document(finish=False))
        # What the session held when its talk began (documents only, on the CPU), and how many
        # documents that was: clear_conversation() goes back to it without reading again.
        self._before_talk: tuple[State, int] | None = None

    # -- bookkeeping ---------------------------------------------------------------------
    @property
    def policy(self) -> CachePolicy:
        """The cache policy in force (a hybrid's exact slots fitted to a pinned question)."""
        return self.engine.policy

    def stats(self) -> CacheStats:
        """What the cache holds now."""
        return self.engine.stats()

    @property
    def tokens_held(self) -> int:
        """Tokens this conversation has streamed (what --ctx limits), not cache entries."""
        return self.engine.cache.tokens_seen + len(self.engine.pending_tokens)

    def reset(self) -> None:
        """Forget everything: documents and conversation."""
        self.engine.reset()
        self.turns = 0
        self.quoted, self.documents, self.open_task = [], [], None
        self.document_ids = array("i")
        self._before_talk = None

    @property
    def talked(self) -> bool:
        """Whether a turn other than a document's was added (each document is one turn)."""
        return self.turns > len(self.documents)

    def clear_conversation(self, should_stop: Callable[[], bool] | None = None) -> int:
        """Forget the conversation, keep the documents; returns how many documents had to be read
        again. The session goes back to what it held when the talk began (a snapshot taken then);
        documents read after that, or without a snapshot (a conversation loaded from a memory
        file), are read again from their kept token ids."""
        kept = self._before_talk[1] if self._before_talk is not None else 0
        again = [(dict(d), self.document_ids_of(d)) for d in self.documents[kept:]]
        if self._before_talk is not None:
            self.load_state(self._before_talk[0])
        else:
            self.reset()
        self._before_talk = None
        for record, ids in again:
            text = self.tokenizer.decode(ids)  # type: ignore[attr-defined]
            source = Document(record["name"], "text", None, sha256=record["sha256"], _source=TextSource(text))
            self.read_document(source, task="read", should_stop=should_stop)
            self.documents[-1]["pages"] = record["pages"]
        return len(again)

    def document_ids_of(self, record: dict) -> list[int]:
        """The token ids read for the document ``record`` (one of :attr:`documents`)."""
        first = int(record["first"])
        return self.document_ids[first : first + int(record["tokens"])].tolist()

    # -- saving and restoring --------------------------------------------------------------
    def state(self) -> State:
        """All this session holds (see :mod:`..cache.state`); :meth:`load_state` goes on from it."""
        facts = {
            "turns": self.turns,
            "quoted": list(self.quoted),
            "system": self.system,
            "ctx": self.ctx,
            "documents": [dict(d) for d in self.documents],
            "open_task": self.open_task,
        }
        ids = torch.frombuffer(bytearray(self.document_ids.tobytes()), dtype=torch.int32)
        state = State({"document_ids": ids}, facts)
        state.put("engine", self.engine.state())
        return state

    def load_state(self, state: State) -> None:
        """Go on exactly where :meth:`state` was taken (the same model; see :mod:`..memory`)."""
        facts = state.facts
        self.engine.load_state(state.get("engine"))
        self.turns, self.quoted = int(facts["turns"]), list(facts["quoted"])
        self.documents, self.open_task = [dict(d) for d in facts["documents"]], facts["open_task"]
        self.document_ids = array("i")
        self.document_ids.frombytes(
            state.tensors["document_ids"].to(torch.int32).contiguous().numpy().tobytes()
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    def _turn_opening(self) -> str:
        if self.turns == 0:
            return self.template.first_before
        opening = self.template.before
        # The last answer ended with its end-of-turn token, which is already in the history.
        pending = self.engine.pending_tokens
        if pending:
            closer = self.tokenizer.decode(pending)  # type: ignore[attr-defined]
            if opening.startswith(closer):
                opening = opening[len(closer) :]
        return opening

    def _check_room(self, needed: int) -> None:
        if self.ctx is not None and self.tokens_held + needed > self.ctx:
            raise ContextLimitError(
                f"this session holds {self.tokens_held:,} tokens and the next {needed:,} would pass "
                f"`ctx` {self.ctx:,}: use /reset or a larger `ctx`"
            )

    # -- input -----------------------------------------------------------------------------
    def read_document(
        self,
        document: Document,
        *,
        task: str = "read",
        question: str | None = None,
        reserve: int = 0,
        reread: int = 0,
        finish: bool = True,
        on_progress: Callable[[ReadProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ReadReport:
        """Stream ``document`` inside one user turn for ``task`` (``summarize``, ``qa``, ``read``).

        The instruction (and question) before the document is pinned when the conversation
        starts with it, so compression never blurs it. ``reserve`` tokens are kept free
        under --ctx for the answer. A document longer than the budget is cut, and the
        report says by how much (the caller must tell the user).

        ``reread`` (qa under the hybrid cache): quote up to this many of the passages the
        question's attention kept in the exact slots again, as text just before the question
        at the end. The exact entries sit far from the question among blurred ones; a small
        model answers from a quoted passage much more often (docs/BENCHMARKS.md section 6).
        ``finish=False`` leaves the turn open after the document: :meth:`finish_document` closes it.
        """
        started = time.perf_counter()
        before, after = document_prompt(task, question)
        parts = [self.encode(text) for text in _around(self._turn_opening() + before, question)]
        prefix = [token for part in parts for token in part]
        suffix = self.encode(after + self.template.after)
        if question is not None and reread > 0:  # room for the quotes: E exact tokens, the text
            # around each, and the "- ...", "..." of its line
            reserve += self.policy.exact_slots() + (QUOTE_LEFT + QUOTE_RIGHT + 8) * reread
        self._check_room(len(prefix) + len(suffix) + reserve)
        budget = None
        if self.ctx is not None:
            budget = self.ctx - self.tokens_held - len(prefix) - len(suffix) - reserve
        pin = self.tokens_held == 0
        for index, part in enumerate(parts):  # [before the question, the question, after it]
            self.engine.feed(part, pin=pin, question=index == 1, should_stop=should_stop)
        self.turns += 1

        feed = DocumentFeed(document, self.encode, self.document_ids, budget, on_progress)
        first_id = len(self.document_ids)
        self.engine.feed(feed.blocks(), on_progress=feed.consumed, should_stop=should_stop)
        self.documents.append(
            {
                "name": document.name,
                "pages": document.page_count,
                "sha256": document.sha256,
                "tokens": feed.sent,
                "first": first_id,
            }
        )
        self.open_task = task
        if finish:
            self.finish_document(task, question, reread=reread, should_stop=should_stop)
        return ReadReport(
            name=document.name,
            pages=feed.progress.pages_done,
            tokens=feed.sent,
            tokens_total=feed.total,
            seconds=time.perf_counter() - started,
            warnings=list(document.warnings),
        )

    def finish_document(
        self,
        task: str,
        question: str | None = None,
        *,
        reread: int = 0,
        passages: list[list[int]] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Close a document's turn: the text after it (with up to ``reread`` quoted passages,
        see :meth:`read_document`, or the token ids of ``passages`` chosen by the caller) and the
        assistant's cue."""
        self.quoted = []
        if passages is None and question is not None and reread > 0:
            passages = self.engine.exact_passages(reread)
        if question is not None and passages:
            self.quoted = [self.tokenizer.decode(ids) for ids in passages]  # type: ignore[attr-defined]
        self.open_task = None
        _, after = document_prompt(task, question, self.quoted)
        self.engine.feed(self.encode(after + self.template.after), should_stop=should_stop)

    def add_user_turn(self, text: str, *, should_stop: Callable[[], bool] | None = None) -> int:
        """Append one user message and the assistant's cue; returns the tokens added."""
        ids = self.encode(self._turn_opening() + text + self.template.after)
        self._check_room(len(ids))
        if self.documents and not self.talked and self.open_task is None and self._before_talk is None:
            self._before_talk = (_on_cpu(self.state()), len(self.documents))
        self.engine.feed(ids, should_stop=should_stop)
        self.turns += 1
        return len(ids)

    def add_answer(self, text: str, *, should_stop: Callable[[], bool] | None = None) -> int:
        """Append an answer given earlier, as if it had just been generated (a conversation
        replayed from its log); returns the tokens added."""
        ids = self.encode(text)
        self._check_room(len(ids))
        self.engine.feed(ids, should_stop=should_stop)
        return len(ids)

    # -- output ----------------------------------------------------------------------------
    def generate(
        self,
        *,
        max_new_tokens: int = 512,
        sampler: Sampler | None = None,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        if self.ctx is not None:
            max_new_tokens = max(0, min(max_new_tokens, self.ctx - self.tokens_held))
        return self.engine.generate(
            max_new_tokens,
            sampler,
            stop_token_ids=self.stop_token_ids,
            on_text=on_text,
            should_stop=should_stop,
        )


def _on_cpu(state: State) -> State:
    """``state`` with its tensors in host memory: a snapshot kept aside must not hold device memory."""
    return State({name: t.to("cpu") for name, t in state.tensors.items()}, state.facts)


def _around(text: str, question: str | None) -> list[str]:
    """``text`` cut into [before the question, the question, after it] (the question keeps the
    space before it, where a tokenizer attaches it); one piece when there is no question."""
    at = text.rfind(question) if question else -1
    if question is None or at < 0:
        return [text]
    if at > 0 and text[at - 1] == " ":
        at -= 1
        question = " " + question
    return [text[:at], question, text[at + len(question) :]]


def _stop_ids(loaded: LoadedModel) -> list[int]:
    ids: set[int] = set()
    eos = getattr(loaded.model.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(eos)
    tok_eos = getattr(loaded.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    return sorted(ids)
