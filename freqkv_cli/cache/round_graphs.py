"""Compression rounds replayed as CUDA graphs.

With a full window and a fixed head, a round's work has the same shapes every time: FreqKV and
sink rounds are the same work on the same slots (the low-pass matrix, the rotations and the
copies do not depend on the tokens); a hybrid round is too once its choice of slots is given
(:meth:`.rounds.Rounds.plan` decides it eagerly, the replay reads it from device tensors).
The first round of a key runs eagerly (it warms the kernels and caches up); the second is
captured and replayed, and every later one replayed. A round is not idempotent, so it is never
run twice to warm up: capturing records without running, and the replay then runs it once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from .buffers import SlotBuffers
from .dct import holding
from .graph_capture import capture
from .layers import WindowLayer
from .policy import CachePolicy
from .rounds import RoundPlan, Rounds

logger = logging.getLogger(__name__)


@dataclass
class CapturedRound:
    graph: torch.cuda.CUDAGraph
    lengths: list[int]  # every layer's length after the round
    inputs: dict[str, torch.Tensor]  # the plan's tensors the graph reads, refilled before a replay
    operators: list[torch.Tensor]  # the cached low-pass tables it reads, kept alive with it


@dataclass
class RoundGraphs:
    """Replays of the rounds of one engine's caches, which write ``buffers``' slots."""

    buffers: SlotBuffers
    seen: Counter = field(default_factory=Counter, init=False)
    rounds: dict[tuple, CapturedRound] = field(default_factory=dict, init=False)
    pool: object | None = field(default=None, init=False)
    failed: bool = field(default=False, init=False)

    @torch.inference_mode()
    def apply(
        self, rounds: Rounds, layers: Sequence[WindowLayer], policy: CachePolicy, plan: RoundPlan
    ) -> bool:
        """Run this round's :meth:`.rounds.Rounds.apply` by a replay; False where the caller must
        run it eagerly."""
        first = layers[0]
        if self.failed or first.buffers is not self.buffers or first.keys.device.type != "cuda":
            return False
        key = (self.buffers.generation, plan.key)
        captured = self.rounds.get(key)
        if captured is None:
            self.seen[key] += 1
            if self.seen[key] < 2:
                return False  # the eager round warms up what the capture will record
            captured = self._capture(rounds, layers, policy, plan)
            if captured is None:
                return False
            self.rounds[key] = captured
        else:
            for name, tensor in plan.inputs.items():
                captured.inputs[name].copy_(tensor)
        captured.graph.replay()
        for layer, length in zip(layers, captured.lengths, strict=True):
            layer.hold(length)
        return True

    def _capture(
        self, rounds: Rounds, layers: Sequence[WindowLayer], policy: CachePolicy, plan: RoundPlan
    ) -> CapturedRound | None:
        before = [layer.length for layer in layers]
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        inputs = {name: tensor.clone() for name, tensor in plan.inputs.items()}  # filled: this round's
        static = replace(plan, inputs=inputs)
        try:  # no warm-up: the eager round before this one was it
            with holding() as operators:
                graph = capture(lambda: rounds.apply(layers, policy, static), warmups=0, pool=self.pool)
        except Exception as exc:  # something in the round syncs with the host: rounds run eagerly
            logger.debug("round capture failed, compressing eagerly: %s", exc)
            for layer, length in zip(layers, before, strict=True):
                layer.hold(length)  # nothing ran: the window is as full as it was
            self.failed = True
            return None
        return CapturedRound(graph, [layer.length for layer in layers], inputs, operators)
