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
    chunks (small models); ``rounds``: compression rounds. None where not replayed.
    ``fused_rounds``: FreqKV and sink rounds with their elementwise work fused (:mod:`..cache.fused_rounds`);
    ``compiled``: decode steps and fused rounds go through torch.compile first."""

    buffers: SlotBuffers
    decoder: GraphDecoder | None = None
    chunks: ChunkGraphs | None = None
    rounds: RoundGraphs | None = None
    fused_rounds: bool = False
    compiled: bool = False

    @classmethod
    def for_model(
        cls,
        model: PreTrainedModel,
        graphs: bool | None,
        compile_decode: bool | None,
        fuse_rounds: bool | None = None,
    ) -> Replays:
        """``graphs``: None = where the model sits on one CUDA device (True elsewhere runs the same
        static-shape steps eagerly); ``fuse_rounds``: None = on such a device
        (``FREQKV_FUSE_ROUNDS=0``: never); ``compile_decode``: None = ``FREQKV_COMPILE=1``.

        Compiling is opt-in: it costs once per process what a long read gains back only after
        millions of tokens (measured on an H200, 8B shape: 39 s for the decode step, 5.7 against
        7.7 ms a token; 12 s for the fused rounds' two steps, docs/BENCHMARKS.md section 9)."""
        buffers = SlotBuffers()
        compiled = os.environ.get("FREQKV_COMPILE", "0") == "1" if compile_decode is None else compile_decode
        suits = GraphDecoder.suits(model)
        if fuse_rounds is None:
            fuse_rounds = os.environ.get("FREQKV_FUSE_ROUNDS", "1") == "1" and suits
        if not (suits if graphs is None else graphs):
            return cls(buffers, fused_rounds=fuse_rounds, compiled=compiled)
        small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL
        return cls(
            buffers,
            decoder=GraphDecoder(model, buffers, compile=compiled),
            chunks=ChunkGraphs(model, buffers) if small else None,
            rounds=RoundGraphs(buffers),
            fused_rounds=fuse_rounds,
            compiled=compiled,
        )
