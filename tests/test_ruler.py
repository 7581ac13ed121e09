"""eval ruler: RULER's synthetic tasks, their fitting, scoring, runs and command (tiny models)."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from tinymodel import byte_tokenizer, save_tiny_model

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.cli.app import run
from freqkv_cli.errors import EXIT_USAGE, UsageError
from freqkv_cli.evaluation import ruler
from freqkv_cli.evaluation.ruler import presses
from freqkv_cli.evaluation.ruler.haystack import default_haystack
from freqkv_cli.models.loading import LoadedModel
from freqkv_cli.session.session import Session

LENGTH = 4000  # byte tokens: long enough for every task (cwe's 300-word list takes ~2,400)
# The fit never passes the budget and stays under it by less than one haystack unit; the largest
# unit here is a UUID needle of niah_multikey_3 (111 bytes).
TOLERANCE = 128
TEXT = default_haystack()


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    tokenizer = byte_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=8192)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return LoadedModel(model, tokenizer, "tiny", "llama", None)


@pytest.fixture(scope="module")
def count(loaded: LoadedModel) -> ruler.sample.Counter:
    return ruler.token_counter(Session(loaded, CachePolicy(kind="full", window=256)))


@pytest.fixture(scope="module")
def samples(count: ruler.sample.Counter) -> dict[str, ruler.Sample]:
    return {name: task.generate(LENGTH, 0, count, TEXT) for name, task in ruler.TASKS.items()}


@pytest.mark.parametrize("name", list(ruler.TASKS))
def test_generators_are_deterministic_per_seed_and_differ_across_seeds(
    name: str, count: ruler.sample.Counter, samples: dict[str, ruler.Sample]
) -> None:
    task = ruler.TASKS[name]
    again = task.generate(LENGTH, 0, count, TEXT)
    assert again == samples[name]
    other = task.generate(LENGTH, 1, count, TEXT)
    assert other.prompt != again.prompt and other.answers != again.answers


@pytest.mark.parametrize("name", list(ruler.TASKS))
def test_the_prompt_fits_the_length_and_holds_the_answers(
    name: str, loaded: LoadedModel, samples: dict[str, ruler.Sample]
) -> None:
    sample = samples[name]
    budget = LENGTH - sample.max_new_tokens
    # An independent count: the chat turn as the tokenizer renders it, then the answer prefix.
    turn = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": sample.prompt}], tokenize=False, add_generation_prompt=True
    )
    tokens = len(loaded.tokenizer(turn + sample.answer_prefix, add_special_tokens=False)["input_ids"])
    assert tokens == sample.tokens
    assert budget - TOLERANCE < tokens <= budget, (tokens, budget)
    assert sample.answers and all(answer in sample.context for answer in sample.answers)
    # The question comes after the context, as in RULER.
    assert sample.prompt.endswith("\n" + sample.question) and sample.context in sample.prompt


def test_needles_sit_where_the_task_says(samples: dict[str, ruler.Sample]) -> None:
    assert samples["niah_single_1"].context.count("The grass is green.") > 10
    assert "The grass is green." not in samples["niah_single_2"].context
    assert samples["niah_multikey_2"].context.count("One of the special magic numbers") > 10
    assert len(samples["niah_multivalue"].answers) == 4 and len(samples["niah_multiquery"].answers) == 4
    assert len(samples["vt"].answers) == 5 and len(samples["cwe"].answers) == 10
    assert len(samples["fwe"].answers) == 3
    chain = samples["vt"].answers  # each variable assigned after the one it copies
    spots = [samples["vt"].context.index(f"VAR {var} =") for var in chain]
    assert spots == sorted(spots)


@pytest.mark.parametrize("name", list(ruler.TASKS))
def test_a_planted_answer_scores_one_and_a_wrong_one_zero(
    name: str, samples: dict[str, ruler.Sample]
) -> None:
    sample = samples[name]
    planted = sample.answer_prefix + " " + ", ".join(sample.answers) + "."
    assert ruler.score(sample.metric, planted, sample.answers) == 1.0
    assert ruler.score(sample.metric, "I could not find it.", sample.answers) == 0.0
    assert ruler.score(sample.metric, planted.upper(), sample.answers) == 1.0  # case-insensitive


def test_all_counts_a_share_and_part_any_one() -> None:
    answers = ["1111111", "2222222", "3333333", "4444444"]
    assert ruler.score_all("1111111 and 3333333", answers) == 0.5
    assert ruler.score_part("1111111 and 3333333", answers) == 1.0
    assert ruler.score_part("none", answers) == 0.0


def test_tasks_by_name_and_group() -> None:
    assert [t.name for t in ruler.parse_tasks("vt,cwe")] == ["vt", "cwe"]
    assert len(ruler.parse_tasks("niah")) == 8 and len(ruler.parse_tasks("all")) == 11
    assert [t.name for t in ruler.parse_tasks("aggregation,cwe")] == ["cwe", "fwe"]
    for bad in ("nope", "vt,,cwe", ""):
        with pytest.raises(UsageError):
            ruler.parse_tasks(bad)


def test_a_length_too_short_is_one_line(count: ruler.sample.Counter) -> None:
    with pytest.raises(UsageError, match="too short"):
        ruler.TASKS["niah_single_2"].generate(300, 0, count, TEXT)


@pytest.mark.parametrize("name", ["niah_single_1", "vt"])
def test_the_full_cache_scores_what_transformers_generate_scores(
    name: str, loaded: LoadedModel, count: ruler.sample.Counter
) -> None:
    task = replace(ruler.TASKS[name], max_new_tokens=24)
    sample = task.generate(1800, 3, count, TEXT)
    result = ruler.run_sample(Session(loaded, CachePolicy(kind="full", window=4096)), sample)
    # The reference: the same prompt through transformers' own greedy generate, no freqkv code.
    tokenizer = loaded.tokenizer
    turn = tokenizer.apply_chat_template(
        [{"role": "user", "content": sample.prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(turn, add_special_tokens=False)["input_ids"]
    ids += tokenizer(sample.answer_prefix, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = loaded.model.generate(
            torch.tensor([ids]),
            max_new_tokens=sample.max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
    new = [t for t in out[0, len(ids) :].tolist() if t != tokenizer.eos_token_id]
    reference = tokenizer.decode(new)
    assert result.tokens == len(ids) == sample.tokens
    assert (
        result.output == reference and len(new) == sample.max_new_tokens
    )  # no early stop: 24 tokens compared
    assert result.score == ruler.score(sample.metric, reference, sample.answers)


def test_the_qa_layout_reads_about_what_it_counted(loaded: LoadedModel) -> None:
    session = Session(loaded, CachePolicy(kind="hybrid", window=256))
    count = ruler.token_counter(session, "qa")
    task = replace(ruler.TASKS["niah_single_2"], max_new_tokens=4)
    sample = task.generate(1500, 0, count, TEXT)
    result = ruler.run_sample(session, sample, "qa")
    assert abs(result.tokens - sample.tokens) <= 3 and result.cache == "hybrid"


def test_scores_per_cell_and_the_average() -> None:
    def result(task: str, cache: str, value: float) -> ruler.RulerResult:
        return ruler.RulerResult(task, cache, 1024, 0, ["x"], "", value, 1000, 0.1)

    cells = ruler.ruler_scores(
        [result("vt", "full", 1.0), result("vt", "full", 0.0), result("cwe", "full", 1.0)]
    )
    assert [(c.task, c.samples, c.score) for c in cells] == [("vt", 2, 0.5), ("cwe", 1, 1.0)]
    assert ruler.averages(cells) == {("full", 1024): 0.75}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def test_eval_ruler_json_shape(tiny: str, capsys: pytest.CaptureFixture) -> None:
    args = ["--tasks", "niah_single_1,fwe", "--lengths", "900", "--seeds", "2", "--cache", "full,freqkv"]
    code = run(["eval", "ruler", "-m", tiny, *args, "-w", "256", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert data["tasks"] == ["niah_single_1", "fwe"] and data["seeds"] == 2 and data["layout"] == "ruler"
    assert data["caches"] == ["full", "freqkv"] and data["lengths"] == [900] and data["presses"] == []
    assert data["metrics"] == {"niah_single_1": "all", "fwe": "all"}
    assert len(data["results"]) == 8
    for item in data["results"]:
        assert {"task", "cache", "length", "seed", "answers", "output", "score", "tokens"} <= set(item)
        assert 0.0 <= item["score"] <= 1.0 and item["tokens"] <= 900
    answers = {(r["task"], r["seed"]): r["answers"] for r in data["results"] if r["cache"] == "full"}
    assert answers == {
        (r["task"], r["seed"]): r["answers"] for r in data["results"] if r["cache"] == "freqkv"
    }
    assert [(c["task"], c["cache"], c["samples"]) for c in data["grid"]] == [
        ("niah_single_1", "full", 2),
        ("niah_single_1", "freqkv", 2),
        ("fwe", "full", 2),
        ("fwe", "freqkv", 2),
    ]
    assert set(data["average"]) == {"full", "freqkv"} and set(data["average"]["full"]) == {"900"}


def test_kvpress_asked_for_without_it_is_one_line(tiny: str, capsys: pytest.CaptureFixture) -> None:
    code = run(["eval", "ruler", "-m", tiny, "--press", "snapkv", "--lengths", "900"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE and err.count("\n") == 0 and "pip install kvpress" in err


def test_presses_run_through_kvpress_pipeline_at_freqkv_window(
    loaded: LoadedModel, count: ruler.sample.Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kvpress is not installed here: a stand-in module checks the wiring (names, ratio, call)."""
    made: list[float] = []

    class SnapKVPress:
        def __init__(self, compression_ratio: float) -> None:
            made.append(compression_ratio)

    calls: list[dict] = []

    def pipeline(task: str, **kwargs: object) -> object:
        assert task == "kv-press-text-generation"
        return lambda context, **kw: calls.append({"context": context, **kw}) or {"answer": answer}

    monkeypatch.setitem(sys.modules, "kvpress", types.SimpleNamespace(SnapKVPress=SnapKVPress))
    monkeypatch.setattr("transformers.pipeline", pipeline)
    assert presses.parse_presses("snapkv") == ["snapkv"]
    with pytest.raises(UsageError, match="no KnormPress"):
        presses.parse_presses("snapkv,knorm")
    sample = ruler.TASKS["niah_single_1"].generate(2000, 0, count, TEXT)
    answer = " ".join(sample.answers)
    result = presses.PressRunner(loaded.model, loaded.tokenizer, window=256).run("snapkv", sample)
    assert result.cache == "kvpress:snapkv" and result.score == 1.0
    assert made == [pytest.approx(1 - 256 / result.tokens)]
    assert calls[0]["answer_prefix"] == sample.answer_prefix and sample.question in calls[0]["question"]


def test_attention_layers_are_handed_the_positions_kvpress_reads(loaded: LoadedModel) -> None:
    """kvpress 0.5 reads ``cache_position`` in its hooks; transformers 5.3 and later no longer pass it."""
    from transformers import DynamicCache

    seen: list[list[int]] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if module.layer_idx == 0:
            seen.append(kwargs["cache_position"].tolist())

    layers = loaded.model.model.layers
    hooks = [layer.self_attn.register_forward_hook(record, with_kwargs=True) for layer in layers]
    try:
        with presses.cache_positions_given(loaded.model), torch.no_grad():
            cache = DynamicCache()
            loaded.model(torch.tensor([[5, 6, 7, 8, 9]]), past_key_values=cache)
            loaded.model(torch.tensor([[10]]), past_key_values=cache)
            loaded.model(
                torch.tensor([[11, 12]]), past_key_values=cache, position_ids=torch.tensor([[40, 41]])
            )
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [[0, 1, 2, 3, 4], [5], [40, 41]]
    assert not loaded.model.model.layers[0].self_attn._forward_pre_hooks


def test_the_figure_is_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from freqkv_cli.evaluation.ruler.plot import plot_ruler

    cells = [
        ruler.RulerCell(task, cache, length, 2, (i + j) / 6)
        for i, task in enumerate(["niah_single_1", "vt", "cwe"])
        for j, cache in enumerate(["full", "sink", "freqkv"])
        for length in (2048, 4096)
    ]
    path = plot_ruler(cells, tmp_path / "ruler.png", title="t")
    assert path.stat().st_size > 1000
