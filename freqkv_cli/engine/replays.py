"""What an engine replays as CUDA graphs, over slots its caches share."""

from __future__ import annotations

import os
from dataclasses import dataclass

from transformers import PreTrainedModel

from ..cache.buffers import SlotBuffers
from ..cache.round_graphs import RoundGraphs
from .graph_decode import GraphDecoder
from .graph_prefill import ChunkGraphs

# Parameters under which prefill chunks are replayed: that pays where launches, not arithmetic,
# bound a chunk (measured on an H200: a 135M model 16k -> 35k tok/s; an 8B one 22.5k -> 21.8k).
SMALL_MODEL = 1_500_000_000


@dataclass
class Replays:
    """``buffers``: every cache's slots; ``decoder``: decode steps; ``chunks``: steady-state prefill
    chunks (small models); ``rounds``: FreqKV and sink rounds. None where not replayed."""

    buffers: SlotBuffers
    decoder: GraphDecoder | None = None
    chunks: ChunkGraphs | None = None
    rounds: RoundGraphs | None = None

    @classmethod
    def for_model(cls, model: PreTrainedModel, graphs: bool | None, compile_decode: bool | None) -> Replays:
        """``graphs``: None = where the model sits on one CUDA device (True elsewhere runs the same
        static-shape steps eagerly); ``compile_decode``: None = ``FREQKV_COMPILE=1``."""
        buffers = SlotBuffers()
        if not (GraphDecoder.suits(model) if graphs is None else graphs):
            return cls(buffers)
        if compile_decode is None:
            compile_decode = os.environ.get("FREQKV_COMPILE", "0") == "1"
        small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL
        return cls(
            buffers,
            decoder=GraphDecoder(model, buffers, compile=compile_decode),
            chunks=ChunkGraphs(model, buffers) if small else None,
            rounds=RoundGraphs(buffers),
        )
