"""Cache policies: which entries a fixed-size window keeps when it fills."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

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
        check_values(kind=self.kind)
        if self.kind == "full":
            return
        hybrid = self.kind == "hybrid"
        check_values(
            window=self.window,
            sink=self.sink,
            recent=self.recent,
            ratio=self.ratio,
            exact=self.exact if hybrid else None,
            selector=self.selector if hybrid else None,
        )
        head = self.sink if head is None else head
        span = self.window - head - self.recent
        lead = f"`sink` {self.sink}" + (f" + {head - self.sink} pinned tokens" if head != self.sink else "")
        if span < 2:
            raise UsageError(
                f"{lead} + `recent` {self.recent} leave no room to compress "
                f"in a `window` of {self.window}: they must sum to at most {self.window - 2}"
            )
        if self.kept(head) < 1 or self.kept(head) >= span:
            raise UsageError(
                f"`ratio` {self.ratio} keeps {self.kept(head)} of {span} entries: nothing would be freed"
            )
        if hybrid and (self.exact_slots() < 1 or self.kept(head) - self.exact_slots() < 4):
            raise UsageError(
                f"`exact` {self.exact} gives {self.exact_slots()} exact slots, which leave no room to "
                f"compress: a round keeps {self.kept(head)} entries after {lead}, exact ones included"
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


def check_values(
    kind: str | None = None,
    window: int | None = None,
    sink: int | None = None,
    recent: int | None = None,
    ratio: float | None = None,
    exact: float | None = None,
    selector: str | None = None,
) -> None:
    """Raise UsageError for any given value that no policy accepts (None: not given). The one
    place each setting is checked on its own; :meth:`CachePolicy.validate` adds how they fit."""
    if kind is not None and kind not in POLICIES:
        raise UsageError(f"`kind` '{kind}' is not a cache policy: use one of {', '.join(POLICIES)}")
    if window is not None and window < 8:
        raise UsageError(f"`window` {window} is too small: use at least 8")
    if sink is not None and sink < 0:
        raise UsageError(f"`sink` {sink} must be zero or more")
    if recent is not None and recent < 0:
        raise UsageError(f"`recent` {recent} must be zero or more")
    if ratio is not None and (math.isnan(ratio) or not 0.0 < ratio < 1.0):
        raise UsageError(f"`ratio` {ratio} must be strictly between 0 and 1")
    if exact is not None and (math.isnan(exact) or not 0.0 < exact < 1.0):
        raise UsageError(f"`exact` {exact} (the exact share of the window) must be strictly between 0 and 1")
    if selector is not None and selector not in SELECTORS:
        raise UsageError(f"`selector` '{selector}' is not one of {', '.join(SELECTORS)}")


# What a checkpoint's freqkv.json may set; the rest comes from the caller or the defaults.
CHECKPOINT_KEYS = ("window", "sink", "recent", "ratio")


@dataclass(frozen=True)
class CacheSettings:
    """Cache settings as someone gave them; None means "the checkpoint's, else the default".

    :meth:`resolve` turns them into the one :class:`CachePolicy` a session runs: explicit
    values first, then those the checkpoint was tuned with (its ``freqkv.json``), then the
    model's (a window of ``min(4096, native window)``), then :class:`CachePolicy`'s defaults.
    """

    kind: str | None = None
    window: int | None = None
    sink: int | None = None
    recent: int | None = None
    ratio: float | None = None
    exact: float | None = None
    selector: str | None = None
    seed: int | None = None

    def check(self) -> None:
        """What can be checked before a model is loaded, so a bad value fails at once."""
        check_values(self.kind, self.window, self.sink, self.recent, self.ratio, self.exact, self.selector)

    def resolve(self, checkpoint: Mapping[str, object] | None = None, native_window: int = 0) -> CachePolicy:
        """The policy in force: see the class docstring. Raises UsageError if it cannot compress."""
        self.check()
        values: dict[str, object] = {"window": min(4096, native_window or 4096)}
        for key in CHECKPOINT_KEYS:
            if checkpoint is not None and checkpoint.get(key) is not None:
                values[key] = checkpoint[key]
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({key: value for key, value in given.items() if value is not None})
        return CachePolicy(**values)  # type: ignore[arg-type]
