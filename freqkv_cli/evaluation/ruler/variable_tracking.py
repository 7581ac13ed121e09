"""Variable tracking (``vt``): follow a chain of assignments through the noise haystack.

A chain is ``VAR A = 12345``, ``VAR B = VAR A``, ... (``num_hops`` hops, so ``num_hops + 1``
variables); its statements hide in order among the noise sentences, beside ``num_chains - 1``
other chains with other values. The question names the first chain's value; the answer is every
variable of that chain. Metric: ``all``, the share of the chain's variables named. As in RULER,
one worked example (a short chain in a short haystack, with its answer) comes first.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from .haystack import insert_at_depths, noise
from .sample import Counter, Sample, fit
from .words import task_rng, variable_name

INSTRUCTION = "Memorize and track the chain(s) of variable assignment hidden in the following text."
QUESTION = "Question: Find all variables that are assigned the value {value} in the text above."
ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {count} variables "
    "are assigned the value {value}, they are: "
)
EXAMPLE_UNITS = 5  # noise repeats in the worked example


@dataclass(frozen=True)
class VariableTracking:
    """RULER's ``vt``: ``num_chains`` chains of ``num_hops`` hops, the first one asked."""

    name: str = "vt"
    num_chains: int = 1
    num_hops: int = 4
    example: bool = True
    max_new_tokens: int = 30
    metric: str = "all"

    def generate(self, length: int, seed: int, count: Counter, text: str = "") -> Sample:
        """The sample for ``(length, seed)`` fitted to ``length - max_new_tokens`` tokens."""
        return fit(lambda n: self.build(length, seed, n), count, length - self.max_new_tokens)

    def build(self, length: int, seed: int, units: int) -> Sample:
        """The sample with ``units`` noise repeats around the chains."""
        rng = task_rng(self.name, length, seed)
        context, value, chain = self._chains(rng, units)
        instruction = INSTRUCTION
        if self.example:
            shown, shown_value, shown_chain = self._chains(
                task_rng(self.name, length, seed, "example"), EXAMPLE_UNITS
            )
            instruction = (
                f"{INSTRUCTION}\n{shown}\n{QUESTION.format(value=shown_value)}"
                f"{ANSWER_PREFIX.format(count=len(shown_chain), value=shown_value)}{' '.join(shown_chain)}"
                f"\n\n{INSTRUCTION}"
            )
        return Sample(
            task=self.name,
            length=length,
            seed=seed,
            instruction=instruction,
            context=context,
            question=QUESTION.format(value=value),
            answer_prefix=ANSWER_PREFIX.format(count=len(chain), value=value),
            answers=tuple(chain),
            metric=self.metric,
            max_new_tokens=self.max_new_tokens,
        )

    def _chains(self, rng: random.Random, units: int) -> tuple[str, str, list[str]]:
        """(the haystack with every chain in it, the first chain's value, its variables)."""
        names: list[str] = []
        while len(names) < self.num_chains * (self.num_hops + 1):
            name = variable_name(rng)
            if name not in names:
                names.append(name)
        values = rng.sample(range(10_000, 100_000), self.num_chains)
        size = self.num_hops + 1
        chains = []
        for index, value in enumerate(values):
            chain = names[index * size : (index + 1) * size]
            chains.append(
                [f"VAR {chain[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(chain)]
            )
        # Chains interleave at random; each keeps its assignment order along the text.
        turns = [index for index in range(self.num_chains) for _ in range(size)]
        rng.shuffle(turns)
        taken = [0] * self.num_chains
        statements = []
        for index in turns:
            statements.append(chains[index][taken[index]])
            taken[index] += 1
        depths = sorted(rng.random() for _ in statements)
        return insert_at_depths(noise(units), statements, depths), str(values[0]), names[:size]
