"""Memory: a window policy never holds more than N entries, and stats() tells the truth in bytes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.engine.streaming import StreamingEngine

N = 64
TOKENS = 20 * N


def token_ids(count: int = TOKENS, seed: int = 5) -> list[int]:
    return torch.randint(0, 211, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def bytes_per_entry(model) -> int:
    """Keys + values of one position over all layers, from the config alone."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.empty((), dtype=model.dtype).element_size()
    return config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * element


def expected_compressions(tokens: int, window: int, sink: int, recent: int, ratio: float) -> int:
    """The schedule: fill the window, then one round for every F - L further tokens."""
    span = window - sink - recent
    freed = span - math.floor(span * ratio)
    return 0 if tokens <= window else math.ceil((tokens - window) / freed)


class Watched:
    """Wraps ``engine._forward`` and checks the cache after every forward call."""

    def __init__(self, engine: StreamingEngine, window: int) -> None:
        self.engine, self.window = engine, window
        self.pointers: list[tuple[int, int]] | None = None
        self.calls = 0
        self.most = 0
        self.forward = engine._forward
        engine._forward = self  # type: ignore[method-assign]

    def __call__(self, chunk):
        hidden = self.forward(chunk)
        self.calls += 1
        cache = self.engine.cache
        pointers = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
        if self.pointers is None:
            self.pointers = pointers
        assert pointers == self.pointers, "a cache buffer was reallocated"
        for layer in cache.layers:
            assert layer.length <= self.window
            assert layer.keys.shape[-2] == layer.values.shape[-2] == self.window  # never grew
            assert layer.length == cache.length
        entries = self.engine.stats().entries
        assert entries <= self.window
        self.most = max(self.most, entries)
        return hidden


POLICIES = [
    ("freqkv", 4, 0, 0.5),
    ("freqkv", 4, 12, 0.5),
    ("freqkv", 0, 0, 0.25),
    ("sink", 4, 0, 0.5),
    ("sink", 2, 9, 0.75),
]


@pytest.mark.parametrize(("kind", "sink", "recent", "ratio"), POLICIES)
@pytest.mark.parametrize(("family", "max_chunk"), [("llama", 2048), ("qwen3", 2048), ("llama", 7)])
def test_window_bounds_memory(
    family: str, kind: str, sink: int, recent: int, ratio: float, max_chunk: int
) -> None:
    model = tiny_model(family)
    policy = CachePolicy(kind=kind, window=N, sink=sink, recent=recent, ratio=ratio)
    engine = StreamingEngine(model, policy, max_chunk=max_chunk)
    watched = Watched(engine, N)
    progress: list[int] = []
    pieces = (ids for ids in [token_ids()[i : i + 100] for i in range(0, TOKENS, 100)])  # a streamed book
    engine.feed(pieces, on_progress=progress.append)
    stats = engine.stats()
    assert sum(progress) == stats.tokens_seen == TOKENS
    assert watched.calls == len(progress)
    assert watched.most == N  # the window was used to the full
    assert stats.compressions == expected_compressions(TOKENS, N, sink, recent, ratio)
    per_entry = bytes_per_entry(model)
    assert stats.kv_bytes == stats.entries * per_entry
    assert stats.kv_reserved_bytes == N * per_entry
    assert stats.full_kv_bytes == TOKENS * per_entry
    # decoding afterwards stays inside the same buffers too
    engine.generate(max_new_tokens=N // 2 + 3, stop_token_ids=())
    assert engine.stats().tokens_seen == TOKENS + N // 2 + 3
    assert engine.stats().compressions == expected_compressions(TOKENS + N // 2 + 3, N, sink, recent, ratio)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("kind", "recent"), [("freqkv", 0), ("freqkv", 8), ("sink", 0), ("sink", 8)])
def test_stats_match_the_tensors(dtype: torch.dtype, kind: str, recent: int) -> None:
    model = tiny_model("qwen2").to(dtype)
    ids = token_ids(5 * N + 17)
    engine = StreamingEngine(model, CachePolicy(kind=kind, window=N, sink=4, recent=recent))
    start = 0
    for size in (30, N, 2 * N, 2 * N - 13):  # several feeds, stats after each
        engine.feed(ids[start : start + size])
        stats = engine.stats()
        layers = engine.cache.layers
        assert stats.kv_reserved_bytes == sum(layer.keys.nbytes + layer.values.nbytes for layer in layers)
        held = sum(
            layer.keys[:, :, : layer.length].nbytes + layer.values[:, :, : layer.length].nbytes
            for layer in layers
        )
        assert stats.kv_bytes == held == stats.entries * bytes_per_entry(model)
        assert stats.tokens_seen == start + size
        assert stats.compressions == expected_compressions(start + size, N, 4, recent, 0.5)
        # what a full cache would hold: compare with a real full run over the same tokens
        full = StreamingEngine(model, CachePolicy(kind="full"))
        full.feed(ids[: start + size])
        assert full.stats().entries == start + size
        assert stats.full_kv_bytes == full.stats().kv_bytes == full.stats().full_kv_bytes
        assert full.stats().compressions == 0
        start += size
    assert start == len(ids)


def test_empty_cache_stats() -> None:
    engine = StreamingEngine(tiny_model("llama"), CachePolicy(window=N))
    stats = engine.stats()
    assert (stats.tokens_seen, stats.entries, stats.compressions) == (0, 0, 0)
    assert stats.kv_bytes == stats.kv_reserved_bytes == stats.full_kv_bytes == 0


def test_reset_forgets_everything() -> None:
    engine = StreamingEngine(tiny_model("llama"), CachePolicy(window=N))
    engine.feed(token_ids(3 * N))
    assert engine.stats().compressions > 0
    engine.reset()
    stats = engine.stats()
    assert (stats.tokens_seen, stats.entries, stats.compressions, stats.kv_bytes) == (0, 0, 0, 0)


@pytest.mark.parametrize("family", ["mistral", "qwen3"])
def test_full_policy_grows_linearly(family: str) -> None:
    model = tiny_model(family)
    per_entry = bytes_per_entry(model)
    ids = token_ids(7 * N)
    engine = StreamingEngine(model, CachePolicy(kind="full", window=N), max_chunk=50)
    fed = 0
    sizes = []
    for size in (N // 2, N, 2 * N + 5, 3 * N - 5):
        engine.feed(ids[fed : fed + size])
        fed += size
        stats = engine.stats()
        assert stats.entries == stats.tokens_seen == fed  # nothing is ever dropped
        assert stats.kv_bytes == fed * per_entry == stats.full_kv_bytes
        assert stats.kv_reserved_bytes >= stats.kv_bytes
        assert stats.compressions == 0
        sizes.append((fed, stats.kv_bytes))
    assert fed == 6 * N + N // 2  # far beyond the window it was given (which "full" ignores)
    (first_tokens, first_bytes), (last_tokens, last_bytes) = sizes[0], sizes[-1]
    assert last_bytes * first_tokens == first_bytes * last_tokens  # exactly proportional
    # the buffers grew to hold it all, and still give the exact model output
    assert all(layer.keys.shape[-2] >= fed for layer in engine.cache.layers)
    with torch.no_grad():
        want = model(torch.tensor([ids[:fed]])).logits[0, -1].float()
    torch.testing.assert_close(engine.logits(engine._last_hidden)[0], want, atol=1e-4, rtol=1e-4)
