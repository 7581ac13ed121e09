"""Retrieval heads: which query heads' attention finds the fact a question asks for.

Most attention heads of a small model spread a question's attention over the whole text; a
few (the "retrieval heads") put it on the sentence that answers. The hybrid cache scores
tokens with those heads only. Which heads they are is measured once per model by
:func:`freqkv_cli.evaluation.calibrate.calibrate_heads` on synthetic facts (never the
pass-key needle the evaluation uses) and stored as JSON beside the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    import torch

PROFILE_FILE = "freqkv_heads.json"


@dataclass(frozen=True)
class HeadProfile:
    """``scores[layer][head]``: mean ``log(1 + rank)`` of the answer's best token among the
    document's tokens under that query head's attention, over calibration trials (0 = always
    first). ``heads``: the chosen ``(layer, head)`` pairs, best first. ``source``: how measured."""

    scores: list[list[float]]
    heads: tuple[tuple[int, int], ...]
    source: dict = field(default_factory=dict)

    @classmethod
    def from_scores(cls, scores: torch.Tensor, top: int, source: dict | None = None) -> HeadProfile:
        """``scores`` ``(layers, q_heads)``, lower is better; keep the ``top`` best heads."""
        if top < 1:
            raise ValueError("top must be at least 1")
        flat = scores.flatten().argsort()[: min(top, scores.numel())]
        heads = tuple((int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in flat)
        return cls([[round(float(x), 4) for x in row] for row in scores], heads, dict(source or {}))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.scores), len(self.scores[0]) if self.scores else 0

    def weights(self) -> torch.Tensor:
        """``(layers, q_heads)``: 1 for a chosen head, 0 elsewhere."""
        import torch  # a profile is read (by `freqkv models`, say) without torch

        out = torch.zeros(self.shape)
        for layer, head in self.heads:
            out[layer, head] = 1.0
        return out

    def check(self, layers: int, q_heads: int, where: str) -> None:
        if self.shape != (layers, q_heads):
            raise ModelError(
                f"{where}: head profile is for {self.shape[0]} layers x {self.shape[1]} heads, the model "
                f"has {layers} x {q_heads}: run `freqkv calibrate` for this model"
            )

    def save(self, path: Path) -> None:
        data = {"scores": self.scores, "heads": [list(h) for h in self.heads], "source": self.source}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> HeadProfile:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            scores = [[float(x) for x in row] for row in data["scores"]]
            heads = tuple((int(a), int(b)) for a, b in data["heads"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path}: not a head profile ({exc})") from None
        width = len(scores[0]) if scores else 0
        if not scores or any(len(row) != width for row in scores) or not heads:
            raise ModelError(f"{path}: not a head profile (empty or ragged scores)")
        if any(not (0 <= a < len(scores) and 0 <= b < width) for a, b in heads):
            raise ModelError(f"{path}: head profile names a head outside its own score table")
        if any(math.isnan(x) for row in scores for x in row):
            raise ModelError(f"{path}: head profile has NaN scores")
        return cls(scores, heads, dict(data.get("source") or {}))
