"""Recording work as a CUDA graph, once, for every replayed step of the cache and the engine."""

from __future__ import annotations

from collections.abc import Callable

import torch


def capture(run: Callable[[], None], *, warmups: int = 2, pool: object | None = None) -> torch.cuda.CUDAGraph:
    """``run`` recorded as a CUDA graph (in ``pool``, shared by graphs that never run at once).

    ``warmups`` runs go first on a side stream, as torch's CUDA-graph notes ask (lazy set-ups
    happen outside the capture); work that is not idempotent passes 0. On any failure the device
    is synchronised and the error raised again: the caller then runs the work eagerly.
    """
    try:
        if warmups:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmups):
                    run()
            torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            run()
    except Exception:
        torch.cuda.synchronize()
        raise
    return graph
