"""The RULER tasks freqkv generates, by RULER's names, and choosing them on the command line.

RULER's QA tasks (``qa_1``, ``qa_2``) are left out: they need SQuAD and HotpotQA, downloads.
"""

from __future__ import annotations

from typing import Protocol

from ...errors import UsageError
from .common_words import CommonWords
from .frequent_words import FrequentWords
from .niah import NeedleTask
from .sample import Counter, Sample
from .variable_tracking import VariableTracking


class Task(Protocol):
    """What every task is: a name, an answer length, a metric, and samples from a seed."""

    name: str
    max_new_tokens: int
    metric: str

    def generate(self, length: int, seed: int, count: Counter, text: str) -> Sample: ...


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        NeedleTask("niah_single_1", haystack="noise"),
        NeedleTask("niah_single_2", haystack="text"),
        NeedleTask("niah_single_3", haystack="text", values="uuids"),
        NeedleTask("niah_multikey_1", haystack="text", num_keys=4),
        NeedleTask("niah_multikey_2", haystack="needles"),
        NeedleTask("niah_multikey_3", haystack="needles", keys="uuids", values="uuids"),
        NeedleTask("niah_multivalue", haystack="text", num_values=4),
        NeedleTask("niah_multiquery", haystack="text", num_keys=4, num_queries=4),
        VariableTracking(),
        CommonWords(),
        FrequentWords(),
    )
}
# Names that stand for several tasks.
GROUPS = {
    "all": list(TASKS),
    "niah": [name for name in TASKS if name.startswith("niah_")],
    "aggregation": ["cwe", "fwe"],
}


def parse_tasks(text: str, flag: str = "--tasks") -> list[Task]:
    """``"niah_single_1,vt"`` or a group (``all``, ``niah``, ``aggregation``) -> the tasks, in order."""
    items = [item.strip().lower() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise UsageError(f"{flag} '{text}': give a comma-separated list without empty items")
    names: list[str] = []
    for item in items:
        if item in GROUPS:
            names += GROUPS[item]
        elif item in TASKS:
            names.append(item)
        else:
            known = ", ".join([*GROUPS, *TASKS])
            raise UsageError(f"{flag}: '{item}' is not a task: use one of {known}")
    return [TASKS[name] for name in dict.fromkeys(names)]
