"""Retrieval-head profiles: measuring them (`freqkv calibrate`), storing them, and the hybrid
cache scoring with only the heads they name (issue #6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from test_cli import cli, one_line_error
from test_hybrid import POLICY, layer0_keys_values
from tinymodel import save_tiny_model

from freqkv_cli.cache.head_profile import HeadProfile
from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.cache.selectors.attention import DENSITY
from freqkv_cli.cache.spans import SPAN_LEFT, SPAN_RIGHT
from freqkv_cli.engine.streaming import StreamingEngine
from freqkv_cli.errors import ModelError, UsageError


def test_profile_keeps_the_lowest_scores_and_round_trips(tmp_path: Path) -> None:
    scores = torch.tensor([[3.0, 0.5, 2.0], [0.1, 4.0, 1.0]])
    profile = HeadProfile.from_scores(scores, 2, {"trials": 3})
    assert profile.heads == ((1, 0), (0, 1))
    weights = profile.weights()
    assert weights.shape == (2, 3) and weights.sum() == 2 and weights[1, 0] == 1 and weights[0, 1] == 1
    profile.save(tmp_path / "p.json")
    again = HeadProfile.load(tmp_path / "p.json")
    assert again.heads == profile.heads and again.scores == profile.scores and again.source == {"trials": 3}
    with pytest.raises(ModelError, match="2 layers x 3 heads"):
        again.check(2, 4, "here")


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"scores": [[1, 2], [3]], "heads": [[0, 0]]}',
        '{"scores": [[1, 2]], "heads": [[0, 5]]}',
        "{}",
    ],
)
def test_a_broken_profile_is_a_model_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ModelError, match="head profile"):
        HeadProfile.load(path)


def test_head_weights_decide_whose_attention_chooses() -> None:
    """Query head 0 points at one token, query head 3 (another KV group) at another: the exact
    slots follow whichever head the weights name."""
    model = tiny_model("llama")
    ids = torch.randint(0, 211, (64,), generator=torch.Generator().manual_seed(4)).tolist()
    targets = {0: 12, 3: 34}
    with torch.no_grad():
        keys, _ = layer0_keys_values(model, ids)
    picks = {}
    for chosen in targets:
        engine = StreamingEngine(model, POLICY)
        engine.feed(ids)
        rotation = engine.cache.rotation
        query = torch.zeros(4, 16)
        for q_head, target in targets.items():
            kv_head = q_head // 2
            stored = rotation.rotate(
                keys[None, kv_head : kv_head + 1, target : target + 1].float(), torch.tensor([target])
            )
            query[q_head] = rotation.unrotate(stored, torch.tensor([POLICY.window - 1]))[0, 0, 0] * 8.0
        weights = torch.zeros(2, 4)
        weights[0, chosen] = 1.0  # layer 0's head: the queries point at layer 0's keys
        engine.selector.ask([query[None, :, None] for _ in model.model.layers], weights)
        engine.cache.compress()
        picks[chosen] = engine.cache.exact_tokens[0]
    for chosen, target in targets.items():
        offsets = picks[chosen] - target
        # The span starts SPAN_LEFT before the token whose DENSITY-token neighbourhood matches best.
        assert ((offsets >= 1 - DENSITY) & (offsets <= SPAN_LEFT + SPAN_RIGHT)).all(), (chosen, picks[chosen])


def test_a_long_pinned_prompt_shrinks_the_exact_slots_instead_of_failing() -> None:
    policy = CachePolicy("hybrid", 128, 4, 0, exact=0.25)
    fitted = policy.fitted(94)
    assert 0 < fitted.exact_slots() < policy.exact_slots()
    fitted.validate(head=94)
    assert policy.fitted(10) is policy and CachePolicy("freqkv", 128).fitted(94).kind == "freqkv"
    with pytest.raises(UsageError):
        policy.fitted(125).validate(head=125)


def test_calibrate_writes_a_profile_that_later_runs_use(tmp_path: Path) -> None:
    model = str(save_tiny_model(tmp_path / "model"))
    text = tmp_path / "book.txt"
    text.write_text("The river ran past the mill and the town slept. " * 300)
    env = {"FREQKV_HOME": str(tmp_path / "home")}
    result = cli(
        "calibrate",
        "-m",
        model,
        "--text",
        str(text),
        "--trials",
        "3",
        "--length",
        "160",
        "--heads",
        "3",
        "--json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["heads"]) == 3 and Path(data["profile"]).is_file()
    info = cli("info", "-m", model, "--json", env=env)
    assert info.returncode == 0, info.stderr
    shown = json.loads(info.stdout)
    assert shown["retrieval_heads"] == data["heads"] and shown["head_profile"] == data["profile"]
    # Another model home: no profile, every head counts.
    bare = json.loads(cli("info", "-m", model, "--json", env={"FREQKV_HOME": str(tmp_path / "h2")}).stdout)
    assert bare["retrieval_heads"] is None


def test_calibrate_bad_input_is_one_line(tmp_path: Path) -> None:
    result = cli("calibrate", "--text", str(tmp_path / "missing.txt"))
    assert result.returncode != 0 and "missing.txt" in one_line_error(result.stderr.decode())
    result = cli("calibrate", "--trials", "0")
    assert result.returncode == 2
    model = str(save_tiny_model(tmp_path / "model"))
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    result = cli("calibrate", "-m", model, "--out", str(blocked / "heads.json"))
    assert result.returncode == 2 and "cannot write the head profile" in one_line_error(
        result.stderr.decode()
    )
