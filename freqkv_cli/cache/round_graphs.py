"""FreqKV and sink rounds replayed as CUDA graphs.

With a full window and a fixed head, a FreqKV or sink round is the same work on the same slots
every time (the low-pass matrix, the rotations and the copies do not depend on the tokens).
The first round of a shape runs eagerly (it warms the kernels and caches up); the second is
captured and replayed, and every later one replayed. A round is not idempotent, so it is never
run twice to warm up: capturing records without running, and the replay then runs it once.
The hybrid plans its rounds on the host and runs them eagerly.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field

import torch

from .buffers import SlotBuffers
from .graph_capture import capture
from .layers import WindowLayer
from .policy import CachePolicy
from .rounds import SpanRounds

logger = logging.getLogger(__name__)


@dataclass
class CapturedRound:
    graph: torch.cuda.CUDAGraph
    lengths: list[int]  # every layer's length after the round


@dataclass
class RoundGraphs:
    """Replays of the rounds of one engine's caches, which write ``buffers``' slots."""

    buffers: SlotBuffers
    seen: Counter = field(default_factory=Counter, init=False)
    rounds: dict[tuple, CapturedRound] = field(default_factory=dict, init=False)
    pool: object | None = field(default=None, init=False)
    failed: bool = field(default=False, init=False)

    @torch.inference_mode()
    def compress(
        self, rounds: SpanRounds, layers: Sequence[WindowLayer], policy: CachePolicy, head: int
    ) -> bool:
        """Run this round by a replay; False where the caller must run it eagerly."""
        first = layers[0]
        if self.failed or first.buffers is not self.buffers or first.keys.device.type != "cuda":
            return False
        key = (self.buffers.generation, rounds.kind, rounds.method, rounds.group, astuple(policy), head)
        captured = self.rounds.get(key)
        if captured is None:
            self.seen[key] += 1
            if self.seen[key] < 2:
                return False  # the eager round warms up what the capture will record
            captured = self._capture(rounds, layers, policy, head)
            if captured is None:
                return False
            self.rounds[key] = captured
        captured.graph.replay()
        for layer, length in zip(layers, captured.lengths, strict=True):
            layer.hold(length)
        return True

    def _capture(
        self, rounds: SpanRounds, layers: Sequence[WindowLayer], policy: CachePolicy, head: int
    ) -> CapturedRound | None:
        before = [layer.length for layer in layers]
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        try:  # no warm-up: the eager round before this one was it
            graph = capture(lambda: rounds.compress(layers, policy, head, 0), warmups=0, pool=self.pool)
        except Exception as exc:  # something in the round syncs with the host: rounds run eagerly
            logger.debug("round capture failed, compressing eagerly: %s", exc)
            for layer, length in zip(layers, before, strict=True):
                layer.hold(length)  # nothing ran: the window is as full as it was
            self.failed = True
            return None
        return CapturedRound(graph, [layer.length for layer in layers])
