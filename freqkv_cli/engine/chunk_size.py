"""The most tokens one forward call of a read takes (``max_chunk``), where every layer agrees.

A larger chunk is fewer calls, so a faster read; a smaller one holds less in activations at the
peak (a 70B int4 model reads within 2 GiB of its weights at 512: docs/BENCHMARKS.md section 8).
Kept apart from the engine, which needs torch, so that the CLI's help can show it.
"""

from __future__ import annotations

DEFAULT_MAX_CHUNK = 2048
