"""Token ids as a compact tensor for a memory file (at most 4 bytes a token)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pack_ids(ids: Sequence[int] | np.ndarray | torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Token ids as a compact 1-D tensor for a memory file: (n,) int16 or int32.

    A vocabulary of at most 65,536 ids costs 2 bytes a token: the ids are stored as uint16 bit
    patterns in an int16 tensor (safetensors and every torch read int16; ids >= 32768 look
    negative there, `unpack_ids` reads them back). Larger vocabularies (up to 2**31) cost 4 bytes
    (int32). Raises ValueError for an id outside [0, vocab_size).
    """
    if not 1 <= vocab_size <= 2**31:
        raise ValueError(f"vocab_size must be in [1, 2**31], not {vocab_size}")
    if isinstance(ids, torch.Tensor):
        array = ids.detach().to("cpu", torch.int64).reshape(-1).numpy()
    else:
        array = np.asarray(ids, dtype=np.int64).reshape(-1)
    if array.size and (int(array.min()) < 0 or int(array.max()) >= vocab_size):
        bad = int(array.min()) if int(array.min()) < 0 else int(array.max())
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    if vocab_size <= 2**16:
        return torch.from_numpy(array.astype(np.uint16).view(np.int16))
    return torch.from_numpy(array.astype(np.int32))


def unpack_ids(packed: torch.Tensor) -> list[int]:
    """The token ids `pack_ids` stored: a (n,) int16 (uint16 bit patterns) or int32 tensor."""
    return unpack_ids_tensor(packed).tolist()


def unpack_ids_tensor(packed: torch.Tensor) -> torch.Tensor:
    """`unpack_ids` as an (n,) int32 tensor, without a Python list (a million ids at load)."""
    flat = packed.detach().to("cpu").reshape(-1)
    if flat.dtype == torch.int16:
        return torch.from_numpy(flat.numpy().view(np.uint16).astype(np.int32))
    if flat.dtype == torch.int32:
        return flat
    raise ValueError(f"packed token ids are int16 or int32, not {flat.dtype}")
