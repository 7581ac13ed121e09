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
    chunks (small models); ``rounds``: FreqKV and sink rounds. None where not replayed.
    ``fused_rounds``: those rounds with their elementwise work fused (:mod:`..cache.fused_rounds`)."""

    buffers: SlotBuffers
    decoder: GraphDecoder | None = None
    chunks: ChunkGraphs | None = None
    rounds: RoundGraphs | None = None
    fused_rounds: bool = False

    @classmethod
    def for_model(
        cls,
        model: PreTrainedModel,
        graphs: bool | None,
        compile_decode: bool | None,
        fuse_rounds: bool | None = None,
    ) -> Replays:
        """``graphs``: None = where the model sits on one CUDA device (True elsewhere runs the same
        static-shape steps eagerly); ``compile_decode``: None = ``FREQKV_COMPILE=1``;
        ``fuse_rounds``: None = where rounds are replayed on CUDA (``FREQKV_FUSE_ROUNDS=0``: never)."""
        buffers = SlotBuffers()
        if fuse_rounds is None:
            fuse_rounds = os.environ.get("FREQKV_FUSE_ROUNDS", "1") == "1" and GraphDecoder.suits(model)
        if not (GraphDecoder.suits(model) if graphs is None else graphs):
            return cls(buffers, fused_rounds=fuse_rounds)
        if compile_decode is None:
            compile_decode = os.environ.get("FREQKV_COMPILE", "0") == "1"
        small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL
        return cls(
            buffers,
            decoder=GraphDecoder(model, buffers, compile=compile_decode),
            chunks=ChunkGraphs(model, buffers) if small else None,
            rounds=RoundGraphs(buffers),
            fused_rounds=fuse_rounds,
        )
