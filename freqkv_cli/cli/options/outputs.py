"""The output group: JSON or text on stdout, how much goes to stderr, what else a run leaves."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from .flags import OUTPUT_PANEL, option
from .taking import Options

if TYPE_CHECKING:
    from ..output import Readout

JsonOpt = Annotated[
    bool, option("--json", panel=OUTPUT_PANEL, help="Print one JSON object at the end instead.")
]
QuietOpt = Annotated[
    bool, option("--quiet", "-q", panel=OUTPUT_PANEL, help="No progress or statistics on stderr.")
]
ProgressOpt = Annotated[
    bool, option("--progress", panel=OUTPUT_PANEL, help="Show progress even when stderr is not a terminal.")
]
NoColorOpt = Annotated[
    bool, option("--no-color", panel=OUTPUT_PANEL, help="No colours (NO_COLOR is honoured too).")
]
NoLogOpt = Annotated[
    bool,
    option(
        "--no-log",
        envvar="FREQKV_NO_LOG",
        panel=OUTPUT_PANEL,
        help="Keep this run out of the conversation log (freqkv logs); FREQKV_NO_LOG=1 too.",
    ),
]
SaveOpt = Annotated[
    str | None,
    option(
        "--save",
        metavar="FILE.fkv",
        panel=OUTPUT_PANEL,
        show_default="none",
        help="Also keep the read document as a memory file: later questions on FILE.fkv need no "
        "re-reading (the document is then read before the question, as `freqkv read` does).",
    ),
]
PlotOpt = Annotated[
    str | None,
    option(
        "--plot",
        metavar="FILE",
        panel=OUTPUT_PANEL,
        show_default="none",
        help="Also draw a figure to this file (.png, .svg, .pdf); needs matplotlib.",
    ),
]


@dataclass
class OutputChoice:
    """JSON or text on stdout; how much goes to stderr, in colour or not."""

    as_json: JsonOpt = False
    quiet: QuietOpt = False
    progress: ProgressOpt = False
    no_color: NoColorOpt = False
    no_log: NoLogOpt = False  # only the commands that log offer it (LOGGED_OUTPUT)

    def __post_init__(self) -> None:
        self.no_color = self.no_color or bool(os.environ.get("NO_COLOR"))

    @functools.cached_property
    def readout(self) -> Readout:
        """Where this run's progress and readouts go (stderr)."""
        from ..output import Readout  # torch comes with it: not for --help

        return Readout(quiet=self.quiet, force_progress=self.progress, no_color=self.no_color)


OUTPUT = Options(OutputChoice).without("no_log")
LOGGED_OUTPUT = Options(OutputChoice)  # summarize, qa, chat: --no-log too
