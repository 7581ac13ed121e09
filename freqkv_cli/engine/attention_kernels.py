"""Which attention kernels a forward call may use."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

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


def decode_attention(device: torch.device) -> AbstractContextManager:
    """The static decode step's attention (one query over all ``N`` slots, with a mask): the
    plain matmul-softmax-matmul on CUDA. Measured on an H200 (8B shape, 4,096 slots): the
    memory-efficient kernel, the one a mask leaves, took 171 us a layer, 5.5 of 12.6 ms a token.
    """
    if device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])
