"""The hybrid policy: FreqKV plus exact slots for selected tokens (issue #6)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.cache.rotary import KeyRotation
from freqkv_cli.cache.selectors import AttentionSelector, Candidates
from freqkv_cli.cache.selectors.attention import DENSITY
from freqkv_cli.cache.spans import SPAN_LEFT, SPAN_RIGHT
from freqkv_cli.engine.streaming import StreamingEngine
from freqkv_cli.errors import UsageError

POLICY = CachePolicy("hybrid", 64, 4, 8, 0.5, exact=0.25)


def layer0_keys_values(model: torch.nn.Module, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-RoPE keys and values of layer 0 for each token: they depend on the token alone."""
    attention = model.model.layers[0].self_attn
    hidden = model.model.layers[0].input_layernorm(model.model.embed_tokens(torch.tensor(ids)))
    dim = attention.head_dim
    keys = attention.k_proj(hidden).view(len(ids), -1, dim)
    if hasattr(attention, "k_norm"):
        keys = attention.k_norm(keys)
    values = attention.v_proj(hidden).view(len(ids), -1, dim)
    return keys.transpose(0, 1), values.transpose(0, 1)  # (Hkv, T, D)


@pytest.mark.parametrize("pin", [0, 12])
def test_exact_slots_hold_the_selected_tokens_exactly_in_stream_order(family: str, pin: int) -> None:
    model = tiny_model(family)
    ids = torch.randint(0, 211, (500,), generator=torch.Generator().manual_seed(2)).tolist()
    # Without a question, the query-agnostic selector fills the exact slots.
    engine = StreamingEngine(model, POLICY if pin else POLICY.with_(selector="keynorm"), max_chunk=11)
    if pin:
        engine.feed(ids[: pin // 2], pin=True)
        assert engine.selector.queries is None  # pinned, but not a question
        engine.feed(ids[pin // 2 : pin], pin=True, question=True)
        assert engine.selector.queries is not None and len(engine.selector.queries) == 2
        assert engine.selector.queries[0].shape[-2] == pin - pin // 2  # the question's tokens only
    engine.feed(ids[pin:])
    cache = engine.cache
    head, exact = cache.head, cache.exact_count
    assert exact == POLICY.exact_slots() and cache.length <= POLICY.window
    tokens = cache.exact_tokens[0]  # (E,) stream indices, one choice for every layer and head
    assert (tokens.diff(dim=-1) > 0).all()  # strictly increasing: original order, no duplicates
    assert (tokens >= head).all() and (tokens < len(ids) - POLICY.recent).all()
    with torch.no_grad():
        keys, values = layer0_keys_values(model, ids)
        layer = cache.layers[0]
        for h in range(keys.shape[0]):
            want_k = cache.rotation.rotate(
                keys[h][tokens][None, None].float(), torch.arange(head, head + exact)
            )[0, 0]
            torch.testing.assert_close(layer.keys[0, h, head : head + exact], want_k, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(layer.values[0, h, head : head + exact], values[h][tokens])
        # The recent tokens are exact too, at the end of the cache.
        recent_k = cache.rotation.rotate(
            keys[:, -POLICY.recent :][None].float(), torch.arange(cache.length - POLICY.recent, cache.length)
        )[0]
        torch.testing.assert_close(
            layer.keys[0, :, cache.length - POLICY.recent : cache.length], recent_k, atol=2e-5, rtol=1e-5
        )


def layer0_only(model: torch.nn.Module) -> torch.Tensor:
    """Head weights ``(layers, Hq)`` that score with layer 0's heads only."""
    weights = torch.zeros(model.config.num_hidden_layers, model.config.num_attention_heads)
    weights[0] = 1.0
    return weights


def test_query_aware_selection_keeps_the_token_the_question_points_at() -> None:
    """A question whose query is a token's own (pre-RoPE) key picks that token among the candidates."""
    model = tiny_model("llama")
    ids = torch.randint(0, 211, (64,), generator=torch.Generator().manual_seed(4)).tolist()
    target = 30
    with torch.no_grad():
        keys, _ = layer0_keys_values(model, ids)
    engine = StreamingEngine(model, POLICY)
    engine.feed(ids)  # exactly one full window, no compression yet
    assert engine.cache.length == POLICY.window and engine.cache.exact_count == 0
    heads = model.config.num_attention_heads
    group = heads // model.config.num_key_value_heads
    # A pre-RoPE query that, rotated to the last slot (where the cache puts the question),
    # equals the target's stored key: the direction the question "points at".
    rotation = engine.cache.rotation
    stored = rotation.rotate(keys[None, :, target : target + 1].float(), torch.tensor([target]))
    query = rotation.unrotate(stored, torch.tensor([POLICY.window - 1]))[0, :, 0]  # (Hkv, D)
    query = query.repeat_interleave(group, dim=0)  # each query head gets its KV head's direction
    queries = [query[None, :, None] * 8.0 for _ in model.model.layers]  # sharp attention
    engine.selector.ask(queries, layer0_only(model))  # the queries are layer 0's keys
    engine.cache.compress()
    picked = engine.cache.exact_tokens[0]
    # A pick brings its span along: the picks are the target's neighbourhood (the span starts
    # SPAN_LEFT before the token whose DENSITY-token neighbourhood matches best).
    assert ((picked - target >= 1 - DENSITY) & (picked - target <= SPAN_LEFT + SPAN_RIGHT)).all(), picked
    knorm = StreamingEngine(model, POLICY.with_(selector="keynorm"))
    knorm.feed(ids)
    knorm.selector.ask(queries)
    knorm.cache.compress()  # query-agnostic: the question is ignored, low key norms chosen
    assert not torch.equal(knorm.cache.exact_tokens[0], picked)


def test_a_passage_matching_several_question_tokens_beats_one_matching_one() -> None:
    """Question tokens 1 and 2 point at candidates 40 and 42, token 0 at candidate 70 a little more
    sharply: the span holding two matches is kept, not the lone best token (match density)."""
    model = tiny_model("llama")
    policy = POLICY.with_(window=144, recent=0, exact=0.45)  # E = 64: a round selects 16, one span
    ids = torch.randint(0, 211, (policy.window,), generator=torch.Generator().manual_seed(5)).tolist()
    with torch.no_grad():
        keys, _ = layer0_keys_values(model, ids)
    engine = StreamingEngine(model, policy)
    engine.feed(ids)
    heads = model.config.num_attention_heads
    group = heads // model.config.num_key_value_heads
    rotation = engine.cache.rotation
    pointing = []
    for target, sharpness in ((70, 48.0), (40, 40.0), (42, 40.0)):
        stored = rotation.rotate(keys[None, :, target : target + 1].float(), torch.tensor([target]))
        query = rotation.unrotate(stored, torch.tensor([policy.window - 1]))[0, :, 0]
        query = query / query.norm(dim=-1, keepdim=True) / stored[0, :, 0].norm(dim=-1, keepdim=True)
        pointing.append(query.repeat_interleave(group, dim=0) * sharpness)  # logit sharpness / sqrt(D)
    queries = torch.stack(pointing, dim=1)[None]  # (1, Hq, 3, D)
    engine.selector.ask([queries for _ in model.model.layers], layer0_only(model))
    engine.cache.compress()
    picked = engine.cache.exact_tokens[0].tolist()
    assert {40, 41, 42} <= set(picked) and 70 not in picked, picked


def test_hybrid_memory_is_bounded_and_the_stream_goes_on(family: str) -> None:
    model = tiny_model(family)
    engine = StreamingEngine(model, POLICY, max_chunk=64)
    ids = torch.randint(0, 211, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    nll = engine.score(ids)
    assert len(nll) == len(ids) - 1 and torch.isfinite(nll).all()
    stats = engine.stats()
    assert stats.entries <= POLICY.window and stats.compressions > 20
    result = engine.generate(max_new_tokens=40)
    assert len(result.token_ids) == 40 and engine.cache.length <= POLICY.window


def test_hybrid_without_selection_budget_matches_the_exact_count() -> None:
    policy = CachePolicy("hybrid", 1024, 4, 128, 0.5, exact=0.25)
    assert policy.exact_slots() == 256 and policy.quota() == 64
    assert math.isclose(policy.exact, 0.25)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(exact=0.0), "exact share"),
        (dict(exact=1.0), "exact share"),
        (dict(window=64, recent=52, exact=0.3), "no room to compress"),
    ],
)
def test_hybrid_settings_are_validated(changes: dict, message: str) -> None:
    settings = dict(kind="hybrid", window=1024, sink=4, recent=128, ratio=0.5, exact=0.25)
    settings.update(changes)
    with pytest.raises(UsageError, match=message):
        CachePolicy(**settings)


def test_exact_slots_fit_inside_what_a_round_keeps() -> None:
    """E is at most L - 4: a low ratio (a checkpoint's freqkv.json) shrinks it, not an error."""
    policy = CachePolicy("hybrid", 96, 8, 16, 0.25)  # F = 72, L = 18: floor(96 * 0.25) = 24 does not fit
    assert policy.kept() == 18 and policy.exact_slots() == 14
    assert CachePolicy("hybrid", 1024, 4, 128, 0.5).exact_slots() == 256  # the default: unclipped
    model = tiny_model("llama")
    ids = torch.randint(0, 211, (400,), generator=torch.Generator().manual_seed(3)).tolist()
    engine = StreamingEngine(model, policy)
    engine.feed(ids)
    assert engine.cache.exact_count == 14 and engine.cache.length <= policy.window


def test_surprise_scores_are_the_streamed_token_losses() -> None:
    """The surprise selector's per-slot scores equal the NLL that score() reports for those tokens."""
    model = tiny_model("llama")
    policy = CachePolicy("hybrid", 64, 4, 8, 0.5, exact=0.25, selector="surprise")
    ids = torch.randint(0, 211, (60,), generator=torch.Generator().manual_seed(9)).tolist()
    engine = StreamingEngine(model, policy, max_chunk=7)
    nll = engine.score(ids)  # 60 tokens: no compression yet
    surprise = engine.selector.nll[0, 1:60]
    torch.testing.assert_close(surprise, nll, atol=1e-5, rtol=1e-5)
    more = torch.randint(0, 211, (300,), generator=torch.Generator().manual_seed(10)).tolist()
    engine.score(more)  # compressions with surprise-based selection run and stay bounded
    assert engine.cache.exact_count == policy.exact_slots() and engine.cache.length <= policy.window


def test_unknown_selector_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="selector"):
        CachePolicy("hybrid", 1024, 4, 128, 0.5, selector="oracle")


def test_hybrid_without_a_question_selects_by_key_norm(family: str) -> None:
    """No question asked: the attention selector falls back to key norm (the same NLL as the
    keynorm selector, bit for bit), which fills the exact slots and so differs from FreqKV."""
    model = tiny_model(family)
    ids = torch.randint(0, 211, (400,), generator=torch.Generator().manual_seed(6)).tolist()
    plain = StreamingEngine(model, POLICY.with_(kind="freqkv")).score(ids)
    hybrid = StreamingEngine(model, POLICY)
    nll = hybrid.score(ids)
    assert hybrid.cache.compressions > 3 and hybrid.cache.exact_count == POLICY.exact_slots()
    assert torch.equal(StreamingEngine(model, POLICY.with_(selector="keynorm")).score(ids), nll)
    assert not torch.allclose(nll, plain)


def test_span_selection_takes_whole_spans_with_their_centre_score() -> None:
    from freqkv_cli.cache.spans import select_spans

    score = torch.zeros(1, 60)
    score[0, 20], score[0, 45] = 5.0, 3.0
    index, value = select_spans(score, 2 * (SPAN_LEFT + SPAN_RIGHT + 1))
    first = list(range(20 - SPAN_LEFT, 20 + SPAN_RIGHT + 1))
    second = list(range(45 - SPAN_LEFT, min(60, 45 + SPAN_RIGHT + 1)))
    taken = index[0].tolist()
    assert set(first) <= set(taken) and set(second) <= set(taken) and taken == sorted(taken)
    scores = dict(zip(taken, value[0].tolist(), strict=True))
    assert all(scores[i] == 5.0 for i in first) and all(scores[i] == 3.0 for i in second)


def test_hybrid_round_against_scipy(family: str) -> None:
    """After one round, layer 0 holds [head | picked tokens exact | the others low-passed | recent],
    recomputed here from each token's own key and value with scipy's DCT and the model's RoPE."""
    import numpy as np
    import scipy.fft

    model = tiny_model(family)
    ids = torch.randint(0, 211, (POLICY.window,), generator=torch.Generator().manual_seed(8)).tolist()
    engine = StreamingEngine(model, POLICY.with_(selector="keynorm"))
    engine.feed(ids)  # exactly one full window
    cache = engine.cache
    cache.compress()
    head, exact, kept = cache.head, cache.exact_count, cache.compressed_count
    picked = cache.exact_tokens[0].tolist()
    rest = [i for i in range(head, POLICY.window - POLICY.recent) if i not in picked]
    with torch.no_grad():
        keys, values = layer0_keys_values(model, ids)  # (Hkv, T, D), pre-RoPE

    def low(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2]
        coeffs = scipy.fft.dct(x.double().numpy(), type=2, norm="ortho", axis=-2)[..., :kept, :]
        out = scipy.fft.idct(coeffs, type=2, norm="ortho", axis=-2) * np.sqrt(kept / n)
        return torch.from_numpy(out).float()

    rotate = cache.rotation.rotate
    start = head + exact
    want_k = rotate(low(keys[:, rest])[None], torch.arange(start, start + kept))[0]
    layer = cache.layers[0]
    torch.testing.assert_close(layer.keys[0, :, start : start + kept], want_k, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        layer.values[0, :, start : start + kept], low(values[:, rest]), atol=1e-4, rtol=1e-4
    )
    assert cache.length == start + kept + POLICY.recent


@pytest.mark.parametrize("selector", ["attention", "keynorm", "random"])
def test_hybrid_runs_the_freqkv_schedule(selector: str) -> None:
    """Exact entries are part of FreqKV's L: every round leaves head + L + R entries, so both
    policies read the same chunks, compress as often, and end holding as many entries."""
    model = tiny_model("llama")
    ids = torch.randint(0, 211, (700,), generator=torch.Generator().manual_seed(11)).tolist()
    kinds = ("freqkv", "hybrid")
    engines = {kind: StreamingEngine(model, POLICY.with_(kind=kind, selector=selector)) for kind in kinds}
    for engine in engines.values():
        engine.feed(ids)
    plain, hybrid = engines["freqkv"].cache, engines["hybrid"].cache
    assert hybrid.compressions == plain.compressions > 10
    assert hybrid.length == plain.length and hybrid.exact_count == POLICY.exact_slots()
    after = POLICY.sink + POLICY.kept() + POLICY.recent
    hybrid_after = StreamingEngine(model, POLICY.with_(selector=selector))
    hybrid_after.feed(ids[: POLICY.window])
    for _ in range(3):
        hybrid_after.cache.compress()
        assert hybrid_after.cache.length == after
        hybrid_after.feed(ids[: POLICY.window - after])


def _greedy_spans_reference(score: torch.Tensor, take: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The span walk as masked tensor operations: argmax, mark the span, repeat."""
    batch, n = score.shape
    chosen = torch.zeros(batch, n, dtype=torch.bool)
    value = torch.zeros(batch, n)
    for row in range(batch):
        left = score[row].clone()
        while int(chosen[row].sum()) < take:
            centre = int(left.argmax())
            span = torch.arange(max(0, centre - SPAN_LEFT), min(n, centre + SPAN_RIGHT + 1))
            span = span[~chosen[row, span]][: take - int(chosen[row].sum())]
            chosen[row, span] = True
            value[row, span] = score[row, centre]
            left[span] = float("-inf")
            left[centre] = float("-inf")
    index = chosen.nonzero()[:, 1].reshape(batch, take)
    return index, value.gather(-1, index)


@pytest.mark.parametrize("seed", range(6))
def test_span_selection_matches_a_masked_tensor_walk(seed: int) -> None:
    from freqkv_cli.cache.spans import select_spans

    generator = torch.Generator().manual_seed(seed)
    n = int(torch.randint(20, 300, (1,), generator=generator))
    score = torch.randn(2, n, generator=generator)
    score[:, ::7] = score[:, ::7].round()  # ties: the first index wins in both walks
    score[:, 3::7] = score[:, 3::7].round()
    take = int(torch.randint(1, n, (1,), generator=generator))
    index, value = select_spans(score, take)
    want_index, want_value = _greedy_spans_reference(score, take)
    assert torch.equal(index, want_index)
    torch.testing.assert_close(value, want_value)


def plain_question_scores(
    rotation: KeyRotation,
    queries: list[torch.Tensor],
    keys: list[torch.Tensor],
    weights: torch.Tensor,
    window: int,
) -> torch.Tensor:
    """``(n,)``: the selector's scores of one round, written out head by head (batch 1, a fresh
    question): each head's best logit over the question's tokens, weighted over heads and
    layers, standardized over the round, the excess over one spread summed over a neighbourhood."""
    layers, heads = weights.shape
    n = keys[0].shape[2]
    total, weight_sum = torch.zeros(n, dtype=torch.float64), 0.0
    for layer in range(layers):
        q = rotation.rotate(queries[layer].float(), torch.full((queries[layer].shape[2],), window - 1))
        kv_heads = keys[layer].shape[1]
        for head in range(heads):
            if weights[layer, head] == 0:
                continue
            k = keys[layer][0, head // (heads // kv_heads)].float()  # (n, D)
            logits = q[0, head] @ k.T / math.sqrt(k.shape[-1])  # (Tq, n)
            total += float(weights[layer, head]) * logits.amax(dim=0).double()
            weight_sum += float(weights[layer, head])
    match = total / weight_sum
    excess = ((match - match.mean()) / match.std(unbiased=False) - 1).clamp(min=0)
    return torch.tensor(
        [float(excess[max(0, i - SPAN_LEFT) : i - SPAN_LEFT + DENSITY].sum()) for i in range(n)]
    )


@pytest.mark.parametrize("stack_bytes", [0, 45_000, 1 << 30])  # groups of 1, 2 and all 3 scoring layers
def test_stacked_question_scores_equal_the_head_by_head_reference(stack_bytes: int) -> None:
    """Scoring layers stacked (as on GPUs) or one at a time gives the plainly written scores."""
    model = tiny_model("llama")
    config = model.config
    layers, heads, dim = 4, config.num_attention_heads, config.hidden_size // config.num_attention_heads
    gen = torch.Generator().manual_seed(7)
    keys = [torch.randn(1, config.num_key_value_heads, 80, dim, generator=gen) for _ in range(layers)]
    queries = [torch.randn(1, heads, 5, dim, generator=gen) for _ in range(layers)]
    weights = torch.rand(layers, heads, generator=gen)
    weights[1] = 0.0  # a layer without a scoring head
    weights[2, :2] = 0.0
    rotation = KeyRotation(model.model.rotary_emb)
    selector = AttentionSelector(rotation=rotation, window=96, stack_bytes=stack_bytes)
    selector.ask(queries, weights)
    start, count = 10, 60
    got = selector.score(Candidates(start, count, torch.device("cpu"), keys))
    window_keys = [k[:, :, start : start + count] for k in keys]
    want = plain_question_scores(rotation, queries, window_keys, weights, 96)
    torch.testing.assert_close(got[0].double(), want.double(), atol=1e-4, rtol=1e-4)
