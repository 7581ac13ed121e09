"""The static-shape steps (what CUDA graphs replay) against the engine's plain prefill and decode.

On a CPU the step runs eagerly; the capture itself is checked on the GPU machine by
``benchmarks/bench_speed.py --check``. Here: attention over all ``N`` slots with a mask, the
key and value written at a device-tensor position, and the cache's bookkeeping, across
compression rounds, resets and loaded states, for every family and windowed policy; and
steady-state prefill chunks read by the static forward (:mod:`freqkv_cli.engine.graph_prefill`).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.engine.graph_decode import GraphDecoder
from freqkv_cli.engine.sampling import Sampler
from freqkv_cli.engine.streaming import StreamingEngine

POLICIES = [
    CachePolicy(kind="freqkv", window=24, sink=4, recent=0),
    CachePolicy(kind="sink", window=24, sink=4, recent=2),
    CachePolicy(kind="hybrid", window=32, sink=2, recent=4, exact=0.25),
]


def prompt(seed: int, length: int = 80) -> list[int]:
    return torch.randint(0, 211, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def teacher_forced(engine: StreamingEngine, ids: list[int], forced: list[int]) -> list[torch.Tensor]:
    """The next-token logits after each of ``forced`` is decoded (the same tokens for both paths,
    so a near tie cannot send them apart)."""
    logits = [engine.feed(ids)[0]]
    for token in forced:
        logits.append(engine.advance(token).clone())
    return logits


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.kind)
def test_static_step_equals_plain_decode_across_rounds(family: str, policy: CachePolicy) -> None:
    # float64: the two paths sum in different orders, and a hybrid's near-tie between two
    # candidate spans can flip on a float32 rounding (seen: qwen3, step 30), changing the cache.
    model = tiny_model(family).double()
    ids, forced = prompt(1), prompt(2, 50)  # 50 decoded tokens: several rounds during decode
    plain = StreamingEngine(model, policy, decode_graphs=False)
    static = StreamingEngine(model, policy, decode_graphs=True)
    assert plain.replays.decoder is None and static.replays.decoder is not None
    want, got = teacher_forced(plain, ids, forced), teacher_forced(static, ids, forced)
    assert static.replays.chunks is not None and static.replays.chunks.graphs  # repeated chunks went static
    assert static.stats().compressions == plain.stats().compressions >= 3
    for step, (a, b) in enumerate(zip(want, got, strict=True)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=f"step {step}")
    assert static.stats().tokens_seen == plain.stats().tokens_seen
    for layer in range(model.config.num_hidden_layers):
        for a, b in zip(plain.cache.entries(layer), static.cache.entries(layer), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_greedy_generation_is_the_same_and_slots_outlive_resets_and_loads() -> None:
    model = tiny_model("llama")
    policy = CachePolicy(kind="freqkv", window=24, sink=4, recent=0)
    plain = StreamingEngine(model, policy, decode_graphs=False)
    static = StreamingEngine(model, policy, decode_graphs=True)
    for engine in (plain, static):
        engine.feed(prompt(3))
    want = plain.generate(40, Sampler(), stop_token_ids=()).token_ids
    slots = [pair for pair in (static.replays.buffers.pair(i) for i in range(2))]
    assert static.generate(40, Sampler(), stop_token_ids=()).token_ids == want
    saved = static.state()
    static.reset()  # a new cache, the same slots
    static.feed(prompt(4))
    static.generate(5, Sampler(), stop_token_ids=())
    static.load_state(saved)  # a loaded memory goes back into the same slots too
    plain_next = plain.generate(20, Sampler(), stop_token_ids=()).token_ids
    assert static.generate(20, Sampler(), stop_token_ids=()).token_ids == plain_next
    for index, (keys, values) in enumerate(slots):
        now = static.replays.buffers.pair(index)
        assert now is not None and now[0] is keys and now[1] is values
    assert static.replays.buffers.generation == 2  # made once per layer, never again


def test_the_full_cache_and_cpu_default_decode_plainly() -> None:
    model = tiny_model("llama")
    assert (
        StreamingEngine(model, CachePolicy(kind="freqkv", window=24)).replays.decoder is None
    )  # CPU: auto is off
    engine = StreamingEngine(model, CachePolicy(kind="full"), decode_graphs=True)
    engine.feed(prompt(5))
    assert engine.replays.decoder is not None and not engine.replays.decoder.accepts(
        engine.cache
    )  # grows: no static shape
    assert not GraphDecoder.suits(model)


def test_perplexity_through_static_chunks_equals_plain(family: str) -> None:
    model = tiny_model(family)
    policy = CachePolicy(kind="freqkv", window=32, sink=4, recent=4)
    ids = prompt(6, 300)
    plain = StreamingEngine(model, policy, decode_graphs=False).score(ids)
    engine = StreamingEngine(model, policy, decode_graphs=True)
    static = engine.score(ids)
    assert engine.replays.chunks is not None and engine.replays.chunks.graphs
    torch.testing.assert_close(static, plain, rtol=1e-4, atol=1e-4)
