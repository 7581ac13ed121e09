"""Where an engine's time went: reading (prefill) and decoding, as a user waits for them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class Timings:
    """Totals since the engine was made (resets keep them: one session, one account)."""

    read_tokens: int = 0
    read_seconds: float = 0.0
    decoded_tokens: int = 0
    decode_seconds: float = 0.0

    @contextmanager
    def timing(self, kind: str, device: torch.device) -> Iterator[None]:
        """Add the time inside to ``kind`` ("read" or "decode"); on CUDA the queued work is
        waited for at the end, so a read's time is its arithmetic, not its launches."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            if kind == "read":
                self.read_seconds += elapsed
            else:
                self.decode_seconds += elapsed

    def as_dict(self) -> dict[str, float | int | None]:
        """Totals and rates, rounded for a JSON readout (None where nothing was timed)."""
        return {
            "read_tokens": self.read_tokens,
            "read_seconds": round(self.read_seconds, 4),
            "read_tok_s": round(self.read_tokens / self.read_seconds, 1) if self.read_seconds else None,
            "decoded_tokens": self.decoded_tokens,
            "decode_seconds": round(self.decode_seconds, 4),
            "decode_ms_per_token": (
                round(self.decode_seconds / self.decoded_tokens * 1e3, 3) if self.decoded_tokens else None
            ),
        }
