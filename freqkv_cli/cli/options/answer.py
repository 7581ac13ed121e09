"""The answer group: how long an answer may be, how it is sampled, and the system prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from ...api import Answering
from .flags import OUTPUT_PANEL, option
from .taking import Options

if TYPE_CHECKING:
    from ...engine.sampling import Sampler

MaxNewOpt = Annotated[
    int, option("--max-new-tokens", "-n", min=1, panel=OUTPUT_PANEL, help="Longest answer, in tokens.")
]
TemperatureOpt = Annotated[
    float, option("--temperature", "-t", min=0.0, panel=OUTPUT_PANEL, help="0 = greedy.")
]
TopPOpt = Annotated[float, option("--top-p", panel=OUTPUT_PANEL, help="Nucleus sampling mass (0, 1].")]
RepetitionOpt = Annotated[
    float, option("--repetition-penalty", panel=OUTPUT_PANEL, help="1 = off; >1 discourages repeating.")
]
SeedOpt = Annotated[
    int | None,
    option("--seed", panel=OUTPUT_PANEL, show_default="a new one each run", help="Seed for sampling."),
]
SystemOpt = Annotated[
    str | None,
    option("--system", metavar="TEXT", panel=OUTPUT_PANEL, show_default="none", help="System prompt."),
]


@dataclass
class AnswerChoice:
    """How long an answer may be, how it is sampled, and the system prompt."""

    max_new_tokens: MaxNewOpt = 400
    temperature: TemperatureOpt = 0.0
    top_p: TopPOpt = 1.0
    seed: SeedOpt = None
    repetition_penalty: RepetitionOpt = 1.1
    system: SystemOpt = None

    def answering(self) -> Answering:
        """The library's settings of an answer: all of these but the system prompt (a session's)."""
        return Answering(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
        )

    def sampler(self) -> Sampler:
        return self.answering().sampler()


ANSWER = Options(AnswerChoice)
