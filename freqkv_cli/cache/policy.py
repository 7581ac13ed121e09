"""Cache policies: which entries a fixed-size window keeps when it fills."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import UsageError

POLICIES = ("freqkv", "sink", "full", "hybrid")
SELECTORS = ("attention", "keynorm", "surprise", "random")


@dataclass(frozen=True)
class CachePolicy:
    """How the KV cache of every layer behaves when it is full.

    kind:   ``freqkv`` compresses the middle span in the frequency domain;
            ``sink`` evicts the oldest non-sink entries (StreamingLLM);
            ``full`` never compresses (the exact reference, memory grows);
            ``hybrid`` is freqkv plus a budget of exact slots for the spans that score highest
            (see ``selector``), kept uncompressed.
    window: N, the most entries a layer ever holds (ignored by ``full``).
    sink:   S, leading entries never compressed.
    recent: R, trailing entries left exact in a compression round.
    ratio:  r, the share of the compressible span F = N - S - R that is kept:
            L = floor(F * r). ``sink`` frees the same F - L slots per round, so the
            two policies run the same chunk schedule and hold the same memory.
    exact:  hybrid only: share of N reserved for exact (selected) tokens, E = floor(N * exact),
            at most L - 4;
            each round selects up to max(1, E // 4) new ones, the best E are kept. They are
            among FreqKV's L: a round leaves E exact and L - E low-passed entries, so the hybrid
            frees F - L slots a round, as FreqKV does (same chunks, same memory).
    selector: hybrid only: ``attention``: attention from the question's tokens (through the
            model's retrieval heads when a profile is known), and low key norm while no question
            has been asked. ``keynorm``: low key norm, with or without a question
            (query-agnostic). ``surprise``: the tokens the model predicted
            worst (experimental). ``random``: spans at random (``seed``), what fine-tuning with
            the hybrid in the loop uses: plain text has no question to aim at. Measured against
            each other in docs/BENCHMARKS.md section 6.
    seed:   hybrid with the random selector: the seed of its generator.
    """

    kind: str = "freqkv"
    window: int = 4096
    sink: int = 4
    recent: int = 0
    ratio: float = 0.5
    exact: float = 0.25
    selector: str = "attention"
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, head: int | None = None) -> None:
        """Raise UsageError unless the settings leave room to compress. ``head``: sinks plus pinned tokens."""
        if self.kind not in POLICIES:
            raise UsageError(f"unknown cache policy {self.kind!r}: use one of {', '.join(POLICIES)}")
        if self.kind == "full":
            return
        head = self.sink if head is None else head
        if self.window < 8:
            raise UsageError(f"window {self.window} is too small: use at least 8")
        if self.sink < 0 or self.recent < 0:
            raise UsageError("sink and recent must be zero or more")
        if not (0.0 < self.ratio < 1.0) or math.isnan(self.ratio):
            raise UsageError(f"ratio {self.ratio} must be strictly between 0 and 1")
        span = self.window - head - self.recent
        if span < 2:
            raise UsageError(
                f"sink/pinned ({head}) + recent ({self.recent}) leave no room to compress "
                f"in a window of {self.window}: they must sum to at most {self.window - 2}"
            )
        if self.kept(head) < 1 or self.kept(head) >= span:
            raise UsageError(
                f"ratio {self.ratio} keeps {self.kept(head)} of {span} entries: nothing would be freed"
            )
        if self.kind == "hybrid":
            if self.selector not in SELECTORS:
                raise UsageError(f"unknown selector {self.selector!r}: use one of {', '.join(SELECTORS)}")
            if not (0.0 < self.exact < 1.0) or math.isnan(self.exact):
                raise UsageError(f"exact share {self.exact} must be strictly between 0 and 1")
            if self.exact_slots() < 1 or self.kept(head) - self.exact_slots() < 4:
                raise UsageError(
                    f"exact slots ({self.exact_slots()}) leave no room to compress: a round keeps "
                    f"{self.kept(head)} entries after sink/pinned ({head}), exact ones included"
                )

    def span(self, head: int | None = None) -> int:
        """F: how many entries one round compresses."""
        head = self.sink if head is None else head
        return self.window - head - self.recent

    def kept(self, head: int | None = None) -> int:
        """L = floor(F * r): what the F entries become."""
        return math.floor(self.span(head) * self.ratio)

    def freed(self, head: int | None = None) -> int:
        """F - L: the room one round frees, i.e. the prefill chunk after the first."""
        return self.span(head) - self.kept(head)

    def exact_slots(self) -> int:
        """E: the most exact (selected) entries a hybrid layer holds: floor(N * exact), but at most
        L - 4 (a round keeps L entries, the exact ones among them; a low ratio or a long recent
        window leaves fewer, and the default share must not turn such settings into an error)."""
        if self.kind != "hybrid":
            return 0
        return max(0, min(math.floor(self.window * self.exact), self.kept() - 4))

    def quota(self) -> int:
        """New tokens a hybrid round may select into the exact slots."""
        return max(1, self.exact_slots() // 4) if self.kind == "hybrid" else 0

    def fitted(self, head: int) -> CachePolicy:
        """This policy with ``head`` leading entries pinned: a hybrid whose exact slots leave no
        room to compress (a long question in a small window) gets fewer exact slots, as many as
        fit, rather than an error; every other policy is returned as it is."""
        if self.kind != "hybrid":
            return self
        room = self.kept(head) - 4  # a round keeps L entries: the exact ones and at least 4 low-passed
        if self.exact_slots() <= room:
            return self
        if room < 1:
            return self  # nothing fits: validate() says why
        return self.with_(exact=room / self.window)

    def with_(self, **changes: object) -> CachePolicy:
        return replace(self, **changes)  # type: ignore[arg-type]
