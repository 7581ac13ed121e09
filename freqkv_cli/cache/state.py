"""Snapshots of what a cache, engine or session holds: tensors plus JSON-able facts.

Each layer of the library exports its own state and nests the state of what it owns under a
prefix, so a memory file stores one flat dict of tensors and one dict of facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class State:
    """``tensors``: name -> tensor (on any device); ``facts``: name -> JSON value."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def put(self, prefix: str, child: State) -> None:
        """Nest ``child`` under ``prefix``."""
        self.tensors.update({f"{prefix}.{name}": t for name, t in child.tensors.items()})
        self.facts[prefix] = child.facts

    def get(self, prefix: str) -> State:
        """The state nested under ``prefix`` (see :meth:`put`)."""
        start = prefix + "."
        tensors = {name[len(start) :]: t for name, t in self.tensors.items() if name.startswith(start)}
        return State(tensors, dict(self.facts.get(prefix) or {}))

    def tensor(self, name: str, device: torch.device | str | None = None) -> torch.Tensor | None:
        """The tensor ``name`` (on ``device`` if given), None if absent."""
        found = self.tensors.get(name)
        return found if found is None or device is None else found.to(device)


def tensors_of(items: Mapping[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """Copies of the tensors among ``items`` that exist, contiguous: a state must not change
    when the live buffers it was taken from do."""
    return {name: copy_of(t) for name, t in items.items() if t is not None}


def copy_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone(memory_format=torch.contiguous_format)
