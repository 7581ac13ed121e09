"""Long-text perplexity under a cache policy, the way the paper evaluates PG-19.

Every scored token is predicted by a model that has streamed every token before it
through the cache policy (:meth:`StreamingEngine.score`): no sliding windows with
overlap, no restarts. ``ppl = exp(mean NLL)`` over tokens ``1 .. length-1`` of a context.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from ..cache.policy import CachePolicy
from ..engine.chunk_size import DEFAULT_MAX_CHUNK
from ..engine.streaming import ProgressCallback, StreamingEngine

# Logits are computed this many positions at a time: 256 x a 49k vocabulary is 50 MB of
# float32, whatever the chunk size, so scoring costs no more memory than reading.
SCORE_BLOCK = 256
# A token straddling the cut of a text prefix can differ from the whole text's tokens; this
# many extra tokens past the cut keep the ones used clear of it.
_CUT_MARGIN = 16


@dataclass
class Bucket:
    """Mean loss of the tokens at positions ``start .. end-1`` of the context."""

    start: int
    end: int
    nll: float

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)


@dataclass
class PerplexityRun:
    """One context of ``length`` tokens of ``file`` scored under ``cache``."""

    file: str
    cache: str
    length: int
    tokens: int  # tokens scored: length - 1 (the first has no prediction)
    nll: float  # mean negative log-likelihood, nats per token
    seconds: float
    extrapolated: bool  # some position was past the model's native window
    buckets: list[Bucket] = field(default_factory=list)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)


@dataclass
class PerplexitySummary:
    """All files at one (cache, length), token-weighted: exp(total NLL / total tokens)."""

    cache: str
    length: int
    files: int
    tokens: int
    nll: float
    seconds: float
    extrapolated: bool

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)


def first_tokens(encode: Callable[[str], list[int]], text: str, count: int) -> list[int] | None:
    """The first ``count`` tokens of ``text`` (None if it has fewer), tokenizing only a prefix.

    A book can be megabytes: tokenize a prefix a few characters per token long, doubling it
    until it holds ``count`` tokens plus a margin, so the cut never changes the tokens kept.
    """
    chars = max(64, 6 * (count + _CUT_MARGIN))
    while True:
        ids = encode(text[:chars])
        if chars >= len(text):
            return ids[:count] if len(ids) >= count else None
        if len(ids) >= count + _CUT_MARGIN:
            return ids[:count]
        chars *= 2


def uses_extrapolation(policy: CachePolicy, length: int, native_window: int) -> bool:
    """Whether a context of ``length`` tokens reaches positions the model was not trained on.

    A full cache gives token ``t`` position ``t``; a windowed cache never passes its window.
    ``native_window`` 0 means unknown (nothing is flagged).
    """
    if native_window <= 0:
        return False
    highest = length if policy.kind == "full" else min(length, policy.window)
    return highest > native_window


def stream_nll(
    model: PreTrainedModel,
    policy: CachePolicy,
    ids: Sequence[int],
    *,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    block: int = SCORE_BLOCK,
    on_progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """NLL of tokens ``1 .. len(ids)-1`` streamed from an empty cache: float32, ``(len(ids) - 1,)``."""
    engine = StreamingEngine(model, policy, max_chunk=max_chunk)
    return engine.score(ids, on_progress=on_progress, block=block).float().cpu()


def position_buckets(nll: torch.Tensor, count: int) -> list[Bucket]:
    """Mean loss in ``count`` equal ranges of positions. ``nll[i]`` is the loss of token ``i + 1``."""
    scored = int(nll.shape[0])
    count = max(1, min(count, scored))
    # Edges over positions 1 .. scored; equal widths up to rounding.
    edges = [1 + round(i * scored / count) for i in range(count + 1)]
    values = nll.double()
    return [
        Bucket(start, end, float(values[start - 1 : end - 1].mean()))
        for start, end in itertools.pairwise(edges)
        if end > start
    ]


def run_perplexity(
    model: PreTrainedModel,
    policy: CachePolicy,
    ids: Sequence[int],
    *,
    file: str = "",
    native_window: int = 0,
    buckets: int = 8,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    block: int = SCORE_BLOCK,
    on_progress: ProgressCallback | None = None,
) -> PerplexityRun:
    """Score the context ``ids`` (its length is the context length) under ``policy``."""
    if len(ids) < 2:
        raise ValueError("a context needs at least 2 tokens")
    started = time.perf_counter()
    nll = stream_nll(model, policy, ids, max_chunk=max_chunk, block=block, on_progress=on_progress)
    seconds = time.perf_counter() - started  # .cpu() above waited for the device
    return PerplexityRun(
        file=file,
        cache=policy.kind,
        length=len(ids),
        tokens=int(nll.shape[0]),
        nll=float(nll.double().mean()),
        seconds=seconds,
        extrapolated=uses_extrapolation(policy, len(ids), native_window),
        buckets=position_buckets(nll, buckets),
    )


def perplexity_summary(runs: Sequence[PerplexityRun]) -> list[PerplexitySummary]:
    """One row per (cache, length) over all files, in first-seen order."""
    groups: dict[tuple[str, int], list[PerplexityRun]] = {}
    for run in runs:
        groups.setdefault((run.cache, run.length), []).append(run)
    summary = []
    for (cache, length), group in groups.items():
        tokens = sum(run.tokens for run in group)
        total = sum(run.nll * run.tokens for run in group)
        summary.append(
            PerplexitySummary(
                cache=cache,
                length=length,
                files=len(group),
                tokens=tokens,
                nll=total / tokens,
                seconds=sum(run.seconds for run in group),
                extrapolated=any(run.extrapolated for run in group),
            )
        )
    return summary
