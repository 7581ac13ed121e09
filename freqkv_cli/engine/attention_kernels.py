"""Which attention kernels a forward call may use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch


def attention_kernels(device: torch.device, query_length: int) -> AbstractContextManager:
    """Keep SDPA off cuDNN for decode-sized calls on CUDA.

    Measured on an H100 (torch 2.11): cuDNN attention plans each new key length, ~2 ms of CPU
    per call, ~60 ms per decoded token for a 32-layer model. For long prefill chunks it is
    the fastest kernel, so only short calls avoid it.
    """
    if device.type != "cuda" or query_length > 16:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


@contextmanager
def attention_named(config: object, name: str | None) -> Iterator[None]:
    """The model's layers attend with the function registered as ``name`` (None: as loaded) while
    inside: they look it up in their config on every call."""
    if name is None:
        yield
        return
    previous, config._attn_implementation = config._attn_implementation, name  # type: ignore[attr-defined]
    try:
        yield
    finally:
        config._attn_implementation = previous  # type: ignore[attr-defined]
