"""Steady-state prefill chunks as replayed CUDA graphs.

Once the window has filled, every round reads the same number of new tokens into the same
slots (after a compression the cache always holds the same count): the chunk's forward has
the same shapes and addresses each time. A chunk shape seen twice is captured and replayed
from then on; one-off shapes (the first fill, a document's last piece) run eagerly. For a
small model this removes the per-kernel launch cost that dominates its prefill.

The captured forward attends over the window's ``N`` slots with a static causal mask, and
writes its keys and values in place (the same :class:`.graph_decode.SlotWriter`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from ..cache.buffers import SlotBuffers
from ..cache.graph_capture import capture
from ..cache.window_cache import WindowedCache
from .graph_decode import SlotWriter

logger = logging.getLogger(__name__)


@dataclass
class ChunkGraph:
    """One captured chunk: ``size`` tokens into slots ``start ..`` of an ``N``-slot window."""

    ids: torch.Tensor  # (1, size) long, written before each replay
    positions: torch.Tensor  # (1, size) long: start .. start + size - 1
    mask: torch.Tensor  # (1, 1, size, N) bool: slot j visible to query i when j <= start + i
    hidden: torch.Tensor | None = None  # (1, size, D), written by each replay
    graph: torch.cuda.CUDAGraph | None = None


@dataclass
class ChunkGraphs:
    """Replays of the repeated chunk shapes of one engine's caches (``buffers``' slots).

    ``min_seen``: how often a shape must occur before it is captured. ``capture``: None = on
    CUDA devices; False runs the same static-shape forward eagerly (what CPU tests check).
    """

    model: PreTrainedModel
    buffers: SlotBuffers
    min_seen: int = 2
    capture: bool | None = None
    seen: Counter = field(default_factory=Counter, init=False)
    graphs: dict[tuple, ChunkGraph] = field(default_factory=dict, init=False)
    pool: object | None = field(default=None, init=False)  # one memory pool for every chunk graph
    failed: bool = field(default=False, init=False)

    @torch.inference_mode()
    def forward(self, cache: WindowedCache, ids: Sequence[int]) -> torch.Tensor | None:
        """Hidden states ``(1, len(ids), D)`` of ``ids`` appended to ``cache`` by a replay, or None
        where this chunk runs eagerly (nothing is appended then)."""
        if self.failed or cache.rounds is None or cache.length == 0:
            return None
        layer = cache.layers[0]
        if layer.buffers is not self.buffers or not layer.is_initialized:
            return None
        window, start, size = cache.policy.window, cache.length, len(ids)
        key = (self.buffers.generation, window, start, size, layer.keys.dtype)
        chunk = self.graphs.get(key)
        if chunk is None:
            self.seen[key] += 1
            if self.seen[key] < self.min_seen:
                return None
            chunk = self._make(cache, key, window, start, size)
        chunk.ids.copy_(torch.tensor([list(ids)], dtype=torch.long))
        capture = self.capture if self.capture is not None else chunk.ids.device.type == "cuda"
        if not capture:
            self._run(cache, chunk)
        else:
            if chunk.graph is None:
                self._capture(cache, chunk)
                if chunk.graph is None:
                    return None
            chunk.graph.replay()
        cache.appended(size)
        assert chunk.hidden is not None
        return chunk.hidden.clone()  # the next replay writes the same memory

    def _make(
        self, cache: WindowedCache, key: tuple, window: int, start: int, size: int
    ) -> ChunkGraph | None:
        device = cache.layers[0].keys.device
        positions = torch.arange(start, start + size, device=device)[None]
        mask = (torch.arange(window, device=device)[None, :] <= positions[0, :, None]).view(
            1, 1, size, window
        )
        chunk = ChunkGraph(torch.zeros((1, size), dtype=torch.long, device=device), positions, mask)
        self.graphs[key] = chunk
        return chunk

    def _run(self, cache: WindowedCache, chunk: ChunkGraph) -> None:
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
        out = self.model.model(
            input_ids=chunk.ids,
            position_ids=chunk.positions,
            attention_mask=chunk.mask,
            past_key_values=SlotWriter(pairs, chunk.positions[0]),
            use_cache=True,
        )
        if chunk.hidden is None:
            chunk.hidden = out.last_hidden_state.clone()
        else:
            chunk.hidden.copy_(out.last_hidden_state)

    def _capture(self, cache: WindowedCache, chunk: ChunkGraph) -> None:
        # The warm-up runs write this chunk's keys and values where the replay writes them again.
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        try:
            chunk.graph = capture(lambda: self._run(cache, chunk), pool=self.pool)
        except Exception as exc:  # a step that syncs with the host, say: prefill eagerly
            logger.debug("prefill graph capture failed, reading eagerly: %s", exc)
            self.failed = True
