"""Decoding: greedy against ``model.generate``, sampling against written-out references, stops."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from conftest import tiny_model
from reference_freqkv import ReferenceFreqKV

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.engine.sampling import Sampler
from freqkv_cli.engine.streaming import StreamingEngine
from freqkv_cli.errors import UsageError

PROMPT_LEN, NEW = 40, 30


def prompt(seed: int = 1, length: int = PROMPT_LEN) -> list[int]:
    return torch.randint(0, 211, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def hf_greedy(model, ids: list[int], new: int) -> list[int]:
    """transformers' own greedy decoding with its own cache; never stops early."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert out.shape[1] == len(ids) + new, "model.generate stopped early"
    return out[0, len(ids) :].tolist()


def engine_greedy(
    model, policy: CachePolicy, ids: list[int], new: int, **kwargs
) -> tuple[StreamingEngine, list]:
    engine = StreamingEngine(model, policy, tokenizer=None, **kwargs)
    engine.feed(ids)
    result = engine.generate(max_new_tokens=new, stop_token_ids=())
    assert result.stop_reason == "max_new_tokens"
    return engine, result.token_ids


@pytest.fixture(scope="module")
def models() -> dict:
    return {}


def model_of(models: dict, family: str):
    if family not in models:
        models[family] = tiny_model(family)
    return models[family]


_HF_GREEDY: dict[tuple, list[int]] = {}


def hf_greedy_cached(models: dict, family: str, ids: list[int], new: int) -> list[int]:
    key = (family, tuple(ids), new)
    if key not in _HF_GREEDY:
        _HF_GREEDY[key] = hf_greedy(model_of(models, family), ids, new)
    return _HF_GREEDY[key]


# -- greedy ---------------------------------------------------------------------------------------
def test_greedy_full_equals_model_generate(family: str, models: dict) -> None:
    model = model_of(models, family)
    ids = prompt()
    want = hf_greedy_cached(models, family, ids, NEW)
    _, got = engine_greedy(model, CachePolicy(kind="full"), ids, NEW)
    assert got == want


@pytest.mark.parametrize("kind", ["freqkv", "sink"])
def test_greedy_window_larger_than_everything_equals_model_generate(
    family: str, models: dict, kind: str
) -> None:
    model = model_of(models, family)
    ids = prompt()
    want = hf_greedy_cached(models, family, ids, NEW)
    engine, got = engine_greedy(model, CachePolicy(kind=kind, window=PROMPT_LEN + NEW + 8, sink=4), ids, NEW)
    assert got == want
    assert engine.stats().compressions == 0
    # all 30 generated tokens went into the cache (a chat goes on from there)
    assert engine.stats().entries == engine.stats().tokens_seen == PROMPT_LEN + NEW


@pytest.mark.parametrize(
    ("kind", "window", "sink", "recent"), [("freqkv", 24, 4, 0), ("freqkv", 20, 2, 4), ("sink", 24, 4, 2)]
)
def test_decoding_with_compression_stays_in_the_window(
    family: str, models: dict, kind: str, window: int, sink: int, recent: int
) -> None:
    model = model_of(models, family)
    ids = prompt()
    policy = CachePolicy(kind=kind, window=window, sink=sink, recent=recent)
    engine = StreamingEngine(model, policy, tokenizer=None)
    seen: list[tuple[int, list[int]]] = []
    forward = engine._forward

    def checked_forward(chunk):
        hidden = forward(chunk)
        seen.append((engine.stats().entries, [layer.length for layer in engine.cache.layers]))
        return hidden

    engine._forward = checked_forward
    engine.feed(ids)
    prefill_forwards = len(seen)
    prefill_compressions = engine.stats().compressions
    result = engine.generate(max_new_tokens=NEW, stop_token_ids=())
    assert result.stop_reason == "max_new_tokens"
    assert len(result.token_ids) == NEW
    assert len(seen) == prefill_forwards + NEW  # one forward per generated token
    for entries, lengths in seen:
        assert entries <= window
        assert all(length == entries for length in lengths)
    # the schedule, computed independently: fill the window, then one round per F - L tokens
    span = window - sink - recent
    freed = span - math.floor(span * 0.5)
    total = PROMPT_LEN + NEW
    assert engine.stats().tokens_seen == total
    assert engine.stats().compressions == math.ceil((total - window) / freed)
    assert prefill_compressions == math.ceil((PROMPT_LEN - window) / freed)
    assert engine.stats().compressions > prefill_compressions  # it compressed while decoding
    # every generated token is the argmax of the grouped reference's logits at its position
    reference = ReferenceFreqKV(model, window, sink, recent, 0.5, kind=kind)
    logits = reference.run(ids + result.token_ids)
    for step, token in enumerate(result.token_ids):
        row = logits[PROMPT_LEN - 1 + step]
        assert row[token] >= row.max() - 1e-4, f"step {step}: {token} is not the reference's argmax"


def test_generate_before_feed_is_refused() -> None:
    engine = StreamingEngine(tiny_model("llama"), CachePolicy(kind="full"))
    with pytest.raises(ValueError):
        engine.generate(5)


# -- sampling through the engine -----------------------------------------------------------------
def sample_tokens(model, sampler: Sampler, new: int = NEW) -> list[int]:
    engine = StreamingEngine(model, CachePolicy(window=32, sink=4), tokenizer=None)
    engine.feed(prompt())
    return engine.generate(max_new_tokens=new, sampler=sampler, stop_token_ids=()).token_ids


def test_same_seed_same_tokens_different_seeds_differ(models: dict) -> None:
    model = model_of(models, "llama")
    a = sample_tokens(model, Sampler(temperature=1.0, seed=7))
    b = sample_tokens(model, Sampler(temperature=1.0, seed=7))
    c = sample_tokens(model, Sampler(temperature=1.0, seed=8))
    assert len(a) == NEW
    assert a == b
    assert a != c
    # sampling is not greedy in disguise
    greedy = sample_tokens(model, Sampler())
    assert a != greedy


def test_tiny_top_p_is_greedy(family: str, models: dict) -> None:
    model = model_of(models, family)
    greedy = sample_tokens(model, Sampler())
    assert sample_tokens(model, Sampler(temperature=1.0, top_p=1e-6, seed=5)) == greedy


# -- the sampler on hand-made logits -------------------------------------------------------------
def nucleus_reference(probs: list[float], top_p: float) -> dict[int, float]:
    """The smallest set of most likely ids whose mass reaches top_p, renormalised (written out)."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept: dict[int, float] = {}
    mass = 0.0
    for i in order:
        kept[i] = probs[i]
        mass += probs[i]
        if mass >= top_p:
            break
    return {i: p / mass for i, p in kept.items()}


def draw(sampler: Sampler, logits: torch.Tensor, count: int) -> dict[int, float]:
    counts = Counter(sampler(logits) for _ in range(count))
    return {i: n / count for i, n in counts.items()}


# ids are permuted on purpose: the filter must map sorted positions back to ids
PROBS = [0.15, 0.5, 0.0, 0.05, 0.3]


@pytest.mark.parametrize("top_p", [0.8, 0.81, 0.5, 0.95, 0.999, 1.0])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p: float) -> None:
    logits = torch.tensor(PROBS).log()  # log(0) = -inf: never drawn
    want = nucleus_reference(PROBS, top_p)
    got = draw(Sampler(temperature=1.0, top_p=top_p, seed=123), logits, 1500)
    assert set(got) == set(want)
    for token, p in want.items():
        assert abs(got[token] - p) < 0.045, (token, got[token], p)


def test_top_p_example_from_the_brief() -> None:
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    got = draw(Sampler(temperature=1.0, top_p=0.8, seed=0), logits, 2000)
    assert set(got) == {0, 1}
    assert abs(got[0] - 0.625) < 0.04 and abs(got[1] - 0.375) < 0.04


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_reshapes_the_distribution(temperature: float) -> None:
    probs = [0.6, 0.25, 0.1, 0.05]
    logits = torch.tensor(probs).log() + 3.0  # a shift changes nothing
    powered = [p ** (1 / temperature) for p in probs]
    want = {i: q / sum(powered) for i, q in enumerate(powered)}
    got = draw(Sampler(temperature=temperature, seed=9), logits, 2500)
    for token, p in want.items():
        assert abs(got.get(token, 0.0) - p) < 0.03, (token, got.get(token), p)


def test_temperature_zero_is_argmax_whatever_top_p() -> None:
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    for top_p in (0.1, 0.9, 1.0):
        assert {Sampler(temperature=0.0, top_p=top_p)(logits) for _ in range(20)} == {1}


def test_sampler_seed_repeats_whatever_the_logits_dtype() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    first, second = Sampler(temperature=1.0, seed=4), Sampler(temperature=1.0, seed=4)
    draws = [first(logits) for _ in range(100)]
    assert draws == [second(logits.double()) for _ in range(100)]
    assert len(set(draws)) > 5  # it does sample


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_p": -0.2},
        {"top_p": float("nan")},
    ],
)
def test_bad_sampler_values(kwargs: dict) -> None:
    with pytest.raises(UsageError):
        Sampler(**kwargs)


# -- stopping ------------------------------------------------------------------------------------
def first_new_token(tokens: list[int]) -> int:
    """Index of the latest token that does not occur before it (so a stop there is unambiguous)."""
    candidates = [k for k in range(1, len(tokens)) if tokens[k] not in tokens[:k]]
    assert candidates, "greedy output never changes: pick another prompt"
    return candidates[-1]


def test_stop_token_stops_and_is_not_returned(family: str, models: dict) -> None:
    model = model_of(models, family)
    ids = prompt()
    greedy = hf_greedy_cached(models, family, ids, NEW)
    k = first_new_token(greedy)
    engine = StreamingEngine(model, CachePolicy(kind="full"), tokenizer=None)
    engine.feed(ids)
    result = engine.generate(max_new_tokens=NEW, stop_token_ids=[greedy[k], 100_000])
    assert result.stop_reason == "eos"
    assert result.token_ids == greedy[:k]
    assert greedy[k] not in result.token_ids
    # the stop token is not in the cache yet, but belongs to the history: the next feed puts it first
    assert engine.stats().tokens_seen == len(ids) + k
    engine.feed([5])
    assert engine.stats().tokens_seen == len(ids) + k + 2
    with torch.no_grad():
        want = model(torch.tensor([[*ids, *greedy[: k + 1], 5]])).logits[0, -1]
    torch.testing.assert_close(engine.logits(engine._last_hidden)[0], want, atol=1e-4, rtol=1e-4)


def test_stop_at_the_first_token(models: dict) -> None:
    model = model_of(models, "llama")
    ids = prompt()
    greedy = hf_greedy_cached(models, "llama", ids, NEW)
    engine = StreamingEngine(model, CachePolicy(kind="full"), tokenizer=None)
    engine.feed(ids)
    result = engine.generate(max_new_tokens=NEW, stop_token_ids={greedy[0]})
    assert (result.token_ids, result.stop_reason) == ([], "eos")


def test_generate_again_after_a_stop_continues_after_the_stop_token(models: dict) -> None:
    model = model_of(models, "qwen3")
    ids = prompt()
    greedy = hf_greedy_cached(models, "qwen3", ids, NEW)
    k = first_new_token(greedy)
    engine = StreamingEngine(model, CachePolicy(kind="full"), tokenizer=None)
    engine.feed(ids)
    engine.generate(max_new_tokens=NEW, stop_token_ids=[greedy[k]])
    again = engine.generate(max_new_tokens=5, stop_token_ids=())
    assert again.token_ids == hf_greedy(model, [*ids, *greedy[: k + 1]], 5)


def test_should_stop_interrupts(family: str, models: dict) -> None:
    model = model_of(models, family)
    ids = prompt()
    engine = StreamingEngine(model, CachePolicy(window=32, sink=4), tokenizer=None)
    engine.feed(ids)
    calls: list[int] = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 5

    result = engine.generate(max_new_tokens=NEW, stop_token_ids=(), should_stop=should_stop)
    assert result.stop_reason == "interrupted"
    assert len(result.token_ids) == 5
    assert len(calls) == 6  # polled before every token, not after the stop
    # an interrupted generation still generated the right tokens (window 32 compresses the prompt:
    # compare against the same policy run to the end)
    _, full_run = engine_greedy(model, CachePolicy(window=32, sink=4), ids, NEW)
    assert result.token_ids == full_run[:5]
    assert engine.stats().tokens_seen == len(ids) + 5
    # an immediate stop generates nothing
    again = engine.generate(max_new_tokens=NEW, should_stop=lambda: True)
    assert (again.token_ids, again.stop_reason) == ([], "interrupted")


def test_repetition_penalty_follows_its_definition() -> None:
    logits = torch.tensor([2.0, 1.5, -1.0, -3.0])
    assert Sampler()(logits, history=[0]) == 0  # off by default
    penalised = Sampler(repetition_penalty=2.0)
    assert penalised(logits, history=[0]) == 1  # 2.0 / 2 = 1.0 < 1.5
    assert penalised(logits, history=[0, 1]) == 0  # 1.0 > 0.75
    assert penalised(torch.tensor([-1.0, -1.5, -4.0]), history=[0]) == 1  # -1 * 2 = -2 < -1.5
    with pytest.raises(UsageError):
        Sampler(repetition_penalty=0.9)


def test_timings_count_what_was_read_and_decoded() -> None:
    engine = StreamingEngine(tiny_model(), CachePolicy(kind="freqkv", window=32, sink=2), max_chunk=5)
    engine.feed(list(range(10)), pin=True)  # a pinned prefix is read when the rest comes
    engine.feed(list(range(10, 67)))
    result = engine.generate(9, Sampler(), stop_token_ids=())
    timings = engine.timings.as_dict()
    assert timings["read_tokens"] == 67 and timings["decoded_tokens"] == len(result.token_ids) == 9
    assert timings["read_seconds"] > 0 and timings["decode_seconds"] > 0
    assert timings["read_tok_s"] == pytest.approx(67 / engine.timings.read_seconds, rel=1e-3)
    engine.reset()  # one account for the engine's whole life
    engine.feed(list(range(5)))
    assert engine.timings.read_tokens == 72
