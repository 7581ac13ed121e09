"""Prefill attention said as a lower-right causal variant equals transformers' masked SDPA."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import tiny_model

from freqkv_cli.cache.fused_rounds import FusedSpanRounds
from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.engine.chunk_attention import chunk_attention
from freqkv_cli.engine.slot_attention import slot_attention
from freqkv_cli.engine.streaming import StreamingEngine
from freqkv_cli.training.grouped_attention import grouped_attention

POLICY = CachePolicy(kind="freqkv", window=32, sink=2, recent=4)


def nll(model: torch.nn.Module, ids: list[int], chunk_attention: bool, max_chunk: int = 7) -> torch.Tensor:
    engine = StreamingEngine(model, POLICY, max_chunk=max_chunk, chunk_attention=chunk_attention)
    scored = engine.score(ids)
    assert engine.stats().compressions >= 3  # chunks over compressed caches, not only a first one
    return scored


def test_chunk_attention_equals_masked_sdpa(family: str) -> None:
    model = tiny_model(family)
    ids = torch.randint(0, 211, (150,), generator=torch.Generator().manual_seed(3)).tolist()
    want, got = nll(model, ids, False), nll(model, ids, True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sliding_window_still_hides_far_keys() -> None:
    # A Mistral window shorter than the cache: what the layer's own mask would hide stays hidden.
    model = tiny_model("mistral", sliding_window=10)
    ids = torch.randint(0, 211, (120,), generator=torch.Generator().manual_seed(4)).tolist()
    want, got = nll(model, ids, False, max_chunk=9), nll(model, ids, True, max_chunk=9)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model.config.sliding_window = None  # and the window matters here: without it the NLL moves
    assert (nll(model, ids, True, max_chunk=9) - want).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["freqkv", "sink"])
def test_fused_rounds_equal_the_rounds_they_replace(family: str, kind: str) -> None:
    # The fused steps as written (compiled only on CUDA): the same arithmetic, so the same NLL
    # and the same entries after several rounds, with and without recent entries to move.
    model = tiny_model(family)
    ids = torch.randint(0, 211, (150,), generator=torch.Generator().manual_seed(5)).tolist()
    for recent in (0, 4):
        policy = CachePolicy(kind=kind, window=32, sink=2, recent=recent)
        plain = StreamingEngine(model, policy, max_chunk=7, fuse_rounds=False)
        fused = StreamingEngine(model, policy, max_chunk=7, fuse_rounds=True)
        assert isinstance(fused.cache.rounds, FusedSpanRounds) and not isinstance(
            plain.cache.rounds, FusedSpanRounds
        )
        torch.testing.assert_close(fused.score(ids), plain.score(ids), rtol=1e-5, atol=1e-5)
        assert fused.stats().compressions == plain.stats().compressions >= 3
        for layer in range(model.config.num_hidden_layers):
            for a, b in zip(plain.cache.entries(layer), fused.cache.entries(layer), strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_float16_product_of_scaled_columns_stays_within_its_rounding(family: str) -> None:
    # What CUDA runs for 16-bit caches: each column scaled to its largest magnitude, float16,
    # float32 accumulation. Keys scaled up 1e5 would overflow float16 unscaled (max 65504).
    model = tiny_model(family)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.mul_(1e5)
            layer.self_attn.q_proj.weight.mul_(1e-5)
    ids = torch.randint(0, 211, (150,), generator=torch.Generator().manual_seed(6)).tolist()
    policy = CachePolicy(kind="freqkv", window=32, sink=2, recent=4)
    plain = StreamingEngine(model, policy, max_chunk=7, fuse_rounds=False)
    half = StreamingEngine(model, policy, max_chunk=7, fuse_rounds=True)
    half.cache.rounds.half = True
    want, got = plain.score(ids), half.score(ids)
    assert half.stats().compressions >= 3 and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=5e-3)
    keys = [half.cache.entries(layer)[0] for layer in range(model.config.num_hidden_layers)]
    for layer, got_keys in enumerate(keys):
        want_keys = plain.cache.entries(layer)[0]
        error = (got_keys - want_keys).abs().max() / want_keys.abs().max()
        assert 0 < error < 2e-3  # float16's 2^-11, a few times over: the path ran, and it is close


@pytest.mark.parametrize("function", [chunk_attention, slot_attention, grouped_attention])
def test_attention_functions_take_transformers_argument_order(function: object) -> None:
    """Wrappers such as kvpress's call an attention function positionally, dropout sixth."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    names = list(inspect.signature(sdpa_attention_forward).parameters)[:7]
    assert list(inspect.signature(function).parameters)[:7] == names
