"""The cache group: the cache policy and its sizes, the --ctx budget, and how qa quotes passages again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from ...cache.policy import POLICIES, CacheSettings
from ...engine.chunk_size import DEFAULT_MAX_CHUNK
from ...errors import UsageError
from ...memory.recall_methods import DEFAULT_RECALL, RECALL_METHODS
from ...sizes import parse_size
from .flags import from_the_model, option
from .taking import Options

WindowOpt = Annotated[
    str | None,
    option(
        "--window",
        "-w",
        metavar="SIZE",
        show_default=from_the_model("window"),
        help="Cache window N per layer, e.g. 1024, 4k: a tuned checkpoint's freqkv.json sets it, "
        "else the smaller of 4k and the model's window.",
    ),
]
CtxOpt = Annotated[
    str | None,
    option(
        "--ctx",
        "-c",
        metavar="SIZE",
        show_default="no limit",
        help="Most tokens the session may hold in all (document + conversation), e.g. 32k.",
    ),
]
SinkOpt = Annotated[
    int | None,
    option(
        "--sink",
        show_default=from_the_model("sink"),
        help="Sink tokens S, never compressed (a tuned checkpoint's freqkv.json, else 4).",
    ),
]
RecentOpt = Annotated[
    int | None,
    option(
        "--recent",
        show_default=from_the_model("recent"),
        help="Recent tokens R kept exact (a tuned checkpoint's freqkv.json, else 0).",
    ),
]
RatioOpt = Annotated[
    float | None,
    option(
        "--ratio",
        show_default=from_the_model("ratio"),
        help="Share r of the span kept, 0<r<1 (a tuned checkpoint's freqkv.json, else 0.5).",
    ),
]
ExactOpt = Annotated[
    float | None,
    option(
        "--exact",
        show_default="0.25",
        help="hybrid cache: share of the window kept for exact, selected tokens, 0<e<1.",
    ),
]
RereadOpt = Annotated[
    int,
    option(
        "--reread",
        min=0,
        help="hybrid cache: quote this many of the passages the question kept exact again just "
        "before the question, with the text around them (0: off).",
    ),
]
SelectOpt = Annotated[
    str | None,
    option(
        "--select",
        metavar="METHOD",
        show_default="attention",
        help="hybrid cache: how exact tokens are chosen: attention (the question's, through the "
        "model's retrieval heads; key norm until a question is asked), keynorm, surprise.",
    ),
]
CacheOpt = Annotated[str, option("--cache", metavar="POLICY", help=f"Cache policy: {', '.join(POLICIES)}.")]
MaxChunkOpt = Annotated[
    int,
    option(
        "--max-chunk",
        min=1,
        metavar="TOKENS",
        help="Most tokens one forward call reads; fewer hold less activation memory, at some speed "
        "(measured: a 70B int4 model, freqkv cache, window 4k, peaked 1.9 GiB above its weights at 512, "
        "2.2 GiB at 2048).",
    ),
]
RecallOpt = Annotated[
    str,
    option(
        "--recall",
        metavar="METHOD",
        help="qa on a saved memory (.fkv): how the --reread passages are found: "
        f"{', '.join(RECALL_METHODS)} (docs/BENCHMARKS.md section 7).",
    ),
]


def _size(text: str | None) -> int | None:
    return None if text is None else parse_size(text)


@dataclass
class CacheChoice:
    """The cache flags as given: ``settings`` holds them for the library to resolve (None: the
    checkpoint's, else the model's); sizes such as 4k are parsed here, so a bad one fails first.
    ``reread``: how many passages qa quotes again before its question (the other commands, 0)."""

    window: WindowOpt = None
    ctx: CtxOpt = None
    sink: SinkOpt = None
    recent: RecentOpt = None
    ratio: RatioOpt = None
    exact: ExactOpt = None
    cache: CacheOpt = "hybrid"
    reread: RereadOpt = 0
    select: SelectOpt = None
    recall: RecallOpt = DEFAULT_RECALL
    max_chunk: MaxChunkOpt = DEFAULT_MAX_CHUNK
    settings: CacheSettings = field(init=False)
    ctx_tokens: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.settings = CacheSettings(
            kind=self.cache,
            window=_size(self.window),
            sink=self.sink,
            recent=self.recent,
            ratio=self.ratio,
            exact=self.exact,
            selector=self.select,
        )
        self.ctx_tokens = _size(self.ctx)
        if self.recall not in RECALL_METHODS:
            raise UsageError(f"--recall '{self.recall}' is not one of {', '.join(RECALL_METHODS)}")

    def given(self) -> list[str]:
        """The flags of the cache settings given explicitly (a saved memory keeps its own)."""
        names = {"window": "--window", "sink": "--sink", "recent": "--recent", "ratio": "--ratio"}
        names.update({"exact": "--exact", "selector": "--select"})
        return [flag for name, flag in names.items() if getattr(self.settings, name) is not None]


CACHE = Options(CacheChoice).without("reread", "select", "recall")
COMPARED = Options(CacheChoice).without(
    "ctx", "cache", "reread", "recall", "max_chunk"
)  # eval's --cache lists the policies
