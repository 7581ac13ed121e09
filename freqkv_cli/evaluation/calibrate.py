"""Find a model's retrieval heads: the query heads whose attention, from a question pinned
before a document, lands on the sentence that answers it.

Each trial hides one synthetic fact (a name, a place, a colour, a number; never the pass
key the needle evaluation uses) in real text, reads it with the qa prompt (question pinned before
the document) into a cache that holds all of it, and ranks the document's tokens by every
query head's attention, exactly as the hybrid cache scores candidates
(:meth:`WindowedCache.question_scores`). A head's score is the mean ``log(1 + rank)`` of the
fact's best token; the lowest-scoring heads are the profile.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..cache.head_profile import HeadProfile
from ..cache.policy import CachePolicy
from ..cache.selectors import AttentionSelector
from ..errors import UsageError
from ..models.loading import LoadedModel
from ..session.session import Session
from .needle import build_document, text_document

_NAMES = ("Bartholomew", "Winterbourne", "Marmaduke", "Quillon", "Peregrine", "Ozymandias", "Theodora")
_PLACES = ("Lisbon", "Trondheim", "Valparaiso", "Samarkand", "Timbuktu", "Reykjavik", "Cartagena")
_COLOURS = ("vermilion", "turquoise", "ochre", "lavender", "crimson", "chartreuse", "indigo")
_TREES = ("walnut", "sycamore", "chestnut", "juniper", "mulberry", "hawthorn", "cypress")

# (sentence with {key}, question, values): facts of several kinds, so the heads found are the
# ones that retrieve, not the ones that match one phrasing.
FACTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("The ship's cat was called {key}, after an old captain.", "What was the ship's cat called?", _NAMES),
    ("The meeting was moved to {key} at the last minute.", "Where was the meeting moved to?", _PLACES),
    ("Her favourite colour had always been {key}.", "What was her favourite colour?", _COLOURS),
    (
        "The lighthouse keeper counted {key} ships that winter.",
        "How many ships did the lighthouse keeper count?",
        ("317", "4820", "96", "1275", "58", "2093", "741"),
    ),
    ("The old letter was signed by {key} of the council.", "Who signed the old letter?", _NAMES),
    ("The coins were buried under the old {key} tree.", "Under which tree were the coins buried?", _TREES),
)


@dataclass
class CalibrationTrial:
    fact: int  # index into FACTS
    depth: float
    ranks: torch.Tensor  # (layers, q_heads): rank of the fact's best token, 0 = first


def fact_ranks(
    loaded: LoadedModel, haystack: str, length: int, fact: int, key: str, depth: float
) -> torch.Tensor:
    """``(layers, q_heads)`` ranks of one hidden fact among the document's tokens."""
    sentence, question, _ = FACTS[fact]
    encode = _encoder(loaded)
    document = build_document(encode, loaded.tokenizer.decode, haystack, length, depth, key, sentence)  # type: ignore[attr-defined]
    doc = encode(document.text)
    # A hybrid window larger than the whole prompt: nothing is compressed, and the question's
    # queries are captured (and later rotated) exactly as in a real qa session.
    window = len(doc) + 256
    session = Session(loaded, CachePolicy(kind="hybrid", window=window, sink=4, recent=0, exact=0.25))
    session.read_document(text_document(document.text), task="qa", question=question)
    engine = session.engine
    selector = engine.selector
    asked = isinstance(selector, AttentionSelector) and selector.queries is not None
    if engine.stats().compressions or not asked:
        raise RuntimeError("calibration prompt did not fit its window")  # pragma: no cover
    assert isinstance(selector, AttentionSelector)
    start = engine.cache.pinned
    # The fact's tokens, give or take one where tokenization merges across its edges.
    before_fact = document.text[: document.at]
    first = max(len(encode(before_fact)) - 1, 0)
    last = min(len(encode(before_fact + sentence.format(key=key))) + 1, len(doc))
    slots = torch.arange(first, last)
    ranks = []
    with torch.inference_mode():
        for index in range(loaded.model.config.num_hidden_layers):
            keys, _ = engine.cache.entries(index)
            scores = selector.question_scores(index, keys[:, :, start : start + len(doc)])[0]
            order = scores.argsort(dim=-1, descending=True)
            rank = torch.empty_like(order)
            rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
            ranks.append(rank[:, slots.to(rank.device)].min(dim=-1).values.cpu())
    return torch.stack(ranks)


def calibrate_heads(
    loaded: LoadedModel,
    haystack: str,
    *,
    length: int = 1024,
    trials: int = 24,
    top: int = 8,
    seed: int = 0,
    on_trial: Callable[[CalibrationTrial], None] | None = None,
) -> HeadProfile:
    """Run ``trials`` hidden-fact trials of ``length`` tokens; keep the ``top`` best heads."""
    if trials < 1 or top < 1 or length < 64:
        raise UsageError("calibration needs trials >= 1, heads >= 1 and a length of at least 64 tokens")
    if not haystack.strip():
        raise UsageError("the calibration text is empty")
    rng = random.Random(seed)
    total: torch.Tensor | None = None
    for trial in range(trials):
        fact = trial % len(FACTS)
        depth = (trial * 0.618034 + 0.1) % 0.9 + 0.05  # spread over the text, never at the very ends
        key = rng.choice(FACTS[fact][2])
        ranks = fact_ranks(loaded, haystack, length, fact, key, depth)
        score = torch.log1p(ranks.float())
        total = score if total is None else total + score
        if on_trial is not None:
            on_trial(CalibrationTrial(fact, depth, ranks))
    assert total is not None
    source = {
        "method": "mean log(1 + rank) of a hidden fact's best token under the pinned question's attention",
        "trials": trials,
        "length": length,
        "facts": [f[0] for f in FACTS],
        "seed": seed,
        "model": loaded.name,
    }
    return HeadProfile.from_scores(total / trials, top, source)


def _encoder(loaded: LoadedModel) -> Callable[[str], list[int]]:
    tokenizer = loaded.tokenizer

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    return encode
