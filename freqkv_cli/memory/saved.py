"""A read document kept on disk: what a session holds after reading, saved and loaded again.

What a model holds after reading is small and fixed (the window of every layer), so it can be
kept and asked again and again without reading the document again. The file also keeps the
document's token ids (at most 4 bytes a token), from which passages are recalled for a question
asked later (:mod:`.recall`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

import torch

from ..cache.policy import CachePolicy
from ..cache.state import State
from ..engine.chunk_size import DEFAULT_MAX_CHUNK
from ..models.loading import LoadedModel
from ..models.settings import weights_fingerprint
from ..session.session import Session
from .file_format import MemoryHeader, load_memory, pack_ids, read_header, save_memory
from .token_ids import unpack_ids_tensor

STATE_KEY = "state"  # the header's ``extra`` entry holding the session's facts


@dataclass(frozen=True)
class Fingerprints:
    """Who a memory belongs to: the weights (an adapter merged into them included) and the
    tokenizer's vocabulary."""

    model: str
    tokenizer: str

    @classmethod
    def of(cls, loaded: LoadedModel) -> Fingerprints:
        return cls(weights_fingerprint(loaded.model), tokenizer_fingerprint(loaded.tokenizer))


def tokenizer_fingerprint(tokenizer: object) -> str:
    """A short hash of the vocabulary and the special tokens: tells one tokenizer from another."""
    vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    special = getattr(tokenizer, "all_special_tokens", [])
    text = json.dumps([sorted(vocab.items()), sorted(special)], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def save_session(session: Session, path: str | os.PathLike[str]) -> MemoryHeader:
    """Write everything ``session`` holds to ``path`` (atomically); returns the header written."""
    state = session.state()
    prints = Fingerprints.of(session.loaded)
    tensors = dict(state.tensors)
    vocab = int(session.loaded.model.config.vocab_size)
    tensors["document_ids"] = pack_ids(tensors["document_ids"], max(vocab, len(session.tokenizer)))  # type: ignore[arg-type]
    header = MemoryHeader(
        model_fingerprint=prints.model,
        tokenizer_fingerprint=prints.tokenizer,
        policy=asdict(session.engine.requested_policy),
        tokens_read=session.tokens_held,
        documents=[dict(d) for d in session.documents],
        dtype=str(session.loaded.dtype).removeprefix("torch."),
        extra={STATE_KEY: state.facts, "model": session.loaded.name},
    )
    return save_memory(path, header, tensors)


@dataclass
class LoadedMemory:
    session: Session
    header: MemoryHeader
    seconds: float  # to read, check and restore


def load_session(
    loaded: LoadedModel,
    path: str | os.PathLike[str],
    *,
    ctx: int | None = None,
    max_chunk: int = DEFAULT_MAX_CHUNK,
) -> LoadedMemory:
    """A session that goes on exactly where the one saved at ``path`` stopped. Refuses, in one
    line, a file that is not a memory, is damaged, newer, or made by another model or tokenizer.
    ``ctx`` (None: the saved one) caps what the session may hold in all."""
    started = time.perf_counter()
    prints = Fingerprints.of(loaded)
    header, tensors = load_memory(path, expect_model=prints.model, expect_tokenizer=prints.tokenizer)
    facts = header.extra[STATE_KEY]
    tensors["document_ids"] = unpack_ids_tensor(tensors["document_ids"])
    session = Session(
        loaded,
        CachePolicy(**header.policy),
        ctx=ctx if ctx is not None else facts.get("ctx"),
        system=facts.get("system"),
        max_chunk=max_chunk,
    )
    session.load_state(State(tensors, facts))
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    return LoadedMemory(session, header, time.perf_counter() - started)


__all__ = ["Fingerprints", "LoadedMemory", "MemoryHeader", "load_session", "read_header", "save_session"]
